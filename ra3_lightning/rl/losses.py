"""Clipped policy-gradient losses of the GRPO family, with the loss aggregation chosen by name.

Per completion token ``t`` of sample ``i`` with ratio ``rho = pi(t) / pi_old(t)`` and advantage ``A_i``:

    l_it = -min(rho * A_i, clip(rho, 1 - epsilon, 1 + epsilon_high) * A_i) + beta * KL_it

and the per-token losses are reduced by an *aggregation* (:data:`AGGREGATIONS`):

* ``"grpo"`` — mean over each sequence's tokens, then mean over sequences (DeepSeekMath). Long completions get a
  smaller per-token weight, which the DAPO / Dr. GRPO papers identify as a length bias.
* ``"bnpo"`` — token-level mean over all completion tokens of this rank's generation batch.
* ``"dapo"`` — token-level mean over all completion tokens of the generation batch on *all* ranks (the
  normaliser is all-reduced by the caller; the loss is multiplied by the world size because DDP/FSDP average
  gradients over ranks).
* ``"dr_grpo"`` — sum over tokens divided by a constant ``num_sequences * max_completion_length`` (Dr. GRPO).

Another aggregation is a subclass of :class:`LossAggregation` in the user's package, chosen by ``class_path``.

Normalisers are fixed once per *generation batch* (:class:`LossNormaliser`) and passed to every micro-batch, so
the sum of the micro-batch losses equals the loss of the whole batch however it is split — the bug of
normalising each micro-batch by its own token count (TRL's "bnpo" under gradient accumulation) cannot occur.

A rollout sampled by a backend whose numerics differ from the trainer's (vLLM, SGLang, a different kernel or dtype)
is slightly off-policy even at ``num_iterations = 1``; :func:`truncated_is_weights` gives the truncated
importance-sampling weights ``min(pi_old(t) / pi_sampler(t), C)`` that :func:`policy_loss` multiplies the
surrogate by (``is_weights``).

Deviation from the papers: none in the math; the KL term is added per token inside the aggregation (as in GRPO)
rather than folded into the reward (as in PPO-RLHF).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ra3_lightning.rl.advantages import masked_mean, zero_variance_groups
from ra3_lightning.rl.kl import KLEstimator, KLKind, kl_penalty
from ra3_lightning.rl.registry import resolve

Aggregation = Literal["grpo", "bnpo", "dapo", "dr_grpo"]

__all__ = [
    "AGGREGATIONS",
    "Aggregation",
    "LossAggregation",
    "LossNormaliser",
    "mask_truncated",
    "policy_loss",
    "truncated_is_weights",
    "zero_variance_groups",
]


@dataclass(frozen=True)
class LossNormaliser:
    """Denominators of the loss, computed once over the whole generation batch (never per micro-batch).

    Args:
        num_sequences: Completions of this rank's generation batch that enter the loss.
        num_tokens: Completion tokens (mask sum) of this rank's generation batch.
        num_tokens_global: Completion tokens of the generation batch summed over all ranks.
        world_size: Number of data-parallel ranks whose gradients are averaged.
        max_completion_length: The generation budget (``max_new_tokens``), Dr. GRPO's constant.
    """

    num_sequences: float
    num_tokens: float
    num_tokens_global: float
    world_size: int
    max_completion_length: int

    @classmethod
    def from_mask(
        cls,
        mask: Tensor,  # [B, T] completion-token mask of the whole generation batch on this rank
        max_completion_length: int,
        num_tokens_global: float | None = None,
        world_size: int = 1,
    ) -> LossNormaliser:
        num_tokens = float(mask.sum())
        return cls(
            num_sequences=float(mask.shape[0]),
            num_tokens=num_tokens,
            num_tokens_global=num_tokens if num_tokens_global is None else float(num_tokens_global),
            world_size=world_size,
            max_completion_length=max_completion_length,
        )


class LossAggregation(ABC):
    """Reduces the per-token losses ``[B, T]`` of one micro-batch to a scalar with the generation batch's ``norm``.

    The sum of the micro-batch results must be the whole batch's loss, so use only ``norm`` as the denominator.
    """

    @abstractmethod
    def __call__(self, loss: Tensor, mask: Tensor, norm: LossNormaliser) -> Tensor: ...


class SequenceMean(LossAggregation):
    """``"grpo"``: mean over each sequence's tokens, then over the batch's sequences."""

    def __call__(self, loss: Tensor, mask: Tensor, norm: LossNormaliser) -> Tensor:
        per_seq = (loss * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)  # [B]
        return per_seq.sum() / max(norm.num_sequences, 1.0)


class TokenMean(LossAggregation):
    """``"bnpo"``: mean over this rank's completion tokens."""

    def __call__(self, loss: Tensor, mask: Tensor, norm: LossNormaliser) -> Tensor:
        return (loss * mask).sum() / max(norm.num_tokens, 1.0)


class GlobalTokenMean(LossAggregation):
    """``"dapo"``: mean over the completion tokens of all ranks (times the world size: ranks average gradients)."""

    def __call__(self, loss: Tensor, mask: Tensor, norm: LossNormaliser) -> Tensor:
        return (loss * mask).sum() * norm.world_size / max(norm.num_tokens_global, 1.0)


class ConstantNormaliser(LossAggregation):
    """``"dr_grpo"``: token sum over the constant ``num_sequences * max_completion_length``."""

    def __call__(self, loss: Tensor, mask: Tensor, norm: LossNormaliser) -> Tensor:
        return (loss * mask).sum() / max(norm.num_sequences * norm.max_completion_length, 1.0)


AGGREGATIONS: dict[str, LossAggregation] = {
    "grpo": SequenceMean(),
    "bnpo": TokenMean(),
    "dapo": GlobalTokenMean(),
    "dr_grpo": ConstantNormaliser(),
}


def clipped_surrogate(
    ratio: Tensor,  # [B, T]
    advantages: Tensor,  # [B, T] (broadcast)
    epsilon: float,
    epsilon_high: float,
) -> tuple[Tensor, Tensor]:  # per-token loss [B, T], clipped-token indicator [B, T] bool
    """PPO's pessimistic objective ``-min(rho A, clip(rho) A)`` and where the clip is the active branch."""
    clipped_ratio = ratio.clamp(1.0 - epsilon, 1.0 + epsilon_high)
    loss = -torch.minimum(ratio * advantages, clipped_ratio * advantages)
    is_clipped = ((ratio < 1.0 - epsilon) & (advantages < 0)) | ((ratio > 1.0 + epsilon_high) & (advantages > 0))
    return loss, is_clipped


def policy_loss(
    logp: Tensor,  # [B, T] log pi(token) under the current policy (with grad)
    old_logp: Tensor,  # [B, T] log pi_old(token) from the policy that generated the batch
    advantages: Tensor,  # [B] per sequence, or [B, T] per token
    mask: Tensor,  # [B, T] completion tokens that enter the loss
    norm: LossNormaliser,
    aggregation: Aggregation | LossAggregation = "grpo",
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    ref_logp: Tensor | None = None,  # [B, T] log ref(token); required when beta > 0
    beta: float = 0.0,
    kl_kind: KLKind | KLEstimator = "k3",
    is_weights: Tensor | None = None,  # [B, T] detached weights of the surrogate (truncated_is_weights)
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped policy-gradient loss of one micro-batch, normalised by ``norm`` (see the module docstring).

    Returns ``(loss, diagnostics)``; diagnostics are detached scalars over this micro-batch's masked tokens:
    ``clip_fraction``, ``ratio_mean``, ``ratio_min``, ``ratio_max`` and, with a reference, ``kl``.
    """
    aggregate = resolve(aggregation, AGGREGATIONS, "loss aggregation")
    if beta > 0 and ref_logp is None:
        raise ValueError("beta > 0 needs ref_logp (log-probs of the reference model)")
    mask = mask.to(logp.dtype)
    adv = advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages  # [B, 1] or [B, T]
    ratio = torch.exp(logp - old_logp)  # [B, T]
    per_token, is_clipped = clipped_surrogate(ratio, adv, epsilon, epsilon if epsilon_high is None else epsilon_high)
    if is_weights is not None:
        per_token = per_token * is_weights.detach()
    kl = None
    if ref_logp is not None:
        kl = kl_penalty(logp, ref_logp, kl_kind)  # [B, T]
        if beta > 0:
            per_token = per_token + beta * kl
    loss = aggregate(per_token, mask, norm)
    return loss, _diagnostics(ratio, is_clipped, kl, mask)


def truncated_is_weights(
    trainer_logp: Tensor,  # [B, T] log pi_old(token) as the trainer computes it
    sampler_logp: Tensor,  # [B, T] log-prob of the token under the distribution the backend sampled it from
    cap: float,
) -> Tensor:  # [B, T]
    """Truncated importance-sampling weights ``min(exp(trainer_logp - sampler_logp), cap)``, detached.

    The policy gradient assumes the tokens came from ``pi_old``; a sampler whose numerics differ draws from a
    slightly different distribution. Re-weighting each token's surrogate by the ratio makes the gradient unbiased
    again; capping it at ``cap`` (e.g. 2) bounds the variance at the cost of a little bias.
    """
    if cap <= 0:
        raise ValueError(f"the importance-weight cap must be > 0 (got {cap})")
    return torch.exp(trainer_logp.detach() - sampler_logp.detach()).clamp(max=cap)


def _diagnostics(ratio: Tensor, is_clipped: Tensor, kl: Tensor | None, mask: Tensor) -> dict[str, Tensor]:
    with torch.no_grad():
        r = ratio.detach()
        big = torch.finfo(r.dtype).max
        real = mask.bool()
        out = {
            "clip_fraction": masked_mean(is_clipped.to(r.dtype), real),
            "ratio_mean": masked_mean(r, real),
            "ratio_min": torch.where(real, r, big).amin() if real.any() else r.new_tensor(1.0),
            "ratio_max": torch.where(real, r, -big).amax() if real.any() else r.new_tensor(1.0),
        }
        if kl is not None:
            out["kl"] = masked_mean(kl.detach(), real)
    return out


def mask_truncated(
    mask: Tensor,  # [B, T] completion-token mask
    truncated: Tensor,  # [B] bool: the completion hit max_new_tokens without an EOS
) -> Tensor:  # [B, T]
    """Zero the mask of truncated completions (DAPO's overlong filtering): an unfinished program's reward says
    nothing about the tokens it did produce."""
    return mask * (~truncated.bool()).unsqueeze(-1).to(mask.dtype)
