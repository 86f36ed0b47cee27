"""Shared by the memory benches: run this very script again with ``--variant NAME`` in a fresh process (so its peak
resident memory is its own) and read the JSON result it prints last."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any


def run_variant_process(variant: str, *extra: str) -> dict[str, Any]:
    """Run ``python <this script> <its arguments> --variant VARIANT <extra...>``; return its last printed JSON line."""
    out = subprocess.run([sys.executable, *sys.argv, "--variant", variant, *extra], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{variant} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])
