"""The annotated token sequences of a rollout, right-padded, and the model inputs of a teacher-forced pass.

The annotated sequence of a rollout is the concatenation of the segments it fed: ``[BOS]``, then per line
(rationale: indentation + sampled comment tokens), indentation + body tokens (:mod:`ra3_lightning.estep.vocab`).
:class:`TokenLayout` records, per token, its expert line, its kind (teacher-forced, first or later rationale token)
and the boundary whose decision it belongs to. With hindsight (``q``'s layout) it also holds hidden groups and their
explicit positions, from which :func:`layout_inputs` builds the 4-D attention mask (SDPA or eager attention).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from ra3_lightning.estep.vocab import EncodedTrace, LatentVocab

# kinds of tokens in an annotated sequence, for the policy's log-probability
TEACHER, FIRST_COMMENT, COMMENT = 0, 1, 2


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


class Seg(NamedTuple):
    """A run of tokens the rollout feeds: its expert line (-1: none), kind, rationale owner and hindsight group."""

    ids: list[int]
    line: int = -1
    kind: int = TEACHER
    owner: int = -1
    group: int = -1  # boundary whose hindsight group the tokens belong to; -1: the visible stream


class SeqBuilder:
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


def build_layout(
    seqs: Sequence[SeqBuilder], pad_id: int, num_lines: int, device: torch.device, hindsight: bool = False
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
        seq = SeqBuilder(tr.num_lines)
        seq.add([vocab.bos_id])
        for t in range(tr.num_lines):
            seq.add(tr.indent[t], line=t)
            seq.decision_pos[t] = len(seq.ids) - 1
            seq.add(tr.body[t], line=t)
        seqs.append(seq)
    return build_layout(seqs, vocab.pad_id, num_lines, torch.device(device))


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
