"""A stage checkpoint stands alone: it rebuilds its LM from the config stored inside it (not from the chain of
``init_from`` paths it started from), and the trained LM is in train mode when ``fit`` starts."""

import os
from dataclasses import replace

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

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
