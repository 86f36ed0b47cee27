"""Abstraction-recovery metrics against hand-computed numbers, and end to end on synthetic ground truth."""

from __future__ import annotations

import math

import pytest

from ra3_lightning.abstraction_metrics import (
    OUTSIDE,
    boundary_precision_recall,
    entropy,
    normalized_mutual_information,
    rationale_key,
    recovery_metrics,
    skill_at_line,
)
from ra3_lightning.data.skills import SKILLS_BY_ID
from ra3_lightning.data.synthetic import load_split
from ra3_lightning.estep import insert_rationales


def test_boundary_precision_recall_by_hand():
    # trace 1: predicted {3, 5}, true {3, 8} -> 1 match; trace 2: predicted {0, 4} (0 is the def line), true {4}
    # -> 1 match. Micro: matched 2, predicted 4, true 3 -> P = 2/4 = 0.5, R = 2/3, F1 = 2*0.5*(2/3)/(0.5+2/3) = 4/7.
    out = boundary_precision_recall([[3, 5], [0, 4]], [[3, 8], [4]])
    assert out["precision"] == pytest.approx(0.5)
    assert out["recall"] == pytest.approx(2 / 3)
    assert out["f1"] == pytest.approx(4 / 7)
    assert (out["num_predicted"], out["num_true"], out["num_matched"]) == (4.0, 3.0, 2.0)


def test_boundary_micro_average_weights_traces_by_size():
    # trace 1: 1 of 1 predicted correct; trace 2: 0 of 3. Macro precision would be (1 + 0) / 2 = 0.5; micro is 1/4.
    assert boundary_precision_recall([[4], [1, 2, 3]], [[4], [9]])["precision"] == pytest.approx(0.25)


def test_boundary_edge_cases():
    assert boundary_precision_recall([[3, 3, 7]], [[3, 7]])["precision"] == 1.0  # a duplicate counts once
    empty = boundary_precision_recall([[]], [[3, 7]])
    assert (empty["precision"], empty["recall"], empty["f1"]) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="2 predicted traces but 1 ground-truth"):
        boundary_precision_recall([[1], [2]], [[1]])


def test_nmi_by_hand():
    # a = [0,0,1,1], b = [0,0,0,1].
    # H(a) = ln 2 = 0.693147; H(b) = -(3/4 ln 3/4 + 1/4 ln 1/4) = 0.215762 + 0.346574 = 0.562335.
    # Joint: (0,0) 1/2, (1,0) 1/4, (1,1) 1/4 -> H(a,b) = 1/2 ln 2 + 2 * 1/4 ln 4 = 0.346574 + 0.693147 = 1.039721.
    # I = 0.693147 + 0.562335 - 1.039721 = 0.215762; NMI = I / ((H(a) + H(b)) / 2) = 0.215762 / 0.627741 = 0.343712.
    assert entropy([0, 0, 0, 1]) == pytest.approx(0.562335, abs=1e-6)
    assert normalized_mutual_information([0, 0, 1, 1], [0, 0, 0, 1]) == pytest.approx(0.343712, abs=1e-6)
    assert normalized_mutual_information([0, 0, 0, 1], [0, 0, 1, 1]) == pytest.approx(0.343712, abs=1e-6)


def test_nmi_extremes():
    # Same partition under other names -> 1; independent (each a-value meets each b-value equally) -> 0.
    assert normalized_mutual_information(["x", "x", "y", "z"], [2, 2, 0, 1]) == pytest.approx(1.0)
    assert normalized_mutual_information([0, 0, 1, 1], ["p", "q", "p", "q"]) == pytest.approx(0.0, abs=1e-12)
    # One labeling constant: H = 0 and I = 0 -> 0 / (ln 2 / 2) = 0. Both constant -> 1 by convention.
    assert normalized_mutual_information([5, 5, 5, 5], [0, 1, 0, 1]) == pytest.approx(0.0, abs=1e-12)
    assert normalized_mutual_information(["a", "a"], ["b", "b"]) == 1.0
    with pytest.raises(ValueError, match="differ in length"):
        normalized_mutual_information([1, 2], [1])
    with pytest.raises(ValueError, match="empty"):
        normalized_mutual_information([], [])


def test_skill_at_line_and_rationale_key():
    skills, starts, ends = ["sum_values", "clamp"], [3, 6], [6, 8]
    assert [skill_at_line(t, skills, starts, ends) for t in (0, 3, 5, 6, 7, 8)] == [
        OUTSIDE,
        "sum_values",
        "sum_values",
        "clamp",
        "clamp",
        OUTSIDE,
    ]
    assert rationale_key("    # Sum the values\n") == "sum the values"
    assert rationale_key("    # Sum the values\n", "first_token") == "sum"
    assert rationale_key("#\n", "first_token") == ""
    assert rationale_key("  ## Sum the values\n") == "sum the values"  # a repeated marker goes too


def test_rationale_key_strips_another_formats_marker():
    assert rationale_key("    // Sum the values\n", marker="//") == "sum the values"
    assert rationale_key("    ; Sum the values\n", "first_token", marker=";") == "sum"
    # a multi-character marker is stripped as a whole, not as a set of characters
    assert rationale_key("<think> think of the sum", marker="<think>") == "think of the sum"
    assert rationale_key("    // Sum the values\n") == "// sum the values"  # the default marker is "#"


def _annotate(record, choose):
    """Insert a rationale before the lines ``choose(record)`` returns, via the E-step's own latent format."""
    rationales = choose(record)
    annotated = insert_rationales(record["text"], rationales)
    return {
        "id": record["id"],
        "text": annotated.text,
        "think_lines": annotated.think_lines,
        "rationale_spans": annotated.rationale_spans,
    }


@pytest.fixture(scope="module")
def midtrain():
    return load_split("midtrain", n=50, seed=0)


def test_recovery_metrics_perfect_annotation(midtrain):
    truth = {r["id"]: r for r in midtrain}

    def oracle(record):
        return {s: SKILLS_BY_ID[k].comment for s, k in zip(record["skill_starts"], record["skills"], strict=True)}

    out = recovery_metrics([_annotate(r, oracle) for r in midtrain], truth)
    assert (out["precision"], out["recall"], out["f1"]) == (1.0, 1.0, 1.0)
    assert out["nmi_text"] == pytest.approx(1.0)
    assert out["num_traces"] == 50.0
    assert 0.5 < out["nmi_first_token"] <= 1.0  # several skill names share a first word ("count ...", "keep ...")


def test_recovery_metrics_uninformative_annotation(midtrain):
    truth = {r["id"]: r for r in midtrain}

    def one_line_late_same_text(record):
        return {s + 1: "do the next step" for s in record["skill_starts"]}

    out = recovery_metrics([_annotate(r, one_line_late_same_text) for r in midtrain], truth)
    assert out["precision"] == 0.0 and out["recall"] == 0.0
    assert out["nmi_text"] == pytest.approx(0.0, abs=1e-12)  # one constant text: no information about the skill


def test_recovery_metrics_errors(midtrain):
    record = midtrain[0]
    trace = _annotate(record, lambda r: {r["skill_starts"][0]: "x"})
    with pytest.raises(KeyError, match="has no ground-truth record"):
        recovery_metrics([trace], {})
    with pytest.raises(ValueError, match="1 think_lines but 0 rationale_spans"):
        recovery_metrics([{**trace, "rationale_spans": []}], {record["id"]: record})
    no_think = recovery_metrics([{**trace, "think_lines": [], "rationale_spans": []}], {record["id"]: record})
    assert math.isnan(no_think["nmi_text"]) and no_think["precision"] == 0.0
