"""`ra3 fit ... --ckpt_path last` resumes exactly: N steps straight == N/2 steps, stop, resume for N/2 more.

The stopped run shares the straight run's LR schedule (``--model.optim.total_steps N``): it plays a run of N steps
killed after N/2. "Exactly" holds at epoch granularity, as Lightning resumes a map-style DataLoader: the stop falls on
an epoch boundary and the shuffle order depends only on (seed, epoch) (``EpochSeededSampler``), so the resumed run sees
the same batches. Weights, AdamW moments, the LR schedule, global step and epoch must all match the straight run.
The demo config's ``ResumableCheckpoint`` matters here: with a plain ``ModelCheckpoint`` the last.ckpt written in
``on_train_end`` resumes one epoch too far (see callbacks/checkpoint.py).
"""

import os
from pathlib import Path

import torch

from ra3_lightning.cli import RA3CLI

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo" / "ntp_tiny.yaml"
BATCHES_PER_EPOCH = 4  # 18 records - 2 for validation = 16 documents, unpacked, 4 per batch
N = 2 * BATCHES_PER_EPOCH


def fit(cwd: Path, code_jsonl: str, max_steps: int, *extra: str) -> RA3CLI:
    args = [
        "fit", "-c", str(DEMO), "--trainer.max_steps", str(max_steps), "--trainer.enable_progress_bar", "false",
        "--trainer.val_check_interval", str(BATCHES_PER_EPOCH), "--trainer.enable_model_summary", "false",
        "--data.path", code_jsonl, "--data.max_records", "18", "--data.val_size", "2", "--data.packing", "false",
        "--data.batch_size", "4", "--data.max_length", "128", "--model.tiny.tokenizer_corpus", code_jsonl,
        "--model.tiny.vocab_size", "300", "--model.optim.warmup_steps", "3", "--model.optim.total_steps", str(N),
        *extra,
    ]  # fmt: skip
    old = Path.cwd()
    try:
        os.chdir(cwd)
        return RA3CLI(args=args)
    finally:
        os.chdir(old)


def state(cli: RA3CLI) -> dict:
    trainer = cli.trainer
    optimizer = trainer.optimizers[0]
    return {
        "global_step": trainer.global_step,
        "epoch": trainer.current_epoch,
        "lr": trainer.lr_scheduler_configs[0].scheduler.get_last_lr(),
        "weights": {k: v.detach().clone() for k, v in cli.model.model.state_dict().items()},
        "exp_avg": [optimizer.state[p]["exp_avg"].clone() for g in optimizer.param_groups for p in g["params"]],
        "exp_avg_sq": [optimizer.state[p]["exp_avg_sq"].clone() for g in optimizer.param_groups for p in g["params"]],
    }


def test_stop_and_resume_matches_straight_run(code_jsonl, tmp_path):
    (tmp_path / "straight").mkdir()
    (tmp_path / "stopped").mkdir()
    straight = state(fit(tmp_path / "straight", code_jsonl, N))
    half = fit(tmp_path / "stopped", code_jsonl, N // 2)
    assert half.trainer.global_step == N // 2 and half.trainer.num_training_batches == BATCHES_PER_EPOCH
    half_weights = {k: v.detach().clone() for k, v in half.model.model.state_dict().items()}
    resumed_cli = fit(tmp_path / "stopped", code_jsonl, N, "--ckpt_path", "last")
    resumed = state(resumed_cli)

    assert resumed_cli.trainer.ckpt_path.endswith("last.ckpt")  # `last` was found and loaded
    assert resumed["global_step"] == straight["global_step"] == N
    assert resumed["epoch"] == straight["epoch"]
    assert resumed["lr"] == straight["lr"]
    for name, w in straight["weights"].items():
        assert not torch.equal(w, half_weights[name]) or "norm" in name  # training moved on after the stop
        torch.testing.assert_close(resumed["weights"][name], w, rtol=0, atol=1e-6, msg=name)
    moments = zip(resumed["exp_avg"] + resumed["exp_avg_sq"], straight["exp_avg"] + straight["exp_avg_sq"], strict=True)
    for a, b in moments:
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)
