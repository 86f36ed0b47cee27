"""Micro-batches of a generation batch by token budget, and trimming completions to what they use (pure functions).

A row's cost in a forward pass is its padded length: the (left-padded) prompt plus the micro-batch's longest
completion, since what follows a row's last real token is padding in every row of that micro-batch and is cut.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def completion_lengths(mask: Tensor) -> Tensor:  # [n, T] -> [n]
    """Each row's extent: one past its last real completion token (0 for an empty completion)."""
    positions = torch.arange(1, mask.shape[1] + 1, device=mask.device)
    return (mask.bool() * positions).amax(-1) if mask.shape[1] else mask.new_zeros(mask.shape[0], dtype=torch.long)


def completion_extent(mask: Tensor) -> int:
    """The longest extent of these rows (at least 1, so a forward pass always predicts one position)."""
    return max(1, int(completion_lengths(mask).max())) if mask.numel() else 1


def pad_columns(x: Tensor | None, width: int) -> Tensor | None:
    """``x [b, t]`` right-padded with zeros to ``[b, width]`` (``None`` stays ``None``)."""
    return None if x is None else torch.nn.functional.pad(x, (0, width - x.shape[1]))


def token_budget_slices(lengths: Sequence[int], prompt_len: int, budget: int) -> list[slice]:
    """Consecutive rows per micro-batch: grow it while ``rows · (prompt_len + longest completion)`` stays within
    ``budget``; a row that alone exceeds the budget is a micro-batch of its own."""
    slices, start, longest = [], 0, 0
    for i, length in enumerate(lengths):
        grown = max(longest, max(1, length))
        if i > start and (i - start + 1) * (prompt_len + grown) > budget:
            slices.append(slice(start, i))
            start, grown = i, max(1, length)
        longest = grown
    if len(lengths) > start:
        slices.append(slice(start, len(lengths)))
    return slices


def split_to_count(slices: Sequence[slice], count: int) -> list[slice]:
    """``slices`` with the one of most rows halved until there are ``count`` of them (order kept). Under FSDP every
    rank must run as many forward/backward passes as the others; budgets give ranks different counts, so each rank
    splits up to the largest count. Needs ``count`` <= the number of rows."""
    out = list(slices)
    if count > sum(s.stop - s.start for s in out):
        raise ValueError(f"cannot split {out} into {count} non-empty micro-batches")
    while len(out) < count:
        i = max(range(len(out)), key=lambda j: out[j].stop - out[j].start)
        mid = (out[i].start + out[i].stop + 1) // 2
        out[i : i + 1] = [slice(out[i].start, mid), slice(mid, out[i].stop)]
    return out
