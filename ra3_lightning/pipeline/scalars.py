"""Reading a run's TensorBoard scalars back, and the few series functions every part of the report uses."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

Series = list[tuple[int, float]]


def read_tags(log_dir: Path, tags: Sequence[str]) -> dict[str, Series]:
    """``(step, value)`` of each of ``tags`` in a TensorBoard log directory, read in one pass (empty when absent)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not log_dir.exists():
        return {tag: [] for tag in tags}
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    logged = set(acc.Tags().get("scalars", []))
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] if tag in logged else [] for tag in tags}


def read_scalars(log_dir: Path, tag: str) -> Series:
    """``(step, value)`` of one scalar tag in a TensorBoard log directory (empty when absent)."""
    return read_tags(log_dir, [tag])[tag]


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over the last ``window`` values (fewer at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def steps_to_reach(series: Series, target: float, window: int) -> int | None:
    """First step (1-based count of logged steps) whose trailing ``window``-mean reaches ``target``, else ``None``.

    Only full windows count: the first ``window - 1`` steps average fewer points, so a single lucky batch at the
    start would otherwise "converge" at step 1."""
    smoothed = moving_average([v for _, v in series], window)
    full = zip(series[window - 1 :], smoothed[window - 1 :], strict=True)
    return next((step + 1 for (step, _), s in full if s >= target), None)


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (plots are written to files, never shown)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
