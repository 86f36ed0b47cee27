"""Abstraction-recovery metrics: does the E-step think where the hidden skills begin, and do its comments name them?

Only the synthetic world (:mod:`ra3_lightning.data.synthetic`) knows the true abstractions, so only there can RA3's
latent discovery be scored. Pure functions over plain lists:

* :func:`boundary_precision_recall` — THINK positions vs true skill starts, micro-averaged over traces;
* :func:`normalized_mutual_information` — NMI (arithmetic-mean normalisation) between two labelings, e.g. the
  rationale text (or its first word) and the true skill id of the line it precedes;
* :func:`recovery_metrics` — both, from annotated traces (the E-step's dataset: ``id``, ``text``, ``think_lines``,
  ``rationale_spans``) joined by ``id`` with the synthetic ground truth (``skills``, ``skill_starts``,
  ``skill_ends``).

Line indices are 0-based indices of the *expert* (non-comment) lines of a program, the ``def`` line being 0 —
the convention of both ``think_lines`` and ``skill_starts``. The paper has no such metrics (its corpus has no
ground truth); they are this project's addition.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Literal

OUTSIDE = "<none>"  # label of a line that belongs to no skill (the signature, the docstring, the return line)
RationaleKey = Literal["text", "first_token"]


def boundary_precision_recall(
    predicted_think_lines: Sequence[Sequence[int]], true_skill_starts: Sequence[Sequence[int]]
) -> dict[str, float]:
    """Precision, recall and F1 of THINK lines against true skill starts, micro-averaged over traces.

    Per trace, predictions and truths are compared as sets of line indices (exact match, no tolerance);
    true positives, predictions and truths are summed over all traces before dividing. Every skill start
    counts as a boundary, *including the first skill's* (the first body line: a plan before the first idiom
    is a correct THINK); the ``def`` line (index 0), the docstring and the ``return`` line are never
    boundaries, so a THINK there is a false positive. With no predictions at all precision is 0.0; with no
    true starts recall is 0.0; F1 is 0.0 when precision + recall is 0.

    Args:
        predicted_think_lines: Per trace, the expert-line indices preceded by a rationale.
        true_skill_starts: Per trace, the expert-line indices where a skill begins.

    Returns:
        ``{"precision", "recall", "f1", "num_predicted", "num_true", "num_matched"}`` (counts as floats).
    """
    if len(predicted_think_lines) != len(true_skill_starts):
        raise ValueError(
            f"got {len(predicted_think_lines)} predicted traces but {len(true_skill_starts)} ground-truth traces"
        )
    matched = predicted = true = 0
    for pred, gold in zip(predicted_think_lines, true_skill_starts, strict=True):
        pred_set, gold_set = set(pred), set(gold)
        matched += len(pred_set & gold_set)
        predicted += len(pred_set)
        true += len(gold_set)
    precision = matched / predicted if predicted else 0.0
    recall = matched / true if true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "num_predicted": float(predicted),
        "num_true": float(true),
        "num_matched": float(matched),
    }


def entropy(labels: Sequence[Hashable]) -> float:
    """Shannon entropy (nats) of the empirical distribution of ``labels``."""
    n = len(labels)
    return -sum(c / n * math.log(c / n) for c in Counter(labels).values())


def normalized_mutual_information(labels_a: Sequence[Hashable], labels_b: Sequence[Hashable]) -> float:
    """NMI between two labelings of the same items, normalised by the arithmetic mean of the entropies.

    ``NMI = I(A; B) / ((H(A) + H(B)) / 2)`` with ``I(A; B) = H(A) + H(B) - H(A, B)`` on the empirical
    distributions (scikit-learn's default ``average_method="arithmetic"``). 1.0 when each labeling
    determines the other, 0.0 when they are independent; when both labelings are constant (both entropies 0)
    the result is 1.0, as in scikit-learn.

    Raises:
        ValueError: when the lists differ in length or are empty.
    """
    if len(labels_a) != len(labels_b):
        raise ValueError(f"labelings differ in length: {len(labels_a)} vs {len(labels_b)}")
    if not labels_a:
        raise ValueError("NMI of empty labelings is undefined")
    h_a, h_b = entropy(labels_a), entropy(labels_b)
    if h_a == 0.0 and h_b == 0.0:
        return 1.0
    mutual = h_a + h_b - entropy(list(zip(labels_a, labels_b, strict=True)))
    return max(0.0, mutual / ((h_a + h_b) / 2))


def skill_at_line(line: int, skills: Sequence[str], skill_starts: Sequence[int], skill_ends: Sequence[int]) -> str:
    """The id of the skill whose ``[start, end)`` line span contains ``line``, or :data:`OUTSIDE`."""
    for skill, start, end in zip(skills, skill_starts, skill_ends, strict=True):
        if start <= line < end:
            return skill
    return OUTSIDE


def rationale_key(comment: str, key: RationaleKey = "text", marker: str = "#") -> str:
    """Normalise a rationale line for NMI: without its leading ``marker`` (repeats too) and surrounding space,
    lower-cased; or its first word. ``marker`` is the latent format's ``comment_start``."""
    text = comment.strip()
    while marker and text.startswith(marker):
        text = text[len(marker) :]
    text = text.strip().lower()
    return text if key == "text" else (text.split() or [""])[0]


def think_labels(
    trace: Mapping, truth: Mapping, key: RationaleKey = "text", marker: str = "#"
) -> tuple[list[str], list[str]]:
    """For each THINK of an annotated trace: (its rationale key, the true skill id of the line it precedes)."""
    lines, spans = list(trace["think_lines"]), list(trace["rationale_spans"])
    if len(lines) != len(spans):
        raise ValueError(
            f"trace {trace.get('id')!r}: {len(lines)} think_lines but {len(spans)} rationale_spans; they must pair up"
        )
    text = trace["text"]
    rationales = [rationale_key(text[start:end], key, marker) for start, end in spans]
    gold = [skill_at_line(t, truth["skills"], truth["skill_starts"], truth["skill_ends"]) for t in lines]
    return rationales, gold


def recovery_metrics(
    annotated: Iterable[Mapping], truth_by_id: Mapping[str, Mapping], marker: str = "#"
) -> dict[str, float]:
    """Boundary precision/recall/F1 and NMI (full rationale text and first word) of annotated traces.

    Args:
        annotated: Annotated-trace records (``id``, ``text``, ``think_lines``, ``rationale_spans``).
        truth_by_id: Synthetic ground-truth records (``skills``, ``skill_starts``, ``skill_ends``) by ``id``.
        marker: The latent format's comment marker (``LatentFormat.comment_start``), stripped from each rationale.

    Returns:
        ``precision``, ``recall``, ``f1`` (see :func:`boundary_precision_recall`), ``nmi_text`` and
        ``nmi_first_token`` (NaN when there is no THINK at all), and ``num_traces``.
    """
    predicted, gold_starts, texts, firsts, skills = [], [], [], [], []
    for trace in annotated:
        truth = truth_by_id.get(trace["id"])
        if truth is None:
            raise KeyError(f"trace {trace['id']!r} has no ground-truth record (is it from the synthetic world?)")
        predicted.append(list(trace["think_lines"]))
        gold_starts.append(list(truth["skill_starts"]))
        rationales, gold = think_labels(trace, truth, "text", marker)
        texts += rationales
        firsts += [rationale_key(r, "first_token") for r in rationales]
        skills += gold
    result = boundary_precision_recall(predicted, gold_starts)
    result["nmi_text"] = normalized_mutual_information(texts, skills) if skills else math.nan
    result["nmi_first_token"] = normalized_mutual_information(firsts, skills) if skills else math.nan
    result["num_traces"] = float(len(predicted))
    return result
