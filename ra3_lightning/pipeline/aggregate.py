"""The multi-seed report of ``ra3 demo --seeds``: ``<out>/summary.md`` and ``<out>/results.json``.

Input is the ``results.json`` that each seed's own report wrote under ``<out>/seed{S}``
(:func:`ra3_lightning.pipeline.report.collect_results`); this module only averages those numbers, it never
re-derives or parses Markdown. The spread is the *sample* standard deviation over seeds (``n - 1`` denominator),
which with three seeds is itself very uncertain, so every table also lists the per-seed values. The only verdict
printed is mechanical: the RA3 − NTP differences paired by seed (both arms of a seed share its world and base
model) and in how many seeds each sign occurs — no test, and no claim about what the numbers mean.

The math and the table rows are pure functions of plain dicts (unit-tested on hand-written inputs);
:func:`write_aggregate` is the thin part that reads config and writes files.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ra3_lightning.pipeline.fairness import DIAGNOSED_RUNS, DIAGNOSTICS
from ra3_lightning.pipeline.report import (
    ARMS,
    RECOVERY_COLUMNS,
    RECOVERY_TEXT,
    RECOVERY_TITLE,
    config_yaml,
    eval_description,
    rlvr_description,
    rlvr_title,
    section,
)
from ra3_lightning.pipeline.spec import MODEL_LABELS, MODELS, PipelineConfig, config_dict

Stats = dict[str, Any]  # {"mean": float | None, "std": float | None, "n": int, "values": [float | None per seed]}


# --------------------------------------------------------------------------------------------- math
def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (``n - 1`` denominator; ``None`` for a single value).

    >>> [round(x, 9) for x in mean_std([0.1, 0.2, 0.3])]  # deviations -0.1, 0, 0.1: sqrt(0.02 / 2) = 0.1
    [0.2, 0.1]
    """
    if not values:
        raise ValueError("mean_std needs at least one value")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def seed_stats(values: Sequence[float | None]) -> Stats:
    """Mean ± std over the seeds that have a value (``None`` = missing / not reached), keeping per-seed values."""
    present = [v for v in values if v is not None]
    mean, std = mean_std(present) if present else (None, None)
    return {"mean": mean, "std": std, "n": len(present), "values": list(values)}


def difference_line(first: Stats, second: Stats, what: str) -> str:
    """``what`` (second − first) paired by seed: both arms of a seed share its world and its base model, so the
    per-seed differences, not the two arms' spreads over seeds (which mostly measure how hard each seed's world is),
    say how consistent a difference is. A mechanical statement, not a test.
    """
    pairs = [(a, b) for a, b in zip(first["values"], second["values"], strict=True) if a is not None and b is not None]
    if not pairs:
        return f"{what}: not measured for every arm."
    diffs = [round(b - a, 9) + 0.0 for a, b in pairs]  # + 0.0: no "-0.000" from float noise
    per_seed = ", ".join(f"{d:+.3f}" for d in diffs)
    if len(diffs) == 1:
        return f"{what}: {per_seed} (one seed)."
    mean, std = mean_std(diffs)
    mean = round(mean, 9) + 0.0
    higher, lower = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
    return (
        f"{what}, per seed: {per_seed} (mean {mean:+.3f} ± {std:.3f}; higher in {higher}, lower in {lower} of "
        f"{len(diffs)} seeds)."
    )


# --------------------------------------------------------------------------------------------- aggregation
def aggregate_eval(seed_results: Sequence[dict], models: Sequence[str], metrics: Sequence[str]) -> dict[str, Any]:
    """``model -> metric -> Stats`` over seeds (a model a seed did not evaluate counts as missing)."""
    return {m: {k: seed_stats([r["eval"].get(m, {}).get(k) for r in seed_results]) for k in metrics} for m in models}


def aggregate_diagnostics(seed_results: Sequence[dict]) -> dict[str, Any]:
    """``run -> diagnostic -> Stats`` over seeds, from each seed's ``fairness.eval_runs`` (older results lack it)."""

    def finite(values: dict[str, float]) -> dict[str, float]:  # an undefined ratio (NaN) counts as missing
        return {k: v for k, v in values.items() if isinstance(v, (int, float)) and v == v}

    runs = [
        {"eval": {m: finite(v) for m, v in r.get("fairness", {}).get("eval_runs", {}).items()}} for r in seed_results
    ]
    present = [m for m in DIAGNOSED_RUNS if any(m in r["eval"] for r in runs)]
    return aggregate_eval(runs, present, tuple(DIAGNOSTICS))


def aggregate_rlvr(seed_results: Sequence[dict], arms: Sequence[str] = ARMS) -> dict[str, Any]:
    """Per arm: ``steps_to_target`` (``n`` = seeds that reached the target; mean ± std over those only),
    ``logged_steps`` per seed (0: no RLVR log, so "not reached" would be wrong) and ``final_reward`` over seeds."""
    out = {}
    for arm in arms:
        per_seed = [r["rlvr"]["arms"][arm] for r in seed_results]
        out[arm] = {
            "steps_to_target": seed_stats([a["steps_to_target"] for a in per_seed]),
            "logged_steps": [a["logged_steps"] for a in per_seed],
            "final_reward": seed_stats([a["final_reward"] for a in per_seed]),
        }
    return out


def aggregate_recovery(seed_results: Sequence[dict], keys: Sequence[str] = tuple(RECOVERY_COLUMNS)) -> list[dict]:
    """Per EM iteration: ``key -> Stats`` over seeds (a seed with fewer iterations counts as missing there)."""
    iterations = max((len(r["recovery"]) for r in seed_results), default=0)
    rows = []
    for k in range(iterations):
        at_k = [r["recovery"][k] if k < len(r["recovery"]) else {} for r in seed_results]
        rows.append({key: seed_stats([row.get(key) for row in at_k]) for key in keys})
    return rows


def aggregate_times(seed_results: Sequence[dict]) -> dict[str, Stats]:
    """Seconds per stage (in first-seen order) and ``total``, the sum of each seed's recorded stage times (a stage
    that finished in a run that did not record its time is absent, so the total then covers fewer stages)."""
    stages = list(dict.fromkeys(s for r in seed_results for s in r["stage_times"]))
    out = {s: seed_stats([r["stage_times"].get(s) for r in seed_results]) for s in stages}
    out["total"] = seed_stats([sum(r["stage_times"].values()) for r in seed_results])  # of the recorded stages
    return out


# --------------------------------------------------------------------------------------------- formatting
def fmt_stats(s: Stats, seeds: int, digits: int = 3) -> str:
    """``mean ± std``; ``(n=k)`` when fewer than ``seeds`` seeds have a value; ``n/a`` when none has.

    >>> fmt_stats(seed_stats([0.1, 0.2, 0.3]), 3)
    '0.200 ± 0.100'
    """
    if s["n"] == 0:
        return "n/a"
    text = f"{s['mean']:.{digits}f}" + ("" if s["std"] is None else f" ± {s['std']:.{digits}f}")
    return text + (f" (n={s['n']})" if s["n"] < seeds else "")


def fmt_values(values: Sequence[float | None], digits: int = 3, missing: str = "n/a") -> str:
    """Per-seed values, comma-separated, in seed order."""
    return ", ".join(missing if v is None else f"{v:.{digits}f}" for v in values)


def eval_rows(agg: dict[str, Any], labels: dict[str, str], metrics: Sequence[str], seeds: int) -> list[str]:
    """pass@k table: one row per model, ``mean ± std`` per metric, then the first metric per seed."""
    head = "| model | " + " | ".join(metrics) + f" | {metrics[0]} per seed |"
    rows = [head, "|---|" + "---:|" * len(metrics) + "---|"]
    for model, stats in agg.items():
        cells = [fmt_stats(stats[k], seeds) for k in metrics] + [fmt_values(stats[metrics[0]]["values"])]
        rows.append(f"| {labels.get(model, model)} | " + " | ".join(cells) + " |")
    return rows


def rlvr_rows(agg: dict[str, Any], seeds: int) -> list[str]:
    """Steps-to-target table: seeds that reached it (of those with an RLVR log), mean ± std over those, per-seed
    steps, final reward."""
    rows = [
        "| arm | reached in | steps (mean ± std over those) | steps per seed | final training reward |",
        "|---|---:|---:|---|---:|",
    ]
    for arm, a in agg.items():
        steps, logged = a["steps_to_target"], a["logged_steps"]
        per_seed = ", ".join(fmt_steps(v, n) for v, n in zip(steps["values"], logged, strict=True))
        cells = [f"{steps['n']}/{sum(n > 0 for n in logged)} seeds", fmt_stats(steps, steps["n"], 1), per_seed]
        rows.append(f"| RLVR from {arm.upper()} | " + " | ".join(cells) + f" | {fmt_stats(a['final_reward'], seeds)} |")
    return rows


def fmt_steps(steps: int | None, logged_steps: int) -> str:
    """One seed's steps to the target: the count, ``not reached``, or ``no log`` (no RLVR step was logged)."""
    if logged_steps == 0:
        return "no log"
    return "not reached" if steps is None else str(steps)


def recovery_rows(agg: list[dict], seeds: int) -> list[str]:
    """Abstraction-recovery table: one row per EM iteration, ``mean ± std`` per column."""
    rows = [
        "| EM iteration | " + " | ".join(RECOVERY_COLUMNS.values()) + " |",
        "|---:|" + "---:|" * len(RECOVERY_COLUMNS),
    ]
    for k, row in enumerate(agg):
        rows.append(f"| {k} | " + " | ".join(fmt_stats(row[key], seeds) for key in RECOVERY_COLUMNS) + " |")
    return rows


def times_rows(agg: dict[str, Stats], seeds: int) -> list[str]:
    """Stage-time table in seconds: mean ± std and per-seed values."""
    rows = ["| stage | mean ± std (s) | per seed (s) |", "|---|---:|---|"]
    for stage, s in agg.items():
        label = "total (recorded stages)" if stage == "total" else stage
        rows.append(f"| {label} | {fmt_stats(s, seeds, 0)} | {fmt_values(s['values'], 0)} |")
    return rows


# --------------------------------------------------------------------------------------------- the report
def aggregate(seed_results: Sequence[dict], metrics: Sequence[str]) -> dict[str, Any]:
    """Every aggregate of the multi-seed report (what ``<out>/results.json`` holds besides command and config)."""
    return {
        "seeds": [r["seed"] for r in seed_results],
        "eval": aggregate_eval(seed_results, MODELS, metrics),
        "rlvr": aggregate_rlvr(seed_results),
        "diagnostics": aggregate_diagnostics(seed_results),
        "recovery": aggregate_recovery(seed_results),
        "stage_times": aggregate_times(seed_results),
    }


def aggregate_lines(cfg: PipelineConfig, agg: dict[str, Any], command: str, metrics: Sequence[str]) -> list[str]:
    """``summary.md`` of the multi-seed run, rendered from :func:`aggregate`'s dict."""
    seeds, n = agg["seeds"], len(agg["seeds"])
    differences = [
        difference_line(agg["eval"][a][metrics[0]], agg["eval"][b][metrics[0]], f"{metrics[0]}, {label}")
        for a, b, label in (("ntp", "ra3", "RA3 − NTP"), ("rlvr_ntp", "rlvr_ra3", "RLVR from RA3 − RLVR from NTP"))
    ]
    return [
        f"# RA3 demo report over {n} seeds",
        "",
        f"Command: `{command}`  ",
        f"Seeds: {', '.join(map(str, seeds))} (each seed's own report: "
        + ", ".join(f"[seed{s}/summary.md](seed{s}/summary.md)" for s in seeds)
        + ")  ",
        f"Every cell: mean ± sample std (n − 1 denominator) over the {n} seeds; `(n=k)` marks a cell with fewer.",
        "",
        *section(
            "pass@k on the held-out evaluation tasks",
            eval_description(cfg),
            eval_rows(agg["eval"], MODEL_LABELS, metrics, n),
            [f"- {line}" for line in differences],
        ),
        *section(
            "Evaluation diagnostics (held-out tasks)",
            "`_nothink`: comment-start tokens forbidden at decode time.",
            eval_rows(agg["diagnostics"], {}, tuple(DIAGNOSTICS), n) if agg["diagnostics"] else "(not recorded)",
            [f"- {line}" for line in nothink_differences(agg["diagnostics"])],
        ),
        *section(rlvr_title(cfg), rlvr_description(cfg), rlvr_rows(agg["rlvr"], n)),
        *section(RECOVERY_TITLE, RECOVERY_TEXT, recovery_rows(agg["recovery"], n)),
        *section("Stage times", times_rows(agg["stage_times"], n)),
        *section("Config (every seed; `seed` and `out` differ: `<out>/seed{S}`)", config_yaml(agg_config(cfg))),
    ]


def nothink_differences(diagnostics: dict[str, Any]) -> list[str]:
    """Paired pass@1 differences that say how much RA3 leans on its rationales, for the runs that were scored."""
    pairs = (("ntp", "ra3_nothink", "RA3 without rationales − NTP"), ("ra3", "ra3_nothink", "RA3 without − with"))
    return [
        difference_line(diagnostics[a]["pass@1"], diagnostics[b]["pass@1"], f"pass@1, {label}")
        for a, b, label in pairs
        if a in diagnostics and b in diagnostics
    ]


def agg_config(cfg: PipelineConfig) -> dict[str, Any]:
    """The config shared by every seed: without ``seed`` and ``out``."""
    return {k: v for k, v in config_dict(cfg).items() if k not in ("seed", "out")}


def write_aggregate(cfg: PipelineConfig, seed_results: Sequence[dict], command: str, out: Path) -> Path:
    """Write ``<out>/results.json`` and ``<out>/summary.md`` from the seeds' results; returns the summary's path."""
    metrics = [f"pass@{k}" for k in cfg.eval.ks]
    agg = aggregate(seed_results, metrics)
    record = {"command": command, **agg, "config": agg_config(cfg)}
    (out / "results.json").write_text(json.dumps(record, indent=1) + "\n")
    summary = out / "summary.md"
    summary.write_text("\n".join(aggregate_lines(cfg, agg, command, metrics)))
    return summary
