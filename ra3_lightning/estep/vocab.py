"""Tokens of a trace: each line tokenized on its own, and the vocabulary facts the rollout needs.

The E-step produces tokens *line by line* (:func:`encode_line`: indentation ids, then body ids). The annotated token
sequence is therefore *not* a re-tokenization of the annotated text (a BPE may merge across a line break, e.g.
``"\\n   "``), so the rollout, the scoring and ``log q`` all see identical tokens. A tokenizer whose pre-tokenizer
splits at newlines (Qwen2, Llama-3) gives the same tokens as tokenizing the whole text, up to blank-line runs
(:func:`split_boundaries` finds them); the M-step retokenizes the annotated text naturally.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor
from transformers import PreTrainedTokenizerBase

from ra3_lightning.estep.format import LatentFormat
from ra3_lightning.estep.text import split_lines


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


def encode_line(tokenizer: PreTrainedTokenizerBase, line: str) -> tuple[list[int], list[int]]:
    """Tokenize one line on its own and split it into ``(indent_ids, body_ids)``.

    ``indent_ids`` are the leading tokens whose text is only spaces/tabs (the line's indentation as the
    tokenizer writes it); ``body_ids`` are the rest. ``decode(indent_ids + body_ids) == line``.
    """
    ids = tokenizer.encode(line, add_special_tokens=False)
    k = 0
    while k < len(ids) - 1 and _is_indent(tokenizer.decode([ids[k]])):
        k += 1
    return ids[:k], ids[k:]


def split_boundaries(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Lines of ``text`` that start inside a token of the whole-text encoding — where encoding line by line (the
    E-step, :func:`encode_line`) and encoding the whole text (the M-step, inference) disagree.

    With Qwen2's pre-tokeniser this happens only at runs of blank lines: the whole text writes a line's newline and
    the blank lines after it as one token (``"\\n\\n"``), line by line they are separate ``"\\n"`` tokens.
    Measured with the Qwen2.5 vocabulary: 0 of the synthetic corpus's lines, 294 of the 3,361 lines of HumanEval's
    prompts + canonical solutions (8.7%, in 133 of 164 programs), every one a blank-line run
    (``python bench/tokenization_agreement.py``). Needs a fast tokenizer (offsets).
    """
    starts = {
        start for start, _ in tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    }
    out, pos = [], 0
    for i, line in enumerate(split_lines(text)):
        if pos not in starts:
            out.append(i)
        pos += len(line)
    return out


def _is_indent(s: str) -> bool:
    return bool(s) and not s.strip(" \t")


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
    """Split ``text`` into lines and tokenize each with :func:`ra3_lightning.estep.encode_line`."""
    lines = split_lines(text)
    if not lines:
        raise ValueError("cannot roll out an empty trace")
    pairs = [encode_line(tokenizer, line) for line in lines]
    return EncodedTrace(text, lines, [p[0] for p in pairs], [p[1] for p in pairs])
