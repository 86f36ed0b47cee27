"""E-step rewards, returns and the latent policy-gradient loss against hand-computed numbers."""

from __future__ import annotations

import pytest
import torch

from ra3_lightning.rl.advantages import group_advantages
from ra3_lightning.rl.returns import discounted_returns, elbo_rewards, latent_pg_loss, normalize_line_logp


def test_elbo_rewards_subtract_cost_per_think():
    logp = torch.tensor([[-1.0, -2.0, -0.5]])
    think = torch.tensor([[False, True, True]])
    # r = [-1, -2 - 0.1, -0.5 - 0.1]
    assert torch.allclose(elbo_rewards(logp, think, 0.1), torch.tensor([[-1.0, -2.1, -0.6]]))


def test_discounted_returns_by_hand():
    r = torch.tensor([[1.0, 2.0, 4.0]])
    # gamma = 1: suffix sums [7, 6, 4]
    assert torch.allclose(discounted_returns(r, 1.0), torch.tensor([[7.0, 6.0, 4.0]]))
    # gamma = 0.5: R2 = 4, R1 = 2 + 0.5*4 = 4, R0 = 1 + 0.5*4 = 3
    assert torch.allclose(discounted_returns(r, 0.5), torch.tensor([[3.0, 4.0, 4.0]]))


def test_discounted_returns_masks_padding():
    r = torch.tensor([[1.0, 2.0, 99.0]])
    mask = torch.tensor([[True, True, False]])
    # the padded reward counts as 0: [3, 2, 0]
    assert torch.allclose(discounted_returns(r, 1.0, mask), torch.tensor([[3.0, 2.0, 0.0]]))


def test_per_token_normalisation():
    logp = torch.tensor([[-4.0, -3.0]])
    # -4 over 2 tokens = -2, -3 over 3 tokens = -1
    assert torch.allclose(normalize_line_logp(logp, torch.tensor([[2, 3]]), "per_token"), torch.tensor([[-2.0, -1.0]]))
    assert torch.equal(normalize_line_logp(logp, torch.tensor([[2, 3]]), "none"), logp)
    with pytest.raises(ValueError, match="reward_norm"):
        normalize_line_logp(logp, torch.tensor([[2, 3]]), "bogus")


def test_group_baseline_over_rollouts_of_one_trace():
    # one trace [B=1], G=2 rollouts, T=2 boundaries; returns [[3, 1], [1, 1]] -> group means [2, 1]
    returns = torch.tensor([[[3.0, 1.0], [1.0, 1.0]]])
    adv = group_advantages(returns, "none")
    assert torch.allclose(adv, torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]]))


def test_latent_pg_loss_by_hand():
    logq = torch.tensor([[-1.0, -2.0], [-0.5, 0.0]], requires_grad=True)
    adv = torch.tensor([[1.0, -1.0], [2.0, 5.0]])
    mask = torch.tensor([[True, True], [True, False]])
    kl = torch.tensor([[0.1, 0.2], [0.3, 9.0]])
    loss, stats = latent_pg_loss(logq, adv, mask, kl, beta=0.5)
    # pg = -(1*-1 + -1*-2 + 2*-0.5) / 3 = -(-1 + 2 - 1)/3 = 0; kl mean = (0.1 + 0.2 + 0.3)/3 = 0.2
    assert loss.item() == pytest.approx(0.5 * 0.2)
    assert stats["kl"].item() == pytest.approx(0.2)
    loss.backward()
    # d loss / d logq = -adv / 3 on valid entries, 0 on the masked one
    assert torch.allclose(logq.grad, torch.tensor([[-1 / 3, 1 / 3], [-2 / 3, 0.0]]))
