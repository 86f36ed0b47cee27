"""Export to a Hugging Face directory — `ra3 export CKPT OUT` and the ExportHF callback — loads and generates."""

from dataclasses import replace
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from transformers import AutoModelForCausalLM, AutoTokenizer

from ra3_lightning.callbacks import ExportHF
from ra3_lightning.cli import main
from ra3_lightning.data.traces import TraceDataModule
from ra3_lightning.models import TinyLMConfig
from ra3_lightning.modules.ntp import NTP_OPTIM, NTPModule

PROMPT = "def f3_total(xs):\n"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, code_jsonl) -> tuple[NTPModule, Path, Path]:
    """A tiny NTPModule after 3 steps, its last.ckpt and the directory ExportHF wrote."""
    root = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    module = NTPModule(
        tiny=TinyLMConfig(hidden_size=32, intermediate_size=64, vocab_size=300, tokenizer_corpus=code_jsonl),
        optim=replace(NTP_OPTIM, lr=1e-2, warmup_steps=0),
    )
    trainer = L.Trainer(
        max_steps=3,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        callbacks=[ModelCheckpoint(dirpath=root / "ckpt", save_last=True), ExportHF(dirpath=root / "callback")],
    )
    trainer.fit(module, TraceDataModule(code_jsonl, max_length=32, batch_size=4, val_size=0))
    return module, root / "ckpt" / "last.ckpt", root / "callback"


def assert_same_lm(module: NTPModule, out: Path) -> None:
    """``out`` loads with transformers, scores like the module's model, generates, and tokenizes alike."""
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    assert ids.tolist() == module.tokenizer(PROMPT, return_tensors="pt")["input_ids"].tolist()
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, module.model.eval()(ids).logits)
    generated = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert generated.shape == (1, ids.shape[1] + 6) or generated[0, -1] == tokenizer.eos_token_id
    assert tokenizer.decode(generated[0]).startswith(PROMPT)


def test_ra3_export_cli_writes_loadable_dir(trained, tmp_path):
    module, ckpt, _ = trained
    main(["export", str(ckpt), str(tmp_path / "hf")])
    assert_same_lm(module, tmp_path / "hf")


def test_export_callback_writes_loadable_dir(trained):
    module, _, callback_dir = trained
    assert_same_lm(module, callback_dir)


def test_export_callback_needs_causal_lm_module():
    with pytest.raises(TypeError, match="CausalLMModule"):
        ExportHF().setup(L.Trainer(logger=False), L.LightningModule(), "fit")
