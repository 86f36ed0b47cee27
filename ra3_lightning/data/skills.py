"""The skill library of the synthetic code world: typed, multi-line Python idioms with known names.

A :class:`Skill` is one *action abstraction* in the sense of RA3: a short (2-5 line) idiom such as "add up the
values" or "keep the even values", written as a line template over placeholders. Every skill consumes one typed
value and produces one, so :mod:`ra3_lightning.data.synthetic` can chain skills into well-typed programs and knows,
for every generated line, which skill it belongs to — the ground truth the abstraction-recovery metrics need.

Placeholders in ``lines`` / ``describe``: ``{inp}`` (the consumed variable), ``{out}`` (the produced variable),
``{x}`` (a loop variable over the consumed value's elements), ``{t}`` (a temporary) and the skill's constants
(``{k}``, ``{lo}``, ``{hi}``, ``{sep}``, ``{ch}``), drawn by ``params``. Identifiers come from small pools
(:data:`VALUE_NAMES`, :data:`LOOP_NAMES`, :data:`TEMP_NAMES`) so that tiny models face a small vocabulary; the
pools are disjoint from each other and from the builtins the templates call.

Types are short names: ``int``, ``ints`` (``list[int]``), ``str``, ``strs`` (``list[str]``) and ``counts``
(``dict[str, int]``). Adding a skill = appending one entry to :data:`SKILLS`; every type must keep at least one
consumer so that compositions never dead-end (checked at import time).
"""

from __future__ import annotations

import random
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

Params = dict[str, object]

TYPE_HINTS: dict[str, str] = {
    "int": "int",
    "ints": "list[int]",
    "str": "str",
    "strs": "list[str]",
    "counts": "dict[str, int]",
}
TYPE_WORDS: dict[str, str] = {
    "int": "an integer",
    "ints": "a list of integers",
    "str": "a string",
    "strs": "a list of words",
    "counts": "a dict of counts",
}
VALUE_NAMES: dict[str, tuple[str, ...]] = {
    "int": ("n", "total", "count", "res", "best", "score"),
    "ints": ("xs", "nums", "vals", "items", "data", "seq"),
    "str": ("s", "text", "line", "msg", "label"),
    "strs": ("words", "parts", "tokens", "names", "pieces"),
    "counts": ("counts", "freq", "table", "tally"),
}
# Loop variables by the type of the value iterated over.
LOOP_NAMES: dict[str, tuple[str, ...]] = {
    "int": ("i", "j"),
    "ints": ("x", "v", "num", "item"),
    "str": ("ch", "c"),
    "strs": ("w", "tok", "p"),
    "counts": ("key", "k"),
}
TEMP_NAMES: tuple[str, ...] = ("tmp", "cur", "acc")
SEPARATORS: tuple[str, ...] = (" ", ",", ";", "-")
LETTERS: tuple[str, ...] = ("a", "e", "o", "t", "s")


@dataclass(frozen=True)
class Skill:
    """One typed, multi-line idiom.

    Args:
        id: Stable identifier (the ground-truth label).
        consumes: Type name of the input value.
        produces: Type name of the output value.
        lines: Line templates (2-5 lines, relative indentation of 4 spaces per level).
        describe: Docstring phrase, formatted with the skill's constants.
        comment: The ground-truth comment naming the skill (no constants, so one skill = one name).
        params: Draws the skill's constants from a ``random.Random``.
        loop_over: Type whose loop-variable names ``{x}`` takes (default: ``consumes``).
    """

    id: str
    consumes: str
    produces: str
    lines: tuple[str, ...]
    describe: str
    comment: str
    params: Callable[[random.Random], Params] = field(default=lambda rng: {})
    loop_over: str = ""

    @property
    def loop_type(self) -> str:
        return self.loop_over or self.consumes

    def render(self, names: Params) -> tuple[list[str], str]:
        """The skill's code lines and docstring phrase with placeholders and constants filled in."""
        return [line.format(**names) for line in self.lines], self.describe.format(**names)


def _k(lo: int, hi: int) -> Callable[[random.Random], Params]:
    return lambda rng: {"k": rng.randint(lo, hi)}


def _bounds(rng: random.Random) -> Params:
    lo = rng.randint(-5, 3)
    return {"lo": lo, "hi": lo + rng.randint(2, 8)}


def _sep(rng: random.Random) -> Params:
    return {"sep": rng.choice(SEPARATORS)}


def _ch(rng: random.Random) -> Params:
    return {"ch": rng.choice(LETTERS)}


def _k_ch(rng: random.Random) -> Params:
    return {"k": rng.randint(1, 6), **_ch(rng)}


def _skill(
    id: str,
    sig: str,
    code: str,
    describe: str,
    comment: str,
    params: Callable[[random.Random], Params] | None = None,
    loop_over: str = "",
) -> Skill:
    """Build a :class:`Skill` from ``"consumes -> produces"`` and an indented code block."""
    consumes, produces = (t.strip() for t in sig.split("->"))
    lines = tuple(textwrap.dedent(code).strip("\n").split("\n"))
    return Skill(id, consumes, produces, lines, describe, comment, params or (lambda rng: {}), loop_over)


# A table: one skill per block reads better than one argument per line.
# fmt: off
SKILLS: tuple[Skill, ...] = (
    _skill("sum_values", "ints -> int", """
        {out} = 0
        for {x} in {inp}:
            {out} += {x}
        """, "add up the values", "sum the values"),
    _skill("count_equal", "ints -> int", """
        {out} = 0
        for {x} in {inp}:
            if {x} == {k}:
                {out} += 1
        """, "count the values equal to {k}", "count occurrences of a value", _k(0, 5)),
    _skill("count_greater", "ints -> int", """
        {out} = 0
        for {x} in {inp}:
            if {x} > {k}:
                {out} += 1
        """, "count the values greater than {k}", "count values above a threshold", _k(0, 9)),
    _skill("max_value", "ints -> int", """
        {out} = {k}
        for {x} in {inp}:
            if {x} > {out}:
                {out} = {x}
        """, "take the largest value (at least {k})", "find the maximum", _k(-5, 5)),
    _skill("filter_even", "ints -> ints", """
        {out} = []
        for {x} in {inp}:
            if {x} % 2 == 0:
                {out}.append({x})
        """, "keep the even values", "keep even values"),
    _skill("filter_greater", "ints -> ints", """
        {out} = []
        for {x} in {inp}:
            if {x} > {k}:
                {out}.append({x})
        """, "keep the values greater than {k}", "filter by a threshold", _k(0, 9)),
    _skill("scale_each", "ints -> ints", """
        {out} = []
        for {x} in {inp}:
            {out}.append({x} * {k})
        """, "multiply each value by {k}", "scale each value", _k(2, 3)),
    _skill("shift_each", "ints -> ints", """
        {out} = []
        for {x} in {inp}:
            {out}.append({x} + {k})
        """, "add {k} to each value", "shift each value", _k(1, 9)),
    _skill("clamp_each", "ints -> ints", """
        {out} = []
        for {x} in {inp}:
            {out}.append(min(max({x}, {lo}), {hi}))
        """, "clamp each value to [{lo}, {hi}]", "clamp each value", _bounds),
    _skill("reverse_list", "ints -> ints", """
        {out} = list({inp})
        {out}.reverse()
        """, "reverse the order", "reverse the list"),
    _skill("dedupe", "ints -> ints", """
        {out} = []
        for {x} in {inp}:
            if {x} not in {out}:
                {out}.append({x})
        """, "drop repeated values, keeping the first of each", "remove duplicates in order"),
    _skill("running_max", "ints -> ints", """
        {out} = []
        {t} = {k}
        for {x} in {inp}:
            {t} = max({t}, {x})
            {out}.append({t})
        """, "take the running maximum (starting from {k})", "running maximum", _k(-5, 0)),
    _skill("prefix_sums", "ints -> ints", """
        {out} = []
        {t} = 0
        for {x} in {inp}:
            {t} += {x}
            {out}.append({t})
        """, "take the running totals", "prefix sums"),
    _skill("smallest_k", "ints -> ints", """
        {out} = sorted({inp})
        {out} = {out}[:{k}]
        """, "keep the {k} smallest values in ascending order", "sort and take the smallest", _k(1, 5)),
    _skill("join_numbers", "ints -> str", """
        {t} = []
        for {x} in {inp}:
            {t}.append(str({x}))
        {out} = {sep!r}.join({t})
        """, "write the values joined by {sep!r}", "join numbers into a string", _sep),
    _skill("clamp", "int -> int", """
        {out} = max({inp}, {lo})
        {out} = min({out}, {hi})
        """, "clamp it to [{lo}, {hi}]", "clamp the number", _bounds),
    _skill("digit_sum", "int -> int", """
        {out} = 0
        {t} = abs({inp})
        while {t} > 0:
            {out} += {t} % 10
            {t} //= 10
        """, "add up its decimal digits", "sum the digits"),
    _skill("count_up", "int -> ints", """
        {out} = []
        for {x} in range(min({inp}, {k})):
            {out}.append({x})
        """, "list the numbers from 0 below it (at most {k} of them)", "build a range", _k(2, 8)),
    _skill("repeat_char", "int -> str", """
        {out} = ''
        for _ in range(min(abs({inp}), {k})):
            {out} += {ch!r}
        """, "repeat {ch!r} that many times (at most {k})", "repeat a character", _k_ch),
    _skill("reverse_string", "str -> str", """
        {out} = ''
        for {x} in {inp}:
            {out} = {x} + {out}
        """, "reverse the text", "reverse the string"),
    _skill("drop_vowels", "str -> str", """
        {out} = ''
        for {x} in {inp}:
            if {x} not in 'aeiou':
                {out} += {x}
        """, "remove the vowels", "remove vowels"),
    _skill("count_char", "str -> int", """
        {out} = 0
        for {x} in {inp}:
            if {x} == {ch!r}:
                {out} += 1
        """, "count the occurrences of {ch!r}", "count a character", _ch),
    _skill("split_words", "str -> strs", """
        {out} = []
        for {x} in {inp}.split({sep!r}):
            if {x}:
                {out}.append({x})
        """, "split it on {sep!r}, dropping empty pieces", "split into words", _sep, "strs"),
    _skill("char_counts", "str -> counts", """
        {out} = {{}}
        for {x} in {inp}:
            {out}[{x}] = {out}.get({x}, 0) + 1
        """, "count each character", "count characters"),
    _skill("join_words", "strs -> str", """
        {out} = {sep!r}.join({inp})
        {out} = {out}.strip()
        """, "join the words with {sep!r} and strip the ends", "join the words", _sep),
    _skill("upper_words", "strs -> strs", """
        {out} = []
        for {x} in {inp}:
            {out}.append({x}.upper())
        """, "upper-case each word", "upper-case the words"),
    _skill("filter_long", "strs -> strs", """
        {out} = []
        for {x} in {inp}:
            if len({x}) > {k}:
                {out}.append({x})
        """, "keep the words longer than {k}", "keep long words", _k(1, 4)),
    _skill("word_lengths", "strs -> ints", """
        {out} = []
        for {x} in {inp}:
            {out}.append(len({x}))
        """, "take the length of each word", "word lengths"),
    _skill("word_counts", "strs -> counts", """
        {out} = {{}}
        for {x} in {inp}:
            {out}[{x}] = {out}.get({x}, 0) + 1
        """, "count each word", "count words"),
    _skill("max_count", "counts -> int", """
        {out} = 0
        for {x} in {inp}:
            if {inp}[{x}] > {out}:
                {out} = {inp}[{x}]
        """, "take the largest count", "find the largest count"),
    _skill("frequent_keys", "counts -> strs", """
        {out} = []
        for {x} in sorted({inp}):
            if {inp}[{x}] >= {k}:
                {out}.append({x})
        """, "list, in sorted order, the keys counted at least {k} times", "keys above a count", _k(1, 3)),
)
# fmt: on
SKILLS_BY_ID: dict[str, Skill] = {s.id: s for s in SKILLS}


def skill_comments(skills: Sequence[Skill] = SKILLS) -> list[dict[str, str]]:
    """``[{"skill": id, "comment": text}, ...]``: each skill's ground-truth comment, as the synthetic task splits
    carry it in ``skill_comments`` (what evaluation maps a model's comments to skills with)."""
    return [{"skill": skill.id, "comment": skill.comment} for skill in skills]


CONSUMERS: dict[str, tuple[Skill, ...]] = {t: tuple(s for s in SKILLS if s.consumes == t) for t in TYPE_HINTS}


def _check_library() -> None:
    if len(SKILLS_BY_ID) != len(SKILLS):
        raise AssertionError("skill ids must be unique")
    for s in SKILLS:
        if not 2 <= len(s.lines) <= 5:
            raise AssertionError(f"skill {s.id!r}: {len(s.lines)} lines, expected 2-5")
        if not {s.consumes, s.produces, s.loop_type} <= TYPE_HINTS.keys():
            raise AssertionError(f"skill {s.id!r}: unknown type")
    for t, consumers in CONSUMERS.items():
        if not consumers:
            raise AssertionError(f"type {t!r} has no consuming skill: compositions could dead-end")


_check_library()
