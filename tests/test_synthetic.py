"""The synthetic code world: determinism, typed compositions, ground truth, held-out split, tests that pass."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys

import pytest

from ra3_lightning.data import synthetic
from ra3_lightning.data.skills import CONSUMERS, SKILLS, SKILLS_BY_ID, TYPE_HINTS
from ra3_lightning.data.sources import load_records
from ra3_lightning.data.synthetic import SPLITS, is_heldout, load_split, write_splits
from ra3_lightning.estep.text import strip_rationales


@pytest.fixture(scope="module")
def midtrain():
    return load_split("midtrain", n=300, seed=0)


@pytest.fixture(scope="module")
def pretrain():
    return load_split("pretrain", n=400, seed=0)


@pytest.fixture(scope="module")
def rlvr():
    return load_split("rlvr", n=80, seed=0)


@pytest.fixture(scope="module")
def evalset():
    return load_split("eval", n=60, seed=0)


def _template_regex(template: str) -> re.Pattern:
    """A skill template line as a regex: placeholders match any identifier or constant, the rest literally."""
    parts = re.split(r"\{\w+(?:!r)?\}", template.replace("{{}}", "{}"))
    return re.compile("    " + r".+?".join(re.escape(p) for p in parts) + r"\Z")


def _program_lines(record) -> list[str]:
    """The expert (non-comment) lines of a record's program."""
    text = record["text"] if "text" in record else record["prompt"] + record["canonical_solution"]
    return [line for line in text.splitlines() if not line.lstrip().startswith("#")]


def test_skill_library_is_typed_and_large_enough():
    assert len(SKILLS) >= 15
    assert all(2 <= len(s.lines) <= 5 for s in SKILLS)
    assert {s.consumes for s in SKILLS} == set(TYPE_HINTS)  # every type is consumed and ...
    assert all(CONSUMERS[s.produces] for s in SKILLS)  # ... whatever a skill produces can be continued


def test_same_seed_same_records_and_different_seed_differs():
    for split in ("pretrain", "eval"):
        first = load_split(split, n=40, seed=3).to_list()
        assert first == load_split(split, n=40, seed=3).to_list()
        other = load_split(split, n=40, seed=4).to_list()
        assert [r["id"] for r in first] != [r["id"] for r in other]
        assert sum(a["skills"] == b["skills"] for a, b in zip(first, other, strict=True)) < 20


def test_splits_are_different_samples(midtrain, pretrain):
    assert not set(midtrain["text"]) & {t for t in pretrain["text"] if "#" not in t}


def test_compositions_are_well_typed_short_and_in_range(midtrain, evalset):
    for record in list(midtrain) + list(evalset):
        skills = [SKILLS_BY_ID[s] for s in record["skills"]]
        assert 2 <= len(skills) <= 6
        assert all(a.produces == b.consumes for a, b in zip(skills, skills[1:], strict=False))
        lines = _program_lines(record)
        assert len(lines) <= 25
        hint_in, hint_out = TYPE_HINTS[skills[0].consumes], TYPE_HINTS[skills[-1].produces]
        assert re.fullmatch(rf"def \w+\(\w+: {re.escape(hint_in)}\) -> {re.escape(hint_out)}:", lines[0]), lines[0]


@pytest.mark.parametrize("split", SPLITS)
def test_skill_spans_are_where_each_skill_is(split, midtrain, pretrain, rlvr, evalset):
    """Every line in [start, end) of skill i matches skill i's template line for line; spans tile the body."""
    records = {"midtrain": midtrain, "pretrain": pretrain, "rlvr": rlvr, "eval": evalset}[split]
    for record in records.select(range(60)):
        lines = _program_lines(record)
        starts, ends = record["skill_starts"], record["skill_ends"]
        assert lines[starts[0] - 1].endswith('"""') and lines[ends[-1]].startswith("    return ")
        assert starts[1:] == ends[:-1] and ends[-1] == len(lines) - 1
        for skill_id, start, end in zip(record["skills"], starts, ends, strict=True):
            template = SKILLS_BY_ID[skill_id].lines
            assert end - start == len(template)
            for line, pattern in zip(lines[start:end], template, strict=True):
                assert _template_regex(pattern).match(line), (record["id"], skill_id, line, pattern)


def test_template_check_can_fail(midtrain):
    """The span check above is not vacuous: one line off, the first line no longer matches its skill."""
    record = midtrain[0]
    lines = _program_lines(record)
    shifted = [lines[s + 1] for s in record["skill_starts"]]
    firsts = [SKILLS_BY_ID[s].lines[0] for s in record["skills"]]
    assert not all(_template_regex(p).match(line) for line, p in zip(shifted, firsts, strict=True))


def test_midtrain_has_no_comments(midtrain):
    assert not any("#" in text for text in midtrain["text"])


def test_pretrain_comments_are_sparse_and_name_the_skill_before_its_start(pretrain):
    num_starts = sum(len(s) for s in pretrain["skills"])
    num_comments = 0
    for record in pretrain:
        lines = record["text"].splitlines()
        expert_index = 0
        for i, line in enumerate(lines):
            if line.lstrip().startswith("#"):
                num_comments += 1
                k = record["skill_starts"].index(expert_index)  # a comment sits right before a skill start ...
                assert line == "    # " + SKILLS_BY_ID[record["skills"][k]].comment  # ... and names that skill
                assert not lines[i + 1].lstrip().startswith("#")
            else:
                expert_index += 1
    # 400 programs x ~3.2 skills: the binomial std of the rate is ~0.011, so +-0.05 is > 4 sigma.
    assert abs(num_comments / num_starts - 0.2) < 0.05


def test_comment_rate_is_configurable():
    none = load_split("pretrain", n=30, seed=1, comment_rate=0.0)
    every = load_split("pretrain", n=30, seed=1, comment_rate=1.0)
    assert not any("#" in t for t in none["text"])
    assert [t.count("#") for t in every["text"]] == [len(s) for s in every["skills"]]


def test_eval_compositions_are_held_out_from_every_training_split(midtrain, pretrain, rlvr, evalset):
    held = {tuple(s) for s in evalset["skills"]}
    assert all(is_heldout(c, 0.1) for c in held)
    train = {tuple(s) for ds in (midtrain, pretrain, rlvr) for s in ds["skills"]}
    assert not any(is_heldout(c, 0.1) for c in train)
    assert held.isdisjoint(train)
    other_seed = {tuple(s) for s in load_split("eval", n=20, seed=7)["skills"]}
    assert all(is_heldout(c, 0.1) for c in other_seed)  # the partition does not depend on the seed


def _run_checks_in_subprocess(programs: list[tuple[str, str, str]]) -> list[bool]:
    """Run each (program, check code, entry point) in a fresh interpreter; True where check(candidate) passed."""
    runner = (
        "import json, sys\n"
        "out = []\n"
        "for src, test, entry in json.load(sys.stdin):\n"
        "    ns = {}\n"
        "    try:\n"
        "        exec(src + '\\n' + test, ns); ns['check'](ns[entry]); out.append(True)\n"
        "    except Exception:\n"
        "        out.append(False)\n"
        "print(json.dumps(out))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", runner], input=json.dumps(programs), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_every_task_passes_its_own_tests_and_a_wrong_body_fails(rlvr, evalset):
    tasks = list(rlvr) + list(evalset)
    good = [(t["prompt"] + t["canonical_solution"], t["test"], t["entry_point"]) for t in tasks]
    # A body that returns the empty value of its type: wrong for each task, since >= 3 distinct outputs are tested.
    empty = {"int": "0", "ints": "[]", "str": "''", "strs": "[]", "counts": "{}"}
    bad = [
        (t["prompt"] + f"    return {empty[SKILLS_BY_ID[t['skills'][-1]].produces]}\n", t["test"], t["entry_point"])
        for t in tasks
    ]
    results = _run_checks_in_subprocess(good + bad)
    assert all(results[: len(good)]), [
        t["task_id"] for t, ok in zip(tasks, results[: len(good)], strict=True) if not ok
    ]
    assert not any(results[len(good) :])


def test_tasks_pass_in_the_project_sandbox(rlvr, evalset):
    """The same verdicts through ``ra3_lightning.sandbox.Sandbox`` (what RLVR rewards and pass@k use)."""
    sandbox = pytest.importorskip("ra3_lightning.sandbox")
    tasks = list(rlvr.select(range(20))) + list(evalset.select(range(20)))
    suites = [sandbox.TestSuite(style="check", check_code=t["test"], entry_point=t["entry_point"]) for t in tasks]
    good = [(t["prompt"] + t["canonical_solution"], suite) for t, suite in zip(tasks, suites, strict=True)]
    bad = [(t["prompt"] + "    return None\n", suite) for t, suite in zip(tasks, suites, strict=True)]
    results = sandbox.Sandbox().run_batch(good + bad)
    assert [r.status for r in results[: len(good)]] == ["passed"] * len(good), results[0]
    assert not any(r.passed for r in results[len(good) :])


def test_tests_are_small_and_varied(evalset):
    for test in evalset["test"]:
        asserts = test.splitlines()[1:]
        assert len(asserts) == 5 and all(len(a) < 160 for a in asserts)
        assert len({a.rsplit("==", 1)[1] for a in asserts}) >= 3


def test_task_splits_have_the_humaneval_schema_and_load_as_tasks():
    ds = load_records("synthetic:eval?n=4&seed=2")
    assert ds.to_list() == load_split("eval", n=4, seed=2).to_list()
    assert {"task_id", "prompt", "entry_point", "canonical_solution", "test"} <= set(ds.column_names)
    from ra3_lightning.data.tasks import load_tasks

    tasks = load_tasks("synthetic:rlvr?n=4&seed=2")
    assert len(tasks) == 4 and all(t.tests.style == "check" for t in tasks)


def test_write_splits_saves_every_split(tmp_path):
    sizes = {"pretrain": 6, "midtrain": 5, "rlvr": 4, "eval": 3}
    paths = write_splits(tmp_path, sizes=sizes, seed=5)
    for split, path in paths.items():
        loaded = load_records(str(path))
        assert loaded.to_list() == load_split(split, n=sizes[split], seed=5).to_list()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: load_split("train"), "unknown synthetic split 'train'"),
        (lambda: load_split("eval", n=0), "n must be >= 1"),
        (lambda: load_split("eval", n=2, comment_rte=0.1), "unknown option(s) ['comment_rte']"),
        (lambda: load_split("eval", n=2, max_skills=1), "min_skills <= max_skills"),
        (lambda: write_splits("/nonexistent", sizes={"test": 1}), "unknown split(s) ['test']"),
    ],
)
def test_bad_options_raise_clear_errors(call, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        call()


def test_impossible_request_names_the_split():
    with pytest.raises(ValueError, match="synthetic:eval: could only generate"):
        synthetic.build_records("eval", 3, 0, synthetic.WorldConfig(min_skills=1, max_skills=1, max_lines=3))


# --------------------------------------------------------------------------------------------- oracle annotation
def small_program() -> synthetic.Program:
    """``def f(xs)`` with two skills: ``filter_even`` (line 1) and ``sum_values`` (lines 2-3), then ``return``."""
    skills = (SKILLS_BY_ID["filter_even"], SKILLS_BY_ID["sum_values"])
    chunks = [["    a = xs"], ["    b = a", "    c = b"]]
    return synthetic.Program("f", "ints", skills, ["def f(xs):"], chunks, ["    return c"], tests=[])


ORACLE_TEXT = (
    "def f(xs):\n"  # [0, 11)
    "    # keep even values\n"  # [11, 34): 4 spaces + "# " + 16 characters + newline = 23
    "    a = xs\n"  # [34, 45)
    "    # sum the values\n"  # [45, 66): 4 + 2 + 14 + 1 = 21
    "    b = a\n"
    "    c = b\n"
    "    return c\n"
)


def small_record() -> dict:
    """The program as a ``midtrain`` record (no comments): skill starts 1 and 2 among its 5 lines."""
    record = synthetic._text_record(small_program(), "synthetic/midtrain/0/0", random.Random(0), comment_rate=0.0)
    assert record["text"] == "def f(xs):\n    a = xs\n    b = a\n    c = b\n    return c\n"
    assert (record["skill_starts"], record["skill_ends"]) == ([1, 2], [2, 4])
    return record


def comment_phrases(annotated: dict) -> list[str]:
    return [annotated["text"][s:e].removeprefix("    # ").removesuffix("\n") for s, e in annotated["rationale_spans"]]


def test_oracle_annotation_by_hand():
    record = small_record()
    [oracle] = synthetic.oracle_records([record], "true")
    assert oracle["text"] == ORACLE_TEXT == small_program().commented_text([True, True])
    assert oracle["rationale_spans"] == [[11, 34], [45, 66]] and oracle["think_lines"] == [1, 2]
    assert strip_rationales(oracle["text"], oracle["rationale_spans"]) == record["text"]  # code lines unchanged
    assert {k: oracle[k] for k in ("id", "skills", "skill_starts", "skill_ends")} == {
        k: record[k] for k in ("id", "skills", "skill_starts", "skill_ends")
    }


def test_wrong_content_marks_the_same_starts_with_another_skills_phrase():
    record = small_record()
    own = ["keep even values", "sum the values"]
    others = {s.comment for s in SKILLS}
    draws = []
    for seed in range(20):
        [wrong] = synthetic.oracle_records([record], "wrong", seed)
        assert wrong == synthetic.oracle_records([record], "wrong", seed)[0]  # deterministic given the seed
        assert wrong["think_lines"] == [1, 2]  # a comment before every true skill start ...
        phrases = comment_phrases(wrong)
        assert all(p != o and p in others for p, o in zip(phrases, own, strict=True))  # ... never the skill's own
        assert strip_rationales(wrong["text"], wrong["rationale_spans"]) == record["text"]
        # the same layout as the oracle: each comment line is 4 + 2 + len(phrase) + 1 characters long
        first = 11 + 4 + 2 + len(phrases[0]) + 1
        assert wrong["rationale_spans"] == [[11, first], [first + 11, first + 11 + 4 + 2 + len(phrases[1]) + 1]]
        draws.append(tuple(phrases))
    assert len(set(draws)) > 1  # the seed chooses the phrases


@pytest.mark.parametrize("content", ["true", "wrong"])
def test_oracle_annotation_of_a_split(content, midtrain, tmp_path):
    from ra3_lightning.abstraction_metrics import recovery_metrics

    records = midtrain.select(range(40)).to_list()
    annotated = synthetic.oracle_records(records, content, seed=3)
    for record, oracle in zip(records, annotated, strict=True):
        assert strip_rationales(oracle["text"], oracle["rationale_spans"]) == record["text"]
        own = [SKILLS_BY_ID[s].comment for s in record["skills"]]
        assert (comment_phrases(oracle) == own) == (content == "true")
        if content == "wrong":
            assert all(p != o for p, o in zip(comment_phrases(oracle), own, strict=True))
    metrics = recovery_metrics(annotated, {r["id"]: r for r in records})
    assert metrics["precision"] == metrics["recall"] == 1.0  # every true skill start, and nothing else
    assert (metrics["nmi_text"] == pytest.approx(1.0)) == (content == "true")
    midtrain.select(range(40)).save_to_disk(str(tmp_path / "midtrain"))
    synthetic.write_oracle_split(tmp_path / "midtrain", tmp_path / "oracle", content, seed=3)
    assert load_records(str(tmp_path / "oracle")).to_list() == annotated
    with pytest.raises(ValueError, match="has comment lines"):
        synthetic.oracle_records(annotated, content)
