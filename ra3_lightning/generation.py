"""Sampling ``G`` completions per prompt for RL: a small backend interface and the Hugging Face ``generate`` backend.

:class:`GenerationBackend` is the hook a vLLM (or any other) backend implements; :class:`RLVRModule` only calls
``backend.generate(...)`` and reads the :class:`Rollout` it returns. :class:`HFGenerate` uses
``model.generate`` with the KV cache.

FSDP2 (``ModelParallelStrategy``): a sharded model would all-gather every block's parameters at *every* decoding
step, and a rank whose prompts finish early would stop calling forward while the others still wait in the
all-gather — a deadlock. :func:`unsharded_for_generation` therefore, once per rollout batch,

1. switches ``reshard_after_forward`` off on every FSDP module,
2. calls ``unshard()`` on *every* ``FSDPModule`` (the root and each block — unsharding only the root would leave
   the blocks gathering per step),
3. generates with ``synced_gpus=False``: no collective happens during decoding, so ranks may take different
   numbers of steps,
4. reshards every module and restores FSDP's default policy (reshard after forward for the blocks, not the root).

Gradient checkpointing is switched off while generating (it would disable the KV cache in ``transformers``) and
back on afterwards; the model is put in eval mode (no dropout) and restored to its previous mode.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class Rollout:
    """``G`` sampled completions for each of ``B`` prompts; sample ``g`` of prompt ``b`` is row ``b * G + g``."""

    prompt_ids: Tensor  # [B*G, P] left-padded
    prompt_mask: Tensor  # [B*G, P] 1 on real prompt tokens
    completion_ids: Tensor  # [B*G, T] right-padded
    completion_mask: Tensor  # [B*G, T] 1 on generated tokens up to and including the first EOS
    truncated: Tensor  # [B*G] bool: no EOS within max_new_tokens

    @property
    def num_samples(self) -> int:
        return self.completion_ids.shape[0]


class GenerationBackend(ABC):
    """Hook: how completions are sampled. Subclass and implement :meth:`generate` (e.g. for vLLM)."""

    @abstractmethod
    def generate(
        self,
        model: nn.Module,
        prompt_ids: Tensor,  # [B, P] left-padded
        prompt_mask: Tensor,  # [B, P]
        num_samples: int,
        max_new_tokens: int,
        eos_token_id: int,
        pad_token_id: int,
    ) -> Rollout:
        """Sample ``num_samples`` completions per prompt, grouped contiguously (see :class:`Rollout`)."""


class HFGenerate(GenerationBackend):
    """``model.generate`` with the KV cache, unsharding an FSDP2 model once per call.

    Args:
        temperature: Sampling temperature (1.0 = the policy's own distribution, as the policy gradient assumes).
        top_p: Nucleus sampling threshold (1.0 = off; anything else biases the samples away from the policy).
        top_k: Top-k truncation (``0`` = off).
    """

    def __init__(self, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0 for sampling (got {temperature})")
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k

    @torch.no_grad()
    def generate(
        self,
        model: nn.Module,
        prompt_ids: Tensor,
        prompt_mask: Tensor,
        num_samples: int,
        max_new_tokens: int,
        eos_token_id: int,
        pad_token_id: int,
    ) -> Rollout:
        prompt_ids = prompt_ids.repeat_interleave(num_samples, dim=0)  # [B*G, P]
        prompt_mask = prompt_mask.repeat_interleave(num_samples, dim=0)  # [B*G, P]
        with unsharded_for_generation(model):
            out = model.generate(
                input_ids=prompt_ids,
                attention_mask=prompt_mask,
                do_sample=True,
                temperature=self.temperature,
                top_p=self.top_p,
                top_k=self.top_k,
                max_new_tokens=max_new_tokens,
                eos_token_id=eos_token_id,
                pad_token_id=pad_token_id,
                use_cache=True,
                synced_gpus=False,
            )
        completion_ids = out[:, prompt_ids.shape[1] :]  # [B*G, T]
        completion_mask, truncated = completion_mask_from_eos(completion_ids, eos_token_id)
        return Rollout(prompt_ids, prompt_mask, completion_ids, completion_mask, truncated)


def completion_mask_from_eos(
    completion_ids: Tensor,  # [N, T]
    eos_token_id: int,
) -> tuple[Tensor, Tensor]:  # mask [N, T] long, truncated [N] bool
    """Mask of the tokens up to and including the first EOS; rows without an EOS are ``truncated``."""
    is_eos = completion_ids == eos_token_id  # [N, T]
    has_eos = is_eos.any(dim=1)  # [N]
    first_eos = torch.where(has_eos, is_eos.int().argmax(dim=1), completion_ids.shape[1] - 1)  # [N]
    positions = torch.arange(completion_ids.shape[1], device=completion_ids.device)  # [T]
    mask = (positions.unsqueeze(0) <= first_eos.unsqueeze(1)).long()  # [N, T]
    return mask, ~has_eos


def _fsdp_modules(model: nn.Module) -> list[nn.Module]:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without distributed
        return []
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def _checkpointing_on(model: nn.Module) -> bool:
    flag = "is_activation_checkpointing" if hasattr(type(model), "is_activation_checkpointing") else ""
    return bool(getattr(model, flag or "is_gradient_checkpointing", False))


@contextmanager
def unsharded_for_generation(model: nn.Module) -> Iterator[None]:
    """Eval mode, no gradient checkpointing and (under FSDP2) every FSDP module unsharded, for one rollout."""
    was_training = model.training
    checkpointing = _checkpointing_on(model)
    if checkpointing:
        model.gradient_checkpointing_disable()
    fsdp = _fsdp_modules(model)
    for m in fsdp:
        m.set_reshard_after_forward(False, recurse=False)
        m.unshard()
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
        for m in fsdp:
            m.reshard()
            m.set_reshard_after_forward(m is not fsdp[0], recurse=False)  # FSDP's default: root keeps its params
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
