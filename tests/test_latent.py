"""The latent format: exact line splits, insert/strip round trips, THINK-token masks."""

from __future__ import annotations

import random

import pytest
import torch

from ra3_lightning.estep import (
    LatentFormat,
    comment_token_mask,
    encode_line,
    insert_lines,
    insert_rationales,
    line_indent,
    split_lines,
    strip_rationales,
    think_token_mask,
)

TRACES = [
    "def f(x):\n    return x\n",
    "def f(x):\n    return x",  # no trailing newline
    "def f(x):\r\n    y = x\r\n\r\n    return y\r\n",  # CRLF and a blank line
    "def f(x):\n    # the trace's own comment\n    return x  # inline\n",
    "\n\n  \n\tx = 1\n",  # leading blank / whitespace-only lines, a tab indent
    "x",
    "a\n\n\n",
]


@pytest.mark.parametrize("text", TRACES)
def test_split_lines_keeps_every_character(text):
    lines = split_lines(text)
    assert "".join(lines) == text
    assert all(line.endswith("\n") for line in lines[:-1])


def test_split_lines_table():
    assert split_lines("a\n\n  b\r\nc") == ["a\n", "\n", "  b\r\n", "c"]
    assert split_lines("") == []


def test_insert_indents_like_next_line_and_records_spans():
    ann = insert_rationales("def f(x):\n    return x\n", {1: "give x back"})
    assert ann.text == "def f(x):\n    # give x back\n    return x\n"
    assert ann.think_lines == [1]
    # "def f(x):\n" is 10 characters; the rationale line "    # give x back\n" is 18
    assert ann.rationale_spans == [[10, 28]]


def test_insert_uses_crlf_on_crlf_lines_and_newline_before_unterminated_last_line():
    assert insert_rationales("a\r\nb", {0: "r"}).text == "# r\r\na\r\nb"
    assert insert_rationales("a\nb", {1: "r"}).text == "a\n# r\nb"


@pytest.mark.parametrize("text", TRACES)
def test_strip_inverts_insert_on_every_boundary_subset(text):
    rng = random.Random(0)
    lines = split_lines(text)
    for _ in range(20):
        chosen = {
            t: rng.choice(["plan", "# looks like a comment", ""]) for t in range(len(lines)) if rng.random() < 0.5
        }
        ann = insert_rationales(text, chosen)
        assert strip_rationales(ann.text, ann.rationale_spans) == text
        assert len(ann.rationale_spans) == len(chosen)


def test_strip_keeps_the_traces_own_comments():
    text = "def f(x):\n    # own comment\n    return x\n"
    ann = insert_rationales(text, {2: "inserted"})
    assert "# own comment" in strip_rationales(ann.text, ann.rationale_spans)
    assert strip_rationales(ann.text, ann.rationale_spans) == text


def test_bad_input_raises():
    with pytest.raises(ValueError, match="one line"):
        insert_rationales("a\n", {0: "two\nlines"})
    with pytest.raises(ValueError, match="out of range"):
        insert_rationales("a\n", {3: "x"})
    with pytest.raises(ValueError, match="newline"):
        insert_lines("a\n", {0: "# no newline"})
    with pytest.raises(ValueError, match="span"):
        strip_rationales("abc", [[2, 1]])


def test_comment_syntax_is_a_hook():
    class Slashes(LatentFormat):
        comment_prefix = "// "

    assert insert_rationales("  x;\n", {0: "why"}, Slashes()).text == "  // why\n  x;\n"
    assert Slashes().comment_start == "//"


def test_line_indent():
    assert [line_indent(s) for s in ["    x\n", "\tx", "x", "   \n"]] == ["    ", "\t", "", ""]


def test_think_token_mask_marks_tokens_starting_with_hash(tiny_tokenizer):
    mask = think_token_mask(tiny_tokenizer)
    texts = [tiny_tokenizer.decode([i]) for i in range(len(tiny_tokenizer))]
    assert mask.dtype == torch.bool and mask.shape == (len(tiny_tokenizer),)
    assert mask.any()
    for i, s in enumerate(texts):
        assert bool(mask[i]) == (s.lstrip(" \t").startswith("#") and bool(comment_token_mask(tiny_tokenizer)[i]))
    assert not mask[tiny_tokenizer.eos_token_id]


def test_encode_line_splits_indentation(tiny_tokenizer):
    indent, body = encode_line(tiny_tokenizer, "        out.append(x)\n")
    assert tiny_tokenizer.decode(indent + body) == "        out.append(x)\n"
    assert indent and not tiny_tokenizer.decode(indent).strip()
    assert tiny_tokenizer.decode(body[:1]).strip()  # the body starts with a non-blank token
