"""The loss groups (``model.loss`` in YAML) of ``RLVRModule`` and of the E-step: typed values with TRL's names.

The estimator fields (``loss_type``, ``scale_rewards``, ``advantage_baseline``, ``kl_estimator``) take a built-in
name or an object of the matching base class (``class_path`` in YAML); the module resolves them once
(:func:`ra3_lightning.rl.registry.resolve`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ra3_lightning.rl.advantages import AdvantageBaseline, AdvantageScale, Baseline, Scale
from ra3_lightning.rl.kl import KLEstimator, KLKind
from ra3_lightning.rl.losses import Aggregation, LossAggregation
from ra3_lightning.rl.returns import RewardNorm


@dataclass(frozen=True)
class PolicyLoss:
    """How completions' rewards become a clipped policy-gradient loss (GRPO, DAPO, Dr. GRPO, ...).

    Attributes:
        loss_type: ``"grpo"`` (sequence mean) | ``"dapo"`` (token mean over all ranks) | ``"bnpo"`` (token mean on
            this rank) | ``"dr_grpo"`` (constant normaliser), or a
            :class:`~ra3_lightning.rl.losses.LossAggregation` object.
        scale_rewards: ``"group"`` std, ``"batch"`` std or ``"none"`` (Dr. GRPO), or a
            :class:`~ra3_lightning.rl.advantages.Scale` object.
        advantage_baseline: ``"mean"`` of the group (GRPO) or ``"none"``, or a
            :class:`~ra3_lightning.rl.advantages.Baseline` object (e.g. your own RLOO).
        epsilon: Lower clip range of the ratio (``1 - epsilon``).
        epsilon_high: Upper clip range (``1 + epsilon_high``; DAPO's clip-higher uses 0.28). ``None``: ``epsilon``.
        num_iterations: Optimizer updates per generation batch (PPO epochs). ``1`` is on-policy (ratio 1).
        beta: KL coefficient towards the reference policy. ``0`` builds no reference model.
        kl_estimator: ``"k1"`` | ``"k2"`` | ``"k3"``, or a :class:`~ra3_lightning.rl.kl.KLEstimator` object.
        drop_zero_variance_groups: DAPO dynamic sampling: no loss on groups whose rewards are all equal.
        mask_truncated_completions: No loss on completions that hit ``max_completion_length`` without EOS.
        tis_cap: Truncated importance sampling against the sampler's own token log-probs: each token's surrogate
            is weighted by ``min(pi_old / pi_sampler, tis_cap)``
            (:func:`~ra3_lightning.rl.losses.truncated_is_weights`) — for a sampler whose numerics differ from the
            trainer's. ``None``: off.
    """

    loss_type: Aggregation | LossAggregation = "dapo"
    scale_rewards: AdvantageScale | Scale = "group"
    advantage_baseline: AdvantageBaseline | Baseline = "mean"
    epsilon: float = 0.2
    epsilon_high: float | None = None
    num_iterations: int = 1
    beta: float = 0.0
    kl_estimator: KLKind | KLEstimator = "k3"
    drop_zero_variance_groups: bool = False
    mask_truncated_completions: bool = False
    tis_cap: float | None = None

    def __post_init__(self) -> None:
        if self.num_iterations < 1:
            raise ValueError(f"loss.num_iterations={self.num_iterations} (updates per generation batch) must be >= 1")
        if self.beta < 0:
            raise ValueError(f"loss.beta={self.beta} must be >= 0")
        if self.epsilon < 0 or (self.epsilon_high is not None and self.epsilon_high < 0):
            raise ValueError(f"loss.epsilon={self.epsilon} and epsilon_high={self.epsilon_high} must be >= 0")
        if self.tis_cap is not None and self.tis_cap <= 0:
            raise ValueError(f"loss.tis_cap={self.tis_cap} must be > 0 (or null: off)")


@dataclass(frozen=True)
class LatentLoss:
    """How the E-step's rewards become the latent policy gradient (``model.loss`` of ``LatentPolicyModule`` /
    ``RA3Module``); the names mean what they mean in :class:`PolicyLoss`.

    Attributes:
        gamma: Discount of the returns ``R_t = Σ_k γ^{k−t} r_k``.
        reward_norm: ``"none"`` or ``"per_token"`` (a line's log-likelihood divided by its token count).
        beta: Weight of the KL of ``q`` to its initial policy (``π``) in the loss (0 = off; always logged).
        kl_estimator: ``"k1"``, ``"k2"`` or ``"k3"`` (per boundary, on ``log q(z_t)``), or a
            :class:`~ra3_lightning.rl.kl.KLEstimator` object.
        scale_rewards: After the baseline, divide by the ``"group"`` std, the ``"batch"`` std, or ``"none"``, or by
            a :class:`~ra3_lightning.rl.advantages.Scale` object.
        advantage_baseline: ``"mean"`` of the group's returns at each boundary (GRPO) or ``"none"``, or a
            :class:`~ra3_lightning.rl.advantages.Baseline` object.
    """

    gamma: float = 1.0
    reward_norm: RewardNorm = "none"
    beta: float = 0.0
    kl_estimator: KLKind | KLEstimator = "k3"
    scale_rewards: AdvantageScale | Scale = "none"
    advantage_baseline: AdvantageBaseline | Baseline = "mean"

    def __post_init__(self) -> None:
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"loss.gamma={self.gamma} must be in [0, 1]")
        if self.beta < 0:
            raise ValueError(f"loss.beta={self.beta} must be >= 0")
