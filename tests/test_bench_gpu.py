"""``bench/gpu.py`` is run on a GPU only when one is lent: its ``--smoke`` shape keeps the script runnable on CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu.py"


@pytest.mark.timeout(300)
def test_gpu_bench_runs_in_smoke_mode():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["shape"] == "smoke" and result["mstep_tokens_per_s"] > 0
    assert result["estep_lines_per_s"] and all(rate > 0 for rate in result["estep_lines_per_s"].values())
    assert set(result["peak_gib"]) == {"mstep", "estep", "decode"}  # None on CPU
    assert all(rate > 0 for rate in result["decode_tokens_per_s"].values())
