"""Group-relative advantages (GRPO family): reward minus the mean of the ``G`` samples of the same group.

Shared by RLVR (groups = ``G`` completions of one prompt) and the E-step (groups = ``G`` latent rollouts of one
trace, with a trailing per-boundary dimension). Scaling variants by name (:data:`SCALERS`):

* ``"group"`` — divide by the std of the group (GRPO, DeepSeekMath);
* ``"batch"`` — divide by the std of all rewards in the batch (TRL ``scale_rewards="batch"``; more robust when
  a group's std is tiny);
* ``"none"`` — no division (Dr. GRPO, which argues the std term biases towards too-easy/too-hard prompts).

The std is the sample (Bessel-corrected) std, as ``torch.std`` gives and TRL/verl use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

AdvantageScale = Literal["group", "batch", "none"]


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None, keepdim: bool = False) -> Tensor:
    """Mean of ``x`` over the entries where ``mask`` is true (0 where there are none)."""
    m = mask.to(x.dtype)
    if dim is None:
        return (x * m).sum() / m.sum().clamp_min(1.0)
    return (x * m).sum(dim, keepdim=keepdim) / m.sum(dim, keepdim=keepdim).clamp_min(1.0)


def masked_std(x: Tensor, mask: Tensor, dim: int | None = None, keepdim: bool = False) -> Tensor:
    """Bessel-corrected std of ``x`` over the masked entries (0 where fewer than two entries)."""
    m = mask.to(x.dtype)
    mean = masked_mean(x, mask, dim, keepdim=True) if dim is not None else masked_mean(x, mask)
    sq = (x - mean).pow(2) * m
    if dim is None:
        return (sq.sum() / (m.sum() - 1).clamp_min(1.0)).sqrt()
    return (sq.sum(dim, keepdim=keepdim) / (m.sum(dim, keepdim=keepdim) - 1).clamp_min(1.0)).sqrt()


def _scale_group(rewards: Tensor, mask: Tensor) -> Tensor:
    return masked_std(rewards, mask, dim=1, keepdim=True)  # [N, 1, *rest]


def _scale_batch(rewards: Tensor, mask: Tensor) -> Tensor:
    return masked_std(rewards, mask)  # scalar


def _scale_none(rewards: Tensor, mask: Tensor) -> Tensor:
    return torch.ones((), dtype=rewards.dtype, device=rewards.device)


SCALERS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "group": _scale_group,
    "batch": _scale_batch,
    "none": _scale_none,
}


def group_advantages(
    rewards: Tensor,  # [N, G, *rest]
    scale: AdvantageScale = "group",
    mask: Tensor | None = None,  # [N, G, *rest] bool; False = not a real sample (excluded, advantage 0)
    eps: float = 1e-6,
) -> Tensor:  # [N, G, *rest]
    """``(r - mean_G(r)) / (std + eps)`` with the baseline taken over dim 1 (the ``G`` samples of one group).

    ``scale="none"`` returns ``r - mean_G(r)`` exactly (no ``eps``). Masked-out entries neither enter the
    statistics nor get an advantage (0).

    >>> group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0]]), scale="none")
    tensor([[ 0.5000, -0.5000, -0.5000,  0.5000]])
    """
    if rewards.dim() < 2:
        raise ValueError(f"rewards must be [N, G, ...] (got shape {tuple(rewards.shape)})")
    if scale not in SCALERS:
        raise ValueError(f"unknown advantage scale {scale!r}; choose one of {sorted(SCALERS)}")
    mask = torch.ones_like(rewards, dtype=torch.bool) if mask is None else mask.bool()
    baseline = masked_mean(rewards, mask, dim=1, keepdim=True)  # [N, 1, *rest]
    centred = rewards - baseline
    if scale != "none":
        centred = centred / (SCALERS[scale](rewards, mask) + eps)
    return centred * mask.to(rewards.dtype)


def zero_variance_groups(rewards: Tensor, atol: float = 0.0) -> Tensor:  # rewards [N, G] -> [N] bool
    """True for groups whose ``G`` rewards are all equal (max - min <= ``atol``): they carry no learning signal.

    DAPO's dynamic sampling drops them from the loss (and from its normalisers).
    """
    return (rewards.amax(dim=1) - rewards.amin(dim=1)) <= atol
