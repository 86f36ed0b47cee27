"""Optimisers and learning-rate schedules shared by every stage: AdamW with linear warm-up and cosine decay.

:class:`Optim` is the optimizer group every module takes (``model.optim`` in YAML); the functions below are the
pure math it is built from.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.1) -> float:
    """LR multiplier at optimizer step ``step``: linear 0→1 over ``warmup_steps``, then cosine 1→``min_lr_ratio``.

    ``step`` counts from 0; the multiplier for step 0 is ``1 / warmup_steps`` (never exactly 0, so the first
    update is not wasted). Past ``total_steps`` the multiplier stays at ``min_lr_ratio``.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(named_params: Iterable[tuple[str, torch.nn.Parameter]], weight_decay: float) -> list[dict]:
    """Two AdamW groups: decay for matrices, none for biases, norms and other 1-D parameters."""
    decay, no_decay = [], []
    for _, p in named_params:
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def adamw_warmup_cosine(
    named_params: Iterable[tuple[str, torch.nn.Parameter]],
    lr: float,
    total_steps: int,
    warmup_steps: int = 0,
    min_lr_ratio: float = 0.1,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.95),
) -> dict[str, Any]:
    """A Lightning ``configure_optimizers`` return value: AdamW + per-step warm-up/cosine schedule.

    Warns when it is asked to train 16-bit weights (see :func:`low_precision_warning`).
    """
    groups = param_groups(named_params, weight_decay)
    warning = low_precision_warning([p for group in groups for p in group["params"]], lr)
    if warning is not None:
        rank_zero_warn(warning)
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=betas)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warmup_steps, total_steps, min_lr_ratio)
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}


def low_precision_warning(params: list[torch.Tensor], lr: float) -> str | None:
    """Why plain AdamW on these parameters may not learn (``None`` if all trainable ones are fp32 or wider).

    AdamW's update is about ``lr`` per weight; a 16-bit weight only changes when the update exceeds half its ulp
    (bf16: between ``|w| · 2^-9`` and ``|w| · 2^-8``, ≈ 6e-5 at ``|w| = 0.02``), so at the learning rates of
    fine-tuning (1e-6 … 2e-5) most bf16 weights never move — silently. Mixed precision (fp32 weights, bf16
    compute) keeps every update.
    """
    low = sorted({str(p.dtype).removeprefix("torch.") for p in params if p.dtype in (torch.bfloat16, torch.float16)})
    if not low:
        return None
    return (
        f"training {'/'.join(low)} weights with AdamW at lr={lr:g}: an update smaller than half a 16-bit ulp of its "
        "weight rounds away (bf16 at |w| = 0.02: updates below ~6e-5), so most weights may never change. Keep fp32 "
        "master weights: `--trainer.precision bf16-mixed --model.dtype float32`."
    )


def schedule_length(total_steps: int | None, trainer: Any) -> int:
    """The LR schedule's length: ``total_steps`` if given, else the trainer's estimate (which needs a bound)."""
    total = total_steps or trainer.estimated_stepping_batches
    if total == float("inf"):
        raise ValueError("the LR schedule needs a length: set `--trainer.max_steps` or `--model.optim.total_steps`")
    return int(total)


@dataclass(frozen=True)
class Optim:
    """The optimizer group of every module (``optim:`` under ``model:``): AdamW, linear warm-up, cosine decay.

    Each module has its own default group (``NTP_OPTIM``, ``LATENT_OPTIM``, ``M_OPTIM``, ``RLVR_OPTIM``, shown by
    ``--help``). A YAML block or a ``--model.optim.lr`` flag overrides only the fields it names; in Python a new
    ``Optim(lr=...)`` starts from the field defaults below, so change a module's default with
    ``dataclasses.replace(NTP_OPTIM, lr=1e-3)``.

    Attributes:
        lr: Peak learning rate.
        weight_decay: AdamW weight decay on matrices (biases, norms and other 1-D parameters get none).
        warmup_steps: Linear warm-up, in optimizer steps.
        min_lr_ratio: The cosine decays the LR to ``lr * min_lr_ratio`` at the last step (1.0: constant).
        total_steps: Length of the schedule in optimizer steps; ``None``: the trainer's estimate.
        betas: AdamW betas.
        max_grad_norm: Clip the global gradient norm to this before every optimizer step (``None``: no clipping).
    """

    lr: float = 3e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    min_lr_ratio: float = 1.0
    total_steps: int | None = None
    betas: tuple[float, float] = (0.9, 0.95)
    max_grad_norm: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(self.betas))  # YAML gives a list
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_steps < 0 or not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"need lr > 0, weight_decay >= 0, warmup_steps >= 0, 0 <= min_lr_ratio <= 1 ({self})")
        if self.total_steps is not None and self.total_steps < 1:
            raise ValueError(f"optim.total_steps={self.total_steps} must be >= 1 (or null: the trainer's estimate)")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError(f"optim.max_grad_norm={self.max_grad_norm} must be > 0 (or null: no clipping)")

    def build(self, named_params: Iterable[tuple[str, torch.nn.Parameter]], total_steps: int) -> dict[str, Any]:
        """:func:`adamw_warmup_cosine` of this group over ``total_steps`` optimizer steps."""
        return adamw_warmup_cosine(
            named_params, lr=self.lr, total_steps=total_steps, warmup_steps=self.warmup_steps,
            min_lr_ratio=self.min_lr_ratio, weight_decay=self.weight_decay, betas=self.betas,
        )  # fmt: skip
