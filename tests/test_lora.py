"""LoRA (``lora:``): the merge math by hand and against PEFT, adapter-off ``π`` / reference without a second copy,
only adapters train, checkpoints and export merge, RA3's EM loop with LoRA through the CLI."""

from __future__ import annotations

import copy
from dataclasses import replace

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from ra3_lightning.cli import export_main
from ra3_lightning.lora import (
    AdapterOff,
    LoRASpec,
    apply_lora,
    lora_layers,
    merge_into_base,
    merged_state_dict,
    reset_adapter,
    trainable_and_total,
)
from ra3_lightning.models import TinyLMConfig
from ra3_lightning.modules.base import load_lm_source
from ra3_lightning.modules.ntp import NTP_OPTIM, NTPModule
from ra3_lightning.optim import Optim
from ra3_lightning.rl.config import PolicyLoss

IDS = torch.randint(3, 200, (2, 12), generator=torch.Generator().manual_seed(0))


def logits(model, ids=IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def perturb_adapters(model, seed: int = 1) -> None:
    """Non-zero ``B`` everywhere (a fresh adapter is the identity, which would hide merge mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model):
            b = layer.lora_B["default"].weight
            b.copy_(torch.randn(b.shape, generator=g) * 0.1)


@pytest.fixture
def lora_lm(tiny_lm):
    model = apply_lora(copy.deepcopy(tiny_lm), LoRASpec(r=2, alpha=6.0))
    perturb_adapters(model)
    return model


def test_merge_of_one_layer_by_hand():
    """``W + (alpha/r) · B A`` on numbers worked out by hand: r = 1, alpha = 2, so s = 2."""
    state = {
        "base_model.model.fc.base_layer.weight": torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
        "base_model.model.fc.base_layer.bias": torch.tensor([0.5, -0.5]),
        "base_model.model.fc.lora_A.default.weight": torch.tensor([[1.0, 2.0]]),  # [r=1, in=2]
        "base_model.model.fc.lora_B.default.weight": torch.tensor([[3.0], [-1.0]]),  # [out=2, r=1]
    }
    merged = merged_state_dict(state, scaling=LoRASpec(r=1, alpha=2.0).scaling)
    # B A = [[3, 6], [-1, -2]]; W + 2 · B A = [[7, 12], [-2, -3]]
    assert set(merged) == {"fc.weight", "fc.bias"}
    torch.testing.assert_close(merged["fc.weight"], torch.tensor([[7.0, 12.0], [-2.0, -3.0]]))
    torch.testing.assert_close(merged["fc.bias"], torch.tensor([0.5, -0.5]))


def test_merged_state_dict_matches_peft_merge_and_unload(lora_lm, tiny_lm):
    ours = merged_state_dict(lora_lm.state_dict(), LoRASpec(r=2, alpha=6.0).scaling)
    theirs = copy.deepcopy(lora_lm).merge_and_unload().state_dict()
    assert ours.keys() == theirs.keys() == tiny_lm.state_dict().keys()
    for key, value in theirs.items():
        torch.testing.assert_close(ours[key], value, msg=key)
    plain = copy.deepcopy(tiny_lm)
    plain.load_state_dict(ours)
    torch.testing.assert_close(logits(plain), logits(lora_lm))


def test_merge_into_base_keeps_the_function_and_zeroes_the_adapter(lora_lm, tiny_lm):
    before = logits(lora_lm)
    assert not torch.allclose(before, logits(tiny_lm))  # the perturbed adapter does something
    merge_into_base(lora_lm)
    torch.testing.assert_close(logits(lora_lm), before, atol=1e-5, rtol=1e-5)
    assert all(layer.lora_B["default"].weight.abs().max() == 0 for layer in lora_layers(lora_lm))
    torch.testing.assert_close(logits(AdapterOff(lora_lm)), before, atol=1e-5, rtol=1e-5)  # the base is M_k now


def test_adapter_off_is_the_base_model_without_a_copy(lora_lm, tiny_lm):
    off = AdapterOff(lora_lm)
    lora_lm.train()
    torch.testing.assert_close(logits(off), logits(tiny_lm))
    assert lora_lm.training  # mode restored
    out = off(input_ids=IDS).logits
    assert not out.requires_grad  # frozen by definition
    assert {id(p) for p in off.parameters()} == {id(p) for p in lora_lm.parameters()}  # the same tensors
    reset_adapter(lora_lm)
    torch.testing.assert_close(logits(lora_lm), logits(tiny_lm))  # a reset adapter is the base again


def test_spec_rejects_bad_values():
    for bad in ({"r": 0}, {"alpha": 0.0}, {"dropout": 1.0}, {"target_modules": ["lm_head"]}, {"target_modules": []}):
        with pytest.raises(ValueError, match="lora"):
            LoRASpec(**bad)


# --------------------------------------------------------------------------------------------- modules
@pytest.fixture
def tiny_cfg(code_jsonl) -> TinyLMConfig:
    return TinyLMConfig(hidden_size=32, intermediate_size=64, vocab_size=300, tokenizer_corpus=code_jsonl)


def fit_steps(module: L.LightningModule, tmp_path, steps: int = 2) -> L.Trainer:
    batch = {"input_ids": IDS, "labels": IDS.clone(), "attention_mask": torch.ones_like(IDS)}
    trainer = L.Trainer(
        accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=str(tmp_path),
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=DataLoader([batch] * steps, batch_size=None))
    return trainer


def test_ntp_with_lora_trains_only_adapters_and_its_checkpoint_loads_merged(tiny_cfg, tmp_path):
    from transformers import AutoModelForCausalLM

    module = NTPModule(tiny=tiny_cfg, optim=replace(NTP_OPTIM, lr=1e-2), lora=LoRASpec(r=4, alpha=8.0))
    module.configure_model()
    base_before = {k: v.clone() for k, v in module.model.state_dict().items() if "lora_" not in k}
    adapters_before = {k: v.clone() for k, v in module.model.state_dict().items() if "lora_B" in k}
    trainable, total = trainable_and_total(module.model)
    assert 0 < trainable < total / 5
    trainer = fit_steps(module, tmp_path)
    after = module.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in base_before.items())  # the base weights are frozen
    assert any(not torch.equal(after[k], v) for k, v in adapters_before.items())  # the adapters trained

    ckpt = tmp_path / "lora.ckpt"
    trainer.save_checkpoint(str(ckpt))
    plain, _ = load_lm_source(str(ckpt))  # a plain architecture with the adapter merged in
    assert not any("lora" in k for k in plain.state_dict())
    torch.testing.assert_close(logits(plain.eval()), logits(module.model.eval()), atol=1e-5, rtol=1e-5)

    out = module.export_hf(tmp_path / "hf")
    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    torch.testing.assert_close(logits(exported), logits(module.model), atol=1e-5, rtol=1e-5)
    export_main([str(ckpt), str(tmp_path / "cli_export")])  # `ra3 export CKPT DIR`: merged too, no PEFT to load it
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "cli_export").eval()
    torch.testing.assert_close(logits(exported), logits(module.model), atol=1e-5, rtol=1e-5)

    chained = NTPModule(init_from=str(ckpt), lora=LoRASpec(r=2))  # the next stage: a fresh adapter on merged weights
    chained.configure_model()
    torch.testing.assert_close(logits(chained.model.eval()), logits(plain), atol=1e-5, rtol=1e-5)


def test_latent_policy_with_lora_has_no_second_copy_of_pi(tiny_cfg):
    from ra3_lightning.modules.latent_policy import LatentPolicyModule

    full = LatentPolicyModule(tiny=tiny_cfg)
    full.configure_model()
    lora = LatentPolicyModule(tiny=tiny_cfg, lora=LoRASpec(r=4))
    lora.configure_model()
    assert any(k.startswith("pi.") for k in full.state_dict())
    assert isinstance(lora.pi, AdapterOff) and not any(k.startswith("pi.") for k in lora.state_dict())
    size = lambda m: sum(v.numel() for v in m.state_dict().values())  # noqa: E731
    assert size(lora) < 0.6 * size(full)  # one copy of the base weights (+ small adapters) instead of two


def test_rlvr_reference_with_lora_is_the_adapter_off_policy(tiny_cfg):
    from ra3_lightning.modules.rlvr import RLVRModule

    module = RLVRModule(tiny=tiny_cfg, loss=PolicyLoss(beta=0.1), lora=LoRASpec(r=4))
    module.configure_model()
    assert isinstance(module.ref_model, AdapterOff) and module.ref_model.model is module.model
    perturb_adapters(module.model)
    reference = logits(module.ref_model)
    with module.model.disable_adapter():
        torch.testing.assert_close(reference, logits(module.model))
    assert not torch.allclose(reference, logits(module.model))


def test_rlvr_fit_with_lora_and_a_kl_reference(tmp_path, tiny_tokenizer):
    """Generation, the chunked log-prob pass, the adapter-off reference and the update, end to end with LoRA."""
    from test_rlvr import TINY, fixed_reward, write_solvable_tasks

    from ra3_lightning.data.task_data import TaskDataModule
    from ra3_lightning.modules.rlvr import RLVRModule

    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    tasks = write_solvable_tasks(tmp_path / "tasks.jsonl", n=4)
    module = RLVRModule(
        tiny=TINY, tokenizer=str(tmp_path / "tok"), num_generations=4, max_completion_length=6, reward_fn=fixed_reward,
        loss=PolicyLoss(beta=0.1), optim=Optim(lr=1e-2, max_grad_norm=1.0), log_samples_every_n_steps=0,
        lora=LoRASpec(r=4, alpha=8.0),
    )  # fmt: skip
    data = TaskDataModule(tasks, batch_size=2, prompt_template="plain")
    trainer = L.Trainer(
        max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
    )  # fmt: skip
    module.configure_model()
    base = {k: v.clone() for k, v in module.model.state_dict().items() if "lora_" not in k}
    trainer.fit(module, data)
    assert trainer.global_step == 2 and isinstance(module.ref_model, AdapterOff)
    after = module.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in base.items())  # only the adapters moved
    assert any(layer.lora_B["default"].weight.abs().max() > 0 for layer in lora_layers(module.model))
