"""`ra3 fit ... --ckpt_path last` resumes exactly: N steps straight == N/2 steps, stop, resume for N/2 more.

The stopped run shares the straight run's LR schedule (``--model.optim.total_steps N``): it plays a run of N steps
killed after N/2. "Exactly" holds at epoch granularity, as Lightning resumes a map-style DataLoader: the stop falls on
an epoch boundary and the shuffle order depends only on (seed, epoch) (``EpochSeededSampler``), so the resumed run sees
the same batches. Weights, AdamW moments, the LR schedule, global step and epoch must all match the straight run.
The demo config's ``ResumableCheckpoint`` matters here: with a plain ``ModelCheckpoint`` the last.ckpt written in
``on_train_end`` resumes one epoch too far (see callbacks/checkpoint.py).

A killed save never breaks a checkpoint (``AtomicCheckpointIO`` writes beside the target and renames; nothing goes
through ``$TMPDIR``), and ``--ckpt_path last`` with an unreadable last.ckpt resumes from the newest readable
checkpoint beside it, or fails naming the file.
"""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ra3_lightning.callbacks.checkpoint import readable_or_fallback
from ra3_lightning.checkpoint_io import AtomicCheckpointIO, read_checkpoint
from ra3_lightning.cli import RA3CLI
from ra3_lightning.errors import CheckpointError

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


# ------------------------------------------------------------------ a killed save, an unreadable last.ckpt


def test_resume_from_an_unreadable_last_falls_back_to_the_newest_readable_checkpoint(code_jsonl, tmp_path):
    """A 0-byte last.ckpt (what a save killed mid-copy left before saves were atomic) beside a readable step
    checkpoint: `--ckpt_path last` resumes from the step checkpoint, with a warning naming both."""
    half = fit(tmp_path, code_jsonl, N // 2)
    assert isinstance(half.trainer.strategy.checkpoint_io, AtomicCheckpointIO)  # RA3CLI's trainers save atomically
    checkpoints = tmp_path / "lightning_logs" / "ntp_tiny" / "checkpoints"
    step = checkpoints / f"epoch=0-step={N // 2}.ckpt"
    shutil.copy(checkpoints / "last.ckpt", step)
    (checkpoints / "last.ckpt").write_bytes(b"")
    with pytest.warns(
        UserWarning, match=rf"last\.ckpt is not a readable checkpoint \(the file is empty.*resuming from {step}"
    ):
        resumed = fit(tmp_path, code_jsonl, N, "--ckpt_path", "last")
    assert resumed.trainer.ckpt_path == str(step) and resumed.trainer.global_step == N
    assert read_checkpoint(checkpoints / "last.ckpt")["global_step"] == N  # written again, whole


def test_unreadable_last_without_a_readable_neighbour_fails_naming_it(tmp_path):
    last = tmp_path / "last.ckpt"
    last.write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(CheckpointError, match=rf"{last}: not a readable checkpoint \(not a zip archive.*no other"):
        readable_or_fallback(str(last))


def test_atomic_save_writes_beside_the_target_and_never_in_tmpdir(tmp_path, monkeypatch):
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    monkeypatch.setattr("tempfile.tempdir", None)  # re-read TMPDIR
    target = tmp_path / "ckpts" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1}, target)

    def killed_midway(obj, f):
        f.write(b"PK partial bytes")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2}, target)
    assert io.load_checkpoint(target)["step"] == 1  # the old checkpoint, whole
    assert os.listdir(target.parent) == ["last.ckpt"] and not [p for p in tmpdir.iterdir() if p.is_file()]


def test_a_kill_during_saves_leaves_a_readable_checkpoint_and_no_temporary_file(tmp_path):
    tmpdir, target = tmp_path / "tmpdir", tmp_path / "ckpts" / "last.ckpt"
    tmpdir.mkdir()
    saver = (
        "import sys, torch\n"
        "from ra3_lightning.checkpoint_io import AtomicCheckpointIO\n"
        "io, weights = AtomicCheckpointIO(), torch.randn(4_000_000)  # 16 MB: a save takes a while\n"
        "for step in range(10_000):\n"
        "    io.save_checkpoint({'step': step, 'weights': weights}, sys.argv[1])\n"
        "    print(step, flush=True)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", saver, str(target)], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "TMPDIR": str(tmpdir)},
    )  # fmt: skip
    try:
        for _ in range(3):  # three saves done, the fourth under way
            assert proc.stdout.readline(), "the saver died"
        time.sleep(0.02)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    assert read_checkpoint(target)["step"] >= 2
    assert not [p for p in tmpdir.iterdir() if p.is_file()]  # (torch may create its compile-cache folder there)
    AtomicCheckpointIO().save_checkpoint({"step": -1}, target)  # the next save clears a killed save's leftover
    assert os.listdir(target.parent) == ["last.ckpt"]
