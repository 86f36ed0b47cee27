"""Sample-based estimators of ``KL(pi || ref)`` per token (Schulman, "Approximating KL Divergence", 2020).

With ``x ~ pi`` and ``log_ratio = log ref(x) - log pi(x)``:

* ``"k1"``: ``-log_ratio`` — unbiased, high variance, can be negative;
* ``"k2"``: ``0.5 * log_ratio**2`` — biased, low variance, always >= 0;
* ``"k3"``: ``exp(log_ratio) - 1 - log_ratio`` — unbiased, low variance, always >= 0 (GRPO's choice).

Another estimator is a subclass of :class:`KLEstimator` in the user's package, chosen from YAML by ``class_path``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Literal

import torch
from torch import Tensor

from ra3_lightning.rl.registry import resolve

KLKind = Literal["k1", "k2", "k3"]


class KLEstimator(ABC):
    """A per-token estimate of ``KL(pi || ref)`` from ``log_ratio = log ref(x) - log pi(x)``, ``x ~ pi``."""

    @abstractmethod
    def __call__(self, log_ratio: Tensor) -> Tensor: ...


class K1(KLEstimator):
    def __call__(self, log_ratio: Tensor) -> Tensor:
        return -log_ratio


class K2(KLEstimator):
    def __call__(self, log_ratio: Tensor) -> Tensor:
        return 0.5 * log_ratio.pow(2)


class K3(KLEstimator):
    def __call__(self, log_ratio: Tensor) -> Tensor:
        return torch.expm1(log_ratio) - log_ratio


KL_ESTIMATORS: dict[str, KLEstimator] = {"k1": K1(), "k2": K2(), "k3": K3()}


def kl_penalty(
    logp: Tensor,  # [*]  log pi(x) of the sampled tokens
    ref_logp: Tensor,  # [*]  log ref(x) of the same tokens
    kind: KLKind | KLEstimator = "k3",
) -> Tensor:  # [*]
    """Elementwise estimate of ``KL(pi || ref)`` from tokens sampled from ``pi``.

    >>> kl_penalty(torch.tensor([0.0]), torch.tensor([0.0]), "k3")
    tensor([0.])
    """
    return resolve(kind, KL_ESTIMATORS, "KL estimator")(ref_logp - logp)
