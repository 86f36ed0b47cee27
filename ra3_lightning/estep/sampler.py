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
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ra3_lightning.estep.engines import ENGINES
from ra3_lightning.estep.layout import COMMENT, FIRST_COMMENT, TEACHER, Seg, SeqBuilder, TokenLayout, build_layout
from ra3_lightning.estep.scoring import comment_logp, log_act, p_think
from ra3_lightning.estep.text import Annotated, insert_lines
from ra3_lightning.estep.vocab import EncodedTrace, LatentVocab


@dataclass
class Rollout:
    """What a latent rollout produced; sequence ``n`` is sample ``n % G`` of trace ``n // G``.

    Attributes:
        traces: The ``B`` encoded traces.
        num_samples: ``G``.
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
    num_samples: int
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
        return self.traces[n // self.num_samples]

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


class _Walker:
    """State of one rollout: engine, per-sequence builders, the pending segments and running records.

    With ``hindsight_lines = k > 0`` every boundary ``t`` opens a hindsight group in ``q``'s stream: the tokens of
    expert lines ``t..t+k-1`` (fewer at the end of the trace), line ``t``'s indentation, then the decision and the
    rationale draft. Once the rationale is written, :meth:`hide` masks the group from every later token and rewinds
    the positions; the visible stream then gets the indentation (and the rationale) again, so that it is token for
    token, position for position, ``π``'s layout.
    """

    def __init__(self, model, traces, vocab, num_samples, temperature, generator, engine, hindsight_lines=0) -> None:
        self.traces, self.vocab, self.temperature, self.generator = traces, vocab, temperature, generator
        self.k = hindsight_lines
        self.n = len(traces) * num_samples
        self.trace = [traces[i // num_samples] for i in range(self.n)]
        self.engine = ENGINES[engine](model, self.n, vocab.pad_id)
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
        logits = self.engine.feed(chunks)  # [N, C, V]
        prev = torch.cat([self.last_logits[:, None], logits[:, :-1]], dim=1)  # [N, C, V] logits predicting each slot
        ids = torch.tensor([c + [0] * (logits.shape[1] - len(c)) for c in chunks], device=logits.device)
        token_lp = torch.log_softmax(prev, -1).gather(-1, ids[..., None]).squeeze(-1).cpu()  # [N, C]
        visible = [sum(len(seg.ids) for seg in segs if seg.group < 0) for segs in segments]
        for n, (segs, chunk) in enumerate(zip(segments, chunks, strict=True)):
            self.record(n, segs, first_slot)
            if chunk:
                self.last_logits[n] = logits[n, len(chunk) - 1]
            if visible[n] and self.k:
                self.visible_logits[n] = logits[n, visible[n] - 1]
        return [token_lp[n, : len(c)].tolist() for n, c in enumerate(chunks)]

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
            i = 0
            for seg in segs:
                if seg.line >= 0:
                    self.line_logp[n, seg.line] += sum(token_lp[n][i : i + len(seg.ids)])
                i += len(seg.ids)

    def step(self, t: int, max_latent_tokens: int) -> None:
        """Boundary ``t``: feed pending + the boundary's context, decide, write rationales, queue the line."""
        active = [t < tr.num_lines for tr in self.trace]
        segments = [self.pending[n] + (self.boundary(n, t) if active[n] else []) for n in range(self.n)]
        token_lp = self.feed(segments)
        self.add_line_logp(segments, token_lp)
        think = self.decide(t, torch.tensor(active))
        comments = self.write_rationales(t, think, max_latent_tokens)
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
        draw = torch.rand(self.n, generator=self.generator)
        think = active & (draw < p)
        for n in range(self.n):
            if active[n]:
                self.qseqs[n].decision_pos[t] = len(self.qseqs[n].ids) - 1
            if active[n] and self.k:  # in π's layout: the last token of line t's indentation, fed next
                self.seqs[n].decision_pos[t] = len(self.seqs[n].ids) + len(self.trace[n].indent[t]) - 1
        self.think[:, t], self.p_think[:, t] = think, torch.where(active, p, 0.0)
        self.logq[:, t] = torch.where(active & ~think, log_act(logits, self.think_mask).cpu(), 0.0)
        return think

    def sample(self, logits: Tensor, allowed: Tensor) -> Tensor:  # [N]
        probs = torch.softmax(logits.masked_fill(~allowed, float("-inf")), -1)
        return torch.multinomial(probs.cpu(), 1, generator=self.generator).squeeze(-1)

    def write_rationales(self, t: int, think: Tensor, max_latent_tokens: int) -> list[list[int]]:
        """Sample a rationale for every THINK sequence; all but its last token are fed here (in the hindsight group
        when ``k > 0``)."""
        comments: list[list[int]] = [[] for _ in range(self.n)]
        self._kind_last = [FIRST_COMMENT] * self.n
        if not think.any():
            return comments
        group = t if self.k else -1
        logits = self.last_logits / self.temperature
        tok = self.sample(logits, self.think_mask)
        self.logq[:, t] += torch.where(
            think,
            comment_logp(
                logits, tok.to(logits.device), torch.ones_like(think).to(logits.device), self.comment_mask
            ).cpu(),
            0.0,
        )
        open_ = think & ~self.ends[tok.to(self.ends.device)].cpu()
        for n in range(self.n):
            if think[n]:
                comments[n].append(int(tok[n]))
        k = 1
        while open_.any():
            kind = FIRST_COMMENT if k == 1 else COMMENT
            self.feed([[Seg(comments[n][-1:], -1, kind, t, group)] if open_[n] else [] for n in range(self.n)])
            k += 1
            logits = self.last_logits / self.temperature
            if k == max_latent_tokens:  # the cap: force the newline (not a decision of q)
                tok = torch.full((self.n,), self.vocab.newline_id)
                last_kind = TEACHER
            else:
                tok = self.sample(logits, self.comment_mask)
                lp = comment_logp(
                    logits, tok.to(logits.device), torch.zeros_like(open_).to(logits.device), self.comment_mask
                )
                self.logq[:, t] += torch.where(open_, lp.cpu(), 0.0)
                last_kind = COMMENT
            for n in range(self.n):
                if open_[n]:
                    comments[n].append(int(tok[n]))
                    self._kind_last[n] = last_kind
            open_ &= ~self.ends[tok.to(self.ends.device)].cpu()
        return comments

    def finish(self, num_samples: int, seconds_start: float) -> Rollout:
        token_lp = self.feed(self.pending)
        self.add_line_logp(self.pending, token_lp)
        lines = self.think.shape[1]
        mask = torch.tensor([[t < tr.num_lines for t in range(lines)] for tr in self.trace])
        layout = build_layout(self.seqs, self.vocab.pad_id, lines, self.engine.device)
        q_layout = build_layout(self.qseqs, self.vocab.pad_id, lines, self.engine.device, True) if self.k else layout
        return Rollout(
            traces=list(self.traces),
            num_samples=num_samples,
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


@torch.no_grad()
def rollout(
    model: torch.nn.Module,
    traces: Sequence[EncodedTrace],
    vocab: LatentVocab,
    num_samples: int = 4,
    max_latent_tokens: int = 16,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    engine: str = "kv",
    hindsight_lines: int = 0,
) -> Rollout:
    """Sample ``num_samples`` latent annotations of every trace with ``model`` as the latent policy ``q``.

    Args:
        model: A Hugging Face causal LM (``q``).
        traces: Traces from :func:`encode_trace`.
        vocab: :meth:`LatentVocab.from_tokenizer` of the model's tokenizer.
        num_samples: ``G`` rollouts per trace.
        max_latent_tokens: Most tokens in a rationale, its newline included (>= 2).
        temperature: Sampling temperature of the THINK decision and the rationale tokens.
        generator: CPU random generator (seed it for reproducible rollouts).
        engine: ``"kv"`` (one KV cache) or ``"reencode"`` (the naive baseline).
        hindsight_lines: ``k``: before deciding at line ``t``, ``q`` sees expert lines ``t..t+k-1`` in a group hidden
            from every later token (``Rollout.layout`` never contains it; ``Rollout.q_layout`` does).
    """
    if isinstance(hindsight_lines, bool) or not isinstance(hindsight_lines, int) or hindsight_lines < 0:
        raise ValueError(f"hindsight_lines={hindsight_lines!r} must be an integer >= 0 (0: no hindsight)")
    if max_latent_tokens < 2:
        raise ValueError(f"max_latent_tokens={max_latent_tokens} must be >= 2 (a comment marker and a newline)")
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r}; choose one of {sorted(ENGINES)}")
    start = time.perf_counter()
    walker = _Walker(model, traces, vocab, num_samples, temperature, generator, engine, hindsight_lines)
    for t in range(walker.think.shape[1]):
        walker.step(t, max_latent_tokens)
    return walker.finish(num_samples, start)


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
