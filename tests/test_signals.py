"""The "is each stage learning?" table of the ``ra3 demo`` report (:mod:`ra3_lightning.pipeline.signals`): the
quarter means and the grouping of E-step scalars by EM iteration, worked out by hand."""

from __future__ import annotations

import pytest

from ra3_lightning.pipeline.signals import Signal, by_iteration, quarter_means, signal, signals_table


def test_quarter_means():
    # 8 values: quarters of 2 -> first (1 + 2) / 2 = 1.5, last (7 + 8) / 2 = 7.5
    assert quarter_means([1, 2, 3, 4, 5, 6, 7, 8]) == (1.5, 7.5)
    # 9 values: 9 // 4 = 2 per quarter -> first (1 + 2) / 2, last (8 + 9) / 2
    assert quarter_means(list(range(1, 10))) == (1.5, 8.5)
    # fewer than 8: one value each -> the first and the last point
    assert quarter_means([3.0, 0.0, 5.0]) == (3.0, 5.0)
    assert quarter_means([2.0]) == (2.0, 2.0)
    with pytest.raises(ValueError, match="no values"):
        quarter_means([])


def test_by_iteration_groups_e_steps_by_the_iteration_at_their_step():
    # 2 E-steps then 1 M-step per iteration: E-steps at 0, 1 (iteration 0) and 3, 4 (iteration 1), given out of order
    iterations = [(0, 0.0), (1, 0.0), (2, 0.0), (3, 1.0), (4, 1.0), (5, 1.0)]
    gains = [(4, 0.4), (0, 0.0), (3, 0.3), (1, 0.1), (9, 9.0)]  # step 9 has no iteration logged: dropped
    assert by_iteration(gains, iterations) == {0: [0.0, 0.1], 1: [0.3, 0.4]}


def test_signal_rows():
    assert signal("nothing logged", []) is None
    rise = signal("reward", [0.1, 0.1, 0.2, 0.2, 0.3, 0.3, 0.4, 0.4], "up")
    assert (rise.first, rise.last, rise.points) == (0.1, 0.4, 8)
    assert rise.change == pytest.approx(0.3)
    table = signals_table([rise, Signal("THINK rate", 0.04, 0.01, 20)])
    assert table[2] == "| reward | 8 | 0.1000 | 0.4000 | +0.3000 | up |"
    assert table[3] == "| THINK rate | 20 | 0.0400 | 0.0100 | -0.0300 | — |"
