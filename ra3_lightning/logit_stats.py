"""What the E-step reads from a model's logits, five numbers per position instead of ``V``.

Scoring expert lines under ``π`` and re-computing ``log q`` touch the ``[N, L, V]`` logits of a teacher-forced pass
only through: the logit of the next token, and the log-normaliser over the whole vocabulary, over the comment-start
(THINK) tokens, over the other tokens (ACT) and over the comment tokens. :class:`LogitStats` holds those five
``[N, L]`` tensors (at one sampling temperature); every E-step quantity is a difference of two of them:

* ``log p(token j+1)`` = ``target − lse`` (a line's log-likelihood is a sum of these);
* ``log P(ACT)`` = ``lse_act − lse`` and ``P(THINK)`` = ``exp(lse_think − lse)`` (the decision of ``q``; the
  conditional likelihood's renormaliser of a line's first token);
* a rationale token: ``target − lse`` for its first token, ``target − lse_comment`` for the rest (they are sampled
  from the softmax restricted to comment tokens).

:func:`latent_stats` computes them a chunk of positions at a time from the model's last hidden states (the LM head
runs per chunk, checkpointed under autograd: :func:`ra3_lightning.logprobs.chunked_rows`), so the fp32 ``[N, L, V]``
tensor never exists; with ``chunk_size=None`` it takes the dense logits of one ordinary forward pass. Both give the
same values (``tests/test_logit_stats.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ra3_lightning.logprobs import _at_least_fp32, _through_head, chunked_rows, run_with_head

COLUMNS = 5  # target, lse, lse_think, lse_act, lse_comment
NEG_INF = float("-inf")


@dataclass
class LogitStats:
    """Per position ``j`` of ``N`` sequences of length ``L``, of the logits divided by ``temperature``: ``target`` (the
    logit of token ``j + 1``; meaningless at the last position) and the log-sum-exp over all tokens (``lse``), the
    THINK tokens (``lse_think``), the non-THINK tokens (``lse_act``) and the comment tokens (``lse_comment``)."""

    target: Tensor  # [N, L]
    lse: Tensor
    lse_think: Tensor
    lse_act: Tensor
    lse_comment: Tensor
    temperature: float = 1.0

    @classmethod
    def from_columns(cls, columns: Tensor, temperature: float) -> LogitStats:  # columns [N, L, 5]
        return cls(*columns.unbind(-1), temperature=temperature)

    @classmethod
    def from_logits(
        cls, logits: Tensor, input_ids: Tensor, think: Tensor, comment: Tensor, temperature: float = 1.0,
        chunk_size: int = 1024,
    ) -> LogitStats:  # fmt: skip
        """From dense ``logits [N, L, V]`` (rows in chunks, so no full-size masked copy is made)."""
        N, L, V = logits.shape
        targets = next_tokens(input_ids).reshape(-1)
        args = (think.to(logits.device), comment.to(logits.device), (temperature,))
        columns = chunked_rows(_columns_at, logits.reshape(-1, V), targets, chunk_size, *args)
        return cls.from_columns(columns.view(N, L, COLUMNS), temperature)

    def token_logp(self) -> Tensor:
        """``log p(token j+1)`` at position ``j``, ``[N, L]``."""
        return self.target - self.lse

    def log_act(self) -> Tensor:
        """``log P(ACT) = log(1 − P(THINK))`` at every position, ``[N, L]``."""
        return self.lse_act - self.lse

    def p_think(self) -> Tensor:
        """``P(THINK)``, the probability mass of the comment-start tokens, ``[N, L]``."""
        return (self.lse_think - self.lse).exp()

    def rationale_logp(self, first: Tensor) -> Tensor:
        """Log-probability of token ``j+1`` as a rationale token: by the full softmax where ``first`` (``[N, L]``
        bool: it starts the rationale, so the THINK decision is in it), else by the softmax over comment tokens."""
        return self.target - torch.where(first, self.lse, self.lse_comment)


def next_tokens(input_ids: Tensor) -> Tensor:
    """``[N, L]``: the token each position predicts (position ``j`` → token ``j + 1``; 0 after the last)."""
    return torch.nn.functional.pad(input_ids[:, 1:], (0, 1))


def stat_columns(logits: Tensor, targets: Tensor, think: Tensor, comment: Tensor) -> Tensor:
    """The five columns of :class:`LogitStats` of ``n`` positions, ``[n, 5]``, from their logits ``[n, V]``."""
    target = logits.gather(-1, targets[:, None]).squeeze(-1)
    lse = logits.logsumexp(-1)
    lse_think = logits.masked_fill(~think, NEG_INF).logsumexp(-1)
    lse_act = logits.masked_fill(think, NEG_INF).logsumexp(-1)
    lse_comment = logits.masked_fill(~comment, NEG_INF).logsumexp(-1)
    return torch.stack([target, lse, lse_think, lse_act, lse_comment], dim=-1)


def _columns_at(logits: Tensor, targets: Tensor, think: Tensor, comment: Tensor, temperatures: tuple) -> Tensor:
    """:func:`stat_columns` at each temperature, side by side (in fp32 at least): ``[n, 5 · len(temperatures)]``."""
    logits = _at_least_fp32(logits)
    return torch.cat([stat_columns(logits / t, targets, think, comment) for t in temperatures], dim=-1)


def latent_stats(
    model: torch.nn.Module,
    inputs: dict[str, Any],
    think: Tensor,
    comment: Tensor,
    temperatures: tuple[float, ...] = (1.0,),
    chunk_size: int | None = 256,
) -> list[LogitStats]:
    """:class:`LogitStats` of one teacher-forced pass of ``model`` over ``inputs`` (``input_ids``, masks, positions),
    one per temperature, ``chunk_size`` positions at a time through the LM head (``None``: from dense logits)."""
    ids = inputs["input_ids"]
    think, comment = think.to(ids.device), comment.to(ids.device)
    if chunk_size is None:
        logits = model(**inputs, use_cache=False).logits
        return [LogitStats.from_logits(logits, ids, think, comment, t) for t in temperatures]
    head = model.get_output_embeddings()
    targets = next_tokens(ids)

    def forward(hidden: Tensor) -> Tensor:  # [N, L, H] -> [N, L, 5 · len(temperatures)]
        flat = hidden.reshape(-1, hidden.shape[-1])
        args = (head.weight, head.bias, _columns_at, think, comment, tuple(temperatures))
        return chunked_rows(_through_head, flat, targets.reshape(-1), chunk_size, *args).view(*ids.shape, -1)

    columns = run_with_head(model, forward, **inputs, use_cache=False)
    return [LogitStats.from_columns(c, t) for c, t in zip(columns.split(COLUMNS, -1), temperatures, strict=True)]
