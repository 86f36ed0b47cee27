"""The evaluation component without RL: ``ra3 test -c configs/eval_humaneval.yaml`` scores an NTP checkpoint with a
config that names no RL knob (the plain ``CausalLMModule`` and its ``evaluation`` group); keys that moved into the
group fail with an error that names their new place."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from ra3_lightning.cli import main
from ra3_lightning.data.synthetic import load_split
from ra3_lightning.lightning_cli import RA3CLI
from ra3_lightning.modules import CausalLMModule

REPO = Path(__file__).resolve().parents[1]
EVAL_CONFIG = REPO / "configs" / "eval_humaneval.yaml"
RL_KNOBS = {"num_generations", "loss", "reward_fn", "generation", "format_reward", "optim", "max_completion_length"}


@pytest.fixture(scope="module")
def ntp_ckpt(tmp_path_factory, code_jsonl) -> Path:
    """A ``last.ckpt`` of one NTP step of the tiny demo model, written by ``ra3 fit``."""
    root = tmp_path_factory.mktemp("ntp_run")
    args = [
        "fit", "-c", str(REPO / "configs" / "demo" / "ntp_tiny.yaml"), "--data.path", code_jsonl,
        "--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--model.tiny.tokenizer_corpus", code_jsonl,
        "--model.tiny.vocab_size", "300", "--data.max_length", "64", "--data.max_records", "24",
        "--trainer.max_steps", "1", "--trainer.logger", "false",
    ]  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", sys.argv[:1])
        main(args)
    return root / "lightning_logs" / "ntp_tiny" / "checkpoints" / "last.ckpt"


def test_the_eval_config_names_no_rl_knob():
    model = yaml.safe_load(EVAL_CONFIG.read_text())["model"]
    assert model["class_path"] == "ra3_lightning.modules.base.CausalLMModule"
    assert not RL_KNOBS & set(model["init_args"]), "evaluation knobs belong in model.evaluation"


def test_ra3_test_scores_an_ntp_checkpoint(ntp_ckpt, tmp_path, monkeypatch):
    tasks = tmp_path / "tasks.jsonl"
    load_split("eval", n=3, seed=5).to_json(str(tasks))  # synthetic tasks: ground truth and its phrases included
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    cli = RA3CLI(
        args=[
            "test",
            "-c",
            str(EVAL_CONFIG),
            "--data.path",
            str(tasks),
            "--model.init_from",
            str(ntp_ckpt),
            "--model.evaluation.max_completion_length",
            "8",
            "--model.evaluation.num_samples",
            "2",
            "--model.evaluation.pass_at_k",
            "[1, 2]",
            "--model.evaluation.samples_path",
            "samples_{stage}.jsonl",
            "--model.evaluation.reward_fn.init_args.workers",
            "1",
            "--trainer.accelerator",
            "cpu",
            "--trainer.logger",
            "false",
            "--trainer.enable_progress_bar",
            "false",
        ]  # fmt: skip
    )
    assert type(cli.model) is CausalLMModule
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    assert 0.0 <= metrics["test/pass@1"] <= metrics["test/pass@2"] <= 1.0
    assert {"test/completion_tokens", "test/truncation_rate", "test/rationale_accuracy"} <= set(metrics)
    assert sum(v for k, v in metrics.items() if k.startswith("test/tasks_skills")) == 3
    samples = [json.loads(line) for line in open(tmp_path / "samples_test.jsonl")]
    assert len(samples) == 3 * 2 and all(s["num_tokens"] <= 8 for s in samples)
    assert metrics["test/pass@1"] == pytest.approx(sum(s["passed"] for s in samples) / 6)


def test_a_module_without_evaluation_says_what_to_give(tmp_path, tiny_tokenizer):
    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    from ra3_lightning.models import TinyLMConfig

    module = CausalLMModule(tiny=TinyLMConfig(hidden_size=32, intermediate_size=64), tokenizer=str(tmp_path / "tok"))
    with pytest.raises(ValueError, match="give model.evaluation"):
        module.test_step(None, 0)


@pytest.mark.parametrize(
    ("config", "old", "new"),
    [
        ("eval_humaneval.yaml", ["--model.max_completion_length", "8"], "model.evaluation.max_completion_length"),
        (
            "eval_humaneval.yaml",
            ["--model.reward_fn", "ra3_lightning.rewards.SandboxReward"],
            "model.evaluation.reward_fn",
        ),
        (
            "demo/rlvr_tiny.yaml",
            ["--model.val_generation", "ra3_lightning.generation.HFGenerate"],
            "model.evaluation.generation",
        ),
        (
            "demo/rlvr_tiny.yaml",
            ["--model.latent_format", "ra3_lightning.estep.LatentFormat"],
            "model.evaluation.latent_format",
        ),
    ],
)
def test_a_moved_key_fails_naming_its_new_place(config, old, new, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    with pytest.raises(SystemExit):
        main(["test", "-c", str(REPO / "configs" / config), *old, "--print_config"])
    err = capsys.readouterr().err
    assert err.count(f"'{old[0].removeprefix('--model.')}' moved: use {new}") == 1
