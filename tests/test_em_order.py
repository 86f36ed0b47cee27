"""The RA3 arm's M-step batches: by default the NTP arm's batch stream (``EMDataModule(m_order="ntp")``).

With an annotation that inserted no rationale, the M-phases must train on exactly the batches the NTP arm's
``TraceDataModule`` draws (same seed, batch size and block length), in the same order across EM iterations — so that
the two arms differ in their rationales and nothing else.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import datasets
import pytest
import torch

from ra3_lightning.data.em_data import EMDataModule, _permutation, stream_indices
from ra3_lightning.data.traces import TraceDataModule, _epochs
from ra3_lightning.em_schedule import EMSchedule


def test_stream_indices_cut_each_epoch_into_batches_with_a_short_last_one():
    p0, p1 = _permutation(5, 7 * 1_000_003), _permutation(5, 7 * 1_000_003 + 1)
    batches = [stream_indices(5, 2, step, 0, 1, seed=7) for step in range(4)]
    assert batches == [list(p0[0:2]), list(p0[2:4]), [p0[4]], list(p1[0:2])]


def test_stream_indices_over_two_ranks_pad_the_epoch_from_its_start():
    p0 = _permutation(5, 7 * 1_000_003)  # padded to 6: p0[0..4], p0[0]; rank 0 takes 0, 2, 4; rank 1 takes 1, 3, 0
    assert [stream_indices(5, 2, s, 0, 2, seed=7) for s in range(2)] == [[p0[0], p0[2]], [p0[4]]]
    assert [stream_indices(5, 2, s, 1, 2, seed=7) for s in range(2)] == [[p0[1], p0[3]], [p0[0]]]
    assert stream_indices(5, 2, 2, 0, 2, seed=7)[0] == _permutation(5, 7 * 1_000_003 + 1)[0]  # next epoch


def save_unannotated(records: list[dict], out: Path) -> Path:
    """What the annotation pass writes when ``q`` chose ACT everywhere: the text unchanged, no rationale span."""
    rows = [{"id": r["id"], "text": r["text"], "rationale_spans": []} for r in records]
    features = datasets.Features(
        {"id": datasets.Value("string"), "text": datasets.Value("string"),
         "rationale_spans": datasets.Sequence(datasets.Sequence(datasets.Value("int64")))}
    )  # fmt: skip
    datasets.Dataset.from_list(rows, features=features).save_to_disk(str(out))
    return out


@pytest.mark.parametrize(
    "m_order, ntp_order, em_order, same",
    [("ntp", None, None, True), ("ntp", 5, 5, True), ("ntp", None, 5, False), ("per_phase", None, None, False)],
)
def test_rationale_free_m_phases_train_on_the_ntp_arms_batches(
    code_jsonl, tiny_tokenizer, tmp_path, m_order, ntp_order, em_order, same
):
    common = {"max_length": 48, "val_size": 0.1, "seed": 3}
    ntp = TraceDataModule(code_jsonl, batch_size=4, shuffle_seed=ntp_order, **common)
    ntp.connect(tiny_tokenizer)
    ntp.setup()
    ntp_batches = list(itertools.islice(_epochs(ntp.train_dataloader()), 3 * 40))  # > 2 epochs of blocks

    em = EMDataModule(code_jsonl, id_field="id", m_batch_size=4, m_order=m_order, shuffle_seed=em_order, **common)
    em.connect(tiny_tokenizer)
    em.setup()
    em.use_em_schedule(EMSchedule(iterations=3, e_steps=1, m_steps=40))
    em_batches = []
    for iteration in range(3):
        records = em.iteration_records(iteration)  # annotated by two ranks, each a stride: not in corpus order
        ranks = [save_unannotated(records[r::2], tmp_path / f"it{iteration}" / f"rank_{r}") for r in range(2)]
        em.load_annotated(iteration, ranks)
        em_batches += [em.m_batch(iteration, step) for step in range(40)]

    assert len(ntp.train_dataloader()) < 40  # each M-phase crosses an epoch boundary, and epochs run on across phases
    equal = [
        all(torch.equal(a[k], b[k]) for k in ("input_ids", "labels", "position_ids", "attention_mask"))
        for a, b in zip(ntp_batches, em_batches, strict=True)
    ]
    assert all(equal) if same else not all(equal)


def test_shuffle_seed_changes_the_batch_order_and_nothing_else(code_jsonl, tiny_tokenizer):
    modules = [EMDataModule(code_jsonl, id_field="id", val_size=0.1, seed=3, shuffle_seed=s) for s in (None, 5)]
    for em in modules:
        em.connect(tiny_tokenizer)
        em.setup()
    same, other = modules
    assert same.train_records == other.train_records and same.iteration_records(1) == other.iteration_records(1)
    assert same.val_blocks.with_format(None)["input_ids"] == other.val_blocks.with_format(None)["input_ids"]
    assert same.e_batch(0, 0) == other.e_batch(0, 0)


def test_unknown_m_order_is_refused(code_jsonl):
    with pytest.raises(ValueError, match="m_order='shuffled' must be 'ntp' or 'per_phase'"):
        EMDataModule(code_jsonl, m_order="shuffled")
