"""The parts of the ``ra3 demo`` report that say whether the RA3-vs-NTP comparison was fair and why a model scores
what it scores: evaluation diagnostics per model, pass@1 by number of skills, the token budget of both arms (total
and code tokens), RLVR held-in and held-out curves, and RLVR convergence to a threshold both arms start below.

Everything is read back from what the stages wrote (``eval/<run>.json``, TensorBoard event files); nothing here is
typed in by hand.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ra3_lightning.pipeline.scalars import read_scalars, steps_to_reach
from ra3_lightning.pipeline.spec import (
    ARMS,
    ORACLE_ARMS,
    Paths,
    PipelineConfig,
    midtrain_token_budget,
    rlvr_checkpoint_steps,
)

# Diagnostic columns of the evaluation table: results key -> header.
DIAGNOSTICS: dict[str, str] = {
    "pass@1": "pass@1",
    "truncation_rate": "truncated",
    "rationale_rate": "with rationale",
    "rationales_per_completion": "rationales / completion",
    "rationale_accuracy": "rationale names the right skill",
    "code_tokens": "code tokens",
    "completion_tokens": "tokens",
}
DIAGNOSED_RUNS: tuple[str, ...] = (
    "base", "ntp", "ra3", "ra3_nothink", "rlvr_ntp", "rlvr_ra3", "rlvr_ra3_nothink",
    *(f"{arm}{suffix}" for arm in ORACLE_ARMS for suffix in ("", "_nothink")),  # only those evaluated are shown
)  # fmt: skip
# How far above the better arm's start the RLVR convergence threshold lies (fixed before any fair-protocol run).
THRESHOLD_MARGIN = 0.05


def eval_results(paths: Paths) -> dict[str, dict[str, float]]:
    """Every evaluation run's numbers, ``eval/<run>.json`` -> ``{run: {metric: value}}``."""
    folder = paths.root / "eval"
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))} if folder.exists() else {}


def mean_scalar(log_dir: Path, tag: str) -> float | None:
    """Mean of a logged scalar over the run (``None`` when absent)."""
    values = [v for _, v in read_scalars(log_dir, tag)]
    return sum(values) / len(values) if values else None


def token_budget(cfg: PipelineConfig, paths: Paths) -> dict[str, Any]:
    """Tokens the mid-training arms trained on: total (packed blocks: steps x batch x length, the same for both arms)
    and code tokens (RA3: total minus its measured rationale-token share ``mstep/rationale_token_frac``); for each
    oracle arm that ran, ``oracle_tokens`` holds what its stage counted in the batches it trained on."""
    total = float(midtrain_token_budget(cfg))
    share = mean_scalar(paths.log_dir("ra3"), "mstep/rationale_token_frac")
    budget: dict[str, Any] = {
        "total_tokens": total,
        "ntp_code_tokens": total,
        "ra3_code_tokens": None if share is None else total * (1.0 - share),
        "ra3_rationale_share": share,
    }
    counted = {arm: paths.training_tokens(arm) for arm in ORACLE_ARMS if paths.training_tokens(arm).exists()}
    if counted:
        budget["oracle_tokens"] = {arm: json.loads(path.read_text()) for arm, path in counted.items()}
    return budget


def rlvr_curves(cfg: PipelineConfig, paths: Paths, results: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Per arm: held-out pass@1 along the RLVR run (step 0 = the mid-trained model, the last step = the RLVR stage's
    model, in between the ``checkpoint_every`` checkpoints, scored with ``eval.curve_num_samples``) and held-in
    ``val/pass@1`` from the RLVR run's own validation."""
    curves: dict[str, Any] = {}
    for arm in ARMS:
        points = [(0, arm)] + [(s, f"rlvr_{arm}_step{s}") for s in rlvr_checkpoint_steps(cfg)]
        points.append((cfg.rlvr.steps, f"rlvr_{arm}"))
        heldout = [[step, results[name]["pass@1"]] for step, name in points if name in results]
        heldin = [[step, value] for step, value in read_scalars(paths.log_dir(f"rlvr_{arm}"), "val/pass@1")]
        curves[arm] = {"heldout": heldout, "heldin": heldin}
    return curves


def relative_convergence(cfg: PipelineConfig, paths: Paths) -> dict[str, Any]:
    """Steps until each arm's smoothed training pass rate reaches ``max(start of both arms) + THRESHOLD_MARGIN``,
    where an arm's start is the mean pass rate of its first ``rlvr.smoothing`` logged steps — a threshold both arms
    start below by construction."""
    series = {arm: read_scalars(paths.log_dir(f"rlvr_{arm}"), "train/pass_rate") for arm in ARMS}
    window = cfg.rlvr.smoothing
    starts = {arm: sum(v for _, v in s[:window]) / len(s[:window]) for arm, s in series.items() if s}
    if len(starts) < len(ARMS):
        return {"threshold": None, "starts": starts, "steps": {}}
    threshold = max(starts.values()) + THRESHOLD_MARGIN
    steps = {arm: steps_to_reach(s, threshold, window) for arm, s in series.items()}
    return {"threshold": threshold, "starts": starts, "steps": steps}


def collect_fairness(cfg: PipelineConfig, paths: Paths) -> dict[str, Any]:
    """The fairness / diagnostics part of ``results.json``."""
    results = eval_results(paths)
    return {
        "eval_runs": results,
        "token_budget": token_budget(cfg, paths),
        "rlvr_curves": rlvr_curves(cfg, paths, results),
        "rlvr_convergence": relative_convergence(cfg, paths),
    }


# --------------------------------------------------------------------------------------------- markdown
def _fmt(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.3f}" if abs(x) < 1000 else f"{x:,.0f}"


def diagnostics_table(results: dict[str, dict[str, float]]) -> list[str]:
    """pass@1 and the evaluation diagnostics of every diagnosed run that was evaluated."""
    rows = ["| model | " + " | ".join(DIAGNOSTICS.values()) + " |", "|---|" + "---:|" * len(DIAGNOSTICS)]
    for run in (r for r in DIAGNOSED_RUNS if r in results):
        rows.append(f"| {run} | " + " | ".join(_fmt(results[run].get(k)) for k in DIAGNOSTICS) + " |")
    return rows


def skills_table(results: dict[str, dict[str, float]]) -> list[str]:
    """pass@1 split by the number of skills of the task, per diagnosed run."""
    prefix = "pass@1_skills"
    sizes = sorted({int(k.removeprefix(prefix)) for r in results.values() for k in r if k.startswith(prefix)})
    if not sizes:
        return ["(no task carries ground-truth skills)"]
    rows = ["| model | " + " | ".join(f"{n} skills" for n in sizes) + " |", "|---|" + "---:|" * len(sizes)]
    for run in (r for r in DIAGNOSED_RUNS if r in results):
        rows.append(f"| {run} | " + " | ".join(_fmt(results[run].get(f"pass@1_skills{n}")) for n in sizes) + " |")
    return rows


def budget_lines(budget: dict[str, Any]) -> list[str]:
    oracles = budget.get("oracle_tokens", {})
    return [
        "| arm | total tokens | code tokens |",
        "|---|---:|---:|",
        f"| NTP | {_fmt(budget['total_tokens'])} | {_fmt(budget['ntp_code_tokens'])} |",
        f"| RA3 (M-steps) | {_fmt(budget['total_tokens'])} | {_fmt(budget['ra3_code_tokens'])} |",
        *(f"| {arm} (counted) | {_fmt(t['total'])} | {_fmt(t['code'])} |" for arm, t in oracles.items()),
        "",
        f"The arms are matched on total tokens; RA3's rationale-token share is {_fmt(budget['ra3_rationale_share'])}.",
        *(["Oracle arms: non-padding tokens counted in the batches they trained on (the budget counts padding)."]
          if oracles else []),
    ]  # fmt: skip


def curve_lines(curves: dict[str, Any], convergence: dict[str, Any]) -> list[str]:
    lines = ["| arm | held-out pass@1 (step: value) | held-in val pass@1 (step: value) |", "|---|---|---|"]
    for arm, c in curves.items():
        heldout = ", ".join(f"{s}: {_fmt(v)}" for s, v in c["heldout"]) or "n/a"
        heldin = ", ".join(f"{s}: {_fmt(v)}" for s, v in c["heldin"]) or "n/a"
        lines.append(f"| RLVR from {arm.upper()} | {heldout} | {heldin} |")
    t = convergence.get("threshold")
    if t is not None:
        starts = ", ".join(f"{a.upper()} {_fmt(v)}" for a, v in convergence["starts"].items())
        reached = convergence["steps"].items()
        steps = ", ".join(f"{a.upper()} {v if v is not None else 'not reached'}" for a, v in reached)
        lines += ["", f"Training pass rate at the start: {starts}; threshold {_fmt(t)}; steps to reach it: {steps}."]
    return lines
