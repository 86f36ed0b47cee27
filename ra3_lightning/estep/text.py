"""Rationales in text: line boundaries, inserting rationale lines and stripping them again.

A trace is split into *lines* (the primitive actions ``a_t``); boundary ``t`` is the point just before line ``t``.
At a THINK boundary a rationale line (:meth:`LatentFormat.rationale_line`, indented like line ``t``) is inserted; at
an ACT boundary nothing is. Every character of the trace is kept: indentation, blank lines, CRLF endings and a
missing final newline survive a split/join and an insert/strip round trip byte for byte.

Inserted rationales are identified by their recorded ``[start, end)`` character spans, never by a regex over
comments, so a trace's own comments are never removed by :func:`strip_rationales`.

Deviation from the paper (arXiv 2509.25810): every line, blank lines included, is a boundary; a rationale before a
blank line is indented like nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ra3_lightning.estep.format import LatentFormat

_LINE = re.compile(r"[^\n]*\n|[^\n]+\Z")


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
