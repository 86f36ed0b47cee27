"""The strategy guard: a multi-process fit either trains one model on every rank or is refused before it starts."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.rank_sync import RANK_WEIGHTS, assert_ranks_in_sync

from ra3_lightning.strategies import strategy_problem

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo"


def test_a_mesh_must_be_data_parallel_over_every_rank():
    # Lightning's "auto" on 8 GPUs of one node: 1 data-parallel x 8 tensor-parallel ranks -> refused
    problem = strategy_problem("ModelParallelStrategy", 8, True, {"data_parallel": 1, "tensor_parallel": 8})
    assert "data_parallel_size=1 x tensor_parallel_size=8" in problem and "configs/fsdp2.yaml" in problem
    # 2 nodes x 4 GPUs with data_parallel_size 4: half the ranks would hold copies -> refused
    assert strategy_problem("ModelParallelStrategy", 8, False, {"data_parallel": 4, "tensor_parallel": 2})
    assert strategy_problem("FSDP2Strategy", 8, True, {"data_parallel": 8, "tensor_parallel": 1}) is None


def test_other_strategies_only_for_automatic_optimisation_on_several_processes():
    assert "not supported" in strategy_problem("DDPStrategy", 2, True, None)  # E-step, RA3 EM, RLVR
    assert strategy_problem("DDPStrategy", 2, False, None) is None  # NTP: Lightning's own DDP path
    assert strategy_problem("SingleDeviceStrategy", 1, True, None) is None


def fit(tmp_path: Path, config: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    cmd = [sys.executable, "-m", "ra3_lightning.cli", "fit", "-c", str(DEMO / config), *args]
    cmd += ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.enable_progress_bar", "false"]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


TINY_NTP = ("--model.tiny.vocab_size", "300", "--data.max_length", "32", "--data.batch_size", "2")


@pytest.mark.timeout(300)
def test_model_parallel_auto_sizes_are_refused_on_two_processes(tmp_path, code_jsonl):
    """'auto' resolves to 1 x 2 (tensor parallel) on one node: two unsynchronised copies if it ran."""
    proc = fit(
        tmp_path, "ntp_tiny.yaml", *TINY_NTP, "--data.path", code_jsonl, "--model.tiny.tokenizer_corpus", code_jsonl,
        "--trainer.strategy", "lightning.pytorch.strategies.ModelParallelStrategy", "--trainer.max_steps", "2",
        "--trainer.strategy.save_distributed_checkpoint", "false",  # (an init arg makes the name a class, not a string)
    )  # fmt: skip
    assert proc.returncode != 0
    assert "data_parallel_size=1 x tensor_parallel_size=2" in proc.stderr, proc.stderr[-3000:]


@pytest.mark.timeout(300)
def test_ddp_is_refused_for_a_module_with_manual_optimisation(tmp_path, code_jsonl):
    proc = fit(
        tmp_path, "ra3_em_tiny.yaml", "--data.path", code_jsonl, "--model.tiny.tokenizer_corpus", code_jsonl,
        "--trainer.strategy", "ddp",
    )  # fmt: skip
    assert proc.returncode != 0
    assert "DDPStrategy on 2 processes is not supported" in proc.stderr, proc.stderr[-3000:]


@pytest.mark.timeout(300)
def test_the_estep_under_ddp_keeps_the_ranks_in_sync(tmp_path, code_jsonl):
    """The E-step optimises automatically (its loss goes through the DDP wrapper): Lightning's DDP path."""
    proc = fit(
        tmp_path, "estep_tiny.yaml", "--data.path", code_jsonl, "--model.tiny.tokenizer_corpus", code_jsonl,
        "--trainer.strategy", "ddp", "--trainer.max_steps", "2", *RANK_WEIGHTS,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_ranks_in_sync(tmp_path, sharded=False)


@pytest.mark.timeout(300)
def test_ntp_under_ddp_keeps_the_ranks_in_sync(tmp_path, code_jsonl):
    proc = fit(
        tmp_path, "ntp_tiny.yaml", *TINY_NTP, "--data.path", code_jsonl, "--model.tiny.tokenizer_corpus", code_jsonl,
        "--data.val_size", "8", "--trainer.strategy", "ddp", "--trainer.max_steps", "3", *RANK_WEIGHTS,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_ranks_in_sync(tmp_path, sharded=False)
