"""Group-relative advantages (GRPO family): a sample's reward minus a baseline from the ``G`` samples of its group,
divided by a scale.

Shared by RLVR (groups = ``G`` completions of one prompt) and the E-step (groups = ``G`` latent rollouts of one
trace, with a trailing per-boundary dimension). The baseline and the scale are separate choices, each a built-in
name or an object:

* baselines (:data:`BASELINES`): ``"mean"`` — the group mean (GRPO); ``"none"`` — no baseline (plain REINFORCE);
* scales (:data:`SCALERS`): ``"group"`` — the std of the group (GRPO, DeepSeekMath); ``"batch"`` — the std of all
  rewards in the batch (TRL ``scale_rewards="batch"``; more robust when a group's std is tiny); ``"none"`` — no
  division (Dr. GRPO, which argues the std term biases towards too-easy/too-hard prompts).

A new variant is a subclass of :class:`Baseline` or :class:`Scale` in the user's own package, chosen from YAML by
``class_path`` (e.g. RLOO's leave-one-out baseline: the mean of the *other* ``G - 1`` samples). The std is the
sample (Bessel-corrected) std, as ``torch.std`` gives and TRL/verl use.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Literal

import torch
from torch import Tensor

from ra3_lightning.rl.registry import resolve

AdvantageScale = Literal["group", "batch", "none"]
AdvantageBaseline = Literal["mean", "none"]


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


class Baseline(ABC):
    """What :func:`group_advantages` subtracts from each reward. Subclass it to add a variant (by ``class_path``)."""

    @abstractmethod
    def __call__(self, rewards: Tensor, mask: Tensor) -> Tensor:
        """The baseline of each sample, broadcastable to ``rewards`` ``[N, G, *rest]`` (``mask``: real samples)."""


class Scale(ABC):
    """What :func:`group_advantages` divides the centred rewards by (plus ``eps``). Subclass it to add a variant."""

    @abstractmethod
    def __call__(self, rewards: Tensor, mask: Tensor) -> Tensor:
        """The divisor, broadcastable to ``rewards`` ``[N, G, *rest]`` (``mask``: the real samples)."""


class GroupMean(Baseline):
    """The mean reward of the sample's group (GRPO)."""

    def __call__(self, rewards: Tensor, mask: Tensor) -> Tensor:
        return masked_mean(rewards, mask, dim=1, keepdim=True)  # [N, 1, *rest]


class NoBaseline(Baseline):
    """Zero: the advantage is the (scaled) reward itself."""

    def __call__(self, rewards: Tensor, mask: Tensor) -> Tensor:
        return torch.zeros((), dtype=rewards.dtype, device=rewards.device)


class GroupStd(Scale):
    """The std of the sample's group (GRPO)."""

    def __call__(self, rewards: Tensor, mask: Tensor) -> Tensor:
        return masked_std(rewards, mask, dim=1, keepdim=True)  # [N, 1, *rest]


class BatchStd(Scale):
    """The std of every reward of the batch (TRL ``scale_rewards="batch"``)."""

    def __call__(self, rewards: Tensor, mask: Tensor) -> Tensor:
        return masked_std(rewards, mask)  # scalar


class NoScale(Scale):
    """No division, and no ``eps`` either (Dr. GRPO)."""

    def __call__(self, rewards: Tensor, mask: Tensor) -> Tensor:
        return torch.ones((), dtype=rewards.dtype, device=rewards.device)


BASELINES: dict[str, Baseline] = {"mean": GroupMean(), "none": NoBaseline()}
SCALERS: dict[str, Scale] = {"group": GroupStd(), "batch": BatchStd(), "none": NoScale()}


def group_advantages(
    rewards: Tensor,  # [N, G, *rest]
    scale: AdvantageScale | Scale = "group",
    mask: Tensor | None = None,  # [N, G, *rest] bool; False = not a real sample (excluded, advantage 0)
    eps: float = 1e-6,
    baseline: AdvantageBaseline | Baseline = "mean",
) -> Tensor:  # [N, G, *rest]
    """``(r - baseline(r)) / (scale(r) + eps)``, the group being dim 1 (the ``G`` samples of one group).

    The default is GRPO's ``(r - mean_G(r)) / (std_G(r) + eps)``. ``scale="none"`` divides by nothing (no ``eps``).
    Masked-out entries neither enter the statistics nor get an advantage (0).

    >>> group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0]]), scale="none")
    tensor([[ 0.5000, -0.5000, -0.5000,  0.5000]])
    """
    if rewards.dim() < 2:
        raise ValueError(f"rewards must be [N, G, ...] (got shape {tuple(rewards.shape)})")
    scaler = resolve(scale, SCALERS, "advantage scale")
    centre = resolve(baseline, BASELINES, "advantage baseline")
    mask = torch.ones_like(rewards, dtype=torch.bool) if mask is None else mask.bool()
    centred = rewards - centre(rewards, mask)
    if not isinstance(scaler, NoScale):
        centred = centred / (scaler(rewards, mask) + eps)
    return centred * mask.to(rewards.dtype)


def zero_variance_groups(rewards: Tensor, atol: float = 0.0) -> Tensor:  # rewards [N, G] -> [N] bool
    """True for groups whose ``G`` rewards are all equal (max - min <= ``atol``): they carry no learning signal.

    DAPO's dynamic sampling drops them from the loss (and from its normalisers).
    """
    return (rewards.amax(dim=1) - rewards.amin(dim=1)) <= atol
