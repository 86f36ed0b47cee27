"""Variants a user would add in their own package, chosen from YAML by ``class_path`` (tests/test_rl_registries.py)."""

from torch import Tensor

from ra3_lightning.rl.advantages import Baseline


class LeaveOneOut(Baseline):
    """RLOO's baseline: the mean reward of the *other* ``G - 1`` real samples of the group."""

    def __call__(self, rewards: Tensor, mask: Tensor) -> Tensor:
        m = mask.to(rewards.dtype)
        total, count = (rewards * m).sum(1, keepdim=True), m.sum(1, keepdim=True)
        others = (count - m).clamp_min(1.0)
        return (total - rewards * m) / others
