"""Next-token-prediction loss, as pure functions: the M-step and the NTP baseline both train on it.

``causal_lm_loss`` shifts inside (position ``t`` predicts token ``t+1``), so batches carry ``labels`` aligned with
``input_ids``. Tokens are ignored where ``labels == -100`` (padding) or where an optional ``loss_mask`` is False
(e.g. rationale tokens when the M-step trains on code tokens only, ``loss_on="code"``). The mean is over
counted tokens of the whole batch (token-level, as in HF ``ForCausalLMLoss``), not a mean of per-sequence means.

The same loss from per-position target log-probs instead of logits (what the chunked LM head of
:func:`ra3_lightning.logprobs.selective_logprobs` returns, so the dense ``[B, L, V]`` logits never exist):
``mean_token_nll(logp, shifted_targets(labels, loss_mask))``, where ``logp[:, t]`` is the log-prob of
``labels[:, t + 1]`` (of any token where that target is ignored).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100
LossOn = Literal["all", "code"]


def causal_lm_loss(
    logits: Tensor,  # [B, L, V]
    labels: Tensor,  # [B, L] (aligned with input_ids, not shifted; -100 = ignore)
    loss_mask: Tensor | None = None,  # [B, L] bool, True = the token counts as a target
) -> tuple[Tensor, Tensor]:
    """Mean next-token cross-entropy over counted target tokens, and the number of counted tokens.

    Position ``t`` of ``logits`` predicts ``labels[:, t + 1]``; ``loss_mask`` is indexed like ``labels`` (it marks
    *targets*). With no counted token the loss is ``0`` (still attached to the graph) so a batch of pure padding
    does not produce NaN.

    Returns:
        ``(loss, num_tokens)``: a scalar float32 loss and a scalar long count.
    """
    if logits.shape[:2] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree on [B, L]")
    targets = shifted_targets(labels, loss_mask)  # [B, L-1]
    token_nll = F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(),  # [B*(L-1), V]
        targets.flatten(),  # [B*(L-1)]
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    num_tokens = (targets != IGNORE_INDEX).sum()
    return token_nll / num_tokens.clamp(min=1), num_tokens


def shifted_targets(
    labels: Tensor,  # [B, L] (aligned with input_ids; -100 = ignore)
    loss_mask: Tensor | None = None,  # [B, L] bool, True = the token counts as a target
) -> Tensor:  # [B, L-1]
    """The target of each position but the last: ``labels[:, t + 1]``, or ``-100`` where it is ignored (``labels``
    is -100 there, or ``loss_mask`` is False)."""
    targets = labels[:, 1:]  # [B, L-1]
    if loss_mask is None:
        return targets
    if loss_mask.shape != labels.shape:
        raise ValueError(f"loss_mask {tuple(loss_mask.shape)} must have the shape of labels {tuple(labels.shape)}")
    return targets.masked_fill(~loss_mask[:, 1:].bool(), IGNORE_INDEX)


def mean_token_nll(
    target_logp: Tensor,  # [B, L-1]: log p(targets[:, t]) at position t (any finite value where ignored)
    targets: Tensor,  # [B, L-1] from shifted_targets (-100 = ignored)
) -> tuple[Tensor, Tensor]:
    """:func:`causal_lm_loss` from the target tokens' log-probs instead of the logits: the mean of ``-target_logp``
    over counted targets (``0``, still attached to the graph, when none counts), and the number counted.

    Returns:
        ``(loss, num_tokens)``: a scalar float32 loss and a scalar long count.
    """
    if target_logp.shape != targets.shape:
        raise ValueError(f"target_logp {tuple(target_logp.shape)} and targets {tuple(targets.shape)} disagree")
    counted = targets != IGNORE_INDEX  # [B, L-1]
    num_tokens = counted.sum()
    token_nll = -target_logp.float().masked_fill(~counted, 0.0).sum()
    return token_nll / num_tokens.clamp(min=1), num_tokens


def _all_tokens(batch: dict[str, Tensor]) -> Tensor | None:
    return None


def _code_tokens(batch: dict[str, Tensor]) -> Tensor:
    if "rationale_mask" not in batch:
        raise KeyError(
            "loss_on='code' needs batches with a 'rationale_mask' (TraceDataModule(rationale_spans_field=...))"
        )
    return ~batch["rationale_mask"].bool()  # [B, L]


LOSS_MASKS: dict[str, Callable[[dict[str, Tensor]], Tensor | None]] = {"all": _all_tokens, "code": _code_tokens}
"""Which target tokens carry loss, by name: ``"all"`` (rationales too, so the model learns to write them, the
paper's default) or ``"code"`` (expert tokens only; rationale tokens are context but not targets)."""


def loss_mask_for(loss_on: LossOn, batch: dict[str, Tensor]) -> Tensor | None:
    """The ``loss_mask`` (``[B, L]`` bool or ``None``) that ``loss_on`` selects for ``batch``."""
    if loss_on not in LOSS_MASKS:
        raise ValueError(f"loss_on={loss_on!r}; choose one of {sorted(LOSS_MASKS)}")
    return LOSS_MASKS[loss_on](batch)


def perplexity(loss: Tensor) -> Tensor:
    """``exp(loss)`` of a mean token NLL, clamped so an untrained model logs a finite number."""
    return torch.exp(loss.detach().float().clamp(max=50.0))
