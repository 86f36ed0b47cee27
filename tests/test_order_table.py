"""``experiments/order_table.py``: the arms paired by seed and batch order, on hand-made raw results."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("order_table", Path(__file__).parents[1] / "experiments/order_table.py")
order_table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(order_table)

# pass@1 by seed and order; NTP's order 2 exists on seed 3 only, so the common orders are 0 and 1
NTP = {3: [0.40, 0.42, 0.45], 4: [0.60, 0.70]}
RA3 = {3: [0.38, 0.40], 4: [0.61, 0.69]}  # diffs -0.02, -0.02 | +0.01, -0.01: seed means -0.02, 0.00
MACHINERY = {3: [0.30, 0.32], 4: [0.55, 0.63]}  # diffs -0.10, -0.10 | -0.05, -0.07: seed means -0.10, -0.06


def write(raw: Path, name: str, seed: int, payload: dict, file: str = "ablation.json") -> None:
    out = raw / name / f"seed{seed}"
    out.mkdir(parents=True, exist_ok=True)
    (out / file).write_text(json.dumps(payload))


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    for seed in (3, 4):
        for k, value in enumerate(NTP[seed]):
            if k == 0:
                write(tmp_path, "pair", seed, {"pass@1": value}, "ntp.json")
            else:
                write(tmp_path, f"ntp_order{k}", seed, {"eval": {"ntp": {"pass@1": value}}})
        for name, values in (("ra3_stream", RA3), ("think100_stream", MACHINERY)):
            for k, value in enumerate(values[seed]):
                write(tmp_path, name if k == 0 else f"{name}_order{k}", seed, {"eval": {"ra3": {"pass@1": value}}})
    return tmp_path


def test_orders_are_those_every_arm_has_on_the_seed(raw):
    assert order_table.seed_orders(raw, 3) == order_table.seed_orders(raw, 4) == [0, 1]
    assert order_table.pass_at_1(raw, "NTP", 3, 2) == 0.45 and order_table.pass_at_1(raw, "RA3", 3, 2) is None


def test_paired_differences_their_mean_over_seeds_and_the_reading(raw):
    text = order_table.table(raw, [3, 4])
    assert "| 4 | 0 | 0.600 | 0.610 | 0.550 | +0.010 | -0.050 |" in text
    # RA3: seed means -0.020 and 0.000 -> mean -0.010, std 0.01414, s.e. 0.010; |mean| <= min(2 s.e., 0.02)
    assert "RA3 − NTP: per-seed means -0.020, +0.000; over seeds -0.010 ± 0.010 (s.e.); below 0 in 3 of 4" in text
    assert "RA3 − NTP" in text and "closed: nothing separates" in text.split("\n")[-2]
    # machinery: seed means -0.10, -0.06 -> mean -0.08, std 0.0283, s.e. 0.020: below -0.02 and -2 s.e. (-0.04)
    last = text.split("\n")[-1]
    assert "over seeds -0.080 ± 0.020" in last and "below 0 in 4 of 4" in last and "differs" in last
    assert "per seed: 0.014, 0.071" in text  # NTP's spread over orders 0-1 only


@pytest.mark.parametrize(
    "mean, se, verdict",
    [(-0.01, 0.01, "closed"), (-0.01, 0.004, "unresolved"), (-0.03, 0.02, "unresolved"), (-0.03, 0.01, "differs"),
     (0.03, 0.01, "unresolved"), (0.0, float("nan"), "unresolved")],
)  # fmt: skip
def test_reading_follows_the_protocol(mean, se, verdict):
    assert order_table.reading(mean, se).startswith(verdict)


def test_a_stream_pairing_gives_order_0_of_ntp_and_ra3_and_each_seed_weighs_as_one(raw):
    # seed 0: paired with the shared stream (its own RA3 is order 0), machinery-only order 0 only -> orders [0]
    write(raw, "pair_stream", 0, {"pass@1": 0.50}, "ntp.json")
    write(raw, "pair_stream", 0, {"pass@1": 0.47}, "ra3.json")
    write(raw, "think100_stream", 0, {"eval": {"ra3": {"pass@1": 0.44}}})
    write(raw, "ntp_order1", 0, {"eval": {"ntp": {"pass@1": 0.52}}})  # no RA3 order 1: not used
    assert order_table.seed_orders(raw, 0) == [0]
    text = order_table.table(raw, [0, 3, 4])
    assert "Orders per seed: 0: [0]; 3: [0, 1]; 4: [0, 1]." in text
    assert "| 0 | 0 | 0.500 | 0.470 | 0.440 | -0.030 | -0.060 |" in text
    # RA3 seed means -0.030, -0.020, 0.000 -> mean -0.01667 (seed 0 weighs as one, not as half of two orders)
    assert "RA3 − NTP: per-seed means -0.030, -0.020, +0.000; over seeds -0.017 ±" in text
    assert "below 0 in 4 of 5 pairs" in text
    assert "per seed: nan, 0.014, 0.071" in text  # one order: no spread


def test_order_0_in_two_places_is_refused(raw):
    write(raw, "pair_stream", 3, {"pass@1": 0.41}, "ntp.json")  # seed 3's NTP order 0 is also in pair/
    with pytest.raises(SystemExit, match="NTP order 0 on seed 3 is in more than one"):
        order_table.pass_at_1(raw, "NTP", 3, 0)


def test_a_seed_without_a_complete_order_is_named(raw):
    write(raw, "pair_stream", 7, {"pass@1": 0.5}, "ntp.json")
    with pytest.raises(SystemExit, match=r"seed\(s\) \[7\]"):
        order_table.table(raw, [3, 7])


def test_on_seed_k_order_k_is_order_0_and_counts_once(raw):
    # seed 1: shuffle_seed 1 is the pairing's own order; a run of it repeats order 0 and must not count twice
    write(raw, "pair_stream", 1, {"pass@1": 0.70}, "ntp.json")
    write(raw, "pair_stream", 1, {"pass@1": 0.72}, "ra3.json")
    write(raw, "think100_stream", 1, {"eval": {"ra3": {"pass@1": 0.69}}})
    write(raw, "ntp_order1", 1, {"eval": {"ntp": {"pass@1": 0.70}}})
    for name, value in (("ra3_stream_order1", 0.72), ("think100_stream_order1", 0.69)):
        write(raw, name, 1, {"eval": {"ra3": {"pass@1": value}}})
    assert order_table.seed_orders(raw, 1) == [0]
    # RA3 pairs: seed 1 +0.02 once (not twice), seed 3 -0.02 -0.02, seed 4 +0.01 -0.01
    assert "below 0 in 3 of 5 pairs" in order_table.table(raw, [1, 3, 4]).split("\n")[-2]
