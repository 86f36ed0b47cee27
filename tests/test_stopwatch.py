"""Stopwatch: seconds per part, summed over calls (a fake clock gives the hand-derived sums)."""

from __future__ import annotations

import pytest

import ra3_lightning.stopwatch as stopwatch_module
from ra3_lightning.stopwatch import Stopwatch


def test_parts_sum_their_calls_and_count_a_raising_block(monkeypatch):
    ticks = iter([0.0, 2.0, 10.0, 13.0, 20.0, 20.5, 21.0, 24.0])
    monkeypatch.setattr(stopwatch_module.time, "perf_counter", lambda: next(ticks))
    watch = Stopwatch()
    with watch("a"):  # 0 -> 2
        pass
    with watch("a"):  # 10 -> 13
        pass
    with watch("b"):  # 20 -> 24, with a nested part 20.5 -> 21
        with watch("b/inner"):
            pass
    assert watch.totals() == {"a": 5.0, "b": 4.0, "b/inner": 0.5}
    ticks = iter([0.0, 1.5])
    with pytest.raises(ValueError), watch("c"):
        raise ValueError
    assert watch.seconds["c"] == 1.5
