"""RLVR under ModelParallelStrategy (FSDP2) on 2 CPU processes (gloo) through the real CLI, with ranks that need
different numbers of decoding steps, and validation with an uneven number of tasks per rank whose samples end up
in one merged samples file.

Rank r generates at most ``max_new_tokens - 3 r`` tokens (:class:`RankSkewed`, with either backend), so rank 1
stops decoding while rank 0 still runs forward passes: with per-step all-gathers this would deadlock (the test's
timeout fails it); with the model unsharded once per rollout it completes.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist
from helpers.rank_sync import FSDP2_OVERLAY, RANK_WEIGHTS, assert_ranks_in_sync
from test_rlvr import write_solvable_tasks  # sibling test module (tests/ is on sys.path)

from ra3_lightning.generation import HFGenerate, KVSample

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo" / "rlvr_tiny.yaml"


class RankSkewed:
    """A backend mixin with a rank-dependent token budget: ranks finish decoding at different steps."""

    def generate(self, model, prompt_ids, prompt_mask, num_samples, max_new_tokens, eos_token_id, pad_token_id):
        rank = dist.get_rank() if dist.is_initialized() else 0
        budget = max_new_tokens - 3 * rank
        return super().generate(model, prompt_ids, prompt_mask, num_samples, budget, eos_token_id, pad_token_id)


class RankSkewedKVSample(RankSkewed, KVSample):
    pass


class RankSkewedHFGenerate(RankSkewed, HFGenerate):
    pass


# Rows per rank: 2 prompts x G = 16; prompts are 11 tokens. A budget of 48 tokens fits 2 rows of rank 0's 8-token
# completions but 3 of rank 1's 5-token ones: 8 vs 6 micro-batches, which rank 1 must split up to 8 (FSDP2's
# collectives need the same number of forward/backward passes on every rank, or the run hangs).
MICRO_BATCHES = {
    "RankSkewedKVSample": ("--model.micro_batch_size", "4"),
    "RankSkewedHFGenerate": ("--model.micro_batch_tokens", "48"),
}


@pytest.mark.parametrize("backend", list(MICRO_BATCHES))
def test_rlvr_fit_and_validate_on_two_fsdp2_cpu_processes(tmp_path, tiny_tokenizer, backend):
    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    tasks = write_solvable_tasks(tmp_path / "tasks.jsonl", n=8)
    val = write_solvable_tasks(tmp_path / "val.jsonl", n=3)  # 2 tasks on rank 0, 1 (+ a padding batch) on rank 1
    cmd = [
        *(
            sys.executable,
            "-m",
            "ra3_lightning.cli",
            "fit",
            "-c",
            str(DEMO),
            "--model.tokenizer",
            str(tmp_path / "tok"),
        ),
        *(
            "--model.tiny.hidden_size",
            "32",
            "--model.tiny.intermediate_size",
            "64",
            "--model.max_completion_length",
            "8",
        ),
        *("--model.generation", f"test_rlvr_fsdp2.{backend}", *MICRO_BATCHES[backend]),
        *("--model.loss.loss_type", "dapo", "--model.reward_fn.init_args.workers", "1"),
        *("--data.path", tasks, "--data.val_path", val, "--data.batch_size", "2", "--data.val_batch_size", "1"),
        *("--trainer.max_steps", "2", "--trainer.val_check_interval", "2", *FSDP2_OVERLAY),
        *("--trainer.enable_progress_bar", "false"),
        *("--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(tmp_path)),
        *("--trainer.callbacks", "[]", *RANK_WEIGHTS, "--trainer.enable_checkpointing", "false"),
        *("--model.evaluation.samples_path", str(tmp_path / "samples" / "{stage}_{step}.jsonl")),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "distributed_backend=gloo" in out and "FSDPQwen2ForCausalLM" in out
    assert_ranks_in_sync(tmp_path)  # one policy sharded over both ranks, not two
    rows = list(csv.DictReader(open(next(tmp_path.rglob("metrics.csv")))))
    assert sum(1 for r in rows if r.get("train/reward_mean")) == 2
    assert any(r.get("val/pass@1") for r in rows)
    assert any(r.get("val/completion_tokens") for r in rows)  # the diagnostics sync over both ranks too
    # one samples file, merged by rank 0 from both ranks' parts (deleted): every val task's 4 samples once, in order
    (samples,) = (tmp_path / "samples").iterdir()
    assert samples.name == "val_2.jsonl"
    ids = [json.loads(line)["task_id"] for line in samples.read_text().splitlines()]
    assert ids == [f"solvable/{i}" for i in range(3) for _ in range(4)]
