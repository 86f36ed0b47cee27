"""KL estimators against hand-computed numbers."""

from __future__ import annotations

import math

import pytest
import torch

from ra3_lightning.rl.kl import kl_penalty

LOG_HALF, LOG_QUARTER = math.log(0.5), math.log(0.25)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        # pi(x) = 0.5, ref(x) = 0.25: log_ratio = log(ref/pi) = -0.693147
        ("k1", 0.693147),  # -log_ratio
        ("k2", 0.240227),  # 0.5 * 0.693147**2
        ("k3", 0.193147),  # exp(-0.693147) - 1 + 0.693147 = 0.5 - 1 + 0.693147
    ],
)
def test_estimators_by_hand(kind, expected):
    out = kl_penalty(torch.tensor([LOG_HALF]), torch.tensor([LOG_QUARTER]), kind)
    torch.testing.assert_close(out, torch.tensor([expected]), atol=1e-5, rtol=0)


def test_k3_reverse_direction_and_nonnegative():
    # pi(x) = 0.25, ref(x) = 0.5: log_ratio = +0.693147 -> k3 = 2 - 1 - 0.693147 = 0.306853; k1 = -0.693147 < 0
    k3 = kl_penalty(torch.tensor([LOG_QUARTER]), torch.tensor([LOG_HALF]), "k3")
    k1 = kl_penalty(torch.tensor([LOG_QUARTER]), torch.tensor([LOG_HALF]), "k1")
    torch.testing.assert_close(k3, torch.tensor([0.306853]), atol=1e-5, rtol=0)
    torch.testing.assert_close(k1, torch.tensor([-0.693147]), atol=1e-5, rtol=0)


def test_k1_and_k3_are_unbiased_in_expectation():
    # pi = (0.5, 0.5), ref = (0.25, 0.75): KL(pi || ref) = 0.5 log 2 + 0.5 log(2/3) = 0.143841.
    # E_pi[k3] = 0.5 * k3(log 0.5) + 0.5 * k3(log 1.5) = 0.5 * 0.193147 + 0.5 * 0.094535 = 0.143841.
    pi, ref = torch.tensor([0.5, 0.5]), torch.tensor([0.25, 0.75])
    for kind in ("k1", "k3"):
        expectation = (pi * kl_penalty(pi.log(), ref.log(), kind)).sum()
        torch.testing.assert_close(expectation, torch.tensor(0.143841), atol=1e-5, rtol=0)


def test_zero_when_equal_and_unknown_kind():
    assert kl_penalty(torch.zeros(3), torch.zeros(3), "k2").abs().sum() == 0
    with pytest.raises(ValueError, match="unknown KL estimator"):
        kl_penalty(torch.zeros(1), torch.zeros(1), "k4")  # type: ignore[arg-type]
