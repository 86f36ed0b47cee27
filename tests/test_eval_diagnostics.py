"""Evaluation diagnostics: token accounting, rationale accuracy, summaries, the THINK bias mask and the completion
budget, each against hand-derived numbers; the budget of the demo's eval split with the demo's tokenizer."""

from __future__ import annotations

import doctest
import json
import math

import pytest
import torch

import ra3_lightning.eval_diagnostics as diag
from ra3_lightning.data.skills import SKILLS, SKILLS_BY_ID, skill_comments
from ra3_lightning.data.synthetic import load_split
from ra3_lightning.data.tasks import CodingTask, tasks_from_records
from ra3_lightning.estep import insert_rationales, split_lines, think_token_mask, token_texts
from ra3_lightning.eval_diagnostics import (
    CompletionBudget,
    CompletionStats,
    EvalDiagnostics,
    RationaleCounts,
    comment_start_mask,
    commented_code_lines,
    completion_stats,
    merge_sample_files,
    rank_samples_path,
    rationale_counts,
    required_completion_budget,
    sample_record,
    skill_phrases,
    summarize_diagnostics,
    task_skill_phrases,
    think_logit_bias,
)
from ra3_lightning.models import TinyLMConfig, tokenizer_for_tiny, train_bpe_tokenizer
from ra3_lightning.sandbox.types import TestSuite

SUITE = TestSuite("check", check_code="def check(candidate):\n    pass\n", entry_point="f")


def test_docstring_examples_run():
    result = doctest.testmod(diag)
    assert result.attempted > 0 and result.failed == 0


# --------------------------------------------------------------------------------------------- completion_stats
@pytest.mark.parametrize(
    ("pieces", "expected"),
    [
        # a comment as the last line, no newline, then EOS (""): line 1 "# done" holds "#" and " done"
        (["    return n", "\n", "#", " done", ""], CompletionStats(5, 3, 1, 2)),
        # "\n\n" starts on comment line 0 and ends the blank line 1; lines 0 and 2 are comments, 4 tokens each
        (["   ", " #", " a", "\n\n", "   ", " #", " b", "\n", "    x", "\n"], CompletionStats(10, 2, 2, 8)),
        # a '#' inside code is no comment line
        (["    x = '#'", "\n", ""], CompletionStats(3, 3, 0, 0)),
        ([""], CompletionStats(1, 1, 0, 0)),  # EOS only
    ],
)
def test_completion_stats_by_hand(pieces, expected):
    assert completion_stats(pieces) == expected


# --------------------------------------------------------------------------------------------- rationale accuracy
PROMPT = 'def f(xs):\n    """doc"""\n'  # code lines 0 and 1
COMPLETION = (
    "    # keep even values\n"  # before code line 2 (filter_even): matched, correct
    "    out = []\n"  # 2
    "    for x in xs:\n"  # 3
    "        # sum the values\n"  # before line 4 (still filter_even): matched (sum_values), wrong
    "        if x % 2 == 0:\n"  # 4
    "            out.append(x)\n"  # 5
    "    # Sum the values.\n"  # before line 6: the period makes it no skill's phrase: unmatched
    "    # sum the values\n"  # before line 6 (sum_values): matched, correct
    "    n = 0\n"  # 6
    "    for x in out:\n"  # 7
    "        n += x\n"  # 8
    "    return n\n"  # 9
    "    # done\n"  # after the last code line: index 10, unmatched
)
TRUTH = {"skills": ["filter_even", "sum_values"], "skill_starts": [2, 6], "skill_ends": [6, 9]}


def test_comments_are_aligned_to_the_code_line_that_follows():
    lines = [line for _, line in commented_code_lines(PROMPT, COMPLETION)]
    assert lines == [2, 4, 6, 6, 10]
    # a prompt without a final newline shares its last line with the completion's first
    assert commented_code_lines("def f():", "\n    # c\n    pass\n") == [("    # c\n", 1)]


def test_rationale_counts_by_hand():
    # 5 comments; matched: "keep even values", "sum the values" (twice); correct: the first and the last of those
    assert rationale_counts(COMPLETION, PROMPT, TRUTH, skill_phrases(skill_comments())) == RationaleCounts(5, 3, 2)
    # the same completion written in a "; " format scores the same under marker ";"
    semicolon = COMPLETION.replace("# ", "; ")
    phrases = skill_phrases(skill_comments())
    assert rationale_counts(semicolon, PROMPT, TRUTH, phrases, marker=";") == RationaleCounts(5, 3, 2)


def test_skill_phrases_map_each_ground_truth_comment_to_its_skill():
    phrases = skill_phrases(skill_comments())
    assert len(phrases) == len(SKILLS) and phrases["keep even values"] == "filter_even"
    clash = {"skill": "other", "comment": "Keep even values"}
    with pytest.raises(ValueError, match="share the comment phrase 'keep even values'"):
        skill_phrases([*skill_comments(), clash])


def test_synthetic_tasks_carry_the_phrases_of_their_world():
    """The evaluation takes the phrases from the task, so it imports no task world; old task files have none."""
    task = tasks_from_records(load_split("eval", n=1, seed=0))[0]
    assert task_skill_phrases(task.meta) == skill_phrases(skill_comments())
    assert task_skill_phrases({k: v for k, v in task.meta.items() if k != "skill_comments"}) is None


def _commented(task: CodingTask, comment_of: dict[int, str]) -> str:
    """The reference body with ``# <phrase>`` before the given skill positions, indented like the skill."""
    offset = len(split_lines(task.prompt))
    starts = task.meta["skill_starts"]
    return insert_rationales(task.canonical_solution, {starts[i] - offset: c for i, c in comment_of.items()}).text


def test_rationale_accuracy_on_synthetic_eval_tasks():
    """The pre-training corpus's own comments score 1; rotated comments score where the rotation happens to agree;
    a skipped comment does not shift the others (line alignment, not order)."""
    for task in tasks_from_records(load_split("eval", n=16, seed=0)):
        skills = task.meta["skills"]
        k, phrases = len(skills), task_skill_phrases(task.meta)
        exact = {i: SKILLS_BY_ID[s].comment for i, s in enumerate(skills)}
        assert rationale_counts(_commented(task, exact), task.prompt, task.meta, phrases) == RationaleCounts(k, k, k)
        rotated = {i: SKILLS_BY_ID[skills[(i + 1) % k]].comment for i in range(k)}
        agree = sum(skills[(i + 1) % k] == skills[i] for i in range(k))
        got = rationale_counts(_commented(task, rotated), task.prompt, task.meta, phrases)
        assert got == RationaleCounts(k, k, agree)
        skipped = {i: c for i, c in exact.items() if i != 0}
        got = rationale_counts(_commented(task, skipped), task.prompt, task.meta, phrases)
        assert got == RationaleCounts(k - 1, k - 1, k - 1)


# --------------------------------------------------------------------------------------------- summaries
TOTALS = {
    "completions": 4, "truncated": 1, "with_rationale": 2, "rationales": 3, "rationale_tokens": 12, "tokens": 100,
    "code_tokens": 88, "gt_comments": 3, "gt_matched": 2, "gt_correct": 1, "gt_scored": 4,
}  # fmt: skip


def test_summarize_diagnostics_by_hand():
    out = summarize_diagnostics(TOTALS, task_skills=[2, 3, 2], task_pass=[0.5, 0.0, 1.0])
    assert out == {
        "truncation_rate": 1 / 4,
        "rationale_rate": 2 / 4,
        "rationales_per_completion": 3 / 4,
        "rationale_tokens": 12 / 3,
        "completion_tokens": 100 / 4,
        "code_tokens": 88 / 4,
        "rationale_matched_rate": 2 / 3,
        "rationale_accuracy": 1 / 2,
        "pass@1_skills2": (0.5 + 1.0) / 2,
        "tasks_skills2": 2.0,
        "pass@1_skills3": 0.0,
        "tasks_skills3": 1.0,
    }


def test_summaries_without_ground_truth_rationales_or_completions():
    no_comments = {**TOTALS, "with_rationale": 0, "rationales": 0, "rationale_tokens": 0, "gt_comments": 0,
                   "gt_matched": 0, "gt_correct": 0, "gt_scored": 0}  # fmt: skip
    out = summarize_diagnostics(no_comments, [], [])
    assert math.isnan(out["rationale_tokens"]) and out["rationale_rate"] == 0.0
    assert not any(k.startswith(("rationale_matched", "rationale_accuracy", "pass@1_skills")) for k in out)
    out = summarize_diagnostics({**no_comments, "gt_scored": 1}, [2], [1.0])
    assert math.isnan(out["rationale_matched_rate"]) and math.isnan(out["rationale_accuracy"])
    out = summarize_diagnostics(no_comments, [2], [1.0])  # ground truth but no phrases (an older task file)
    assert "rationale_accuracy" not in out and out["pass@1_skills2"] == 1.0
    assert summarize_diagnostics({**TOTALS, "completions": 0}, [], []) == {}


def test_metric_accumulates_and_resets():
    metric = EvalDiagnostics()
    assert metric.compute() == {}
    metric.update([CompletionStats(10, 6, 1, 4)], [True], [RationaleCounts(1, 1, 0)], [3], [0.0])
    metric.update([CompletionStats(20, 20, 0, 0)], torch.tensor([False]), [], [], [])
    out = metric.compute()
    # 2 completions (1 truncated), 1 rationale of 4 tokens, 30 tokens of which 26 code; one task with 3 skills
    assert out["truncation_rate"] == 0.5 and out["rationale_tokens"] == 4.0 and out["code_tokens"] == 13.0
    assert out["rationale_matched_rate"] == 1.0 and out["rationale_accuracy"] == 0.0 and out["tasks_skills3"] == 1
    metric.reset()
    assert metric.compute() == {}
    with pytest.raises(ValueError, match="1 stats, 2 truncation flags"):
        metric.update([CompletionStats(1, 1, 0, 0)], [True, False], [], [], [])


# --------------------------------------------------------------------------------------------- THINK bias
def test_comment_start_mask_covers_the_think_tokens(tiny_tokenizer):
    mask = comment_start_mask(tiny_tokenizer)
    texts = token_texts(tiny_tokenizer)
    assert bool((mask | ~think_token_mask(tiny_tokenizer)).all())  # a superset of the THINK tokens
    assert {texts[i] for i in mask.nonzero().flatten().tolist()} >= {"#"}
    assert all(texts[i].lstrip(" \t").startswith("#") for i in mask.nonzero().flatten().tolist())
    assert not any(t.lstrip(" \t").startswith("#") for t, m in zip(texts, mask.tolist(), strict=True) if not m)


def test_think_logit_bias():
    mask = torch.tensor([False, True, True])
    assert think_logit_bias(mask, -5.0).tolist() == [0.0, -5.0, -5.0]
    assert think_logit_bias(mask, float("-inf")).tolist() == [0.0, -math.inf, -math.inf]  # no 0 * inf NaN
    with pytest.raises(ValueError, match="NaN"):
        think_logit_bias(mask, math.nan)


# --------------------------------------------------------------------------------------------- budget
@pytest.fixture(scope="module")
def byte_tokenizer():
    """No merges (256 bytes + EOS): one token per character, so token counts are character counts."""
    return train_bpe_tokenizer(["def f(x):\n    return x\n"], vocab_size=257)


def _task(task_id: str, prompt: str, body: str, starts: list[int]) -> CodingTask:
    meta = {"skills": [f"s{i}" for i in range(len(starts))], "skill_starts": starts, "skill_ends": starts}
    return CodingTask(task_id, prompt, SUITE, "f", canonical_solution=body, meta=meta)


def test_required_completion_budget_by_hand(byte_tokenizer):
    a = _task("a", "def f(xs):\n", "    n = 0\n    for x in xs:\n        n += x\n    return n\n", [1, 3])
    b = _task("b", "def f():\n", "    return '" + "a" * 50 + "'\n", [1])
    # a: body 10 + 17 + 15 + 13 = 55, + EOS = 56; rationales: (4 indent + 8) at line 1, (8 + 8) at line 3 -> 84
    # b: body 4 + 7 + 52 + 1 = 64, + EOS = 65; one rationale (4 + 8) -> 77
    assert required_completion_budget([a, b], byte_tokenizer, 8) == CompletionBudget(84, 65, "a")
    assert required_completion_budget([a, b], byte_tokenizer, 0) == CompletionBudget(65, 65, "b")


def test_required_completion_budget_errors(byte_tokenizer):
    plain = CodingTask("he/0", "def f():\n", SUITE, "f", canonical_solution="    return 1\n")
    assert required_completion_budget([plain], byte_tokenizer, 0).tokens == 14  # 13 + EOS
    with pytest.raises(ValueError, match="task 'he/0': no ground-truth skills"):
        required_completion_budget([plain], byte_tokenizer, 8)
    with pytest.raises(ValueError, match="task 'x': no canonical_solution"):
        required_completion_budget([CodingTask("x", "def f():\n", SUITE)], byte_tokenizer, 0)
    with pytest.raises(ValueError, match="no tasks"):
        required_completion_budget([], byte_tokenizer, 0)


DEMO_BUDGET = 256  # the completion budget the demo pipeline needs (measured: see the test below)


@pytest.fixture(scope="module")
def demo_tokenizer():
    """The BPE of configs/demo/pipeline*.yaml (``model.vocab_size`` 1024 on ``synthetic:pretrain?n=2000``); ~10 s
    to train into the session cache."""
    return tokenizer_for_tiny(TinyLMConfig(vocab_size=1024, tokenizer_corpus="synthetic:pretrain?n=2000"))


@pytest.mark.parametrize(("split", "n"), [("eval", 128), ("rlvr", 512)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_demo_budget_fits_every_reference_and_its_rationales(demo_tokenizer, split, n, seed):
    """Measured with the demo tokenizer and max_latent_tokens = 8: eval n=128 needs 201 / 194 / 190 tokens (code
    alone 147 / 140 / 145) for seeds 0 / 1 / 2; rlvr n=512 208 at most. A budget of 128 did not fit the code."""
    tasks = tasks_from_records(load_split(split, n=n, seed=seed))
    budget = required_completion_budget(tasks, demo_tokenizer, max_rationale_tokens=8)
    assert budget.tokens <= DEMO_BUDGET, budget
    assert budget.code_tokens > 128, budget  # the old budget could not hold the longest reference body


# --------------------------------------------------------------------------------------------- samples file
def test_sample_record():
    task = _task("t", "def f():\n", "    return 1\n", [1])
    record = sample_record(task, "    return 1\n", True, False, CompletionStats(5, 5, 0, 0))
    assert record == {
        "task_id": "t", "completion": "    return 1\n", "solution": "def f():\n    return 1\n", "passed": True,
        "truncated": False, "num_tokens": 5,
        "num_code_tokens": 5, "num_rationales": 0, "skills": ["s0"],
    }  # fmt: skip
    plain = CodingTask("he/0", "def f():\n", SUITE)
    assert "skills" not in sample_record(plain, "", False, True, CompletionStats(1, 1, 0, 0))


def test_rank_parts_merge_into_one_samples_file_ordered_by_task_then_sample(tmp_path):
    out = tmp_path / "val_4.jsonl"
    parts = [rank_samples_path(out, r) for r in range(2)]
    assert parts == [tmp_path / "val_4.rank0.jsonl", tmp_path / "val_4.rank1.jsonl"]
    # rank 0 drew tasks 10 and 2 (two samples each, a then b), rank 1 task 9; an empty line is skipped
    rank0 = [("HumanEval/10", "a"), ("HumanEval/10", "b"), ("HumanEval/2", "a"), ("HumanEval/2", "b")]
    parts[0].write_text("".join(json.dumps({"task_id": t, "completion": c}) + "\n" for t, c in rank0) + "\n")
    parts[1].write_text(json.dumps({"task_id": "HumanEval/9", "completion": "a"}) + "\n")
    assert merge_sample_files(parts, out) == 5
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    # numbers in ids compare as numbers (2 < 9 < 10); within a task, the order the samples were drawn
    assert [(r["task_id"], r["completion"]) for r in rows] == [
        ("HumanEval/2", "a"), ("HumanEval/2", "b"), ("HumanEval/9", "a"), ("HumanEval/10", "a"), ("HumanEval/10", "b"),
    ]  # fmt: skip
    assert not any(p.exists() for p in parts) and sorted(tmp_path.iterdir()) == [out]  # parts removed, no temp file
    # a sample_index, where records carry one, orders the samples of a task; remove_parts=False keeps the parts
    parts[0].write_text("".join(json.dumps({"task_id": "7", "sample_index": i}) + "\n" for i in (1, 0)))
    parts[1].write_text("")
    assert merge_sample_files(parts, out, remove_parts=False) == 2
    assert [json.loads(line)["sample_index"] for line in out.read_text().splitlines()] == [0, 1]
    assert all(p.exists() for p in parts)
