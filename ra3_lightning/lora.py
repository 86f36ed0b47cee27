"""LoRA adapters (PEFT) for every stage: only the adapters train, and the frozen model a stage compares against —
the E-step's ``π``, RLVR's reference — is the same base weights with the adapter switched off, not a second copy.

* :class:`LoRASpec` — the ``lora:`` group of every module (rank, alpha, dropout, target modules).
* :func:`apply_lora` — wrap a causal LM with one LoRA adapter; its base weights are frozen.
* :class:`AdapterOff` — the wrapped LM called with its adapter disabled (eval mode, no grad): ``π`` / reference.
* :func:`merge_into_base` and :func:`reset_adapter` — fold the adapter into the base weights, or zero it. RA3's EM
  loop calls them at phase boundaries; both work on FSDP2-sharded parameters.
* :func:`merged_state_dict` — the plain, adapter-free state dict of a LoRA model's state dict: what ``ra3 export``
  writes and what ``init_from`` loads, so the next stage (with or without its own adapter) starts from merged weights.

The update of one adapted linear layer is ``W x + s · B A x`` with ``A: [r, in]``, ``B: [out, r]`` (``B = 0`` at
initialisation, so a fresh adapter changes nothing) and ``s = alpha / r``; merging is ``W ← W + s · B A``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

ADAPTER = "default"  # PEFT's name of the one adapter
PEFT_PREFIX = "base_model.model."  # what PEFT puts in front of the wrapped model's state-dict keys


@dataclass
class LoRASpec:
    """A LoRA adapter on the LM's linear layers (the ``lora:`` group of every module; ``None``: full fine-tuning).

    Args:
        r: Adapter rank.
        alpha: Scale numerator: the adapter's output is multiplied by ``alpha / r``.
        dropout: Dropout on the adapter's input while training.
        target_modules: Module names to adapt (``["q_proj", "v_proj"]``), or ``"all-linear"``: every linear layer
            but the output head. The output head is never adapted (the chunked log-prob pass reads its weight).
    """

    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: list[str] | str = "all-linear"

    def __post_init__(self) -> None:
        if self.r < 1 or self.alpha <= 0 or not 0.0 <= self.dropout < 1.0:
            got = f"r={self.r}, alpha={self.alpha}, dropout={self.dropout}"
            raise ValueError(f"lora: need r >= 1, alpha > 0 and 0 <= dropout < 1 (got {got})")
        names = [self.target_modules] if isinstance(self.target_modules, str) else list(self.target_modules)
        if not names or "lm_head" in names:
            raise ValueError(f"lora.target_modules={self.target_modules!r}: name the layers to adapt (not lm_head)")

    @property
    def scaling(self) -> float:
        return self.alpha / self.r

    def peft_config(self) -> Any:
        from peft import LoraConfig

        return LoraConfig(
            r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=self.target_modules,
            bias="none", task_type="CAUSAL_LM",
        )  # fmt: skip


def apply_lora(model: nn.Module, spec: LoRASpec) -> nn.Module:
    """``model`` wrapped with one LoRA adapter (a ``PeftModel``): base weights frozen, adapter trainable."""
    from peft import get_peft_model

    return get_peft_model(model, spec.peft_config())


def is_lora(model: nn.Module | None) -> bool:
    """Whether ``model`` is a PEFT-wrapped LM (also after FSDP2 sharding, which subclasses it)."""
    from peft import PeftModel

    return isinstance(model, PeftModel)


def base_lm(model: nn.Module) -> nn.Module:
    """The transformers model inside a PEFT wrapper (``model`` itself otherwise)."""
    return model.get_base_model() if is_lora(model) else model


class AdapterOff:
    """``model`` with its adapter disabled: the frozen base weights as a callable LM, sharing ``model``'s memory.

    Calls run in eval mode and without gradient (``π`` and the reference are frozen by definition); attribute
    lookups (``config``, ``parameters``, ``get_output_embeddings``) go to ``model``. It is not an ``nn.Module`` on
    purpose: assigned to a module attribute it is not registered, so the base weights appear once in checkpoints.
    """

    def __init__(self, model: nn.Module) -> None:
        if not is_lora(model):
            raise TypeError(f"AdapterOff needs a PEFT-wrapped model, got {type(model).__name__}")
        self.model = model

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        was_training = self.model.training
        self.model.eval()
        try:
            with self.model.disable_adapter(), torch.no_grad():
                return self.model(*args, **kwargs)
        finally:
            self.model.train(was_training)

    def __getattr__(self, name: str) -> Any:
        if name == "model":  # not yet set (copy / unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.model, name)


def lora_layers(model: nn.Module) -> Iterator[nn.Module]:
    """Every PEFT LoRA layer of ``model`` that holds the adapter, in module order (the same on every rank)."""
    from peft.tuners.lora import LoraLayer

    for module in model.modules():
        if isinstance(module, LoraLayer) and ADAPTER in module.lora_A:
            yield module


def _local(t: Tensor) -> Tensor:
    """This rank's shard of an FSDP2 parameter (a ``DTensor``), or the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def _full(t: Tensor) -> Tensor:
    """The whole tensor of an FSDP2 parameter (a collective), or the tensor itself."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


@torch.no_grad()
def merge_into_base(model: nn.Module) -> None:
    """``W ← W + s · B A`` in every adapted layer, then ``B ← 0``: the adapter's function moves into the base weights
    and the adapter starts again from zero.

    Under FSDP2 every parameter is sharded along dim 0, so this rank's rows of ``B A`` are ``B_local @ A_full``:
    only the small ``A`` is gathered. Every rank must call this (the gathers are collectives).
    """
    for layer in lora_layers(model):
        if getattr(layer, "fan_in_fan_out", False):
            raise NotImplementedError(f"{type(layer).__name__}: merging a fan_in_fan_out (Conv1D) adapter")
        weight = layer.get_base_layer().weight
        a, b = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight  # [r, in], [out, r]
        delta = _local(b).float() @ _full(a).float() * layer.scaling[ADAPTER]  # this rank's rows of s·BA
        _local(weight).add_(delta.to(weight.dtype))
        _local(b).zero_()


@torch.no_grad()
def reset_adapter(model: nn.Module) -> None:
    """``B ← 0`` in every adapted layer: the model equals its base weights again (``A`` is kept, so the adapter's
    gradient is not zero)."""
    for layer in lora_layers(model):
        _local(layer.lora_B[ADAPTER].weight).zero_()


def is_lora_state_dict(state: dict[str, Tensor]) -> bool:
    """Whether ``state`` is the state dict of a PEFT-wrapped model."""
    return any(key.startswith(PEFT_PREFIX) for key in state)


def merged_state_dict(state: dict[str, Tensor], scaling: float) -> dict[str, Tensor]:
    """The plain state dict of the wrapped architecture: every ``…base_layer.weight`` plus ``scaling · B A`` of its
    adapter, adapter tensors dropped, PEFT's key prefix and ``base_layer`` removed (a pure function of the tensors)."""
    out = {}
    for key, value in state.items():
        if ".lora_" in key:
            continue
        if key.endswith(".base_layer.weight"):
            stem = key.removesuffix(".base_layer.weight")
            a, b = state[f"{stem}.lora_A.{ADAPTER}.weight"], state[f"{stem}.lora_B.{ADAPTER}.weight"]
            value = value + (scaling * (b.float() @ a.float())).to(value.dtype)
        out[key.removeprefix(PEFT_PREFIX).replace(".base_layer.", ".")] = value
    return out


def trainable_and_total(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts (this rank's shards under FSDP2)."""
    params = list(model.parameters())
    count = lambda ps: sum(_local(p).numel() for p in ps)  # noqa: E731
    return count([p for p in params if p.requires_grad]), count(params)
