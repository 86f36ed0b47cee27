"""E-step rewards, returns and the policy-gradient loss of the latent policy ``q`` (see ``docs/estep.md``).

Per boundary ``t`` of a trace: ``r_t = log π(a_t | s_t, z_{≤t}) − c·1[z_t = THINK]``; returns
``R_t = Σ_{k≥t} γ^{k−t} r_k``. The group baseline over the ``G`` rollouts of a trace is
:func:`ra3_lightning.rl.advantages.group_advantages` applied to the returns shaped ``[B, G, T]``.

Deviation from the paper: the temporal-consistency prior's KL is the fixed THINK cost ``c`` (as the paper does in
practice); the optional KL of ``q`` to its initial policy is a separate loss term (:func:`latent_pg_loss`), not
part of the reward.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

RewardNorm = Literal["none", "per_token"]


def elbo_rewards(
    line_logp: Tensor,  # [..., T] log π(a_t | prefix with rationales), summed over the line's tokens
    think: Tensor,  # [..., T] bool, z_t = THINK
    think_cost: float,
) -> Tensor:  # [..., T]
    """``r_t = log π(a_t | s_t, z_{≤t}) − c·1[z_t = THINK]``."""
    return line_logp - think_cost * think.to(line_logp.dtype)


def _no_norm(line_logp: Tensor, num_tokens: Tensor) -> Tensor:
    return line_logp


def _per_token(line_logp: Tensor, num_tokens: Tensor) -> Tensor:
    return line_logp / num_tokens.clamp(min=1).to(line_logp.dtype)


REWARD_NORMS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"none": _no_norm, "per_token": _per_token}


def normalize_line_logp(
    line_logp: Tensor,  # [..., T]
    num_tokens: Tensor,  # [..., T] tokens in each expert line
    norm: RewardNorm = "none",
) -> Tensor:  # [..., T]
    """Optional per-line normalisation: ``"per_token"`` divides a line's log-likelihood by its token count."""
    if norm not in REWARD_NORMS:
        raise ValueError(f"reward_norm={norm!r}; choose one of {sorted(REWARD_NORMS)}")
    return REWARD_NORMS[norm](line_logp, num_tokens)


def discounted_returns(
    rewards: Tensor,  # [..., T]
    gamma: float = 1.0,
    mask: Tensor | None = None,  # [..., T] bool, False past the end of a trace
) -> Tensor:  # [..., T]
    """``R_t = Σ_{k≥t} γ^{k−t} r_k`` over the valid boundaries (masked rewards count as 0; masked returns are 0)."""
    if mask is not None:
        rewards = rewards * mask.to(rewards.dtype)
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[..., 0])
    for t in range(rewards.shape[-1] - 1, -1, -1):
        running = rewards[..., t] + gamma * running
        out[..., t] = running
    return out if mask is None else out * mask.to(out.dtype)


def latent_pg_loss(
    logq: Tensor,  # [N, T] log q(z_t) recomputed with grad (decision + comment tokens)
    advantages: Tensor,  # [N, T]
    mask: Tensor,  # [N, T] bool, valid boundaries
    kl: Tensor | None = None,  # [N, T] per-boundary KL(q || q_init) estimate (with grad), or None
    beta: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """REINFORCE on the latent decisions: ``−mean_t A_t·log q(z_t) + beta·mean_t KL_t`` over valid boundaries.

    The E-step is on-policy (one update per rollout), so the importance ratio is 1 and no clipping is needed.
    Returns the loss and detached diagnostics.
    """
    m = mask.to(logq.dtype)
    denom = m.sum().clamp(min=1)
    pg = -(advantages.detach() * logq * m).sum() / denom
    stats = {"pg_loss": pg.detach()}
    loss = pg
    if kl is not None:
        kl_mean = (kl * m).sum() / denom
        loss = loss + beta * kl_mean
        stats["kl"] = kl_mean.detach()
    return loss, stats
