"""Shared by the memory benches: run this very script again with ``--variant NAME`` in a fresh process (so its peak
resident memory is its own) and read the JSON result it prints last."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import torch


def run_variant_process(variant: str, *extra: str) -> dict[str, Any]:
    """Run ``python <this script> <its arguments> --variant VARIANT <extra...>``; return its last printed JSON line."""
    out = subprocess.run([sys.executable, *sys.argv, "--variant", variant, *extra], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{variant} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def small_qwen(vocab: int, hidden: int) -> torch.nn.Module:
    """A 2-layer Qwen2 of width ``hidden`` with a ``vocab``-sized (tied) LM head, seeded: the memory benches' model."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=2 * hidden, tie_word_embeddings=True,
    )  # fmt: skip
    return Qwen2ForCausalLM(config)
