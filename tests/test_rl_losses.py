"""Policy losses against hand-computed numbers, one test per aggregation variant.

Fixture (B=2 completions, T=3 tokens, epsilon=0.2):
    ratios  row 0: (1.0, 1.5, 0.5)  A = +1  mask (1, 1, 1)
            row 1: (1.1, 0.7, 1.0)  A = -1  mask (1, 1, 0)
Per-token loss -min(r A, clip(r, 0.8, 1.2) A):
    row 0: -min(1, 1) = -1;  -min(1.5, 1.2) = -1.2 (clipped);  -min(0.5, 0.8) = -0.5   -> sum -2.7
    row 1: -min(-1.1, -1.1) = 1.1;  -min(-0.7, -0.8) = 0.8 (clipped);  masked          -> sum  1.9
Clipped tokens: 2 of the 5 real tokens -> clip_fraction 0.4.
"""

from __future__ import annotations

import math

import pytest
import torch

from ra3_lightning.rl.losses import AGGREGATIONS, LossNormaliser, mask_truncated, policy_loss, truncated_is_weights

OLD = torch.tensor([[-1.0, -2.0, -0.5], [-1.5, -0.3, -2.0]])
RATIOS = torch.tensor([[1.0, 1.5, 0.5], [1.1, 0.7, 1.0]])
LOGP = OLD + RATIOS.log()
ADV = torch.tensor([1.0, -1.0])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])


def _loss(aggregation, norm=None, **kw):
    norm = norm or LossNormaliser.from_mask(MASK, max_completion_length=4)
    return policy_loss(LOGP, OLD, ADV, MASK, norm, aggregation=aggregation, epsilon=0.2, **kw)


@pytest.mark.parametrize(
    ("aggregation", "norm", "expected"),
    [
        ("grpo", None, 0.025),  # ((-2.7 / 3) + (1.9 / 2)) / 2 = (-0.9 + 0.95) / 2
        ("bnpo", None, -0.16),  # (-2.7 + 1.9) / 5 tokens
        # dapo: 2 ranks, 8 tokens over both: -0.8 * 2 / 8
        ("dapo", LossNormaliser(2, 5, num_tokens_global=8, world_size=2, max_completion_length=4), -0.2),
        ("dr_grpo", None, -0.1),  # -0.8 / (2 sequences * 4 max tokens)
    ],
)
def test_aggregations_by_hand(aggregation, norm, expected):
    loss, diag = _loss(aggregation, norm)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert diag["clip_fraction"].item() == pytest.approx(0.4, abs=1e-6)
    # ratio stats over the 5 real tokens: mean (1 + 1.5 + 0.5 + 1.1 + 0.7) / 5 = 0.96, min 0.5, max 1.5
    assert diag["ratio_mean"].item() == pytest.approx(0.96, abs=1e-6)
    assert (diag["ratio_min"].item(), diag["ratio_max"].item()) == pytest.approx((0.5, 1.5), abs=1e-6)
    assert not diag["ratio_mean"].requires_grad


def test_epsilon_high_widens_only_the_upper_clip():
    # epsilon_high=0.6: r=1.5 is inside [0.8, 1.6] -> row 0 sum -(1 + 1.5 + 0.5) = -3; bnpo (-3 + 1.9) / 5 = -0.22
    # clipped tokens: only row 1's r=0.7 -> 1/5
    loss, diag = _loss("bnpo", epsilon_high=0.6)
    assert loss.item() == pytest.approx(-0.22, abs=1e-6)
    assert diag["clip_fraction"].item() == pytest.approx(0.2, abs=1e-6)


def test_kl_term_k3():
    # ref = pi / 2 on every token: log(ref/pi) = -log 2 -> k3 = 0.5 - 1 + 0.693147 = 0.193147 per token
    # bnpo: -0.16 + beta * 0.193147 = -0.16 + 0.5 * 0.193147 = -0.0634265
    loss, diag = _loss("bnpo", ref_logp=LOGP - math.log(2.0), beta=0.5)
    assert loss.item() == pytest.approx(-0.0634265, abs=1e-6)
    assert diag["kl"].item() == pytest.approx(0.193147, abs=1e-6)


@pytest.mark.parametrize("aggregation", sorted(AGGREGATIONS))
def test_micro_batches_sum_to_the_full_batch(aggregation):
    norm = LossNormaliser.from_mask(MASK, max_completion_length=4)
    full, _ = _loss(aggregation, norm)
    parts = [
        policy_loss(LOGP[i : i + 1], OLD[i : i + 1], ADV[i : i + 1], MASK[i : i + 1], norm, aggregation=aggregation)[0]
        for i in range(2)
    ]
    assert sum(parts).item() == pytest.approx(full.item(), abs=1e-6)


def test_on_policy_gradient_grpo():
    # num_iterations=1: old = logp.detach(), ratio 1, no clipping; d loss / d logp_t = -A_i / len_i / B
    # row 0: -1 / 3 / 2 = -0.166667 on 3 tokens; row 1: +1 / 2 / 2 = 0.25 on 2 tokens, 0 on the masked one
    logp = OLD.clone().requires_grad_(True)
    loss, _ = policy_loss(logp, OLD, ADV, MASK, LossNormaliser.from_mask(MASK, 4), aggregation="grpo")
    loss.backward()
    expected = torch.tensor([[-1 / 6, -1 / 6, -1 / 6], [0.25, 0.25, 0.0]])
    torch.testing.assert_close(logp.grad, expected)


def test_mask_truncated_and_errors():
    assert mask_truncated(MASK, torch.tensor([False, True])).tolist() == [[1, 1, 1], [0, 0, 0]]
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        _loss("sum")
    with pytest.raises(ValueError, match="ref_logp"):
        _loss("grpo", beta=0.1)


def test_truncated_importance_weights_by_hand():
    # trainer log-probs (-1, -2), sampler (-1.5, -1): ratios e^0.5 = 1.65 and e^-1 = 0.37; cap 1.5 truncates the first
    trainer, sampler = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -1.0]])
    weights = truncated_is_weights(trainer, sampler, cap=1.5)
    torch.testing.assert_close(weights, torch.tensor([[1.5, math.exp(-1.0)]]))
    assert torch.equal(truncated_is_weights(trainer, trainer, cap=2.0), torch.ones(1, 2))  # same numerics: weight 1
    with pytest.raises(ValueError, match="cap"):
        truncated_is_weights(trainer, sampler, cap=0.0)


def test_importance_weights_scale_each_tokens_surrogate():
    # on-policy grpo gradient (see above) times per-token weights w: row 0 tokens get w = (2, 1, 0.5)
    w = torch.tensor([[2.0, 1.0, 0.5], [1.0, 1.0, 1.0]])
    logp = OLD.clone().requires_grad_(True)
    loss, _ = policy_loss(logp, OLD, ADV, MASK, LossNormaliser.from_mask(MASK, 4), aggregation="grpo", is_weights=w)
    loss.backward()
    expected = torch.tensor([[-2 / 6, -1 / 6, -0.5 / 6], [0.25, 0.25, 0.0]])
    torch.testing.assert_close(logp.grad, expected)
