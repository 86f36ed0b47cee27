"""The E-step's probabilities: ``P(THINK)``, ``log q(z_t)`` of the rationales, and ``log π(a_t | …)`` of the lines.

Pure tensor functions over :class:`~ra3_lightning.estep.layout.TokenLayout` and one teacher-forced pass (dense
logits, or :class:`~ra3_lightning.logit_stats.LogitStats` computed a chunk of positions at a time):

* :func:`log_act`, :func:`p_think`, :func:`comment_logp`: the decision and the rationale tokens under ``q``;
* :func:`score_lines`, :func:`act_log_normaliser`, :func:`expert_line_logp`: each expert line under ``π``, as the
  plain ("marginal") likelihood or conditioned on the line being code ("conditional");
* :func:`policy_logq`: ``log q`` (with grad) and ``P(THINK)`` on sampled sequences, for the latent policy gradient.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ra3_lightning.estep.layout import FIRST_COMMENT, TEACHER, TokenLayout, forward_logits, layout_inputs
from ra3_lightning.estep.vocab import EncodedTrace, LatentVocab
from ra3_lightning.logit_stats import LogitStats, latent_stats


def log_act(logits: Tensor, think: Tensor) -> Tensor:
    """``log P(ACT) = log(1 − P(THINK))`` from tempered ``logits [..., V]`` and the think mask ``[V]``."""
    return torch.logsumexp(logits.masked_fill(think, float("-inf")), -1) - torch.logsumexp(logits, -1)


def p_think(logits: Tensor, think: Tensor) -> Tensor:
    """``P(THINK)``: the softmax mass of the think tokens, ``[...]`` from ``logits [..., V]``."""
    return torch.softmax(logits, -1).masked_fill(~think, 0.0).sum(-1)


def comment_logp(logits: Tensor, tokens: Tensor, first: Tensor, comment: Tensor) -> Tensor:
    """Log-probability of rationale ``tokens [...]`` under ``q``.

    The first token of a rationale is scored by the full softmax (``log P(THINK) + log P(c_1 | THINK)``); later
    tokens by the softmax restricted to the ``comment`` mask ``[V]`` they were sampled from.
    """
    full = torch.log_softmax(logits, -1)
    restricted = torch.log_softmax(logits.masked_fill(~comment, float("-inf")), -1)
    pick = torch.where(first[..., None], full, restricted)
    return pick.gather(-1, tokens[..., None]).squeeze(-1)


def layout_stats(
    model: torch.nn.Module,
    layout: TokenLayout,
    vocab: LatentVocab,
    temperatures: tuple[float, ...] = (1.0,),
    chunk_size: int | None = None,
) -> list[LogitStats]:
    """:class:`LogitStats` of one teacher-forced pass over ``layout``, one per temperature; ``chunk_size`` positions
    at a time through the LM head (no ``[N, L, V]`` logits), or from dense logits with ``None``."""
    return latent_stats(model, layout_inputs(model, layout), vocab.think, vocab.comment, temperatures, chunk_size)


def _as_stats(logits: Tensor | LogitStats, layout: TokenLayout, vocab: LatentVocab, temperature: float) -> LogitStats:
    if not isinstance(logits, LogitStats):
        return LogitStats.from_logits(logits, layout.input_ids, vocab.think, vocab.comment, temperature)
    if logits.temperature != temperature:
        raise ValueError(f"LogitStats at temperature {logits.temperature}, but {temperature} is needed here")
    return logits


def score_lines(
    model: torch.nn.Module | None, layout: TokenLayout, num_lines: int, logits: Tensor | LogitStats | None = None
) -> Tensor:
    """``log π(a_t | prefix with rationales)`` for every expert line, ``[N, T]``, in one forward pass (or from its
    ``logits [N, L, V]`` or :class:`LogitStats`).

    ``layout`` is ``π``'s (:attr:`Rollout.layout`): in a layout with hindsight groups the token after a group is not
    predicted by the token before it, so it is rejected.
    """
    if layout.hindsight_group is not None:
        raise ValueError("score_lines takes π's layout (Rollout.layout), not q's layout with hindsight groups")
    logits = forward_logits(model, layout) if logits is None else logits
    if isinstance(logits, LogitStats):
        token_lp = logits.token_logp()[:, :-1]  # [N, L-1]
    else:  # [N, L, V]
        targets = layout.input_ids[:, 1:, None]
        token_lp = logits[:, :-1].gather(-1, targets).squeeze(-1) - logits[:, :-1].logsumexp(-1)  # [N, L-1]
    owner = layout.line_of[:, 1:]
    out = torch.zeros(token_lp.shape[0], num_lines + 1, device=token_lp.device)
    out.scatter_add_(1, torch.where(owner >= 0, owner, num_lines), token_lp * (owner >= 0))
    return out[:, :num_lines]


ActLikelihood = Literal["conditional", "marginal"]


ACT_LIKELIHOODS: tuple[str, ...] = ("conditional", "marginal")


def indent_lengths(traces: Sequence[EncodedTrace], num_generations: int, num_lines: int) -> Tensor:
    """``[N, T]`` indentation tokens of every expert line, sequence ``n`` being a sample of trace ``n // G``."""
    rows = [tr.indent_len + [0] * (num_lines - tr.num_lines) for tr in traces for _ in range(num_generations)]
    return torch.tensor(rows, dtype=torch.long)


def body_start_positions(line_of: Tensor, indent_len: Tensor) -> Tensor:
    """``[N, T]`` index of the first body token of each expert line in the token sequences.

    Args:
        line_of: ``[N, L]`` expert line of every token (-1 for BOS / rationale / padding), see :class:`TokenLayout`.
        indent_len: ``[N, T]`` indentation tokens of each line (they precede its body and belong to the line).

    Lines past a trace's end get ``L - 1`` (masked by the caller).
    """
    n, length = line_of.shape
    lines = indent_len.shape[1]
    idx = torch.arange(length, device=line_of.device).expand(n, length)
    first = torch.full((n, lines + 1), length, dtype=torch.long, device=line_of.device)
    first = first.scatter_reduce(1, torch.where(line_of >= 0, line_of, lines), idx, "amin")[:, :lines]  # [N, T]
    return (first + indent_len.to(first.device)).clamp(max=length - 1)


def act_log_normaliser(log_act_at: Tensor, layout: TokenLayout, indent_len: Tensor, think: Tensor) -> Tensor:
    """``log(1 − P_π(THINK))`` where each expert line's first body token is predicted, ``[N, T]``.

    Subtracting it from a line's log-likelihood renormalises that first token over the tokens that do not start a
    comment: ``log π(a_t | s_t, z_t)`` given that the line is code, not (another) rationale. A line whose own first
    token starts a comment (an original comment of the trace) keeps its marginal likelihood (normaliser 0).

    Args:
        log_act_at: ``[N, L]`` ``log P_π(ACT)`` at every position of the annotated sequences (position ``j``
            predicts token ``j + 1``): :meth:`LogitStats.log_act`, or :func:`log_act` of dense logits.
        layout: The sequences they are for.
        indent_len: ``[N, T]`` from :func:`indent_lengths`.
        think: ``[V]`` comment-start token mask.
    """
    dev = log_act_at.device
    body = body_start_positions(layout.line_of, indent_len).to(dev)  # [N, T]
    normaliser = log_act_at.gather(1, (body - 1).clamp(min=0))  # [N, T]
    own_comment = think.to(dev)[layout.input_ids.to(dev).gather(1, body)]  # [N, T]
    return torch.where(own_comment, 0.0, normaliser)


def expert_line_logp(
    logits: Tensor | LogitStats,  # [N, L, V] of π over layout, or their LogitStats at temperature 1
    layout: TokenLayout,
    traces: Sequence[EncodedTrace],
    num_generations: int,
    vocab: LatentVocab,
    act_likelihood: ActLikelihood = "conditional",
) -> Tensor:  # [N, T]
    """The E-step's ``log π(a_t | …)`` of every expert line: ``"marginal"`` is the plain token log-likelihood
    (:func:`score_lines`: the first token competes with π's comment-start tokens, so "no comment here" is charged
    ``log(1 − P_π(#))``), ``"conditional"`` is ``log π(a_t | s_t, z_t)`` (:func:`act_log_normaliser` removed)."""
    if act_likelihood not in ACT_LIKELIHOODS:
        raise ValueError(f"act_likelihood={act_likelihood!r}; choose one of {list(ACT_LIKELIHOODS)}")
    stats = _as_stats(logits, layout, vocab, 1.0)
    num_lines = max(tr.num_lines for tr in traces)
    line_logp = score_lines(None, layout, num_lines, stats)
    if act_likelihood == "marginal":
        return line_logp
    indent = indent_lengths(traces, num_generations, num_lines)
    return line_logp - act_log_normaliser(stats.log_act(), layout, indent, vocab.think)


@dataclass
class PolicyTerms:
    """``log q(z_t)`` (with grad) and ``P(THINK)`` of the policy on the sampled annotated sequences, ``[N, T]``."""

    logq: Tensor
    p_think: Tensor


def policy_logq(
    model: torch.nn.Module,
    layout: TokenLayout,
    think: Tensor,  # [N, T] bool
    line_mask: Tensor,  # [N, T] bool
    vocab: LatentVocab,
    temperature: float = 1.0,
    logits: Tensor | LogitStats | None = None,
    chunk_size: int | None = None,
) -> PolicyTerms:
    """Re-compute ``log q(z_t)`` for the sampled decisions and rationales in one teacher-forced pass (with grad).

    For ``q`` pass :attr:`Rollout.q_layout` (the same as ``Rollout.layout`` without hindsight); ``π``'s own terms (the
    KL reference, the prior ``p(z_t | s_t)``) come from ``Rollout.layout``. ``logits`` (``[N, L, V]``, untempered)
    or their :class:`LogitStats` at ``temperature`` skip the forward pass; ``chunk_size`` runs it through the LM
    head that many positions at a time (see :func:`layout_stats`).
    """
    if logits is None:
        stats = layout_stats(model, layout, vocab, (temperature,), chunk_size)[0]
    else:
        stats = _as_stats(logits, layout, vocab, temperature)
    dev = stats.lse.device
    think, line_mask = think.to(dev), line_mask.to(dev)
    n_idx = torch.arange(stats.lse.shape[0], device=dev)[:, None]
    decision = layout.decision_pos.to(dev)  # [N, T]
    logq = torch.where(think, 0.0, stats.log_act()[n_idx, decision])  # [N, T]
    sampled = layout.kind[:, 1:] != TEACHER  # [N, L-1] token j+1 is a sampled rationale token
    if sampled.any():
        rows, cols = sampled.nonzero(as_tuple=True)
        first = torch.nn.functional.pad(layout.kind[:, 1:] == FIRST_COMMENT, (0, 1))  # [N, L]
        lp = stats.rationale_logp(first.to(dev))[rows, cols]
        logq = logq.index_put((rows, layout.owner[rows, cols + 1]), lp, accumulate=True)
    return PolicyTerms(logq * line_mask, stats.p_think()[n_idx, decision] * line_mask)
