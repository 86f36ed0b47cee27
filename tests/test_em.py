"""RA3's EM loop end to end on CPU: phase order, per-iteration data and logs, kill-and-resume, FSDP2.

All runs use ``configs/demo/ra3_em_tiny.yaml`` shrunk further (2 iterations × (2 E + 2 M) steps, 8 traces per
iteration, annotation shards of 3 records).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
import yaml
from helpers.rank_sync import FSDP2_OVERLAY, RANK_WEIGHTS, assert_ranks_in_sync

from ra3_lightning.cli import RA3CLI
from ra3_lightning.estep import strip_rationales

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo" / "ra3_em_tiny.yaml"
STEPS = 8  # 2 iterations x (2 E-steps + 2 M-steps)


def tiny_em_config(tmp_path: Path, **callbacks_extra) -> Path:
    cfg = yaml.safe_load(DEMO.read_text())
    cfg["trainer"].update(max_steps=STEPS, enable_progress_bar=False, enable_model_summary=False)
    cfg["trainer"]["logger"]["init_args"].update(save_dir=str(tmp_path / "logs"), version=0)
    scheduler, checkpoint = cfg["trainer"]["callbacks"]
    scheduler["init_args"].update(iterations=2, e_steps=2, m_steps=2)
    checkpoint["init_args"].update(dirpath=str(tmp_path / "ckpt"), every_n_train_steps=1)
    model = cfg["model"]["init_args"]
    model["tiny"] = yaml.safe_load((DEMO.parent / model["tiny"]).read_text())  # the shared tiny_lm.yaml, smaller
    model["tiny"].update(
        hidden_size=32, intermediate_size=64, vocab_size=400, tokenizer_corpus="synthetic:pretrain?n=200"
    )
    model.update(num_generations=2)
    model["latent"] = {**model["latent"], "max_latent_tokens": 4}
    model["annotation"] = {**model["annotation"], "shard_size": 3, "batch_size": 4}
    model.update(work_dir=str(tmp_path / "em"), log_samples_every_n_steps=1)
    cfg["data"]["init_args"].update(
        path="synthetic:midtrain?n=40&seed=0", records_per_iteration=8, e_batch_size=2, m_batch_size=2,
        max_length=128, val_size=4,
    )  # fmt: skip
    path = tmp_path / "em.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def annotated(tmp_path: Path, iteration: int) -> datasets.Dataset:
    return datasets.load_from_disk(str(tmp_path / "em" / f"iter_{iteration}" / "rank_0" / "data"))


def scalars(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_two_em_iterations_through_the_cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = RA3CLI(args=["fit", "-c", str(tiny_em_config(tmp_path))])
    assert cli.trainer.global_step == STEPS
    log_dir = tmp_path / "logs" / "ra3_em_tiny" / "version_0"

    # phase order, one value per step: E E M M | E E M M
    assert [v for _, v in scalars(log_dir, "em/phase_is_m")] == [0, 0, 1, 1, 0, 0, 1, 1]
    assert [v for _, v in scalars(log_dir, "em/iteration")] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert [s for s, _ in scalars(log_dir, "mstep/loss")] == [2, 3, 6, 7]  # M-step metrics only on M-steps
    assert [s for s, _ in scalars(log_dir, "estep/think_rate")] == [0, 1, 4, 5]
    # per-iteration summaries, indexed by EM iteration
    assert [s for s, _ in scalars(log_dir, "em_iteration/elbo_per_line")] == [0, 1]
    assert [s for s, _ in scalars(log_dir, "em_iteration/raw_val_loss")] == [0, 1]
    # where the time went, running totals per iteration: every part took time, and the totals only grow
    parts = ("estep", "estep/rollout", "estep/score", "estep/policy_forward", "annotation", "annotation/sample",
             "annotation/score", "annotation/plain", "annotation/write", "mstep", "raw_val_loss")  # fmt: skip
    for part in parts:
        (s0, t0), (s1, t1) = scalars(log_dir, f"timing_s/{part}")
        assert (s0, s1) == (0, 1) and 0 < t0 <= t1, part
    (_, e), (_, rollout), (_, score), (_, policy) = (
        scalars(log_dir, f"timing_s/{p}")[1] for p in ("estep", "estep/rollout", "estep/score", "estep/policy_forward")
    )
    assert rollout + score + policy < e  # the parts of an E-step lie inside it

    # each M-phase trained on the annotation of its own iteration, which covers that iteration's records once
    data, tokenizer = cli.datamodule, cli.model.tokenizer
    for k in (0, 1):
        ann = annotated(tmp_path, k)
        expected = data.iteration_records(k)
        assert sorted(ann["id"]) == sorted(r["id"] for r in expected)
        assert [strip_rationales(t, s) for t, s in zip(ann["text"], ann["rationale_spans"], strict=True)] == [
            {r["id"]: r["text"] for r in expected}[i] for i in ann["id"]
        ]
        tokens = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) + 1 for t in ann["text"])
        assert sum(len(b["input_ids"]) for b in data.m_blocks[k]) == tokens
    assert set(annotated(tmp_path, 0)["id"]) != set(annotated(tmp_path, 1)["id"])


FSDP2 = (*FSDP2_OVERLAY, *RANK_WEIGHTS)  # configs/fsdp2.yaml on 2 CPU processes, and each rank's weight digest
LORA = ("--model.init_args.lora.r", "4", "--model.init_args.lora.alpha", "8")


def run_fit(tmp_path: Path, config: Path, *extra: str, kill: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests"), "OMP_NUM_THREADS": "1"}
    env.pop("RA3_TEST_KILL", None)
    if kill:
        env["RA3_TEST_KILL"] = kill
    cmd = [sys.executable, "-m", "ra3_lightning.cli", "fit", "-c", str(config), *extra]
    cmd += ["--model.class_path", "helpers.em_faults.KillingRA3Module"]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def final_state(tmp_path: Path) -> tuple[int, dict[str, torch.Tensor]]:
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=False)
    return ckpt["global_step"], {k: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_killed_runs_resume_exactly(tmp_path, lora):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    straight.mkdir(), killed.mkdir()
    extra = LORA if lora else ()
    proc = run_fit(straight, tiny_em_config(straight), *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]

    config = tiny_em_config(killed)
    # 1) SIGKILL in iteration 1's annotation pass, after its first shard is on disk
    proc = run_fit(killed, config, *extra, kill="annotate:1:1")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    shards = sorted((killed / "em" / "iter_1" / "rank_0" / "_shards").glob("shard-*"))
    assert len(shards) == 1 and not (killed / "em" / "iter_1" / "rank_0" / "data").exists()
    # 2) resume; SIGKILL again at iteration 1's second M-step
    proc = run_fit(killed, config, *extra, "--ckpt_path", "last", kill="m:1:1")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    # 3) resume to the end
    proc = run_fit(killed, config, *extra, "--ckpt_path", "last")
    assert proc.returncode == 0, proc.stderr[-3000:]

    for k in (0, 1):  # every record exactly once, and the very annotations an uninterrupted run wrote
        ref, got = annotated(straight, k), annotated(killed, k)
        assert len(set(got["id"])) == len(got) == len(ref)
        assert sorted(zip(got["id"], got["text"], strict=True)) == sorted(zip(ref["id"], ref["text"], strict=True))
    (step_ref, weights_ref), (step, weights) = final_state(straight), final_state(killed)
    assert step == step_ref == STEPS
    for name, value in weights_ref.items():
        torch.testing.assert_close(weights[name], value, msg=name)


def param_bytes(tmp_path: Path) -> list[dict[str, int]]:
    """Per rank, the parameter bytes of ``q`` and ``π`` at fit start (written by ``KillingRA3Module``)."""
    return [json.loads(p.read_text()) for p in sorted((tmp_path / "em").glob("param_bytes_rank*.json"))]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_em_on_two_cpu_processes_with_fsdp2(tmp_path, lora):
    proc = run_fit(tmp_path, tiny_em_config(tmp_path), *FSDP2, *(LORA if lora else ()))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "distributed_backend=gloo" in proc.stdout + proc.stderr
    assert_ranks_in_sync(tmp_path)
    ranks = param_bytes(tmp_path)
    assert len(ranks) == 2
    total = {key: ranks[0][key] + ranks[1][key] for key in ("q", "pi")}
    for r in ranks:  # q and π are both sharded: each rank holds about half of each (LoRA: π has no bytes of its own)
        assert 0.4 < r["q"] / total["q"] < 0.6
        if lora:
            assert r["pi"] == 0
        else:
            assert 0.4 < r["pi"] / total["pi"] < 0.6
    for k in (0, 1):  # both ranks annotated their stride; together every record of the iteration once
        ids = [
            i
            for r in (0, 1)
            for i in datasets.load_from_disk(str(tmp_path / "em" / f"iter_{k}" / f"rank_{r}" / "data"))["id"]
        ]
        assert len(ids) == len(set(ids)) == 8
    step, weights = final_state(tmp_path)
    assert step == STEPS
    adapters = [v for k, v in weights.items() if "lora_B" in k]
    assert bool(adapters) == lora and all(v.abs().max() == 0 for v in adapters)  # the last M-phase was merged


def test_ra3_rejects_q_schedule_knobs_it_would_ignore():
    from ra3_lightning.modules import RA3Module
    from ra3_lightning.optim import Optim

    with pytest.raises(ValueError, match=r"constant LR.*warmup_steps, min_lr_ratio or total_steps"):
        RA3Module(optim=Optim(lr=1e-5, warmup_steps=5, min_lr_ratio=0.1))
    with pytest.raises(ValueError, match="m_optim.total_steps=9"):
        RA3Module(m_optim=Optim(total_steps=9))
