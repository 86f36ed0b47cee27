"""Annotation: a resumable, sharded dataset whose stripped texts equal the originals, readable by the M-step."""

from __future__ import annotations

import json
import math

import datasets
import pytest
import torch

from ra3_lightning.data.sources import DataError
from ra3_lightning.data.traces import TraceDataModule
from ra3_lightning.estep import Annotation, LatentRL, LatentVocab, ThinkBias, annotate, strip_rationales
from ra3_lightning.estep.config import scores_batch


@pytest.fixture
def models(tiny_lm, tiny_tokenizer):
    q = ThinkBias(tiny_lm, LatentVocab.from_tokenizer(tiny_tokenizer).think, 5.0).eval()
    return q, tiny_lm, tiny_tokenizer


def _corpus(tmp_path, texts):
    path = tmp_path / "traces.jsonl"
    path.write_text("".join(json.dumps({"name": f"t{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    return str(path)


@pytest.mark.parametrize("choose", ["sample", "best"])
def test_annotation_round_trip_and_schema(models, tmp_path, code_snippets, choose):
    texts = code_snippets + ["def crlf(x):\r\n    return x\r\n", "def tail(x):\n    return x"]
    run = Annotation(choose=choose, num_generations=2, batch_size=2, shard_size=3)
    ds = annotate(models, _corpus(tmp_path, texts), tmp_path / "out", id_field="name", annotation=run,
                  latent=LatentRL(max_latent_tokens=5), progress=False)  # fmt: skip
    assert len(ds) == len(texts) and ds["id"] == [f"t{i}" for i in range(len(texts))]
    assert sum(len(t) for t in ds["think_lines"]) > 0
    for row, original in zip(ds, texts, strict=True):
        assert row["original"] == original
        assert strip_rationales(row["text"], row["rationale_spans"]) == original
        assert len(row["line_logp_with"]) == len(row["line_logp_without"]) == len(original.splitlines())
        # elbo = sum of line log-likelihoods with rationales - c * #THINK
        assert row["elbo"] == pytest.approx(sum(row["line_logp_with"]) - 0.05 * len(row["think_lines"]), abs=1e-3)
        for start, end in row["rationale_spans"]:
            assert row["text"][start:end].lstrip(" \t").startswith("#")


def test_annotation_resumes_by_shard(models, tmp_path, code_snippets):
    source = _corpus(tmp_path, code_snippets)
    run, latent = Annotation(num_generations=2, shard_size=2), LatentRL(max_latent_tokens=5)
    first = annotate(models, source, tmp_path / "out", annotation=run, latent=latent, progress=False)
    shard = tmp_path / "out" / "_shards" / "shard-00001"
    stamp = (shard / "dataset_info.json").stat().st_mtime_ns
    import shutil

    shutil.rmtree(tmp_path / "out" / "_shards" / "shard-00002")  # as if killed before the last shard
    again = annotate(models, source, tmp_path / "out", annotation=run, latent=latent, progress=False)
    assert (shard / "dataset_info.json").stat().st_mtime_ns == stamp  # finished shard skipped
    assert again["text"] == first["text"]  # the redone shard is what an uninterrupted run wrote (seeded per shard)
    assert again["id"] == first["id"]


def test_bad_record_is_reported_by_id(models, tmp_path):
    ds = datasets.Dataset.from_list([{"id": "ok", "text": "x = 1\n"}, {"id": "broken", "text": "   "}])
    with pytest.raises(DataError, match="record 1"):
        annotate(models, ds, tmp_path / "out", id_field="id", progress=False)


def test_mstep_reads_the_annotated_dataset(models, tmp_path, code_snippets):
    run = Annotation(num_generations=2)
    annotate(models, _corpus(tmp_path, code_snippets), tmp_path / "out", annotation=run, progress=False)
    dm = TraceDataModule(str(tmp_path / "out" / "data"), rationale_spans_field="rationale_spans", val_size=0,
                         packing=False, max_length=128, batch_size=8)  # fmt: skip
    dm.connect(models[2])
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["rationale_mask"].any()
    assert torch.equal(
        batch["rationale_mask"] & (batch["attention_mask"] == 0), torch.zeros_like(batch["rationale_mask"])
    )


def test_annotation_group_validates_and_reads_the_old_key():
    with pytest.raises(ValueError, match="num_generations >= 2"):
        Annotation(choose="best")
    with pytest.raises(ValueError, match="choose one of"):
        Annotation(choose="median")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must be >= 1"):
        Annotation(shard_size=0)
    with pytest.warns(FutureWarning, match="annotation.num_generations"):
        old = Annotation(choose="best", num_samples=4)
    assert old == Annotation(choose="best", num_generations=4)
    with pytest.raises(ValueError, match="set only annotation.num_generations"):
        Annotation(num_generations=2, num_samples=4)
    with pytest.raises(ValueError, match="lie in"):
        Annotation(score_fraction=1.5)
    with pytest.raises(ValueError, match="needs score_fraction=1.0"):
        Annotation(choose="best", num_generations=2, score_fraction=0.5)


def test_scored_batches_are_the_fraction_evenly_spread():
    assert [i for i in range(12) if scores_batch(i, 1.0)] == list(range(12))
    assert [i for i in range(12) if scores_batch(i, 0.5)] == [1, 3, 5, 7, 9, 11]  # floor((i+1)/2) steps at odd i
    assert [i for i in range(30) if scores_batch(i, 0.1)] == [9, 19, 29]
    assert [i for i in range(7) if scores_batch(i, 1 / 3)] == [2, 5]
    assert not any(scores_batch(i, 0.0) for i in range(12))


def test_unscored_batches_keep_the_same_annotations_and_hold_nan_scores(models, tmp_path, code_snippets):
    source, latent = _corpus(tmp_path, code_snippets * 2), LatentRL(max_latent_tokens=5)
    runs = {f: Annotation(num_generations=2, batch_size=1, shard_size=3, score_fraction=f) for f in (1.0, 0.5)}
    full, half = (
        annotate(models, source, tmp_path / f"out{f}", annotation=run, latent=latent, progress=False)
        for f, run in runs.items()
    )
    assert half["text"] == full["text"] and half["think_lines"] == full["think_lines"]  # scoring draws nothing
    # batch size 1, 3 records a shard: batches are numbered 0 1 2 | 3 4 5 | ..., every odd one scored at 0.5
    for i, (h, f) in enumerate(zip(half, full, strict=True)):
        if i % 2:
            assert (h["elbo"], h["line_logp_with"], h["line_logp_without"]) == (
                f["elbo"], f["line_logp_with"], f["line_logp_without"],
            )  # fmt: skip
        else:
            assert math.isnan(h["elbo"]) and len(h["line_logp_with"]) == len(f["line_logp_with"])
            assert all(math.isnan(x) for x in h["line_logp_with"] + h["line_logp_without"])
