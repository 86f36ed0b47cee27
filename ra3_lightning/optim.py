"""Optimisers and learning-rate schedules shared by every stage: AdamW with linear warm-up and cosine decay."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch


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
    """A Lightning ``configure_optimizers`` return value: AdamW + per-step warm-up/cosine schedule."""
    optimizer = torch.optim.AdamW(param_groups(named_params, weight_decay), lr=lr, betas=betas)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warmup_steps, total_steps, min_lr_ratio)
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}


def schedule_length(total_steps: int | None, trainer: Any) -> int:
    """The LR schedule's length: ``total_steps`` if given, else the trainer's estimate (which needs a bound)."""
    total = total_steps or trainer.estimated_stepping_batches
    if total == float("inf"):
        raise ValueError("the LR schedule needs a length: set `--trainer.max_steps` or `--model.total_steps`")
    return int(total)
