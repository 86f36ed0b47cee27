"""`ra3 fit` under ModelParallelStrategy (FSDP2 ``fully_shard``) on 2 CPU processes with gloo, through the real CLI.

Lightning's ModelParallelStrategy runs on CPU as it is (it picks gloo for CPU devices), so no custom strategy is
needed; ``save_distributed_checkpoint=false`` gathers one ``.ckpt`` file on rank 0, which ``ra3 export`` reads.
"""

import math
import os
import subprocess
import sys
from pathlib import Path

import torch
from helpers.rank_sync import FSDP2_OVERLAY, RANK_WEIGHTS, assert_ranks_in_sync
from transformers import AutoModelForCausalLM

from ra3_lightning.modules.base import load_lm_source

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo" / "ntp_tiny.yaml"
STEPS = 4


def ra3_fit(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "ra3_lightning.cli", "fit", "-c", str(DEMO), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}  # 2 ranks: 1 thread each
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def test_fsdp2_fit_on_two_cpu_processes(code_jsonl, tmp_path):
    proc = ra3_fit(
        tmp_path,
        *("--data.path", code_jsonl, "--model.tiny.tokenizer_corpus", code_jsonl, "--model.tiny.vocab_size", "300"),
        *("--data.max_length", "32", "--data.batch_size", "2", "--data.val_size", "8"),
        *("--trainer.max_steps", str(STEPS), "--trainer.val_check_interval", "2", "--trainer.log_every_n_steps", "1"),
        *FSDP2_OVERLAY,
        *RANK_WEIGHTS,
        "--trainer.enable_progress_bar",
        "false",
    )
    out = proc.stdout + proc.stderr
    assert "distributed_backend=gloo" in out and "Starting with 2 processes" in out
    assert "FSDPQwen2ForCausalLM" in out  # the model summary shows the fully_shard-ed class
    assert_ranks_in_sync(tmp_path)  # one model sharded over both ranks, not two copies

    ckpt_path = tmp_path / "lightning_logs" / "ntp_tiny" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == STEPS
    assert all(math.isfinite(v) for v in _logged_losses(tmp_path / "lightning_logs" / "ntp_tiny" / "version_0"))

    # The rank-0 checkpoint holds full (unsharded) weights: it rebuilds the model, and the HF directory ExportHF
    # gathered from the shards at the end of fit holds the same network.
    model, tokenizer = load_lm_source(str(ckpt_path))
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "lightning_logs" / "ntp_tiny" / "version_0" / "hf_model")
    ids = tokenizer("def f(xs):\n    return xs\n", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(exported.eval()(ids).logits, model.eval()(ids).logits)


def _logged_losses(log_dir: Path) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    losses = [e.value for e in acc.Scalars("train/loss")] + [e.value for e in acc.Scalars("val/loss")]
    assert len(losses) >= STEPS + 1, losses
    return losses
