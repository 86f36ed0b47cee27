"""Latent rollouts: ``q`` walks the line boundaries of expert traces and inserts rationales.

For ``B`` traces × ``G`` samples (sequence ``n = b·G + g``) :func:`rollout` walks the line boundaries with one
engine (:mod:`ra3_lightning.estep.engines`): it feeds the expert line tokens (teacher-forced), feeds the next line's
indentation, samples THINK/ACT from ``P(THINK)`` (one masked softmax sum), for THINK samples a rationale of at most
``max_latent_tokens`` tokens ending at a newline (a newline is forced at the cap), then continues with the expert
line. The result (:class:`Rollout`) holds the decisions, the rationale tokens and the annotated token layouts.
**Hindsight** (``hindsight_lines = k > 0``, a posterior ``q(z_t | s_t, a_{t:t+k})``): at boundary ``t``, before
deciding, ``q``'s stream gets a *hindsight group*: the tokens of expert lines ``t..t+k-1`` exactly as they will be fed
(``encode_line``'s indentation + body, no rendering), then line ``t``'s indentation, on which ``q`` decides and writes
its rationale. Near the end of a trace the block holds the lines that are left (the last line's block is that line
alone; no end marker). Once the rationale is written the engine masks the group's cache slots from every later token
and rewinds ``position_ids``; the visible stream then gets the indentation (and the rationale) again. So the group
sees the prefix at its natural positions, and every visible token sees exactly, position for position, ``π``'s
sequence (:attr:`Rollout.layout`, identical to a ``k = 0`` rollout with the same decisions and rationales; no
position ever points backwards). ``q``'s own layout (:attr:`Rollout.q_layout`) holds the groups, their explicit
positions and :attr:`TokenLayout.hindsight_group`, from which :func:`forward_logits` builds the 4-D attention mask
of the teacher-forced pass (SDPA or eager attention). Raw tokens rather than a comment rendering (``# next: ...``):
they need no per-language text, ``q`` reads them in the representation it has for code, and a rendered comment
would invite ``q``'s comment prior to continue it (copying the next line into the rationale verbatim).

**Waves** (``engine="wave"``, ``k = 0`` only): between two THINKs the token stream is the expert code, known in
advance, so one teacher-forced pass over the rest of every trace gives ``P(THINK)`` at each later boundary exactly as
long as the decisions before it were ACT. :class:`_WaveWalker` samples the decisions left to right from that pass;
at a sequence's first THINK it hides the fed tokens after the boundary's indentation (the cache up to there is
valid), writes the rationale on that prefix, and the next pass starts from that line. Forward calls scale with the
THINKs (and rationale tokens), not with the lines.

**Randomness** is fixed per boundary, not per call (:class:`Draws`): before walking, the rollout draws one uniform per
(sequence, boundary) for the decision (THINK iff ``u < P(THINK)``) and one per (sequence, boundary, token) for the
rationale (inverse CDF, :func:`inverse_cdf`). Every engine therefore samples the same rollout from the same
generator state, whatever order it reaches the boundaries in.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from ra3_lightning.estep.engines import ENGINES, KVCacheEngine, resolve_engine
from ra3_lightning.estep.layout import COMMENT, FIRST_COMMENT, TEACHER, Seg, SeqBuilder, TokenLayout, build_layout
from ra3_lightning.estep.scoring import comment_logp, log_act, p_think
from ra3_lightning.estep.text import Annotated, insert_lines
from ra3_lightning.estep.vocab import EncodedTrace, LatentVocab


@dataclass
class Rollout:
    """What a latent rollout produced; sequence ``n`` is sample ``n % G`` of trace ``n // G``.

    Attributes:
        traces: The ``B`` encoded traces.
        num_generations: ``G``.
        think: ``[N, T]`` bool decisions.
        line_mask: ``[N, T]`` bool, False past a trace's last line.
        logq: ``[N, T]`` ``log q(z_t)`` under the rollout policy (0 where masked).
        p_think: ``[N, T]`` ``P(THINK)`` at each boundary.
        line_logp: ``[N, T]`` log-likelihood of each expert line under the rollout model (temperature 1).
        rationales: ``[N][T]`` sampled rationale ids (indentation excluded; empty for ACT).
        layout: The annotated token sequences: what ``π`` scores, annotation writes and the M-step trains on.
        q_layout: ``q``'s sequences, for :func:`policy_logq`: ``layout`` itself without hindsight; with it, ``layout``
            plus the hidden hindsight groups (explicit positions and :attr:`TokenLayout.hindsight_group`).
        seconds: Wall-clock time of the rollout.
    """

    traces: list[EncodedTrace]
    num_generations: int
    think: Tensor
    line_mask: Tensor
    logq: Tensor
    p_think: Tensor
    line_logp: Tensor
    rationales: list[list[list[int]]]
    layout: TokenLayout
    q_layout: TokenLayout
    seconds: float

    def trace_of(self, n: int) -> EncodedTrace:
        return self.traces[n // self.num_generations]

    def annotated(self, n: int, vocab: LatentVocab) -> Annotated:
        """The annotated text of sample ``n`` with the spans of its inserted rationale lines."""
        trace = self.trace_of(n)
        inserted = {
            t: vocab.tokenizer.decode(trace.indent[t] + ids)
            for t, ids in enumerate(self.rationales[n])
            if self.think[n, t]
        }
        return insert_lines(trace.text, inserted)

    @property
    def num_tokens(self) -> Tensor:  # [N, T] tokens per expert line
        line_of = self.layout.line_of.cpu()  # [N, L]
        out = torch.zeros(line_of.shape[0], self.think.shape[1] + 1, dtype=torch.long)
        out.scatter_add_(1, torch.where(line_of >= 0, line_of, self.think.shape[1]), torch.ones_like(line_of))
        return out[:, :-1]


@dataclass
class Draws:
    """The uniforms a rollout samples with, one per (sequence, boundary) and per (sequence, boundary, token).

    Attributes:
        decide: ``[N, T]``: boundary ``t`` of sequence ``n`` is a THINK iff ``decide[n, t] < P(THINK)``.
        tokens: ``[N, T, M]``: token ``k`` of the rationale at ``(n, t)`` is :func:`inverse_cdf` of ``tokens[n, t, k]``.
    """

    decide: Tensor
    tokens: Tensor

    @classmethod
    def sample(cls, n: int, lines: int, max_latent_tokens: int, generator: torch.Generator | None) -> Draws:
        """All of a rollout's uniforms, in a fixed order (decisions, then tokens) that no engine changes."""
        decide = torch.rand(n, lines, generator=generator)
        return cls(decide, torch.rand(n, lines, max_latent_tokens, generator=generator))


def inverse_cdf(probs: Tensor, u: Tensor) -> Tensor:  # [N, V], [N] -> [N]
    """The token whose slice of the cumulative distribution holds ``u · total``: token ``i`` iff
    ``cdf[i-1] <= u · cdf[-1] < cdf[i]``. A token of zero probability is never drawn (a ``u`` that rounding pushes past
    the end goes to the last token with mass)."""
    cdf = probs.cumsum(-1)  # [N, V]
    idx = torch.searchsorted(cdf, u.to(cdf)[:, None] * cdf[:, -1:], right=True).squeeze(-1)  # [N]
    last = probs.shape[-1] - 1 - (probs > 0).flip(-1).int().argmax(-1)  # [N] the last token with mass
    return torch.minimum(idx, last)


class _Walker:
    """State of one rollout: engine, per-sequence builders, the pending segments and running records.

    With ``hindsight_lines = k > 0`` every boundary ``t`` opens a hindsight group in ``q``'s stream: the tokens of
    expert lines ``t..t+k-1`` (fewer at the end of the trace), line ``t``'s indentation, then the decision and the
    rationale draft. Once the rationale is written, :meth:`hide` masks the group from every later token and rewinds
    the positions; the visible stream then gets the indentation (and the rationale) again, so that it is token for
    token, position for position, ``π``'s layout.
    """

    def __init__(
        self, engine: KVCacheEngine, traces, vocab, num_generations, max_latent_tokens, temperature, draws,
        hindsight_lines,
    ) -> None:  # fmt: skip
        self.traces, self.vocab, self.temperature, self.draws = traces, vocab, temperature, draws
        self.k, self.max_latent_tokens = hindsight_lines, max_latent_tokens
        self.n = len(traces) * num_generations
        self.trace = [traces[i // num_generations] for i in range(self.n)]
        self.engine = engine
        dev = self.engine.device
        self.think_mask, self.comment_mask, self.ends = (m.to(dev) for m in (vocab.think, vocab.comment, vocab.ends))
        lines = max(tr.num_lines for tr in traces)
        self.seqs = [SeqBuilder(tr.num_lines) for tr in self.trace]  # π's layout
        self.qseqs = [SeqBuilder(tr.num_lines) for tr in self.trace] if self.k else self.seqs  # q's layout
        self.pending: list[list[Seg]] = [[Seg([vocab.bos_id])] for _ in range(self.n)]  # waiting to be fed
        self.last_logits = torch.zeros(self.n, len(vocab.think), device=dev)  # [N, V] at the last token fed
        self.visible_logits = torch.zeros(self.n, len(vocab.think), device=dev)  # [N, V] at the last visible one
        self.group_slots: list[list[int]] = [[] for _ in range(self.n)]  # cache slots of the open hindsight groups
        self._kind_last = [FIRST_COMMENT] * self.n
        self.think = torch.zeros(self.n, lines, dtype=torch.bool)
        self.logq = torch.zeros(self.n, lines)
        self.p_think = torch.zeros(self.n, lines)
        self.line_logp = torch.zeros(self.n, lines)
        self.rationales: list[list[list[int]]] = [[[] for _ in range(lines)] for _ in range(self.n)]

    def feed(self, segments: list[list[Seg]]) -> list[list[float]]:
        """Feed each sequence's segments (visible ones first); return the temperature-1 log-prob of every fed token."""
        chunks = [[i for seg in segs for i in seg.ids] for segs in segments]
        if not any(chunks):
            return [[] for _ in chunks]
        first_slot = self.engine.num_slots
        logits = self.engine.feed(chunks)  # [L, C, V] of the engine's live sequences
        token_lp = self.fed_logp(logits, chunks)
        for n, segs in enumerate(segments):
            self.record(n, segs, first_slot)
        for i, n in enumerate(self.engine.live):
            visible = sum(len(seg.ids) for seg in segments[n] if seg.group < 0)
            if chunks[n]:
                self.last_logits[n] = logits[i, len(chunks[n]) - 1]
            if visible and self.k:
                self.visible_logits[n] = logits[i, visible - 1]
        return token_lp

    def fed_logp(self, logits: Tensor, chunks: list[list[int]]) -> list[list[float]]:
        """The temperature-1 log-prob of every fed token, from the logits ``[L, C, V]`` of the engine's live
        sequences (the first token of a chunk is predicted by :attr:`last_logits`)."""
        live = self.engine.live
        ids = torch.tensor([chunks[n] + [0] * (logits.shape[1] - len(chunks[n])) for n in live], device=logits.device)
        first = self.last_logits[live]  # [L, V] predicting token 0 of each chunk
        lp0 = first.gather(-1, ids[:, :1]) - first.logsumexp(-1, keepdim=True)  # [L, 1]
        rest = logits[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1) - logits[:, :-1].logsumexp(-1)  # [L, C-1]
        token_lp = torch.cat([lp0, rest], dim=1).cpu()  # [L, C]
        out: list[list[float]] = [[] for _ in chunks]
        for i, n in enumerate(live):
            out[n] = token_lp[i, : len(chunks[n])].tolist()
        return out

    def record(self, n: int, segs: list[Seg], first_slot: int) -> None:
        """Add fed segments to ``π``'s layout (the visible ones) and to ``q``'s (all; there, a visible copy of a
        rationale is context, not ``q``'s sample), and note the cache slots of hindsight groups."""
        slot = first_slot
        for seg in segs:
            if seg.group < 0:
                self.seqs[n].add(*seg)
            if self.k:
                copy = seg.group < 0 and seg.kind != TEACHER
                kind, owner = (TEACHER, -1) if copy else (seg.kind, seg.owner)
                self.qseqs[n].add(seg.ids, seg.line, kind, owner, seg.group)
            if seg.group >= 0:
                self.group_slots[n] += range(slot, slot + len(seg.ids))
            slot += len(seg.ids)

    def add_line_logp(self, segments: list[list[Seg]], token_lp: list[list[float]]) -> None:
        for n, segs in enumerate(segments):
            self.add_seq_line_logp(n, segs, token_lp[n])

    def add_seq_line_logp(self, n: int, segs: list[Seg], token_lp: list[float]) -> None:
        """Add the log-probs of the fed ``segs`` of sequence ``n`` to the expert lines they belong to."""
        i = 0
        for seg in segs:
            if seg.line >= 0:
                self.line_logp[n, seg.line] += sum(token_lp[i : i + len(seg.ids)])
            i += len(seg.ids)

    def walk(self) -> None:
        """Every boundary in turn, all sequences together."""
        for t in range(self.think.shape[1]):
            self.step(t)

    def step(self, t: int) -> None:
        """Boundary ``t``: feed pending + the boundary's context, decide, write rationales, queue the line."""
        active = [t < tr.num_lines for tr in self.trace]
        segments = [self.pending[n] + (self.boundary(n, t) if active[n] else []) for n in range(self.n)]
        token_lp = self.feed(segments)
        self.add_line_logp(segments, token_lp)
        think = self.decide(t, torch.tensor(active))
        comments = self.write_rationales([t if think[n] else -1 for n in range(self.n)])
        if self.k:
            self.hide(t, think, comments)
        for n in range(self.n):
            self.pending[n] = self.queue_line(n, t, bool(think[n]), comments[n], token_lp[n]) if active[n] else []

    def boundary(self, n: int, t: int) -> list[Seg]:
        """What is fed before ``z_t`` is decided: line ``t``'s indentation, after the hindsight block if ``k > 0``."""
        tr = self.trace[n]
        if not self.k:
            return [Seg(tr.indent[t])]
        block = [Seg(tr.indent[j] + tr.body[j], group=t) for j in range(t, min(t + self.k, tr.num_lines))]
        return [*block, Seg(tr.indent[t], group=t)]

    def queue_line(self, n: int, t: int, think: bool, comment: list[int], token_lp: list[float]) -> list[Seg]:
        """The segments fed next for line ``t``: the rest of the rationale (THINK), the indentation and the body."""
        tr = self.trace[n]
        line = [Seg(tr.indent[t], t), Seg(tr.body[t], t)]
        if think:
            self.rationales[n][t] = comment
            return self.rationale_segments(n, t, comment) + line
        if self.k:  # the indentation fed in the hindsight group is hidden: the line feeds its own
            return line
        self.claim_indent(n, t, token_lp)
        return line[1:]

    def rationale_segments(self, n: int, t: int, comment: list[int]) -> list[Seg]:
        """The rationale's part of the visible stream still to feed: its last token (``k = 0``), or, after a
        hindsight group, all of it again, its indentation first."""
        last = Seg(comment[-1:], -1, self._kind_last[n], t)
        if not self.k:
            return [last]
        head = [Seg(comment[:1], -1, FIRST_COMMENT, t), Seg(comment[1:-1], -1, COMMENT, t)] if comment[1:] else []
        return [Seg(self.trace[n].indent[t]), *head, last]

    def claim_indent(self, n: int, t: int, token_lp: list[float]) -> None:
        """ACT without hindsight: the indentation fed before the decision is line ``t``'s; relabel it, count it."""
        width, seq = len(self.trace[n].indent[t]), self.seqs[n]
        for j in range(len(seq.ids) - width, len(seq.ids)):
            seq.line_of[j] = t
        self.line_logp[n, t] += sum(token_lp[len(token_lp) - width :])

    def hide(self, t: int, think: Tensor, comments: list[list[int]]) -> None:
        """Close boundary ``t``'s hindsight groups: ``q``'s layout gets each rationale's last token (sampled, never
        fed), the engine masks the groups' slots and rewinds positions, and the next visible token is predicted from
        the last visible one."""
        for n in range(self.n):
            if think[n]:
                self.qseqs[n].add(comments[n][-1:], -1, self._kind_last[n], t, t)
        rows = [n for n in range(self.n) if self.group_slots[n]]
        self.engine.hide(self.group_slots)
        self.last_logits[rows] = self.visible_logits[rows]
        self.group_slots = [[] for _ in range(self.n)]

    def decide(self, t: int, active: Tensor) -> Tensor:  # [N] bool
        logits = self.last_logits / self.temperature  # [N, V]
        p = p_think(logits, self.think_mask).cpu()
        think = active & (self.draws.decide[:, t] < p)
        for n in range(self.n):
            if active[n]:
                self.qseqs[n].decision_pos[t] = len(self.qseqs[n].ids) - 1
            if active[n] and self.k:  # in π's layout: the last token of line t's indentation, fed next
                self.seqs[n].decision_pos[t] = len(self.seqs[n].ids) + len(self.trace[n].indent[t]) - 1
        self.think[:, t], self.p_think[:, t] = think, torch.where(active, p, 0.0)
        self.logq[:, t] = torch.where(active & ~think, log_act(logits, self.think_mask).cpu(), 0.0)
        return think

    def sample(self, logits: Tensor, allowed: Tensor, u: Tensor) -> Tensor:  # [N, V], [V], [N] -> [N] on the CPU
        probs = torch.softmax(logits.masked_fill(~allowed, float("-inf")), -1)
        return inverse_cdf(probs, u.to(probs.device)).cpu()

    def add_logq(self, rows: Tensor, owner: Tensor, lp: Tensor) -> None:
        """``logq[n, owner[n]] += lp[n]`` for every ``n`` where ``rows`` (``[N]`` bool) holds."""
        idx = rows.nonzero().flatten()
        self.logq[idx, owner[idx]] += lp.cpu()[idx]

    def append(self, comments: list[list[int]], open_: Tensor, tok: Tensor, kind: int) -> Tensor:  # [N] bool
        """Append ``tok[n]`` (of ``kind``) to each open rationale; return which stay open (not ended)."""
        for n in open_.nonzero().flatten().tolist():
            comments[n].append(int(tok[n]))
            self._kind_last[n] = kind
        return open_ & ~self.ends.cpu()[tok]

    def write_rationales(self, at: list[int]) -> list[list[int]]:
        """Sample a rationale for every sequence ``n`` that thinks at boundary ``at[n]`` (-1: it does not); all but
        its last token are fed here (in the hindsight group when ``k > 0``)."""
        comments: list[list[int]] = [[] for _ in range(self.n)]
        self._kind_last = [FIRST_COMMENT] * self.n
        open_, owner = torch.tensor(at) >= 0, torch.tensor(at).clamp(min=0)  # [N], [N]
        if not open_.any():
            return comments
        u = self.draws.tokens[torch.arange(self.n), owner]  # [N, M] the uniforms of each rationale's tokens
        logits = self.last_logits / self.temperature
        tok = self.sample(logits, self.think_mask, u[:, 0])
        first = torch.ones(self.n, dtype=torch.bool, device=logits.device)
        self.add_logq(open_, owner, comment_logp(logits, tok.to(logits.device), first, self.comment_mask))
        open_ = self.append(comments, open_, tok, FIRST_COMMENT)
        k = 1
        while open_.any():
            kind = FIRST_COMMENT if k == 1 else COMMENT
            self.feed([[self.draft(comments[n], kind, at[n])] if open_[n] else [] for n in range(self.n)])
            k += 1
            logits = self.last_logits / self.temperature
            if k == self.max_latent_tokens:  # the cap: force the newline (not a decision of q)
                open_ = self.append(comments, open_, torch.full((self.n,), self.vocab.newline_id), TEACHER)
                continue
            tok = self.sample(logits, self.comment_mask, u[:, k - 1])
            self.add_logq(open_, owner, comment_logp(logits, tok.to(logits.device), ~first, self.comment_mask))
            open_ = self.append(comments, open_, tok, COMMENT)
        return comments

    def draft(self, comment: list[int], kind: int, t: int) -> Seg:
        """The rationale's last token so far, fed to sample the next (in boundary ``t``'s hindsight group)."""
        return Seg(comment[-1:], -1, kind, t, t if self.k else -1)

    def finish(self, num_generations: int, seconds_start: float) -> Rollout:
        token_lp = self.feed(self.pending)
        self.add_line_logp(self.pending, token_lp)
        lines = self.think.shape[1]
        mask = torch.tensor([[t < tr.num_lines for t in range(lines)] for tr in self.trace])
        layout = build_layout(self.seqs, self.vocab.pad_id, lines, self.engine.device)
        q_layout = build_layout(self.qseqs, self.vocab.pad_id, lines, self.engine.device, True) if self.k else layout
        return Rollout(
            traces=list(self.traces),
            num_generations=num_generations,
            think=self.think,
            line_mask=mask,
            logq=self.logq,
            p_think=self.p_think,
            line_logp=self.line_logp,
            rationales=self.rationales,
            layout=layout,
            q_layout=q_layout,
            seconds=time.perf_counter() - seconds_start,
        )


_LOOKAHEAD = 2.0  # a wave plans this many expected THINK distances ahead (at least one line)


class _Wave(NamedTuple):
    """What one wave feeds for a sequence: its segments, and per boundary ``(t, index of the segment of t's
    indentation, index of t's first body token in the chunk)``."""

    segs: list[Seg]
    bounds: list[tuple[int, int, int]]


class _WaveWalker(_Walker):
    """The wave walk (``k = 0``): each wave feeds, for every sequence, what is pending and then the rest of its trace
    as if every boundary were ACT (one forward call, suffixes right-padded), decides the boundaries left to right
    from those logits up to the first THINK, hides the fed tokens after that boundary's indentation (the engine
    gives their positions back; :meth:`WaveEngine.compact` drops them), and writes the rationales of all sequences
    that think on their valid prefixes. The next wave starts at the line after each THINK.

    The pieces the line walk builds — the layout segments, ``decision_pos``, line log-likelihoods, ``log q`` — are
    built here from the same segments, so a wave rollout equals a line rollout with the same :class:`Draws`.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.next_line = [0] * self.n  # the first boundary of each sequence not decided yet
        self.decided = 0  # boundaries decided so far

    def walk(self) -> None:
        while any(self.pending[n] or self.next_line[n] < tr.num_lines for n, tr in enumerate(self.trace)):
            self.wave()

    def wave(self) -> None:
        """One forward call over the rest of every live trace (at most :meth:`WaveEngine.window` tokens and
        :meth:`lines_per_wave` lines), the decisions up to each first THINK, then the rationales of those that think."""
        live, first = list(self.engine.live), self.engine.num_slots
        width, lines = self.engine.window(len(self.vocab.think)), self.lines_per_wave()
        plans = {n: self.plan(n, width, lines) for n in live}
        chunks = [[i for seg in plans[n].segs for i in seg.ids] if n in plans else [] for n in range(self.n)]
        logits = self.engine.feed(chunks)  # [L, C, V] of the live sequences
        token_lp = self.fed_logp(logits, chunks)
        at, hidden = [-1] * self.n, [range(0)] * self.n
        for i, n in enumerate(live):
            before = self.boundary_logits(n, logits[i], plans[n].bounds)  # [b, V]
            cut = self.decide_wave(n, plans[n].bounds, before)
            keep = self.accept(n, plans[n], cut, token_lp[n])
            self.last_logits[n] = before[cut] if cut >= 0 else logits[i, keep - 1]
            hidden[n] = range(first + keep, first + len(chunks[n]))
            at[n] = plans[n].bounds[cut][0] if cut >= 0 else -1
        self.engine.hide(hidden)
        self.engine.retire([n for n in live if at[n] < 0 and self.next_line[n] == self.trace[n].num_lines])
        self.engine.compact()
        comments = self.write_rationales(at)
        for n in live:
            if at[n] >= 0:
                self.pending[n], self.next_line[n] = self.queue_line(n, at[n], True, comments[n], []), at[n] + 1

    def lines_per_wave(self) -> int:
        """Lines a wave plans ahead: all until a THINK is seen, then ``_LOOKAHEAD / (THINK rate so far)`` (the lines
        past a sequence's THINK are computed for nothing). Any value gives the same rollout."""
        thinks = int(self.think.sum())
        return self.think.shape[1] if not thinks else math.ceil(_LOOKAHEAD * self.decided / thinks)

    def plan(self, n: int, width: int, max_lines: int) -> _Wave:
        """What is pending for sequence ``n``, then the lines not decided yet as ACT, as many as fit in ``width``
        tokens and ``max_lines`` lines (at least one)."""
        tr, segs, bounds = self.trace[n], list(self.pending[n]), []
        size = sum(len(seg.ids) for seg in segs)
        for t in range(self.next_line[n], tr.num_lines):
            if bounds and (size + len(tr.indent[t]) + len(tr.body[t]) > width or len(bounds) == max_lines):
                break
            size += len(tr.indent[t])
            bounds.append((t, len(segs), size))
            segs += [Seg(tr.indent[t], t), Seg(tr.body[t], t)]
            size += len(tr.body[t])
        return _Wave(segs, bounds)

    def boundary_logits(self, n: int, logits: Tensor, bounds: list[tuple[int, int, int]]) -> Tensor:  # [b, V]
        """The logits that decide each planned boundary of sequence ``n``: at the token before the line's body, from
        the wave's logits ``[C, V]`` (or :attr:`last_logits` where the body starts the chunk)."""
        cols = torch.tensor([at for _, _, at in bounds], dtype=torch.long, device=logits.device)  # [b]
        return torch.where((cols > 0)[:, None], logits[(cols - 1).clamp(min=0)], self.last_logits[n])

    def decide_wave(self, n: int, bounds: list[tuple[int, int, int]], before: Tensor) -> int:
        """Decide sequence ``n``'s planned boundaries in order up to its first THINK from their logits ``[b, V]``;
        return that boundary's index in ``bounds`` (-1: all ACT). The boundaries after it were computed on an ACT
        that did not happen and stay undecided."""
        p, log_a = (f(before / self.temperature, self.think_mask).cpu() for f in (p_think, log_act))  # [b], [b]
        for i, (t, _, _) in enumerate(bounds):
            think = bool(self.draws.decide[n, t] < p[i])
            self.think[n, t], self.p_think[n, t] = think, p[i]
            self.decided += 1
            if think:
                return i
            self.logq[n, t] = log_a[i]
        return -1

    def accept(self, n: int, plan: _Wave, cut: int, token_lp: list[float]) -> int:
        """Record what stands of sequence ``n``'s wave — up to the THINK boundary's indentation (context then, not
        line ``t``'s) or all of it — in the layout, ``decision_pos`` and the line log-likelihoods, and move on past
        it; return its number of tokens."""
        segs, bounds = plan.segs, plan.bounds
        if cut >= 0:
            t, seg, keep = bounds[cut]
            segs, bounds = [*segs[:seg], Seg(self.trace[n].indent[t])], bounds[: cut + 1]
        else:
            keep = len(token_lp)
            self.next_line[n] = bounds[-1][0] + 1 if bounds else self.next_line[n]
        base = len(self.seqs[n].ids)
        self.record(n, segs, 0)
        for t, _, at in bounds:
            self.seqs[n].decision_pos[t] = base + at - 1
        self.add_seq_line_logp(n, segs, token_lp)
        self.pending[n] = []
        return keep


@torch.no_grad()
def rollout(
    model: torch.nn.Module,
    traces: Sequence[EncodedTrace],
    vocab: LatentVocab,
    num_generations: int = 4,
    max_latent_tokens: int = 16,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    engine: str = "auto",
    hindsight_lines: int = 0,
) -> Rollout:
    """Sample ``num_generations`` latent annotations of every trace with ``model`` as the latent policy ``q``.

    Args:
        model: A Hugging Face causal LM (``q``).
        traces: Traces from :func:`encode_trace`.
        vocab: :meth:`LatentVocab.from_tokenizer` of the model's tokenizer.
        num_generations: ``G`` rollouts per trace.
        max_latent_tokens: Most tokens in a rationale, its newline included (>= 2).
        temperature: Sampling temperature of the THINK decision and the rationale tokens.
        generator: CPU random generator (seed it for reproducible rollouts).
        engine: ``"wave"`` (one forward call per THINK; ``hindsight_lines = 0`` only), ``"kv"`` (one KV cache, one
            call per line), ``"reencode"`` (the naive baseline) or ``"auto"`` (``"wave"``, or ``"kv"`` with hindsight).
            All sample the same rollout from the same generator state.
        hindsight_lines: ``k``: before deciding at line ``t``, ``q`` sees expert lines ``t..t+k-1`` in a group hidden
            from every later token (``Rollout.layout`` never contains it; ``Rollout.q_layout`` does).
    """
    if isinstance(hindsight_lines, bool) or not isinstance(hindsight_lines, int) or hindsight_lines < 0:
        raise ValueError(f"hindsight_lines={hindsight_lines!r} must be an integer >= 0 (0: no hindsight)")
    if max_latent_tokens < 2:
        raise ValueError(f"max_latent_tokens={max_latent_tokens} must be >= 2 (a comment marker and a newline)")
    engine = resolve_engine(engine, hindsight_lines)
    start = time.perf_counter()
    n, lines = len(traces) * num_generations, max(tr.num_lines for tr in traces)
    draws = Draws.sample(n, lines, max_latent_tokens, generator)
    walker_cls = _WaveWalker if ENGINES[engine].waves else _Walker
    eng = ENGINES[engine](model, n, vocab.pad_id)
    walker = walker_cls(eng, traces, vocab, num_generations, max_latent_tokens, temperature, draws, hindsight_lines)
    walker.walk()
    return walker.finish(num_generations, start)


class ThinkBias(torch.nn.Module):
    """An HF causal LM with ``bias`` added to the logits of THINK tokens: rollouts of an untrained model then think
    often enough to exercise (benchmark, test) the rationale path. Not for training."""

    def __init__(self, model: torch.nn.Module, think: Tensor, bias: float) -> None:
        super().__init__()
        self.model, self.config = model, model.config
        self.register_buffer("bias", think.float() * bias)

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, use_cache=False):
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
        )
        out.logits = out.logits + self.bias
        return out
