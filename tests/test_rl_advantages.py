"""Group advantages against hand-computed numbers."""

from __future__ import annotations

import pytest
import torch

from ra3_lightning.rl.advantages import group_advantages, zero_variance_groups

REWARDS = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]])


def test_group_scale():
    # group 0: mean 0.5, deviations +-0.5, sample var = 4 * 0.25 / 3 = 1/3, std = 0.57735 -> +-0.866025
    # group 1: all equal -> 0 / (0 + eps) = 0
    adv = group_advantages(REWARDS, scale="group")
    expected = torch.tensor([[0.866025, -0.866025, -0.866025, 0.866025], [0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(adv, expected, atol=1e-5, rtol=0)


def test_batch_scale():
    # all 8 rewards: mean 10/8 = 1.25; squared deviations 2*0.0625 + 2*1.5625 + 4*0.5625 = 5.5; var 5.5/7
    # std = 0.886405 -> group 0: +-0.5 / 0.886405 = +-0.564076; group 1: 0
    adv = group_advantages(REWARDS, scale="batch")
    expected = torch.tensor([[0.564076, -0.564076, -0.564076, 0.564076], [0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(adv, expected, atol=1e-5, rtol=0)


def test_no_scale_is_exact_centring():
    adv = group_advantages(REWARDS, scale="none")
    assert torch.equal(adv, torch.tensor([[0.5, -0.5, -0.5, 0.5], [0.0, 0.0, 0.0, 0.0]]))


def test_mask_excludes_samples_from_statistics():
    # real samples 3 and 1: mean 2, deviations +-1, sample std sqrt(2 / 1) = 1.41421 -> +-0.707107; masked -> 0
    adv = group_advantages(torch.tensor([[3.0, 1.0, 100.0]]), mask=torch.tensor([[True, True, False]]))
    torch.testing.assert_close(adv, torch.tensor([[0.707107, -0.707107, 0.0]]), atol=1e-5, rtol=0)


def test_trailing_dims_are_independent_boundaries():
    # [N=1, G=2, T=2]: boundary 0 rewards (1, 3) mean 2 -> (-1, 1); boundary 1 rewards (4, 0) mean 2 -> (2, -2)
    rewards = torch.tensor([[[1.0, 4.0], [3.0, 0.0]]])
    adv = group_advantages(rewards, scale="none")
    assert torch.equal(adv, torch.tensor([[[-1.0, 2.0], [1.0, -2.0]]]))


def test_bad_input():
    with pytest.raises(ValueError, match="unknown advantage scale"):
        group_advantages(REWARDS, scale="median")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\[N, G"):
        group_advantages(torch.tensor([1.0, 2.0]))


def test_zero_variance_groups():
    assert zero_variance_groups(REWARDS).tolist() == [False, True]
