"""Is each stage learning? The training signals of one ``ra3 demo`` run, first quarter against last quarter.

The first question about a run is whether anything learns at all, before any pass@k. This module answers it from
the run's TensorBoard logs, one row per signal: the pre-training and NTP losses, the M-step's loss on the annotated
traces, for every E-phase the E-step's ELBO gain per line (over ``π`` without rationales) and its THINK rate, and for
every RLVR arm its training reward and held-in pass@1. Each row gives the mean of the signal's first and last
quarter of points, so a single noisy step does not decide it. The change is measured, not tested: a change smaller
than the signal's step-to-step noise (see the plots) says nothing.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ra3_lightning.pipeline.scalars import Series, moving_average, pyplot, read_scalars, read_tags
from ra3_lightning.pipeline.spec import ARMS, Paths

Direction = Literal["up", "down"] | None
E_STEP_TAGS = ("estep/elbo_gain_per_line", "estep/think_rate")  # the two E-step signals, per E-phase
SIGNALS_TEXT = (
    "Each training signal's mean over its first and its last quarter of logged points (`estep.png`, `losses.png` and "
    "`rlvr_reward.png` show the raw points). A change smaller than the step-to-step noise of the plot says nothing. "
    "The E-step's ELBO gain is over π without rationales: q starts as π, so it can only rise by thinking where a "
    "rationale pays for its cost, or by thinking less where it does not."
)


@dataclass(frozen=True)
class Signal:
    """One training signal: the means of its first and last quarter of ``points`` logged values."""

    name: str
    first: float
    last: float
    points: int
    should_go: Direction = None

    @property
    def change(self) -> float:
        return self.last - self.first


def quarter_means(values: Sequence[float]) -> tuple[float, float]:
    """Means of the first and of the last quarter of ``values`` (one value each when there are fewer than 8)."""
    if not values:
        raise ValueError("quarter_means of no values")
    n = max(1, len(values) // 4)
    return statistics.fmean(values[:n]), statistics.fmean(values[-n:])


def by_iteration(values: Series, iterations: Series) -> dict[int, list[float]]:
    """``values`` grouped by the EM iteration logged at the same step, in step order within each group."""
    at = {step: int(value) for step, value in iterations}
    groups: dict[int, list[float]] = {}
    for step, value in sorted(values):
        if step in at:
            groups.setdefault(at[step], []).append(value)
    return groups


def signal(name: str, values: Sequence[float], should_go: Direction = None) -> Signal | None:
    """The :class:`Signal` of ``values``, or ``None`` when nothing was logged."""
    if not values:
        return None
    first, last = quarter_means(values)
    return Signal(name, first, last, len(values), should_go)


def learning_signals(paths: Paths) -> list[Signal]:
    """Every signal the run logged (a stage that did not run, or did not log a tag, has no row)."""

    def values(series: Series) -> list[float]:
        return [v for _, v in series]

    ra3 = read_tags(paths.log_dir("ra3"), ("mstep/loss", "em/iteration", *E_STEP_TAGS))
    rows = [
        signal("pre-training loss", values(read_scalars(paths.log_dir("pretrain"), "train/loss")), "down"),
        signal("NTP mid-training loss", values(read_scalars(paths.log_dir("ntp"), "train/loss")), "down"),
        signal("RA3 M-step loss (annotated traces)", values(ra3["mstep/loss"]), "down"),
    ]
    gains = by_iteration(ra3["estep/elbo_gain_per_line"], ra3["em/iteration"])
    thinks = by_iteration(ra3["estep/think_rate"], ra3["em/iteration"])
    for k in sorted(gains):
        rows.append(signal(f"E-phase {k}: ELBO gain per line over π without rationales", gains[k], "up"))
        rows.append(signal(f"E-phase {k}: THINK rate", thinks.get(k, [])))
    for arm in ARMS:
        rlvr = read_tags(paths.log_dir(f"rlvr_{arm}"), ("train/reward_mean", "val/pass@1"))
        name = f"RLVR from {arm.upper()}"
        rows.append(signal(f"{name}: training reward", values(rlvr["train/reward_mean"]), "up"))
        rows.append(signal(f"{name}: held-in pass@1", values(rlvr["val/pass@1"]), "up"))
    return [row for row in rows if row is not None]


def signals_table(signals: Sequence[Signal]) -> list[str]:
    """Markdown rows: signal, points, first quarter, last quarter, change, and the way learning should move it."""
    lines = ["| signal | points | first quarter | last quarter | change | should go |", "|---|---:|---:|---:|---:|---|"]
    for s in signals:
        lines.append(
            f"| {s.name} | {s.points} | {s.first:.4f} | {s.last:.4f} | {s.change:+.4f} | {s.should_go or '—'} |"
        )
    return lines


def plot_estep(paths: Paths, out: Path) -> None:
    """ELBO gain per line and THINK rate against the E-step within each E-phase: raw points and a 5-step mean."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    ra3 = read_tags(paths.log_dir("ra3"), ("em/iteration", *E_STEP_TAGS))
    for ax, tag, label in zip(axes, E_STEP_TAGS, ("ELBO gain per line", "THINK rate"), strict=True):
        for k, series in sorted(by_iteration(ra3[tag], ra3["em/iteration"]).items()):
            (line,) = ax.plot(moving_average(series, 5), label=f"E-phase {k} (5-step mean)")
            ax.scatter(range(len(series)), series, s=6, alpha=0.3, color=line.get_color())
        ax.set(xlabel="E-step within the phase", ylabel=label, title=label)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
