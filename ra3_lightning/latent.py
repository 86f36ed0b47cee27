"""The RA3 latent format: line boundaries, inserting and stripping rationale comments, THINK-token masks.

A trace is split into *lines* (the primitive actions ``a_t``); boundary ``t`` is the point just before line ``t``.
At a THINK boundary a rationale line (``indent + comment_prefix + text + newline``, indented like line ``t``) is
inserted; at an ACT boundary nothing is. Every character of the trace is kept: indentation, blank lines, CRLF
endings and a missing final newline survive a split/join and an insert/strip round trip byte for byte.

Inserted rationales are identified by their recorded ``[start, end)`` character spans, never by a regex over
comments, so a trace's own comments are never removed by :func:`strip_rationales`.

The format is a strategy object: subclass :class:`LatentFormat` (``comment_prefix``, e.g. ``"// "``, or its token
sets) and choose it from YAML by ``class_path``.

Deviations from the paper (arXiv 2509.25810):

* every line, blank lines included, is a boundary; a rationale before a blank line is indented like nothing;
* tokens are produced *line by line* (:func:`encode_line`), see :mod:`ra3_lightning.rollout` for why;
* ``P(THINK)`` is the probability mass of tokens whose text begins with the comment marker after optional
  spaces/tabs and that are valid comment tokens (:func:`comment_token_mask`), measured after the line's
  whitespace-only leading tokens (its indentation) have been fed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

_LINE = re.compile(r"[^\n]*\n|[^\n]+\Z")


class LatentFormat:
    """How a rationale is written and which tokens open, continue and end one: the E-step's latent format.

    The default is a Python comment line (``indent + "# " + text + newline``). Another format is a subclass that
    changes :attr:`comment_prefix` (e.g. ``"// "``: its marker must begin some token's text) or overrides the token
    sets; it is chosen from YAML with ``latent_format: {class_path: my_package.MyFormat}`` on the E-step / RA3
    module, and every part of the E-step (rollout, scoring, annotation) takes its tokens from it.

    Args:
        comment_prefix: What a rationale line starts with after its indentation (default ``"# "``, for Python).
    """

    comment_prefix: str = "# "

    def __init__(self, comment_prefix: str | None = None) -> None:
        if comment_prefix is not None:
            if not comment_prefix.strip() or "\n" in comment_prefix:
                raise ValueError(f"comment_prefix={comment_prefix!r} needs a marker (e.g. '# ') and no newline")
            self.comment_prefix = comment_prefix

    def __repr__(self) -> str:
        return f"{type(self).__name__}(comment_prefix={self.comment_prefix!r})"

    @property
    def comment_start(self) -> str:
        """The marker a THINK token must start with (``"#"``), i.e. ``comment_prefix`` without whitespace."""
        return self.comment_prefix.strip()

    def rationale_line(self, rationale: str, indent: str, newline: str = "\n") -> str:
        """``indent + comment_prefix + rationale + newline``; the rationale must be a single line."""
        if "\n" in rationale or "\r" in rationale:
            raise ValueError(f"a rationale must be one line, got {rationale!r}")
        return f"{indent}{self.comment_prefix}{rationale}{newline}"

    def continuation_mask(self, tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
        """``[V]`` bool: tokens a rationale may contain — no special token, and no newline except one at the end."""
        special = set(tokenizer.all_special_ids)
        ok = []
        for i, s in enumerate(token_texts(tokenizer)):
            body = s[:-1] if s.endswith("\n") else s
            ok.append(i not in special and "\n" not in body and "\r" not in s and "\ufffd" not in s)
        return torch.tensor(ok, dtype=torch.bool)

    def opener_mask(self, tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
        """``[V]`` bool: tokens whose text starts with the marker after optional spaces/tabs (what forbidding
        rationales at decode time must forbid, ``"#\n\n"`` included)."""
        start = self.comment_start
        return torch.tensor([s.lstrip(" \t").startswith(start) for s in token_texts(tokenizer)], dtype=torch.bool)

    def think_mask(self, tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
        """``[V]`` bool: the THINK tokens — openers that are valid rationale tokens (``P(THINK)`` is their mass)."""
        return self.opener_mask(tokenizer) & self.continuation_mask(tokenizer)

    def end_mask(self, tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
        """``[V]`` bool: rationale tokens that end it (their text ends with ``"\n"``)."""
        ends = torch.tensor([s.endswith("\n") for s in token_texts(tokenizer)], dtype=torch.bool)
        return ends & self.continuation_mask(tokenizer)


@dataclass(frozen=True)
class Annotated:
    """An annotated trace: the text with rationales inserted and where they are.

    Attributes:
        text: The annotated text.
        think_lines: Indices of the original lines preceded by a rationale (sorted).
        rationale_spans: ``[start, end)`` character offsets in ``text`` of each inserted rationale line,
            including its newline, in the order of ``think_lines``.
    """

    text: str
    think_lines: list[int]
    rationale_spans: list[list[int]]


def split_lines(text: str) -> list[str]:
    """The lines of ``text`` with their line endings kept; ``"".join(split_lines(text)) == text``.

    Only ``"\\n"`` ends a line (a CRLF line keeps its ``"\\r\\n"``); a final line without newline is kept as is.

    >>> split_lines("a\\n\\n  b\\r\\nc")
    ['a\\n', '\\n', '  b\\r\\n', 'c']
    """
    return _LINE.findall(text)


def line_indent(line: str) -> str:
    """The leading spaces/tabs of ``line`` (empty for a blank line)."""
    if not line.strip():
        return ""
    return line[: len(line) - len(line.lstrip(" \t"))]


def line_newline(line: str) -> str:
    """The line ending to give a rationale inserted before ``line``: ``"\\r\\n"`` for CRLF lines, else ``"\\n"``."""
    return "\r\n" if line.endswith("\r\n") else "\n"


def insert_lines(text: str, inserted: Mapping[int, str]) -> Annotated:
    """Insert ready-made rationale lines before the given line indices of ``text``.

    Args:
        text: The original trace.
        inserted: ``{line index: rationale line}``; each rationale line must end with ``"\\n"`` and contain no
            other newline.
    """
    lines = split_lines(text)
    for t, rationale in inserted.items():
        if not 0 <= t < len(lines):
            raise ValueError(f"rationale at line {t}, but the trace has {len(lines)} lines")
        if not rationale.endswith("\n") or "\n" in rationale[:-1]:
            raise ValueError(f"rationale line {t} must end with its only newline, got {rationale!r}")
    pieces, spans, offset = [], [], 0
    for t, line in enumerate(lines):
        if t in inserted:
            spans.append([offset, offset + len(inserted[t])])
            pieces.append(inserted[t])
            offset += len(inserted[t])
        pieces.append(line)
        offset += len(line)
    return Annotated("".join(pieces), sorted(inserted), spans)


def insert_rationales(text: str, rationales: Mapping[int, str], fmt: LatentFormat | None = None) -> Annotated:
    """Insert ``{line index: rationale text}`` as comment lines indented like the line they precede."""
    fmt = fmt or LatentFormat()
    lines = split_lines(text)
    if any(not 0 <= t < len(lines) for t in rationales):
        raise ValueError(f"rationale line indices {sorted(rationales)} out of range for {len(lines)} lines")
    return insert_lines(
        text, {t: fmt.rationale_line(r, line_indent(lines[t]), line_newline(lines[t])) for t, r in rationales.items()}
    )


def strip_rationales(text: str, spans: Sequence[Sequence[int]]) -> str:
    """Remove the inserted rationale spans from an annotated ``text``: the original trace, byte for byte."""
    out, last = [], 0
    for start, end in spans:
        if not last <= start <= end <= len(text):
            raise ValueError(f"rationale span [{start}, {end}) is out of order or outside the text (len {len(text)})")
        out.append(text[last:start])
        last = end
    out.append(text[last:])
    return "".join(out)


# --------------------------------------------------------------------------------------------- tokens
def token_texts(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """The decoded text of every vocabulary id (special tokens included)."""
    return [tokenizer.decode([i]) for i in range(len(tokenizer))]


def comment_token_mask(tokenizer: PreTrainedTokenizerBase, fmt: LatentFormat | None = None) -> torch.Tensor:
    """``[V]`` bool: tokens a rationale may contain (:meth:`LatentFormat.continuation_mask`)."""
    return (fmt or LatentFormat()).continuation_mask(tokenizer)


def think_token_mask(tokenizer: PreTrainedTokenizerBase, fmt: LatentFormat | None = None) -> torch.Tensor:
    """``[V]`` bool: comment tokens whose text begins with the comment marker (``#``) after optional spaces/tabs."""
    return (fmt or LatentFormat()).think_mask(tokenizer)


def newline_token_mask(tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """``[V]`` bool: tokens whose text ends with ``"\\n"``."""
    return torch.tensor([s.endswith("\n") for s in token_texts(tokenizer)], dtype=torch.bool)


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
