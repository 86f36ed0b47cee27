"""Sample-based estimators of ``KL(pi || ref)`` per token (Schulman, "Approximating KL Divergence", 2020).

With ``x ~ pi`` and ``log_ratio = log ref(x) - log pi(x)``:

* ``"k1"``: ``-log_ratio`` — unbiased, high variance, can be negative;
* ``"k2"``: ``0.5 * log_ratio**2`` — biased, low variance, always >= 0;
* ``"k3"``: ``exp(log_ratio) - 1 - log_ratio`` — unbiased, low variance, always >= 0 (GRPO's choice).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

KLKind = Literal["k1", "k2", "k3"]


def _k1(log_ratio: Tensor) -> Tensor:
    return -log_ratio


def _k2(log_ratio: Tensor) -> Tensor:
    return 0.5 * log_ratio.pow(2)


def _k3(log_ratio: Tensor) -> Tensor:
    return torch.expm1(log_ratio) - log_ratio


KL_ESTIMATORS: dict[str, Callable[[Tensor], Tensor]] = {"k1": _k1, "k2": _k2, "k3": _k3}


def kl_penalty(
    logp: Tensor,  # [*]  log pi(x) of the sampled tokens
    ref_logp: Tensor,  # [*]  log ref(x) of the same tokens
    kind: KLKind = "k3",
) -> Tensor:  # [*]
    """Elementwise estimate of ``KL(pi || ref)`` from tokens sampled from ``pi``.

    >>> kl_penalty(torch.tensor([0.0]), torch.tensor([0.0]), "k3")
    tensor([0.])
    """
    if kind not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {kind!r}; choose one of {sorted(KL_ESTIMATORS)}")
    return KL_ESTIMATORS[kind](ref_logp - logp)
