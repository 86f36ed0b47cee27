"""The report of ``ra3 demo``: ``summary.md``, ``results.json`` and PNG plots, read back from what the stages left.

:func:`collect_results` is the one place that turns a seed's run directory into numbers: pass@k per model from
``eval/<model>.json``, RLVR scalars from the TensorBoard event files (``EventAccumulator``), and abstraction recovery
per EM iteration computed here from the annotated traces of each iteration joined with the synthetic ground truth
(:func:`ra3_lightning.abstraction_metrics.recovery_metrics`). ``summary.md`` is rendered from that dict and the
dict itself is written as ``results.json``, which the multi-seed aggregate (:mod:`.aggregate`) reads — so the
aggregate never parses Markdown. Nothing in the report is typed in by hand, and the caveat about pass rates near
zero is derived from the measured table.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from ra3_lightning.pipeline.fairness import (
    ARMS,
    budget_lines,
    collect_fairness,
    curve_lines,
    diagnostics_table,
    skills_table,
)
from ra3_lightning.pipeline.scalars import moving_average, pyplot, read_scalars, steps_to_reach
from ra3_lightning.pipeline.signals import SIGNALS_TEXT, Signal, learning_signals, plot_estep, signals_table
from ra3_lightning.pipeline.spec import MODEL_LABELS, MODELS, Paths, PipelineConfig, RLVRSpec, config_dict

# Columns of the abstraction-recovery table: results key -> header.
RECOVERY_COLUMNS: dict[str, str] = {
    "elbo_per_line": "ELBO / line",
    "think_rate": "THINK rate",
    "precision": "precision",
    "recall": "recall",
    "f1": "F1",
    "nmi_text": "NMI (text)",
    "nmi_first_token": "NMI (first token)",
}
RECOVERY_TITLE = "Abstraction recovery per EM iteration"
RECOVERY_TEXT = (
    "THINK positions vs true skill starts (precision / recall / F1), and normalised mutual information between "
    "the rationale (its text, or its first word) and the true skill id of the line it precedes, over the traces "
    "each iteration annotated."
)


# --------------------------------------------------------------------------------------------- reading
def em_recovery(paths: Paths, iterations: int) -> list[dict[str, float]]:
    """Abstraction-recovery metrics of each EM iteration's annotated traces (an empty dict if none were written)."""
    import datasets

    from ra3_lightning.abstraction_metrics import recovery_metrics
    from ra3_lightning.data.sources import load_records

    truth = {r["id"]: r for r in load_records(paths.split("midtrain"))}
    rows = []
    for k in range(iterations):
        shards = sorted((paths.em_work / f"iter_{k}").glob("rank_*/data"))
        annotated = [r for s in shards for r in datasets.load_from_disk(str(s))]
        rows.append(recovery_metrics(annotated, truth) if annotated else {})
    return rows


# --------------------------------------------------------------------------------------------- one seed's numbers
def collect_results(cfg: PipelineConfig, paths: Paths, timings: dict[str, float]) -> dict[str, Any]:
    """Every number of one seed's report, as JSON-ready plain data (``None`` where a value is missing or NaN).

    Keys: ``seed``; ``eval`` (model -> ``{"pass@k": value}``, only the models evaluated so far); ``rlvr``
    (``target_pass_rate``, ``smoothing``, ``steps`` and per arm: see :func:`rlvr_arm_results`); ``recovery`` (one
    row per EM iteration: see :func:`recovery_rows`); ``stage_times`` (seconds per stage that ran).
    """
    r = cfg.rlvr
    return {
        "seed": cfg.seed,
        "eval": {m: json.loads(paths.eval_result(m).read_text()) for m in MODELS if paths.eval_result(m).exists()},
        "rlvr": {
            "target_pass_rate": r.target_pass_rate,
            "smoothing": r.smoothing,
            "steps": r.steps,
            "arms": {arm: rlvr_arm_results(paths.log_dir(f"rlvr_{arm}"), r) for arm in ARMS},
        },
        "recovery": recovery_rows(paths, cfg.midtrain.iterations),
        "stage_times": dict(timings),
        "fairness": collect_fairness(cfg, paths),
        "signals": [asdict(signal) for signal in learning_signals(paths)],
    }


def rlvr_arm_results(log_dir: Path, r: RLVRSpec) -> dict[str, Any]:
    """One RLVR arm: steps until the smoothed ``train/pass_rate`` reaches the target (``None``: not reached), and
    ``final_reward``, the trailing ``smoothing``-step mean of ``train/reward_mean`` at the last logged step (a
    single step's reward over ``batch_size * G`` samples is too noisy to compare arms by)."""
    pass_rate = read_scalars(log_dir, "train/pass_rate")
    reward = [v for _, v in read_scalars(log_dir, "train/reward_mean")]
    return {
        "steps_to_target": steps_to_reach(pass_rate, r.target_pass_rate, r.smoothing),
        "final_reward": moving_average(reward, r.smoothing)[-1] if reward else None,
        "logged_steps": len(pass_rate),
    }


def recovery_rows(paths: Paths, iterations: int) -> list[dict[str, float | None]]:
    """Per EM iteration: ELBO per line and THINK rate (TensorBoard, logged at step = iteration) joined with the
    recovery metrics of its annotated traces (:func:`em_recovery`) — the keys of :data:`RECOVERY_COLUMNS` plus
    ``iteration`` and ``num_traces``."""
    elbo = dict(read_scalars(paths.log_dir("ra3"), "em_iteration/elbo_per_line"))
    think = dict(read_scalars(paths.log_dir("ra3"), "em_iteration/think_rate"))
    rows = []
    for k, metrics in enumerate(em_recovery(paths, iterations)):
        values = {"elbo_per_line": elbo.get(k), "think_rate": think.get(k), **metrics}
        keys = (*RECOVERY_COLUMNS, "num_traces")
        rows.append({"iteration": k} | {key: _finite(values.get(key)) for key in keys})
    return rows


def _finite(x: float | None) -> float | None:
    """``None`` for a missing or NaN value, so ``results.json`` stays strict JSON."""
    return None if x is None or math.isnan(x) else float(x)


# --------------------------------------------------------------------------------------------- plots
def plot_rlvr(paths: Paths, out: Path) -> None:
    """Training mean reward vs step of both RLVR arms: the raw points and a trailing 10-step mean."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for arm, color in zip(ARMS, ("tab:blue", "tab:orange"), strict=True):
        series = read_scalars(paths.log_dir(f"rlvr_{arm}"), "train/reward_mean")
        steps, values = [s for s, _ in series], [v for _, v in series]
        ax.scatter(steps, values, s=6, alpha=0.3, color=color)
        ax.plot(steps, moving_average(values, 10), color=color, label=f"RLVR from {arm.upper()} (10-step mean)")
    ax.set(xlabel="RLVR step", ylabel="mean reward (pass rate)", title="RLVR reward vs step")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def plot_em(paths: Paths, out: Path) -> None:
    """ELBO per line and THINK rate of the annotated traces, per EM iteration."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, tag, label in zip(
        axes, ("em_iteration/elbo_per_line", "em_iteration/think_rate"), ("ELBO per line", "THINK rate"), strict=True
    ):
        series = read_scalars(paths.log_dir("ra3"), tag)
        ax.plot([s for s, _ in series], [v for _, v in series], marker="o")
        ax.set(xlabel="EM iteration", ylabel=label, title=label)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def plot_losses(paths: Paths, out: Path) -> None:
    """Training losses of pre-training and of both mid-training arms (to check that something is learned)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for stage, tag in (("pretrain", "train/loss"), ("pretrain", "val/loss")):
        series = read_scalars(paths.log_dir(stage), tag)
        axes[0].plot([s for s, _ in series], [v for _, v in series], label=f"{stage} {tag}")
    for stage, tag in (("ntp", "train/loss"), ("ra3", "mstep/loss")):
        series = read_scalars(paths.log_dir(stage), tag)
        axes[1].plot(range(len(series)), [v for _, v in series], label=f"{stage} {tag}")
    axes[0].set(xlabel="step", ylabel="loss", title="pre-training")
    axes[1].set(xlabel="NTP step / M-step", ylabel="loss", title="mid-training (RA3 loss includes rationales)")
    for ax in axes:
        ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


PLOTS = {
    "rlvr_reward.png": plot_rlvr,
    "em_iterations.png": plot_em,
    "estep.png": plot_estep,
    "losses.png": plot_losses,
}


# --------------------------------------------------------------------------------------------- markdown
def results_table(results: dict[str, dict[str, float]], ks: tuple[int, ...]) -> list[str]:
    """The five-row pass@k table (a missing model shows ``n/a``)."""
    head = "| model | " + " | ".join(f"pass@{k}" for k in ks) + " |"
    rows = [head, "|---|" + "---:|" * len(ks)]
    for model in MODELS:
        values = results.get(model, {})
        cells = [_fmt(values.get(f"pass@{k}")) for k in ks]
        rows.append(f"| {MODEL_LABELS[model]} | " + " | ".join(cells) + " |")
    return rows


def rlvr_table(rlvr: dict[str, Any]) -> list[str]:
    """Steps to the target training pass rate and the final smoothed training reward, per RLVR arm."""
    rows = ["| arm | steps | final training reward |", "|---|---:|---:|"]
    for arm, values in rlvr["arms"].items():
        steps = values["steps_to_target"] or (f"not reached in {rlvr['steps']}" if values["logged_steps"] else "no log")
        rows.append(f"| RLVR from {arm.upper()} | {steps} | {_fmt(values['final_reward'])} |")
    return rows


def recovery_table(rows: list[dict[str, float | None]]) -> list[str]:
    """Per EM iteration: ELBO per line, THINK rate, boundary precision / recall / F1, NMI (text, first token)."""
    out = [
        "| EM iteration | " + " | ".join(RECOVERY_COLUMNS.values()) + " |",
        "|---:|" + "---:|" * len(RECOVERY_COLUMNS),
    ]
    for k, row in enumerate(rows):
        out.append(f"| {k} | " + " | ".join(_fmt(row.get(key)) for key in RECOVERY_COLUMNS) + " |")
    return out


def honesty_note(results: dict[str, dict[str, float]]) -> str:
    """A sentence derived from the measured pass@1 values (never typed in by hand)."""
    best = max((v.get("pass@1", 0.0) for v in results.values()), default=0.0)
    if best < 0.05:
        return (
            f"At this scale every model's pass@1 is below 5% (best {best:.3f}): the comparison between arms is "
            "within noise. Use `configs/demo/pipeline_full.yaml` (bigger corpus and model, several seeds) before "
            "reading anything into it."
        )
    ntp, ra3 = results.get("ntp", {}).get("pass@1"), results.get("ra3", {}).get("pass@1")
    if ntp is None or ra3 is None:
        return "Some evaluations are missing."
    verdict = "higher than" if ra3 > ntp else "not higher than"
    return (
        f"After mid-training, RA3's pass@1 ({ra3:.3f}) is {verdict} NTP's ({ntp:.3f}) in this single-seed run; "
        "one seed of a tiny model is an anecdote, not a result."
    )


def eval_description(cfg: PipelineConfig) -> str:
    """How pass@k was measured (shared by the single-seed and the multi-seed report)."""
    e = cfg.eval
    return (
        f"{cfg.world.eval} tasks whose skill compositions never occur in training; {e.num_samples} samples per "
        f"task at temperature {e.temperature}, scored in the sandbox; unbiased pass@k estimator."
    )


def rlvr_title(cfg: PipelineConfig) -> str:
    return f"RLVR steps to reach a training pass rate of {cfg.rlvr.target_pass_rate}"


def rlvr_description(cfg: PipelineConfig) -> str:
    """How steps-to-target and the final training reward are measured (shared by both reports)."""
    r = cfg.rlvr
    return (
        f"Trailing {r.smoothing}-step mean of `train/pass_rate`, out of {r.steps} steps; the final training reward "
        f"is the trailing {r.smoothing}-step mean of `train/reward_mean` at the last step."
    )


def _fmt(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def config_yaml(config: dict[str, Any]) -> list[str]:
    """A fenced YAML block of a config dict."""
    return ["```yaml", yaml.safe_dump(config, sort_keys=False).rstrip(), "```"]


def section(title: str, *blocks: str | list[str]) -> list[str]:
    """A Markdown section: ``## title``, then each block (a paragraph, or a list of lines) and a blank line."""
    lines = [f"## {title}", ""]
    for block in blocks:
        lines += [block] if isinstance(block, str) else block
        lines.append("")
    return lines


def summary_lines(cfg: PipelineConfig, paths: Paths, command: str, results: dict[str, Any]) -> list[str]:
    """``summary.md`` of one seed, rendered from :func:`collect_results`'s dict."""
    fair = results["fairness"]
    return [
        "# RA3 demo report",
        "",
        f"Command: `{command}`  ",
        f"Seed: {cfg.seed}  ",
        f"Stage times (s): {json.dumps(results['stage_times'])}",
        "",
        *section("Is each stage learning?", SIGNALS_TEXT, signals_table([Signal(**row) for row in results["signals"]])),
        *section(
            "pass@k on the held-out evaluation tasks",
            eval_description(cfg),
            results_table(results["eval"], tuple(cfg.eval.ks)),
            honesty_note(results["eval"]),
        ),
        *section(
            "Why each model scores what it scores (held-out tasks)",
            "`_nothink`: the same model with comment-start tokens forbidden at decode time. Rationale accuracy: of the "
            "comments whose text is a skill's phrase, the share naming the skill the next code line belongs to.",
            diagnostics_table(fair["eval_runs"]),
            "pass@1 by the number of skills in the task:",
            skills_table(fair["eval_runs"]),
        ),
        *section("Mid-training token budget", budget_lines(fair["token_budget"])),
        *section(rlvr_title(cfg), rlvr_description(cfg), rlvr_table(results["rlvr"])),
        *section(
            "RLVR along the run",
            "Held-out pass@1 of the checkpoints along each RLVR run (in between: `eval.curve_num_samples` samples per "
            "task), held-in pass@1 on the `rlvr.heldin` tasks RLVR never trains on, and convergence to a threshold "
            "both arms start below.",
            curve_lines(fair["rlvr_curves"], fair["rlvr_convergence"]),
        ),
        *section(RECOVERY_TITLE, RECOVERY_TEXT, recovery_table(results["recovery"])),
        *section(
            "Plots and logs",
            [f"![{name}]({name})" for name in PLOTS],
            "TensorBoard: `tensorboard --logdir " + str(paths.tb) + "`; every number above: `results.json`.",
        ),
        *section("Config", config_yaml(config_dict(cfg))),
    ]


def write_report(cfg: PipelineConfig, paths: Paths, command: str, timings: dict[str, float]) -> Path:
    """Write the plots, ``results.json`` and ``summary.md`` under ``paths.root``; returns the summary's path."""
    results = collect_results(cfg, paths, timings)
    for name, plot in PLOTS.items():
        plot(paths, paths.root / name)
    record = {"command": command, **results, "config": config_dict(cfg)}
    (paths.root / "results.json").write_text(json.dumps(record, indent=1) + "\n")
    summary = paths.root / "summary.md"
    summary.write_text("\n".join(summary_lines(cfg, paths, command, results)))
    return summary
