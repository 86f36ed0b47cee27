"""Advantage baselines and scales, loss aggregations and KL estimators: a built-in name or a user's object."""

from pathlib import Path

import pytest
import torch
from helpers.custom_rl import LeaveOneOut

from ra3_lightning.cli import RA3CLI
from ra3_lightning.rl.advantages import BatchStd, group_advantages
from ra3_lightning.rl.kl import KLEstimator, kl_penalty
from ra3_lightning.rl.losses import LossAggregation, LossNormaliser, policy_loss

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "demo" / "rlvr_tiny.yaml")


def test_leave_one_out_baseline_by_hand():
    # rewards 1 0 0 1: a passing sample's others average (0+0+1)/3 = 1/3, a failing one's (1+0+1)/3 = 2/3
    adv = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0]]), scale="none", baseline=LeaveOneOut())
    torch.testing.assert_close(adv, torch.tensor([[2 / 3, -2 / 3, -2 / 3, 2 / 3]]))
    # a masked-out sample is neither another's "other" nor given an advantage: 1 0 [x] -> others 0 and 1
    mask = torch.tensor([[True, True, False]])
    adv = group_advantages(torch.tensor([[1.0, 0.0, 5.0]]), scale="none", mask=mask, baseline=LeaveOneOut())
    torch.testing.assert_close(adv, torch.tensor([[1.0, -1.0, 0.0]]))


def test_no_baseline_and_scale_objects_match_their_names():
    r = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0]])
    torch.testing.assert_close(group_advantages(r, scale="none", baseline="none"), r)
    torch.testing.assert_close(group_advantages(r, scale=BatchStd()), group_advantages(r, scale="batch"))


def test_unknown_names_say_what_to_choose():
    with pytest.raises(ValueError, match=r"advantage scale 'stdd'.*class_path"):
        group_advantages(torch.zeros(1, 2), scale="stdd")
    with pytest.raises(ValueError, match="KL estimator 'k4'"):
        kl_penalty(torch.zeros(2), torch.zeros(2), "k4")


class HalfTokenSum(LossAggregation):
    def __call__(self, loss, mask, norm):
        return (loss * mask).sum() / (2 * norm.num_tokens)


class SquaredLogRatio(KLEstimator):
    def __call__(self, log_ratio):
        return log_ratio.pow(2)


def test_policy_loss_takes_aggregation_and_kl_objects():
    logp = torch.tensor([[-1.0, -2.0]])
    mask = torch.ones(1, 2)
    norm = LossNormaliser.from_mask(mask, max_completion_length=2)
    ref = torch.tensor([[-1.5, -2.0]])
    loss, stats = policy_loss(
        logp, logp, torch.tensor([1.0]), mask, norm, HalfTokenSum(), ref_logp=ref, beta=0.1, kl_kind=SquaredLogRatio()
    )
    # ratio 1: surrogate -1 per token; KL (-0.5)^2 = 0.25 and 0 -> per token -0.975, -1; sum / (2 * 2 tokens)
    torch.testing.assert_close(loss, torch.tensor((-0.975 - 1.0) / 4))
    torch.testing.assert_close(stats["kl"], torch.tensor(0.125))


def test_a_users_baseline_is_used_from_yaml(tmp_path):
    overlay = tmp_path / "rloo.yaml"
    overlay.write_text(
        "model:\n  init_args:\n    loss:\n      scale_rewards: none\n"
        "      advantage_baseline:\n        class_path: helpers.custom_rl.LeaveOneOut\n"
    )
    cli = RA3CLI(args=["-c", CONFIG, "-c", str(overlay), "--trainer.logger", "false"], run=False)
    assert isinstance(cli.model.advantage_baseline, LeaveOneOut)
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0] + [0.0] * (cli.model.G - 4)])
    adv, keep = cli.model.advantages(rewards)
    others = (rewards.sum() - rewards) / (cli.model.G - 1)
    torch.testing.assert_close(adv, (rewards - others).reshape(-1))
    assert keep.all()


def test_the_e_step_takes_the_same_objects_from_yaml(tmp_path):
    overlay = tmp_path / "rloo.yaml"
    overlay.write_text(
        "model:\n  init_args:\n    loss:\n"
        "      advantage_baseline:\n        class_path: helpers.custom_rl.LeaveOneOut\n"
    )
    config = str(Path(__file__).resolve().parents[1] / "configs" / "demo" / "estep_tiny.yaml")
    cli = RA3CLI(args=["-c", config, "-c", str(overlay), "--trainer.logger", "false"], run=False)
    assert isinstance(cli.model.advantage_baseline, LeaveOneOut)
