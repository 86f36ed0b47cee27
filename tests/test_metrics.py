"""pass@k: the product form against the closed form with exact fractions, the metric's k filtering and its sync."""

from __future__ import annotations

import math
import os
import socket
import warnings
from fractions import Fraction

import pytest
import torch

from ra3_lightning.metrics import PassAtK, pass_at_k, pass_at_k_tensor


def exact_pass_at_k(n: int, c: int, k: int) -> Fraction:
    """The definition, 1 - C(n-c, k) / C(n, k), in exact rational arithmetic (math.comb(m, k) = 0 for m < k)."""
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


KS = (1, 2, 5, 10, 37)
CASES = [(n, c, k) for n in KS for c in range(0, n + 1, max(1, n // 6)) for k in KS if k <= n]


@pytest.mark.parametrize(("n", "c", "k"), CASES)
def test_pass_at_k_matches_exact_fraction(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(float(exact_pass_at_k(n, c, k)), abs=1e-12)


def test_pass_at_k_hand_values():
    # n=5, c=2, k=2: C(3,2)/C(5,2) = 3/10, so pass@2 = 7/10;
    # product form: i in {4, 5}: (1 - 2/4)(1 - 2/5) = 1/2 * 3/5 = 3/10 -> 0.7.
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    # pass@1 is the fraction correct: c/n = 3/10.
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    # n - c < k: every 3 of 4 samples include one of the 2 correct ones.
    assert pass_at_k(4, 2, 3) == 1.0
    assert pass_at_k(4, 0, 4) == 0.0


def test_pass_at_k_large_n_is_stable():
    # C(1000, 500) overflows float64; the product form does not. Exact value via Fraction for comparison.
    assert pass_at_k(1000, 3, 500) == pytest.approx(float(exact_pass_at_k(1000, 3, 500)), rel=1e-12)
    assert pass_at_k(200, 1, 100) == pytest.approx(0.5)  # 1 - C(199,100)/C(200,100) = 1 - 100/200


@pytest.mark.parametrize(("n", "c", "k"), [(0, 0, 1), (3, 4, 1), (3, -1, 1), (3, 1, 4), (3, 1, 0)])
def test_pass_at_k_rejects_bad_counts(n, c, k):
    with pytest.raises(ValueError, match="pass@"):
        pass_at_k(n, c, k)


def test_tensor_form_matches_scalar():
    n = torch.tensor([5, 10, 10, 37, 3])
    c = torch.tensor([2, 0, 10, 11, 1])
    expected = torch.tensor([pass_at_k(int(a), int(b), 3) for a, b in zip(n, c, strict=True)], dtype=torch.float64)
    torch.testing.assert_close(pass_at_k_tensor(n, c, 3), expected, rtol=0, atol=1e-12)


def test_metric_means_over_problems_and_drops_undefined_k():
    metric = PassAtK(ks=(1, 2, 10))
    metric.update(num_samples=4, num_correct=1)  # pass@1 = 1/4, pass@2 = 1 - C(3,2)/C(4,2) = 1/2
    metric.update(num_samples=torch.tensor([3, 5]), num_correct=torch.tensor([3, 0]))  # 1, 1 ; 0, 0
    out = metric.compute()
    assert set(out) == {"pass@1", "pass@2"}  # pass@10 is undefined: min n = 3
    assert out["pass@1"].item() == pytest.approx((1 / 4 + 1 + 0) / 3)
    assert out["pass@2"].item() == pytest.approx((1 / 2 + 1 + 0) / 3)


def test_metric_empty_and_bad_updates():
    metric = PassAtK(ks=(1,))
    with pytest.warns(UserWarning):  # torchmetrics: compute before update
        assert metric.compute() == {}
    with pytest.raises(ValueError, match="0 <= c <= n"):
        metric.update([2, 2], [1, 3])
    with pytest.raises(ValueError, match="2 sample counts but 1 correct"):
        metric.update([2, 2], [1])
    with pytest.raises(ValueError, match="positive"):
        PassAtK(ks=(0, 1))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sync_worker(rank: int, world_size: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        both, only_rank0 = PassAtK(ks=(1, 2)), PassAtK(ks=(1, 2))
        if rank == 0:
            both.update([4, 2], [1, 2])
            only_rank0.update([4, 2], [1, 2])
        else:
            both.update([3], [0])  # only_rank0 sees no problem on this rank: the sync must still line up
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "compute called before update" on rank 1
            results = [{k: v.item() for k, v in m.compute().items()} for m in (both, only_rank0)]
        queue.put((rank, results))
    finally:
        torch.distributed.destroy_process_group()


def test_metric_syncs_across_two_processes():
    ctx = torch.multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_sync_worker, args=(rank, 2, port, queue)) for rank in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for rank in (0, 1):
        both, only_rank0 = results[rank]
        # All three problems on both ranks: pass@1 = (1/4 + 1 + 0)/3, pass@2 = (1/2 + 1 + 0)/3.
        assert both == pytest.approx({"pass@1": (0.25 + 1 + 0) / 3, "pass@2": (0.5 + 1 + 0) / 3})
        # Rank 0's two problems only: pass@1 = (1/4 + 1)/2, pass@2 = (1/2 + 1)/2.
        assert only_rank0 == pytest.approx({"pass@1": 0.625, "pass@2": 0.75})
