"""A stage checkpoint stands alone: it rebuilds its LM from the config stored inside it (not from the chain of
``init_from`` paths it started from), and the trained LM is in train mode when ``fit`` starts.

An unusable checkpoint — empty, truncated, garbage, another stage's given to ``--ckpt_path``, a directory that is no
model given to ``init_from`` — ends ``ra3 fit`` / ``ra3 export`` with one line naming the path and what to give
instead, and exit status 1."""

import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from ra3_lightning.cli import main
from ra3_lightning.errors import CheckpointError
from ra3_lightning.lightning_cli import check_checkpoint_module
from ra3_lightning.models import TinyLMConfig
from ra3_lightning.modules.base import MODEL_CONFIG_KEY, load_lm_source
from ra3_lightning.modules.ntp import NTP_OPTIM, NTPModule


class _TrainMode(L.Callback):
    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        module.seen_training_mode = module.model.training


def _fit_one_step(module: NTPModule, tmp_path, ckpt: str) -> None:
    ids = torch.randint(3, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}
    trainer = L.Trainer(
        accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=str(tmp_path), callbacks=[_TrainMode()],
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=DataLoader([batch], batch_size=None))
    trainer.save_checkpoint(ckpt)


@pytest.fixture
def tiny_cfg(code_jsonl) -> TinyLMConfig:
    return TinyLMConfig(hidden_size=32, intermediate_size=64, vocab_size=300, tokenizer_corpus=code_jsonl)


def test_checkpoint_loads_elsewhere_after_its_parents_are_deleted(tiny_cfg, tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    monkeypatch.chdir(run)
    _fit_one_step(NTPModule(tiny=tiny_cfg, optim=replace(NTP_OPTIM, lr=1e-3)), tmp_path, "first.ckpt")
    second = NTPModule(
        init_from="first.ckpt", optim=replace(NTP_OPTIM, lr=1e-3)
    )  # relative, as the demo's stages write it
    _fit_one_step(second, tmp_path, "second.ckpt")
    assert MODEL_CONFIG_KEY in torch.load("second.ckpt", map_location="cpu", weights_only=False)

    os.remove(run / "first.ckpt")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    model, tokenizer = load_lm_source(str(run / "second.ckpt"))
    expected = {k: v.detach() for k, v in second.model.state_dict().items()}
    assert model.state_dict().keys() == expected.keys()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0)
    assert len(tokenizer) == len(second.tokenizer)
    third = NTPModule(init_from=str(run / "second.ckpt"))
    third.configure_model()
    torch.testing.assert_close(third.model.lm_head.weight, expected["lm_head.weight"], rtol=0, atol=0)


def test_hf_directory_model_trains_in_train_mode(tiny_cfg, tmp_path):
    module = NTPModule(tiny=tiny_cfg)
    module.configure_model()
    hf_dir = module.export_hf(tmp_path / "hf")  # from_pretrained returns a model in eval mode
    loaded = NTPModule(init_from=str(hf_dir), optim=replace(NTP_OPTIM, lr=1e-3))
    _fit_one_step(loaded, tmp_path, str(tmp_path / "from_hf.ckpt"))
    assert loaded.seen_training_mode is True


# ------------------------------------------------------------------ unusable checkpoints: one line, exit status 1

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ntp_ckpt(tmp_path_factory, code_jsonl) -> Path:
    """A ``last.ckpt`` of one NTP step written by ``ra3 fit`` (so its hyper-parameters name ``NTPModule``)."""
    root = tmp_path_factory.mktemp("ntp_run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", sys.argv[:1])
        main([*_ntp_fit(code_jsonl, root), "--trainer.max_steps", "1", "--trainer.logger", "false"])
    return root / "lightning_logs" / "ntp_tiny" / "checkpoints" / "last.ckpt"


def _ntp_fit(code_jsonl: str, root: Path) -> list[str]:
    return [
        "fit", "-c", str(REPO / "configs" / "demo" / "ntp_tiny.yaml"), "--data.path", code_jsonl,
        "--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--model.tiny.tokenizer_corpus", code_jsonl,
        "--model.tiny.vocab_size", "300", "--data.max_length", "64", "--data.max_records", "24",
    ]  # fmt: skip


def _unusable(kind: str, good: Path, directory: Path) -> Path:
    path = directory / f"{kind}.ckpt"
    data = {"empty": b"", "garbage": b"not a checkpoint\n", "truncated": good.read_bytes()[: good.stat().st_size // 2]}
    path.write_bytes(data[kind])
    return path


@pytest.mark.parametrize("kind", ["empty", "garbage", "truncated"])
@pytest.mark.parametrize("given_as", ["ckpt_path", "init_from", "export"])
def test_unreadable_checkpoint_is_named_without_torch_advice(tmp_path, ntp_ckpt, code_jsonl, kind, given_as, capsys):
    shutil.copy(ntp_ckpt, tmp_path / "epoch=0-step=1.ckpt")
    bad = _unusable(kind, ntp_ckpt, tmp_path)
    argv = {
        "ckpt_path": [*_ntp_fit(code_jsonl, tmp_path / "run"), "--ckpt_path", str(bad)],
        "init_from": [*_ntp_fit(code_jsonl, tmp_path / "run"), "--model.tiny", "null", "--model.init_from", str(bad)],
        "export": ["export", str(bad), str(tmp_path / "hf")],
    }[given_as]
    with pytest.MonkeyPatch.context() as mp, pytest.raises(SystemExit) as exit_info:
        mp.setattr(sys, "argv", sys.argv[:1])
        mp.delenv("RA3_DEBUG", raising=False)
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 1
    assert f"error: {bad}: not a readable checkpoint (" in err
    assert f"the newest readable checkpoint beside it is {tmp_path / 'epoch=0-step=1.ckpt'}" in err
    assert "weights_only" not in err and "Traceback" not in err
    assert not (tmp_path / "hf").exists() and not list((tmp_path / "run").rglob("*.ckpt"))


def test_init_from_a_directory_that_is_no_model_says_what_is_expected(tmp_path, code_jsonl, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    monkeypatch.delenv("RA3_DEBUG", raising=False)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "README.md").write_text("not a model\n")
    with pytest.raises(SystemExit) as exit_info:
        main([*_ntp_fit(code_jsonl, tmp_path / "run"), "--model.tiny", "null", "--model.init_from", str(notes)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1
    assert f"error: {notes}: not a Hugging Face model directory (no config.json, no weights, no tokenizer files" in err
    assert "it holds: README.md" in err and "a .ckpt written by an ra3 stage" in err
    assert "Union" not in err and "sentencepiece" not in err


def test_ckpt_path_of_another_stage_names_both_modules_and_init_from(ntp_ckpt, tmp_path):
    """An NTP checkpoint resumed under the RA3 EM config: Lightning would switch the model class to NTPModule and
    fail later inside the EM scheduler; the CLI stops first and says how to start a stage from it."""
    argv = ["fit", "-c", str(REPO / "configs" / "demo" / "ra3_em_tiny.yaml"), "--ckpt_path", str(ntp_ckpt),
            "--trainer.default_root_dir", str(tmp_path)]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "ra3_lightning.cli", *argv], capture_output=True, text=True, timeout=300,
        env={**os.environ, "RA3_DEBUG": ""},
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert f"error: {ntp_ckpt}: written by ra3_lightning.modules.ntp.NTPModule, but the config trains " in proc.stderr
    assert "RA3Module" in proc.stderr and f"--model.init_from {ntp_ckpt}" in proc.stderr
    assert "Traceback" not in proc.stderr and not list(tmp_path.rglob("*"))


def test_module_check_compares_classes_not_spellings():
    check_checkpoint_module("a.ckpt", "ra3_lightning.modules.ra3.RA3Module", "ra3_lightning.modules.RA3Module")
    check_checkpoint_module("a.ckpt", None, "ra3_lightning.modules.RA3Module")  # not written by the CLI: no check
    with pytest.raises(CheckpointError, match="written by ra3_lightning.modules.ntp.NTPModule"):
        check_checkpoint_module("a.ckpt", "ra3_lightning.modules.ntp.NTPModule", "ra3_lightning.modules.RA3Module")
