"""Interleaved latent rollouts over expert traces, and teacher-forced scoring of the annotated sequences.

For ``B`` traces × ``G`` samples (sequence ``n = b·G + g``) the engine walks the line boundaries with ONE KV cache
per batch (:class:`KVCacheEngine`): it feeds the expert line tokens (teacher-forced), feeds the next line's
indentation, samples THINK/ACT from ``P(THINK)`` (one masked softmax sum), for THINK samples a rationale of at most
``max_latent_tokens`` tokens ending at a newline (a newline is forced at the cap), then continues with the expert
line. Sequences of different lengths share the batched cache: a sequence with nothing to feed at a step gets a
padding slot that the attention mask hides; ``position_ids`` count only real tokens, so every sequence sees exactly
what a plain forward pass over its own tokens sees. :class:`ReencodeEngine` is the naive alternative that re-encodes
the whole prefix at every step (same results, for ``bench/estep_rollout.py``).

**The annotated token sequence** of a rollout is the concatenation of the segments the rollout fed — ``[BOS]``,
then per line: (rationale: indentation + sampled comment tokens), indentation + body tokens, each line tokenized on
its own (:func:`ra3_lightning.latent.encode_line`). It is *not* a re-tokenization of the annotated text (a BPE may
merge across a line break, e.g. ``"\\n   "``), so the rollout, :func:`score_lines` and :func:`policy_logq` see
identical tokens. A tokenizer whose pre-tokenizer splits at newlines (Qwen2, Llama-3) gives the same tokens as
tokenizing the text up to blank-line runs; the M-step retokenizes the annotated text naturally.

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

Models are used through the Hugging Face causal-LM call ``model(input_ids, attention_mask, position_ids,
past_key_values, use_cache) -> .logits`` only.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import torch
from torch import Tensor
from transformers import DynamicCache, PreTrainedTokenizerBase

from ra3_lightning.latent import (
    Annotated,
    LatentFormat,
    encode_line,
    insert_lines,
    split_lines,
)
from ra3_lightning.logit_stats import LogitStats, latent_stats
from ra3_lightning.models import cache_argument

# kinds of tokens in an annotated sequence, for the policy's log-probability
TEACHER, FIRST_COMMENT, COMMENT = 0, 1, 2


@dataclass
class LatentVocab:
    """Vocabulary facts the rollout needs, computed once per tokenizer.

    Attributes:
        think: ``[V]`` tokens that start a rationale (``P(THINK)`` is their probability mass).
        comment: ``[V]`` tokens a rationale may continue with.
        ends: ``[V]`` tokens that end a rationale (text ends with a newline).
        newline_id: Token forced at the ``max_latent_tokens`` cap.
        bos_id: Token every sequence starts with (context for the first line).
        pad_id: Padding token.
        decode: The tokenizer's ``decode`` (rationale text from ids).
    """

    think: Tensor
    comment: Tensor
    ends: Tensor
    newline_id: int
    bos_id: int
    pad_id: int
    tokenizer: PreTrainedTokenizerBase = field(repr=False)

    @classmethod
    def from_tokenizer(cls, tokenizer: PreTrainedTokenizerBase, fmt: LatentFormat | None = None) -> LatentVocab:
        fmt = fmt or LatentFormat()
        think = fmt.think_mask(tokenizer)
        if not think.any():
            raise ValueError(f"no token of the vocabulary starts a comment with {fmt.comment_start!r}")
        newline = tokenizer.encode("\n", add_special_tokens=False)
        if len(newline) != 1:
            raise ValueError(f"the tokenizer must have a single token for '\\n', got {newline}")
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else bos
        return cls(think, fmt.continuation_mask(tokenizer), fmt.end_mask(tokenizer), newline[0], bos, pad, tokenizer)


@dataclass
class EncodedTrace:
    """A trace split into lines, each tokenized on its own into indentation and body ids."""

    text: str
    lines: list[str]
    indent: list[list[int]]
    body: list[list[int]]

    @property
    def num_lines(self) -> int:
        return len(self.lines)

    @property
    def indent_len(self) -> list[int]:
        return [len(i) for i in self.indent]


def encode_trace(tokenizer: PreTrainedTokenizerBase, text: str) -> EncodedTrace:
    """Split ``text`` into lines and tokenize each with :func:`ra3_lightning.latent.encode_line`."""
    lines = split_lines(text)
    if not lines:
        raise ValueError("cannot roll out an empty trace")
    pairs = [encode_line(tokenizer, line) for line in lines]
    return EncodedTrace(text, lines, [p[0] for p in pairs], [p[1] for p in pairs])


@dataclass
class TokenLayout:
    """Annotated token sequences, right-padded, with what each token is.

    Attributes:
        input_ids: ``[N, L]`` tokens (``BOS`` first).
        attention_mask: ``[N, L]`` 1 on real tokens.
        line_of: ``[N, L]`` index of the expert line a token belongs to, -1 for BOS/rationale/padding.
        kind: ``[N, L]`` ``TEACHER`` / ``FIRST_COMMENT`` / ``COMMENT`` (sampled rationale tokens).
        owner: ``[N, L]`` boundary a sampled rationale token belongs to, -1 otherwise.
        decision_pos: ``[N, T]`` position whose logits decide ``z_t`` (last token before line/rationale ``t``).
        position_ids: ``[N, L]`` explicit position ids, or None for ``0..L-1`` (π's layout).
        hindsight_group: ``[N, L]`` boundary whose hindsight group a token belongs to (hidden from every token
            outside that group), -1 for the visible stream; None when nothing is hidden (π's layout).
    """

    input_ids: Tensor
    attention_mask: Tensor
    line_of: Tensor
    kind: Tensor
    owner: Tensor
    decision_pos: Tensor
    position_ids: Tensor | None = None
    hindsight_group: Tensor | None = None


class _Seg(NamedTuple):
    """A run of tokens the rollout feeds: its expert line (-1: none), kind, rationale owner and hindsight group."""

    ids: list[int]
    line: int = -1
    kind: int = TEACHER
    owner: int = -1
    group: int = -1  # boundary whose hindsight group the tokens belong to; -1: the visible stream


class _SeqBuilder:
    """The growing annotated token sequence of one rollout sample.

    Position ids count the visible tokens before a token; a hindsight group continues from the visible count at its
    start, and the visible stream resumes where it was (what :meth:`KVCacheEngine.hide` does to the engine).
    """

    def __init__(self, num_lines: int) -> None:
        self.ids: list[int] = []
        self.line_of: list[int] = []
        self.kind: list[int] = []
        self.owner: list[int] = []
        self.group: list[int] = []
        self.positions: list[int] = []
        self.decision_pos = [0] * num_lines
        self._visible = 0  # visible tokens so far
        self._group_len = 0  # tokens of the open hindsight group

    def add(self, ids: Sequence[int], line: int = -1, kind: int = TEACHER, owner: int = -1, group: int = -1) -> None:
        if group < 0:
            self.positions += range(self._visible, self._visible + len(ids))
            self._visible, self._group_len = self._visible + len(ids), 0
        else:
            start = self._visible + self._group_len
            self.positions += range(start, start + len(ids))
            self._group_len += len(ids)
        self.ids += list(ids)
        self.line_of += [line] * len(ids)
        self.kind += [kind] * len(ids)
        self.owner += [owner] * len(ids)
        self.group += [group] * len(ids)


def _layout(
    seqs: Sequence[_SeqBuilder], pad_id: int, num_lines: int, device: torch.device, hindsight: bool = False
) -> TokenLayout:
    length = max(len(s.ids) for s in seqs)

    def pad(rows: list[list[int]], value: int) -> Tensor:
        return torch.tensor([r + [value] * (length - len(r)) for r in rows], dtype=torch.long, device=device)

    decision = [s.decision_pos + [0] * (num_lines - len(s.decision_pos)) for s in seqs]
    return TokenLayout(
        input_ids=pad([s.ids for s in seqs], pad_id),
        attention_mask=pad([[1] * len(s.ids) for s in seqs], 0),
        line_of=pad([s.line_of for s in seqs], -1),
        kind=pad([s.kind for s in seqs], TEACHER),
        owner=pad([s.owner for s in seqs], -1),
        decision_pos=torch.tensor(decision, dtype=torch.long, device=device),
        position_ids=pad([s.positions for s in seqs], 0) if hindsight else None,
        hindsight_group=pad([s.group for s in seqs], -1) if hindsight else None,
    )


def hindsight_attention_mask(group: Tensor, attention_mask: Tensor) -> Tensor:
    """Which tokens each token sees in a layout with hindsight groups, ``[N, L, L]`` bool (query ``j``, key ``i``).

    Token ``j`` sees token ``i`` iff ``i <= j``, ``i`` is real, and ``i`` is visible (group -1) or in ``j``'s own
    group. Every token sees itself (a padding row is never empty).

    Args:
        group: ``[N, L]`` :attr:`TokenLayout.hindsight_group`.
        attention_mask: ``[N, L]`` 1 on real tokens.
    """
    length = group.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=group.device).tril()  # [L, L]
    key_ok = (group < 0) & attention_mask.bool()  # [N, L] visible real keys
    same = (group[:, :, None] == group[:, None, :]) & (group[:, None, :] >= 0)  # [N, L, L] own group
    eye = torch.eye(length, dtype=torch.bool, device=group.device)
    return (causal & (key_ok[:, None, :] | same)) | eye


def plain_layout(traces: Sequence[EncodedTrace], vocab: LatentVocab, device: torch.device | str = "cpu") -> TokenLayout:
    """The all-ACT (no rationale) token layout of ``traces``: scores ``log π(a_t | s_t)`` without rationales."""
    num_lines = max(tr.num_lines for tr in traces)
    seqs = []
    for tr in traces:
        seq = _SeqBuilder(tr.num_lines)
        seq.add([vocab.bos_id])
        for t in range(tr.num_lines):
            seq.add(tr.indent[t], line=t)
            seq.decision_pos[t] = len(seq.ids) - 1
            seq.add(tr.body[t], line=t)
        seqs.append(seq)
    return _layout(seqs, vocab.pad_id, num_lines, torch.device(device))


# --------------------------------------------------------------------------------------------- engines
class KVCacheEngine:
    """Feeds token chunks to ``model`` for ``n`` sequences at once, keeping one batched ``DynamicCache``."""

    def __init__(self, model: torch.nn.Module, n: int, pad_id: int) -> None:
        self.model, self.pad_id = model, pad_id
        self.device = next(model.parameters()).device
        self.cache = DynamicCache(config=getattr(model, "config", None))
        self.cache_arg = cache_argument(model)
        self.mask = torch.zeros(n, 0, dtype=torch.long, device=self.device)  # [N, S] over all cache slots
        self.pos = torch.zeros(n, dtype=torch.long, device=self.device)  # [N] real tokens fed so far

    def _pack(self, chunks: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor, Tensor]:
        width = max(len(c) for c in chunks)
        ids = torch.tensor([list(c) + [self.pad_id] * (width - len(c)) for c in chunks], device=self.device)
        valid = torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in chunks], device=self.device)
        positions = self.pos[:, None] + torch.arange(width, device=self.device)[None]  # [N, C]
        self.pos += valid.sum(1)
        self.mask = torch.cat([self.mask, valid], dim=1)
        return ids, valid, positions

    def feed(self, chunks: Sequence[Sequence[int]]) -> Tensor:
        """Append ``chunks[n]`` to sequence ``n``; returns the logits ``[N, C, V]`` at the new slots (C = longest)."""
        ids, _, positions = self._pack(chunks)
        cache_kwarg = {self.cache_arg: self.cache}
        out = self.model(input_ids=ids, attention_mask=self.mask, position_ids=positions, use_cache=True, **cache_kwarg)
        return out.logits.float()  # the DynamicCache was updated in place

    @property
    def num_slots(self) -> int:
        """Cache slots so far (the next ``feed`` writes its chunk from this slot on)."""
        return self.mask.shape[1]

    def hide(self, slots: Sequence[Sequence[int]]) -> None:
        """Mask cache ``slots[n]`` of sequence ``n`` from every later token and give their positions back.

        The slots stay in the cache; later tokens get the positions they would have had without them.
        """
        rows = torch.tensor([n for n, s in enumerate(slots) for _ in s], dtype=torch.long, device=self.device)
        cols = torch.tensor([c for s in slots for c in s], dtype=torch.long, device=self.device)
        self.mask[rows, cols] = 0
        self.pos -= torch.tensor([len(s) for s in slots], dtype=torch.long, device=self.device)


class ReencodeEngine(KVCacheEngine):
    """The naive engine: no cache, the whole (padded) history is re-encoded at every call."""

    def __init__(self, model: torch.nn.Module, n: int, pad_id: int) -> None:
        super().__init__(model, n, pad_id)
        self.history = torch.zeros(n, 0, dtype=torch.long, device=self.device)  # [N, S]
        self.positions = torch.zeros(n, 0, dtype=torch.long, device=self.device)  # [N, S]

    def feed(self, chunks: Sequence[Sequence[int]]) -> Tensor:
        ids, _, positions = self._pack(chunks)
        self.history = torch.cat([self.history, ids], dim=1)
        self.positions = torch.cat([self.positions, positions], dim=1)
        out = self.model(input_ids=self.history, attention_mask=self.mask, position_ids=self.positions, use_cache=False)
        return out.logits[:, -ids.shape[1] :].float()


ENGINES: dict[str, type[KVCacheEngine]] = {"kv": KVCacheEngine, "reencode": ReencodeEngine}


# --------------------------------------------------------------------------------------------- policy math
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


# --------------------------------------------------------------------------------------------- rollout
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
        self.seqs = [_SeqBuilder(tr.num_lines) for tr in self.trace]  # π's layout
        self.qseqs = [_SeqBuilder(tr.num_lines) for tr in self.trace] if self.k else self.seqs  # q's layout
        self.pending: list[list[_Seg]] = [[_Seg([vocab.bos_id])] for _ in range(self.n)]  # waiting to be fed
        self.last_logits = torch.zeros(self.n, len(vocab.think), device=dev)  # [N, V] at the last token fed
        self.visible_logits = torch.zeros(self.n, len(vocab.think), device=dev)  # [N, V] at the last visible one
        self.group_slots: list[list[int]] = [[] for _ in range(self.n)]  # cache slots of the open hindsight groups
        self._kind_last = [FIRST_COMMENT] * self.n
        self.think = torch.zeros(self.n, lines, dtype=torch.bool)
        self.logq = torch.zeros(self.n, lines)
        self.p_think = torch.zeros(self.n, lines)
        self.line_logp = torch.zeros(self.n, lines)
        self.rationales: list[list[list[int]]] = [[[] for _ in range(lines)] for _ in range(self.n)]

    def feed(self, segments: list[list[_Seg]]) -> list[list[float]]:
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

    def record(self, n: int, segs: list[_Seg], first_slot: int) -> None:
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

    def add_line_logp(self, segments: list[list[_Seg]], token_lp: list[list[float]]) -> None:
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

    def boundary(self, n: int, t: int) -> list[_Seg]:
        """What is fed before ``z_t`` is decided: line ``t``'s indentation, after the hindsight block if ``k > 0``."""
        tr = self.trace[n]
        if not self.k:
            return [_Seg(tr.indent[t])]
        block = [_Seg(tr.indent[j] + tr.body[j], group=t) for j in range(t, min(t + self.k, tr.num_lines))]
        return [*block, _Seg(tr.indent[t], group=t)]

    def queue_line(self, n: int, t: int, think: bool, comment: list[int], token_lp: list[float]) -> list[_Seg]:
        """The segments fed next for line ``t``: the rest of the rationale (THINK), the indentation and the body."""
        tr = self.trace[n]
        line = [_Seg(tr.indent[t], t), _Seg(tr.body[t], t)]
        if think:
            self.rationales[n][t] = comment
            return self.rationale_segments(n, t, comment) + line
        if self.k:  # the indentation fed in the hindsight group is hidden: the line feeds its own
            return line
        self.claim_indent(n, t, token_lp)
        return line[1:]

    def rationale_segments(self, n: int, t: int, comment: list[int]) -> list[_Seg]:
        """The rationale's part of the visible stream still to feed: its last token (``k = 0``), or, after a
        hindsight group, all of it again, its indentation first."""
        last = _Seg(comment[-1:], -1, self._kind_last[n], t)
        if not self.k:
            return [last]
        head = [_Seg(comment[:1], -1, FIRST_COMMENT, t), _Seg(comment[1:-1], -1, COMMENT, t)] if comment[1:] else []
        return [_Seg(self.trace[n].indent[t]), *head, last]

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
            self.feed([[_Seg(comments[n][-1:], -1, kind, t, group)] if open_[n] else [] for n in range(self.n)])
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
        layout = _layout(self.seqs, self.vocab.pad_id, lines, self.engine.device)
        q_layout = _layout(self.qseqs, self.vocab.pad_id, lines, self.engine.device, True) if self.k else layout
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


# --------------------------------------------------------------------------------------------- scoring
def layout_inputs(model: torch.nn.Module, layout: TokenLayout) -> dict[str, Tensor]:
    """The model inputs of one teacher-forced pass over the annotated sequences (hindsight groups hidden)."""
    ids = layout.input_ids  # [N, L]
    positions = layout.position_ids
    if positions is None:
        positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
    mask = layout.attention_mask if layout.hindsight_group is None else _model_mask(model, layout)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": positions}


def forward_logits(model: torch.nn.Module, layout: TokenLayout) -> Tensor:
    """Logits ``[N, L, V]`` of one teacher-forced pass over the annotated sequences (hindsight groups hidden)."""
    return model(**layout_inputs(model, layout), use_cache=False).logits.float()


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


def _model_mask(model: torch.nn.Module, layout: TokenLayout) -> Tensor:  # [N, 1, L, L]
    """:func:`hindsight_attention_mask` as the model's attention takes a ready 4-D mask: bool for SDPA (True =
    attend), additive for eager; transformers passes a 4-D mask through unchanged."""
    visible = hindsight_attention_mask(layout.hindsight_group, layout.attention_mask)[:, None]  # [N, 1, L, L]
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if impl == "sdpa":
        return visible
    if impl == "eager":
        dtype = next(model.parameters()).dtype
        blocked = torch.full(visible.shape, torch.finfo(dtype).min, dtype=dtype, device=visible.device)
        return blocked.masked_fill(visible, 0.0)
    raise ValueError(
        f"hindsight_lines > 0 needs an attention implementation that takes a 4-D mask, 'sdpa' or 'eager' (got "
        f"{impl!r}); load the model with attn_implementation='sdpa', or set hindsight_lines=0"
    )


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


def indent_lengths(traces: Sequence[EncodedTrace], num_samples: int, num_lines: int) -> Tensor:
    """``[N, T]`` indentation tokens of every expert line, sequence ``n`` being a sample of trace ``n // G``."""
    rows = [tr.indent_len + [0] * (num_lines - tr.num_lines) for tr in traces for _ in range(num_samples)]
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
    num_samples: int,
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
    indent = indent_lengths(traces, num_samples, num_lines)
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
