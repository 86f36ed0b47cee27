"""The multi-seed aggregate of ``ra3 demo --seeds`` (:mod:`ra3_lightning.pipeline.aggregate`) on hand-written
per-seed results: every expected number below is worked out by hand in a comment (sample std, ``n - 1``)."""

from __future__ import annotations

import json

import pytest

from ra3_lightning.pipeline.aggregate import (
    aggregate_eval,
    aggregate_recovery,
    aggregate_rlvr,
    aggregate_times,
    difference_line,
    eval_rows,
    fmt_stats,
    fmt_values,
    mean_std,
    recovery_rows,
    rlvr_rows,
    seed_stats,
    times_rows,
    write_aggregate,
)
from ra3_lightning.pipeline.spec import MODEL_LABELS, MODELS, PipelineConfig

METRICS = ("pass@1", "pass@8")


def seed_result(seed: int, pass1: dict[str, float], steps: tuple, elbo: list[float], times: dict) -> dict:
    """A per-seed ``results.json`` as ``collect_results`` writes it (only the fields the aggregate reads)."""
    return {
        "seed": seed,
        "eval": {m: {"pass@1": p, "pass@8": min(1.0, 2 * p)} for m, p in pass1.items()},
        "rlvr": {
            "target_pass_rate": 0.2, "smoothing": 5, "steps": 40,
            "arms": {
                "ntp": {"steps_to_target": steps[0], "final_reward": 0.1 * (seed + 1), "logged_steps": 40},
                "ra3": {"steps_to_target": steps[1], "final_reward": 0.25, "logged_steps": 40},
            },
        },
        "recovery": [{"iteration": k, "elbo_per_line": e, "think_rate": 0.02, "precision": None} for k, e in
                     enumerate(elbo)],
        "stage_times": times,
    }  # fmt: skip


@pytest.fixture
def seeds() -> list[dict]:
    return [
        seed_result(0, {"base": 0.1, "ntp": 0.1, "ra3": 0.3, "rlvr_ntp": 0.2, "rlvr_ra3": 0.3}, (None, 4),
                    [-2.0, -1.0], {"data": 2.0, "pretrain": 10.0}),
        seed_result(1, {"base": 0.3, "ntp": 0.2, "ra3": 0.4, "rlvr_ntp": 0.2, "rlvr_ra3": 0.3}, (12, 6),
                    [-2.2, -3.0], {"data": 4.0, "pretrain": 20.0}),
        # seed 2: base not evaluated, one EM iteration only
        seed_result(2, {"ntp": 0.3, "ra3": 0.5, "rlvr_ntp": 0.5, "rlvr_ra3": 0.3}, (5, 8),
                    [-2.4], {"data": 6.0, "pretrain": 30.0}),
    ]  # fmt: skip


def test_mean_std_is_the_sample_std():
    # [0.1, 0.2, 0.3]: mean 0.2; squared deviations 0.01 + 0 + 0.01 = 0.02, / (n - 1 = 2) = 0.01 -> std 0.1
    mean, std = mean_std([0.1, 0.2, 0.3])
    assert mean == pytest.approx(0.2) and std == pytest.approx(0.1)
    assert mean_std([5.0]) == (5.0, None)  # one seed: no spread to report
    with pytest.raises(ValueError, match="at least one"):
        mean_std([])


def test_seed_stats_skip_missing_seeds_but_keep_their_place():
    # [0.1, None, 0.3]: over the two present, mean 0.2, std sqrt((0.01 + 0.01) / 1) = 0.1414
    s = seed_stats([0.1, None, 0.3])
    assert s["n"] == 2 and s["values"] == [0.1, None, 0.3]
    assert s["mean"] == pytest.approx(0.2) and s["std"] == pytest.approx(0.02**0.5)
    assert seed_stats([None, None]) == {"mean": None, "std": None, "n": 0, "values": [None, None]}


def test_fmt_stats_and_values():
    assert fmt_stats(seed_stats([0.1, 0.2, 0.3]), 3) == "0.200 ± 0.100"
    assert fmt_stats(seed_stats([0.1, None, 0.3]), 3) == "0.200 ± 0.141 (n=2)"
    assert fmt_stats(seed_stats([0.5, None, None]), 3) == "0.500 (n=1)"
    assert fmt_stats(seed_stats([None]), 1) == "n/a"
    assert fmt_stats(seed_stats([4.0, 8.0]), 2, digits=1) == "6.0 ± 2.8"  # std sqrt((4 + 4) / 1) = 2.83
    assert fmt_values([12, None, 5], digits=0, missing="not reached") == "12, not reached, 5"


def test_pass_at_k_table(seeds):
    agg = aggregate_eval(seeds, MODELS, METRICS)
    # NTP pass@1 0.1, 0.2, 0.3 -> 0.200 ± 0.100; pass@8 = 2 * pass@1 -> 0.400 ± 0.200
    assert fmt_stats(agg["ntp"]["pass@8"], 3) == "0.400 ± 0.200"
    rows = eval_rows(agg, MODEL_LABELS, METRICS, 3)
    assert rows[0] == "| model | pass@1 | pass@8 | pass@1 per seed |"
    assert rows[2] == "| base (pre-trained) | 0.200 ± 0.141 (n=2) | 0.400 ± 0.283 (n=2) | 0.100, 0.300, n/a |"
    assert rows[3] == "| NTP mid-training | 0.200 ± 0.100 | 0.400 ± 0.200 | 0.100, 0.200, 0.300 |"
    # RLVR from NTP 0.2, 0.2, 0.5: mean 0.3; squared deviations 0.01 + 0.01 + 0.04 = 0.06, / 2 -> std 0.1732
    assert rows[5] == "| RLVR from NTP | 0.300 ± 0.173 | 0.600 ± 0.346 | 0.200, 0.200, 0.500 |"
    assert len(rows) == 2 + len(MODELS)


def test_difference_line_pairs_the_arms_by_seed(seeds):
    agg = aggregate_eval(seeds, MODELS, METRICS)
    # RA3 0.3, 0.4, 0.5 - NTP 0.1, 0.2, 0.3: +0.2 in every seed, std 0
    line = difference_line(agg["ntp"]["pass@1"], agg["ra3"]["pass@1"], "pass@1, RA3 − NTP")
    assert line == (
        "pass@1, RA3 − NTP, per seed: +0.200, +0.200, +0.200 (mean +0.200 ± 0.000; higher in 3, lower in 0 of 3 seeds)."
    )
    # RLVR from RA3 0.3, 0.3, 0.3 - RLVR from NTP 0.2, 0.2, 0.5: +0.1, +0.1, -0.2 -> mean 0, std sqrt(0.06 / 2) = 0.173
    line = difference_line(agg["rlvr_ntp"]["pass@1"], agg["rlvr_ra3"]["pass@1"], "x")
    assert line == "x, per seed: +0.100, +0.100, -0.200 (mean +0.000 ± 0.173; higher in 2, lower in 1 of 3 seeds)."
    assert difference_line(seed_stats([0.1]), seed_stats([0.2]), "x") == "x: +0.100 (one seed)."
    assert "not measured" in difference_line(seed_stats([None]), seed_stats([0.2]), "x")
    # a seed missing one arm drops out of the pairs: base is missing in seed 2
    assert "of 2 seeds" in difference_line(agg["base"]["pass@1"], agg["ntp"]["pass@1"], "x")


def test_rlvr_steps_over_the_seeds_that_reached_the_target(seeds):
    agg = aggregate_rlvr(seeds)
    # NTP: not reached, 12, 5 -> 2/3 seeds; mean 8.5, std sqrt((3.5² + 3.5²) / 1) = 4.95
    # RA3: 4, 6, 8 -> 3/3; mean 6.0, std 2.0. Final reward of NTP 0.1, 0.2, 0.3 -> 0.200 ± 0.100; RA3 0.25 each.
    assert agg["ntp"]["steps_to_target"]["n"] == 2
    rows = rlvr_rows(agg, 3)
    assert rows[2] == "| RLVR from NTP | 2/3 seeds | 8.5 ± 4.9 | not reached, 12, 5 | 0.200 ± 0.100 |"
    assert rows[3] == "| RLVR from RA3 | 3/3 seeds | 6.0 ± 2.0 | 4, 6, 8 | 0.250 ± 0.000 |"
    # seed 0 without an RLVR log for RA3: "no log", not "not reached"; RA3 6, 8 -> 2/2 seeds, 7.0 ± 1.4
    seeds[0]["rlvr"]["arms"]["ra3"] = {"steps_to_target": None, "final_reward": None, "logged_steps": 0}
    row = rlvr_rows(aggregate_rlvr(seeds), 3)[3]
    assert row == "| RLVR from RA3 | 2/2 seeds | 7.0 ± 1.4 | no log, 6, 8 | 0.250 ± 0.000 (n=2) |"


def test_recovery_per_em_iteration(seeds):
    agg = aggregate_recovery(seeds)
    # iteration 0: ELBO -2.0, -2.2, -2.4 -> -2.200 ± 0.200; iteration 1 (seed 2 stopped): -1.0, -3.0 -> -2.000 ± 1.414
    assert len(agg) == 2
    rows = recovery_rows(agg, 3)
    assert rows[0].startswith("| EM iteration | ELBO / line | THINK rate | precision |")
    assert rows[2] == "| 0 | -2.200 ± 0.200 | 0.020 ± 0.000 | n/a | n/a | n/a | n/a | n/a |"
    assert rows[3] == "| 1 | -2.000 ± 1.414 (n=2) | 0.020 ± 0.000 (n=2) | n/a | n/a | n/a | n/a | n/a |"


def test_stage_times_and_total(seeds):
    agg = aggregate_times(seeds)
    # data 2, 4, 6 -> 4 ± 2; pretrain 10, 20, 30 -> 20 ± 10; totals 12, 24, 36 -> 24 ± 12
    assert list(agg) == ["data", "pretrain", "total"]
    assert times_rows(agg, 3)[2:] == ["| data | 4 ± 2 | 2, 4, 6 |", "| pretrain | 20 ± 10 | 10, 20, 30 |",
                                      "| total (recorded stages) | 24 ± 12 | 12, 24, 36 |"]  # fmt: skip


def test_write_aggregate(seeds, tmp_path):
    summary = write_aggregate(PipelineConfig(), seeds, "ra3 demo --seeds 0 1 2", tmp_path)
    text = summary.read_text()
    assert "Command: `ra3 demo --seeds 0 1 2`" in text and "Seeds: 0, 1, 2" in text
    assert "| NTP mid-training | 0.200 ± 0.100 | 0.400 ± 0.200 | 0.100, 0.200, 0.300 |" in text
    assert "- pass@1, RA3 − NTP, per seed: +0.200, +0.200, +0.200" in text
    record = json.loads((tmp_path / "results.json").read_text())
    assert record["seeds"] == [0, 1, 2] and record["command"] == "ra3 demo --seeds 0 1 2"
    assert record["eval"]["ra3"]["pass@1"]["values"] == [0.3, 0.4, 0.5]
    assert record["rlvr"]["ntp"]["steps_to_target"]["values"] == [None, 12, 5]
    assert "seed" not in record["config"] and record["config"]["eval"]["ks"] == [1, 8]


def test_fairness_tables_read_the_diagnostics():
    from ra3_lightning.pipeline.fairness import diagnostics_table, skills_table

    results = {
        "ntp": {"pass@1": 0.5, "truncation_rate": 0.0, "pass@1_skills2": 0.75, "tasks_skills2": 4.0},
        "ra3_nothink": {"pass@1": 0.25, "pass@1_skills2": 0.5, "pass@1_skills3": 0.0, "tasks_skills3": 2.0},
        "other": {"pass@1": 1.0},  # not a diagnosed run: not shown
    }
    assert skills_table(results)[0] == "| model | 2 skills | 3 skills |"
    assert skills_table(results)[2:] == ["| ntp | 0.750 | n/a |", "| ra3_nothink | 0.500 | 0.000 |"]
    rows = diagnostics_table(results)
    assert [r.split(" | ")[0] for r in rows[2:]] == ["| ntp", "| ra3_nothink"]
    assert rows[2].startswith("| ntp | 0.500 | 0.000 | n/a")


def test_aggregate_diagnostics_pairs_nothink_by_seed():
    from ra3_lightning.pipeline.aggregate import aggregate_diagnostics, nothink_differences

    seeds = [
        {"fairness": {"eval_runs": {"ntp": {"pass@1": 0.5}, "ra3": {"pass@1": 0.4}, "ra3_nothink": {"pass@1": 0.3}}}},
        {"fairness": {"eval_runs": {"ntp": {"pass@1": 0.6}, "ra3": {"pass@1": 0.7}, "ra3_nothink": {"pass@1": 0.6}}}},
        {"eval": {}},  # a results.json written before the diagnostics existed
    ]
    agg = aggregate_diagnostics(seeds)
    assert list(agg) == ["ntp", "ra3", "ra3_nothink"]
    assert agg["ntp"]["pass@1"]["values"] == [0.5, 0.6, None] and agg["ntp"]["pass@1"]["n"] == 2
    # per seed: nothink − ntp = -0.2, 0.0; nothink − ra3 = -0.1, -0.1
    lines = nothink_differences(agg)
    assert lines[0].startswith("pass@1, RA3 without rationales − NTP, per seed: -0.200, +0.000 (mean -0.100")
    assert lines[1].startswith("pass@1, RA3 without − with, per seed: -0.100, -0.100 (mean -0.100 ± 0.000")
