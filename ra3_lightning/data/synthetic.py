"""The built-in synthetic code world: Python programs composed of hidden skills, with tests and ground truth.

Every program is a chain of 2-6 skills from :mod:`ra3_lightning.data.skills` (each a typed 2-5 line idiom), so its
body is a sequence of known action abstractions. Identifiers and constants are randomised; the docstring says
what the composition does in words; the tests are the reference body run (in this process — it is our own
generated code) on random small inputs. Everything is a deterministic function of ``(split, seed, options)``.

Splits (``load_split(split, n, seed)``, or the data source ``synthetic:<split>?n=..&seed=..``):

* ``pretrain`` — column ``text``: programs with *sparse* ground-truth comments, a ``# <skill name>`` line before
  each skill start with probability ``comment_rate`` (default 0.2), so that a tiny model learns comments exist;
* ``midtrain`` — column ``text``: the expert programs with no comments at all (RA3's mid-training corpus);
* ``rlvr`` / ``eval`` — HumanEval schema (``task_id``, ``prompt`` = signature + docstring, ``entry_point``,
  ``canonical_solution`` = body, ``test`` = ``def check(candidate): assert ...``).

All splits carry the ground truth: ``id``, ``skills`` (skill ids in order), ``skill_starts`` / ``skill_ends``
(0-based ``[start, end)`` indices, among the *non-comment* lines of the whole program — the ``def`` line is 0 —
of each skill's lines; for task splits the program is ``prompt + canonical_solution``). These are the same line
indices as ``think_lines`` of an annotated trace of the ``midtrain`` text. The task splits also carry the world's
``skill_comments`` (each skill id with its ground-truth comment, :func:`~ra3_lightning.data.skills.skill_comments`):
what evaluation maps a sampled comment to a skill with, so it needs no knowledge of this world.

Held-out compositions: a composition (the ordered tuple of skill ids) is held out when a fixed hash of it falls
below ``heldout_fraction``; ``eval`` draws only held-out compositions, all other splits never do. The partition
does not depend on the seed, so every seed evaluates on compositions no training split has seen.

Oracle annotation (:func:`oracle_records`, :func:`write_oracle_split`): the ``midtrain`` traces with a comment line
before every true skill start — each skill's own comment (``"true"``: ``Program.commented_text`` with every skill
commented) or another skill's, drawn per seed (``"wrong"``: a marker where a block starts, but the wrong plan) — in
the columns of the E-step's annotated traces. The pipeline's oracle arms train on them.

Compared with the paper's corpus (≈3.5M real Python snippets) this world is tiny and clean on purpose: the
abstractions are known, so where the E-step puts its THINKs and what they say can be scored
(:mod:`ra3_lightning.abstraction_metrics`).
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import os
import random
import shutil
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import datasets

from ra3_lightning.data.skills import (
    CONSUMERS,
    LOOP_NAMES,
    SKILLS,
    SKILLS_BY_ID,
    TEMP_NAMES,
    TYPE_HINTS,
    TYPE_WORDS,
    VALUE_NAMES,
    Skill,
    skill_comments,
)

SPLITS: tuple[str, ...] = ("pretrain", "midtrain", "rlvr", "eval")
DEFAULT_SIZES: dict[str, int] = {"pretrain": 2000, "midtrain": 2000, "rlvr": 256, "eval": 128}
ENTRY_POINTS: tuple[str, ...] = ("solve", "process", "compute", "transform", "convert", "summarize")
WORDS: tuple[str, ...] = ("cat", "dog", "sun", "tea", "apple", "sky", "bob", "egg", "moon", "tree", "a", "noon")
EMPTY: dict[str, object] = {"int": 0, "ints": [], "str": "", "strs": [], "counts": {}}
INDENT = "    "
_PARTITION_SALT = "ra3-synthetic-v1"
_MAX_TRIES_PER_PROGRAM = 1000
DOCSTRINGS: tuple[str, ...] = ("steps", "shuffled", "reversed", "examples")
NUM_EXAMPLES = 3  # input/output examples in an "examples" docstring


@dataclass(frozen=True)
class WorldConfig:
    """Options of the generator (the ``**kw`` of :func:`load_split`).

    Args:
        min_skills: Fewest skills per program.
        max_skills: Most skills per program.
        max_lines: Longest program in lines (without comments); longer draws are rejected.
        num_tests: Test cases per program (one of them on the empty value of the input type).
        heldout_fraction: Share of the composition space reserved for ``eval``.
        comment_rate: ``pretrain`` only: probability of a ground-truth comment before each skill start.
        docstring_width: Wrap width of the docstring text.
        docstring: How the docstring states the task (:data:`DOCSTRINGS`): ``"steps"`` (the default) spells out the
            plan, skill by skill in execution order; the others keep every task solvable from its prompt but stop
            it from dictating the body block by block — ``"shuffled"`` lists the same steps in a random order (the
            order follows from the types: draws where more than one order is well-typed are rejected, the number
            of skills kept), ``"reversed"`` states the composition from the outside in ("the result of: <last
            step>, applied to the result of: ..., applied to <arg>"), ``"examples"`` gives only the input and output
            types and three input/output examples (inputs other than the tests'). Every split uses it.
    """

    min_skills: int = 2
    max_skills: int = 6
    max_lines: int = 25
    num_tests: int = 5
    heldout_fraction: float = 0.1
    comment_rate: float = 0.2
    docstring_width: int = 88
    docstring: str = "steps"

    def __post_init__(self) -> None:
        if not 1 <= self.min_skills <= self.max_skills:
            raise ValueError(f"need 1 <= min_skills <= max_skills, got {self.min_skills} and {self.max_skills}")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must lie in (0, 1), got {self.heldout_fraction}")
        if not 0.0 <= self.comment_rate <= 1.0:
            raise ValueError(f"comment_rate must lie in [0, 1], got {self.comment_rate}")
        if self.docstring not in DOCSTRINGS:
            raise ValueError(f"docstring={self.docstring!r}; choose one of {list(DOCSTRINGS)}")
        if self.num_tests < 2:
            raise ValueError(f"num_tests must be >= 2 (one empty input and at least one random), got {self.num_tests}")


@dataclass
class Program:
    """One generated function: header (``def`` + docstring), one chunk of body lines per skill, a return line."""

    entry_point: str
    arg_type: str
    skills: tuple[Skill, ...]
    header: list[str]
    chunks: list[list[str]]
    footer: list[str]
    tests: list[tuple[object, object]]
    phrases: list[str] = field(default_factory=list)  # each skill's docstring phrase, in execution order
    arg: str = ""

    @property
    def composition(self) -> tuple[str, ...]:
        return tuple(s.id for s in self.skills)

    @property
    def prompt(self) -> str:
        return "\n".join(self.header) + "\n"

    @property
    def body(self) -> str:
        return "\n".join([line for chunk in self.chunks for line in chunk] + self.footer) + "\n"

    @property
    def source(self) -> str:
        return self.prompt + self.body

    def spans(self) -> tuple[list[int], list[int]]:
        """``[start, end)`` line indices of each skill among the non-comment lines (``def`` is line 0)."""
        starts, ends, line = [], [], len(self.header)
        for chunk in self.chunks:
            starts.append(line)
            line += len(chunk)
            ends.append(line)
        return starts, ends

    def commented_text(self, commented: list[bool]) -> str:
        """The source with a ``# <skill name>`` line before each skill whose flag is set."""
        starts = self.spans()[0]
        flags = zip(starts, self.skills, commented, strict=True)
        return comment_lines(self.source, {start: skill.comment for start, skill, flag in flags if flag})[0]

    def check_code(self) -> str:
        """HumanEval-style ``check(candidate)`` asserting the reference outputs."""
        asserts = [f"{INDENT}assert candidate({arg!r}) == {expected!r}" for arg, expected in self.tests]
        return "\n".join(["def check(candidate):", *asserts]) + "\n"


def comment_lines(text: str, comments: Mapping[int, str]) -> tuple[str, list[list[int]]]:
    """``text`` with a ``# <comment>`` line, indented by one level, before each line index of ``comments``.

    Returns:
        The commented text and the ``[start, end)`` character spans of the inserted lines (newline included), in line
        order: the ``rationale_spans`` of an annotated trace, so stripping them gives ``text`` back.
    """
    lines = text.splitlines(keepends=True)
    if any(not 0 <= t < len(lines) for t in comments):
        raise ValueError(f"comment line indices {sorted(comments)} out of range for {len(lines)} lines")
    pieces, spans, offset = [], [], 0
    for t, line in enumerate(lines):
        if t in comments:
            comment = f"{INDENT}# {comments[t]}\n"
            spans.append([offset, offset + len(comment)])
            pieces.append(comment)
            offset += len(comment)
        pieces.append(line)
        offset += len(line)
    return "".join(pieces), spans


def composition_bucket(composition: tuple[str, ...]) -> float:
    """A fixed pseudo-random number in [0, 1) for a composition (seed-independent)."""
    digest = hashlib.sha256(f"{_PARTITION_SALT}:{'+'.join(composition)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def is_heldout(composition: tuple[str, ...], heldout_fraction: float) -> bool:
    """Whether ``composition`` belongs to the held-out ``eval`` part of the composition space."""
    return composition_bucket(composition) < heldout_fraction


def sample_composition(rng: random.Random, cfg: WorldConfig) -> tuple[Skill, ...]:
    """A well-typed chain of skills: each consumes what the previous one produced; no skill twice in a row."""
    length = rng.randint(cfg.min_skills, cfg.max_skills)
    chain = [rng.choice(SKILLS)]
    while len(chain) < length:
        options = [s for s in CONSUMERS[chain[-1].produces] if s is not chain[-1]]
        chain.append(rng.choice(options))
    return tuple(chain)


def render_program(skills: tuple[Skill, ...], rng: random.Random, cfg: WorldConfig) -> Program:
    """Fill names and constants into the skills' templates; tests are added by :func:`attach_tests`."""
    arg_type = skills[0].consumes
    entry_point = rng.choice(ENTRY_POINTS)
    arg = rng.choice(VALUE_NAMES[arg_type])
    var, chunks, phrases = arg, [], []
    for skill in skills:
        out = rng.choice([n for n in VALUE_NAMES[skill.produces] if n != var])
        names = {"inp": var, "out": out, "x": rng.choice(LOOP_NAMES[skill.loop_type]), "t": rng.choice(TEMP_NAMES)}
        lines, phrase = skill.render({**names, **skill.params(rng)})
        chunks.append([INDENT + line for line in lines])
        phrases.append(phrase)
        var = out
    signature = f"def {entry_point}({arg}: {TYPE_HINTS[arg_type]}) -> {TYPE_HINTS[skills[-1].produces]}:"
    doc = f"Given {arg} ({TYPE_WORDS[arg_type]}), " + ", then ".join(phrases) + ", and return the result."
    header = [signature, *_docstring(doc, cfg.docstring_width)]
    return Program(entry_point, arg_type, skills, header, chunks, [f"{INDENT}return {var}"], [], phrases, arg)


def _docstring(text: str, width: int, split_words: bool = True) -> list[str]:
    """``text`` wrapped as an indented docstring; ``split_words=False`` never breaks inside a word or at a hyphen
    (an example's value stays on one line)."""
    wrapped = textwrap.wrap(text, width=width, break_on_hyphens=split_words, break_long_words=split_words)
    wrapped[0] = '"""' + wrapped[0]
    wrapped[-1] += '"""'
    return [INDENT + line for line in wrapped]


def _random_str(rng: random.Random) -> str:
    words = rng.choices(WORDS, k=rng.randint(1, 5))
    return "".join(w + rng.choice(" ,;-") for w in words[:-1]) + words[-1]


# Small random inputs by type: lists of at most 8 items, ints below 100 (the empty value is tested separately).
VALUE_SAMPLERS: dict[str, Callable[[random.Random], object]] = {
    "int": lambda rng: rng.randint(-20, 99),
    "ints": lambda rng: [rng.randint(-3, 9) for _ in range(rng.randint(1, 8))],
    "str": _random_str,
    "strs": lambda rng: rng.choices(WORDS, k=rng.randint(1, 6)),
    "counts": lambda rng: {w: rng.randint(1, 4) for w in rng.sample(WORDS, rng.randint(1, 4))},
}


def reference_function(program: Program) -> Callable[..., object]:
    """The program's function, defined by executing its (trusted, generated) source in a fresh namespace."""
    namespace: dict[str, object] = {}
    exec(compile(program.source, f"<synthetic {program.entry_point}>", "exec"), namespace)  # noqa: S102
    return namespace[program.entry_point]


def attach_tests(program: Program, rng: random.Random, num_tests: int) -> bool:
    """Fill ``program.tests`` with (input, reference output) pairs.

    Returns ``False`` when the tests would barely tell programs apart (fewer than ``min(3, num_tests)`` distinct
    expected outputs, e.g. a composition that maps almost everything to ``[]``), so the draw should be rejected.
    """
    fn = reference_function(program)
    inputs = [EMPTY[program.arg_type]]
    for _ in range(20 * num_tests):
        if len(inputs) == num_tests:
            break
        value = VALUE_SAMPLERS[program.arg_type](rng)
        if value not in inputs:
            inputs.append(value)
    program.tests = [(value, fn(copy.deepcopy(value))) for value in inputs]
    return len({repr(expected) for _, expected in program.tests}) >= min(3, num_tests)


def generate_programs(split: str, n: int, seed: int, cfg: WorldConfig) -> list[Program]:
    """``n`` distinct programs of ``split``: held-out compositions for ``eval``, the rest for the other splits."""
    rng = random.Random(f"ra3-synthetic/{split}/{seed}")
    want_heldout = split == "eval"
    programs: list[Program] = []
    seen: set[str] = set()
    for _ in range(n * _MAX_TRIES_PER_PROGRAM):
        if len(programs) == n:
            return programs
        skills = sample_composition(rng, cfg)
        if cfg.docstring == "shuffled":
            skills = redraw_until_one_order(skills, rng, cfg)
        if is_heldout(tuple(s.id for s in skills), cfg.heldout_fraction) != want_heldout:
            continue
        program = render_program(skills, rng, cfg)
        if cfg.docstring == "steps" and (too_long(program, cfg) or program.source in seen):
            continue  # the default world's draws and checks, in their original order (its records are unchanged)
        if not attach_tests(program, rng, cfg.num_tests):
            continue
        if cfg.docstring != "steps":
            doc = _docstring(variant_docstring(program, rng, cfg), cfg.docstring_width, split_words=False)
            program.header = [program.header[0], *doc]
            if too_long(program, cfg) or program.source in seen:
                continue
        programs.append(program)
        seen.add(program.source)
    if len(programs) < n:
        raise ValueError(f"synthetic:{split}: could only generate {len(programs)} of {n} distinct programs")
    return programs


def too_long(program: Program, cfg: WorldConfig) -> bool:
    """Whether the program (header, body and return line, no comments) exceeds ``cfg.max_lines``."""
    return len(program.header) + sum(map(len, program.chunks)) + 1 > cfg.max_lines


def well_typed_orders(skills: Sequence[Skill], start: str) -> set[tuple[str, ...]]:
    """The orders of ``skills`` (as id tuples) that form a chain from type ``start``: each consumes what the one
    before produced, no skill twice in a row."""
    orders = set()
    for order in itertools.permutations(skills):
        chained = all(a.produces == b.consumes and a is not b for a, b in itertools.pairwise(order))
        if order[0].consumes == start and chained:
            orders.add(tuple(s.id for s in order))
    return orders


def redraw_until_one_order(skills: tuple[Skill, ...], rng: random.Random, cfg: WorldConfig) -> tuple[Skill, ...]:
    """``skills``, or a redraw of the same length, whose steps admit exactly one well-typed order (the
    ``"shuffled"`` docstring must determine the body)."""
    for _ in range(_MAX_TRIES_PER_PROGRAM):
        if len(well_typed_orders(skills, skills[0].consumes)) == 1:
            return skills
        length = len(skills)
        skills = sample_composition(rng, replace(cfg, min_skills=length, max_skills=length))
    tries = _MAX_TRIES_PER_PROGRAM
    raise ValueError(f"no composition of {len(skills)} skills with a single well-typed order in {tries} draws")


def variant_docstring(program: Program, rng: random.Random, cfg: WorldConfig) -> str:
    """The docstring text of ``program`` in the world's ``docstring`` style (not ``"steps"``, built on rendering)."""
    arg, arg_words = program.arg, TYPE_WORDS[program.arg_type]
    if cfg.docstring == "shuffled":
        steps = rng.sample(program.phrases, len(program.phrases))
        return (f"Given {arg} ({arg_words}), apply these steps, listed in no particular order (the order follows from "
                f"what each step takes and gives): " + "; ".join(steps) + "; and return the result.")  # fmt: skip
    if cfg.docstring == "reversed":
        inner = ", applied to the result of: ".join(reversed(program.phrases))
        return f"Return the result of: {inner}, applied to {arg} ({arg_words})."
    out_words = TYPE_WORDS[program.skills[-1].produces]
    examples = example_calls(program, rng)
    return f"Given {arg} ({arg_words}), compute {out_words}. Examples: " + "; ".join(examples) + "."


def example_calls(program: Program, rng: random.Random) -> list[str]:
    """:data:`NUM_EXAMPLES` ``f(input) == output`` strings of the reference function, on inputs other than the
    tests' (the first one non-empty output where possible)."""
    fn, tested = reference_function(program), [value for value, _ in program.tests]
    calls: list[str] = []
    for _ in range(50 * NUM_EXAMPLES):
        value = VALUE_SAMPLERS[program.arg_type](rng)
        if value in tested:
            continue
        tested.append(value)
        calls.append(f"{program.entry_point}({value!r}) == {fn(copy.deepcopy(value))!r}")
        if len(calls) == NUM_EXAMPLES:
            break
    return calls


def _ground_truth(program: Program, record_id: str) -> dict[str, object]:
    starts, ends = program.spans()
    return {"id": record_id, "skills": list(program.composition), "skill_starts": starts, "skill_ends": ends}


def _text_record(program: Program, record_id: str, rng: random.Random, comment_rate: float) -> dict[str, object]:
    commented = [rng.random() < comment_rate for _ in program.skills]
    return {**_ground_truth(program, record_id), "text": program.commented_text(commented)}


def _task_record(program: Program, record_id: str) -> dict[str, object]:
    task = {
        "task_id": record_id,
        "prompt": program.prompt,
        "entry_point": program.entry_point,
        "canonical_solution": program.body,
        "test": program.check_code(),
    }
    return {**task, **_ground_truth(program, record_id), "skill_comments": skill_comments()}


def build_records(split: str, n: int, seed: int, cfg: WorldConfig) -> list[dict[str, object]]:
    """The records of a split as plain dicts (see the module docstring for the columns)."""
    programs = generate_programs(split, n, seed, cfg)
    ids = [f"synthetic/{split}/{seed}/{i}" for i in range(n)]
    if split in ("rlvr", "eval"):
        return [_task_record(p, i) for p, i in zip(programs, ids, strict=True)]
    comment_rate = cfg.comment_rate if split == "pretrain" else 0.0
    rng = random.Random(f"ra3-synthetic-comments/{split}/{seed}")
    return [_text_record(p, i, rng, comment_rate) for p, i in zip(programs, ids, strict=True)]


def load_split(split: str, n: int | None = None, seed: int = 0, **kw: float | int | str) -> datasets.Dataset:
    """Generate a split of the synthetic world as an in-memory ``datasets.Dataset`` (nothing is cached).

    Args:
        split: ``"pretrain"``, ``"midtrain"``, ``"rlvr"`` or ``"eval"``.
        n: Number of records (default: :data:`DEFAULT_SIZES`).
        seed: Seed; the same ``(split, n, seed, kw)`` always gives the same records.
        **kw: Fields of :class:`WorldConfig` (``comment_rate``, ``min_skills``, ``max_skills``, ...).

    Raises:
        ValueError: for an unknown split or option, or a size below 1.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown synthetic split {split!r}; expected one of {', '.join(SPLITS)}")
    known = {f.name for f in fields(WorldConfig)}
    unknown = sorted(set(kw) - known)
    if unknown:
        raise ValueError(f"synthetic:{split}: unknown option(s) {unknown}; expected n, seed or {sorted(known)}")
    n = DEFAULT_SIZES[split] if n is None else int(n)
    if n < 1:
        raise ValueError(f"synthetic:{split}: n must be >= 1, got {n}")
    return datasets.Dataset.from_list(build_records(split, n, int(seed), WorldConfig(**kw)))


def write_splits(
    out_dir: str | Path, sizes: dict[str, int] | None = None, seed: int = 0, **kw: float | int | str
) -> dict[str, Path]:
    """Generate every split (``sizes`` overrides :data:`DEFAULT_SIZES`) and ``save_to_disk`` it under ``out_dir``.

    Returns:
        The directory of each split, readable with ``ra3_lightning.data.sources.load_records(str(path))``.
    """
    unknown = sorted(set(sizes or {}) - set(SPLITS))
    if unknown:
        raise ValueError(f"write_splits: unknown split(s) {unknown} in sizes; expected {', '.join(SPLITS)}")
    sizes = {**DEFAULT_SIZES, **(sizes or {})}
    paths = {}
    for split in SPLITS:
        paths[split] = Path(out_dir) / split
        load_split(split, n=sizes[split], seed=seed, **kw).save_to_disk(str(paths[split]))
    return paths


# --------------------------------------------------------------------------------------------- oracle annotation
def own_comments(skills: Sequence[str], rng: random.Random) -> list[str]:
    """Each skill's own ground-truth comment (``rng`` unused)."""
    return [SKILLS_BY_ID[s].comment for s in skills]


def wrong_comments(skills: Sequence[str], rng: random.Random) -> list[str]:
    """For each skill, the comment of another skill drawn uniformly by ``rng`` (never the skill's own phrase)."""
    phrases = [s.comment for s in SKILLS]
    return [rng.choice([p for p in phrases if p != SKILLS_BY_ID[s].comment]) for s in skills]


# What an oracle annotation writes at every true skill start, by name: the right plan, or a marker with a wrong one.
ORACLE_CONTENTS: dict[str, Callable[[Sequence[str], random.Random], list[str]]] = {
    "true": own_comments,
    "wrong": wrong_comments,
}


def oracle_records(records: Sequence[Mapping], content: str, seed: int = 0) -> list[dict[str, object]]:
    """Ground-truth annotated traces of comment-free synthetic records (``midtrain``): a comment line before every
    true skill start, its phrase chosen by ``ORACLE_CONTENTS[content]`` (``"wrong"`` draws are a pure function of
    ``seed`` and the record order).

    Each record keeps its fields and gets the annotated ``text`` with ``think_lines`` (= ``skill_starts``) and
    ``rationale_spans``, the columns of the E-step's annotated traces (``recovery_metrics`` and
    ``TraceDataModule(rationale_spans_field="rationale_spans")`` read them). With ``"true"`` the text is
    ``Program.commented_text`` with every skill commented.
    """
    if content not in ORACLE_CONTENTS:
        raise ValueError(f"unknown oracle content {content!r}; expected one of {sorted(ORACLE_CONTENTS)}")
    rng = random.Random(f"ra3-synthetic-oracle/{content}/{seed}")
    out = []
    for record in records:
        if any(line.lstrip().startswith("#") for line in record["text"].splitlines()):
            raise ValueError(f"record {record['id']!r} has comment lines: the oracle annotates comment-free traces")
        comments = ORACLE_CONTENTS[content](record["skills"], rng)
        text, spans = comment_lines(record["text"], dict(zip(record["skill_starts"], comments, strict=True)))
        out.append({**record, "text": text, "think_lines": list(record["skill_starts"]), "rationale_spans": spans})
    return out


def write_oracle_split(source: str | Path, out_dir: str | Path, content: str, seed: int = 0) -> Path:
    """:func:`oracle_records` of the saved split ``source`` (``write_splits``' ``midtrain``), saved under ``out_dir``.

    Written to ``<out_dir>.partial`` and renamed, so an existing ``out_dir`` is always complete.
    """
    records = datasets.load_from_disk(str(source)).to_list()
    out, partial = Path(out_dir), Path(f"{out_dir}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    datasets.Dataset.from_list(oracle_records(records, content, seed)).save_to_disk(str(partial))
    os.replace(partial, out)
    return out
