"""Bootstrapping: the latent policy ``q`` annotates expert traces with rationales for the M-step.

:func:`annotate` runs ``q`` over a trace dataset (``G`` rollouts per trace, scored by the frozen ``π``), picks one
annotation per trace (``choose="sample"``: the first sample, i.e. a plain draw from ``q``; ``"best"``: the best of
``G`` by total return) and writes a ``datasets`` dataset with the annotated-trace schema
(:data:`ANNOTATION_FEATURES`). Work is split into shards of ``shard_size`` records written atomically under
``out_dir/_shards``; a rerun skips finished shards (resumable), then the merged dataset is saved to
``out_dir/data`` (what ``TraceDataModule(path=out_dir/data, rationale_spans_field="rationale_spans")`` reads).

No record is silently dropped: bad text, a failing rollout, or an annotation whose stripped text differs from the
original raises an error that names the record id(s).
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import datasets
import torch
from tqdm.auto import tqdm

from ra3_lightning.data.sources import DataError, text_problem
from ra3_lightning.data.texts import load_trace_records
from ra3_lightning.estep.config import Annotation, LatentRL, scores_batch
from ra3_lightning.estep.core import EStep
from ra3_lightning.estep.sampler import Rollout
from ra3_lightning.estep.text import strip_rationales
from ra3_lightning.estep.vocab import LatentVocab, encode_trace
from ra3_lightning.stopwatch import Stopwatch

ANNOTATION_FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "original": datasets.Value("string"),
        "text": datasets.Value("string"),
        "think_lines": datasets.Sequence(datasets.Value("int32")),
        "rationale_spans": datasets.Sequence(datasets.Sequence(datasets.Value("int64"))),
        "line_logp_with": datasets.Sequence(datasets.Value("float32")),
        "line_logp_without": datasets.Sequence(datasets.Value("float32")),
        "elbo": datasets.Value("float32"),
    }
)


def _choose_sample(returns: torch.Tensor) -> torch.Tensor:  # [B, G] -> [B]
    return torch.zeros(returns.shape[0], dtype=torch.long)


def _choose_best(returns: torch.Tensor) -> torch.Tensor:  # [B, G] -> [B]
    return returns.argmax(dim=1)


CHOOSERS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"sample": _choose_sample, "best": _choose_best}


@torch.no_grad()
def annotate_batch(
    q: torch.nn.Module,
    pi: torch.nn.Module,
    estep: EStep,
    texts: Sequence[str],
    ids: Sequence[str],
    annotation: Annotation,
    generator: torch.Generator | None = None,
    stopwatch: Stopwatch | None = None,
    score: bool = True,
) -> list[dict[str, Any]]:
    """Annotate ``texts`` (one record per text, in order) with the annotated-trace schema: ``estep`` rolls out
    ``annotation.num_generations`` annotations per text and (with ``score``) ``π`` scores them,
    ``annotation.choose`` keeps one. Without ``score`` the records' scores are NaN (``choose="sample"`` only).
    ``stopwatch`` times the three passes (``annotation/sample``, ``annotation/score``, ``annotation/plain``)."""
    for i, text in zip(ids, texts, strict=True):
        problem = text_problem(text)
        if problem:
            raise DataError(f"record {i!r}: field 'text' {problem}")
    g, vocab = annotation.num_generations, estep.vocab
    watch, device = stopwatch or Stopwatch(), next(pi.parameters()).device
    traces = [encode_trace(vocab.tokenizer, t) for t in texts]
    with watch("annotation/sample", device):
        roll = estep.sample(q, traces, g, generator)
    if score:
        with watch("annotation/score", device):
            line_logp = estep.score(pi, roll).line_logp.cpu()  # [B*G, T]
        with watch("annotation/plain", device):
            without = estep.plain_logp(pi, traces, device).cpu()  # [B, T]
        returns = estep.rewards(line_logp, roll).sum(-1).view(len(texts), g)  # [B, G]: each annotation's ELBO
        with_r = line_logp * roll.line_mask
    else:
        if annotation.choose != "sample":
            raise ValueError(f"annotation.choose={annotation.choose!r} needs the scores of every batch")
        with_r = torch.full(roll.line_mask.shape, float("nan"))  # [B*G, T]
        without = with_r[::g]  # [B, T]
        returns = torch.full((len(texts), g), float("nan"))  # [B, G]
    picks = CHOOSERS[annotation.choose](returns)
    return [
        _record(roll, b * g + int(k), ids[b], with_r, without[b], float(returns[b, k]), vocab)
        for b, k in enumerate(picks)
    ]


def _record(
    roll: Rollout, n: int, record_id: str, with_r: torch.Tensor, without: torch.Tensor, elbo: float, vocab: LatentVocab
) -> dict[str, Any]:
    trace = roll.trace_of(n)
    ann = roll.annotated(n, vocab)
    if strip_rationales(ann.text, ann.rationale_spans) != trace.text:
        raise RuntimeError(f"record {record_id!r}: stripping the annotation does not give back the original text")
    num_lines = trace.num_lines
    return {
        "id": record_id,
        "original": trace.text,
        "text": ann.text,
        "think_lines": ann.think_lines,
        "rationale_spans": ann.rationale_spans,
        "line_logp_with": with_r[n, :num_lines].tolist(),
        "line_logp_without": without[:num_lines].tolist(),
        "elbo": elbo,
    }


def _models(source: Any, latent: LatentRL | None) -> tuple[torch.nn.Module, torch.nn.Module, EStep]:
    """``(q, π, E-step)`` from a ``LatentPolicyModule`` (its own ``estep`` unless ``latent`` is given) or a
    ``(q, π, tokenizer)`` tuple (the default latent format)."""
    if isinstance(source, tuple):
        q, pi, tokenizer = source
        return q, pi, EStep(latent or LatentRL(), LatentVocab.from_tokenizer(tokenizer))
    if getattr(source, "model", None) is None:
        source.configure_model()
    return source.model, source.pi, source.estep if latent is None else EStep(latent, source.vocab)


def annotate(
    source: Any,
    dataset: str | datasets.Dataset,
    out_dir: str | Path,
    text_field: str = "text",
    id_field: str | None = None,
    annotation: Annotation | None = None,
    latent: LatentRL | None = None,
    seed: int = 0,
    max_records: int | None = None,
    progress: bool = True,
    stopwatch: Stopwatch | None = None,
) -> datasets.Dataset:
    """Annotate every record of ``dataset`` and save the annotated traces to ``out_dir`` (resumable by shard).

    Args:
        source: A ``LatentPolicyModule`` (its ``model`` is ``q``, ``pi`` is ``π``) or a ``(q, π, tokenizer)`` tuple.
        dataset: A data source string or a ``datasets.Dataset``.
        out_dir: Output directory: the merged dataset goes to ``out_dir/data``, finished shards to ``out_dir/_shards``.
        text_field: Field of the traces.
        id_field: Field of record ids (default: the record index).
        annotation: Rollouts per trace, which one is kept, batch and shard sizes (default :class:`Annotation`).
        latent: How ``q`` writes rationales and ``π`` scores them (default: a module's own ``latent`` group, so it
            annotates as it was trained; ``LatentRL()`` for a tuple).
        seed: Seed; shard ``i`` uses ``seed + i``, so a resumed run writes what an uninterrupted one would.
        max_records: Annotate only the first records.
        progress: Show a tqdm progress bar.
        stopwatch: Adds the seconds of each pass (:func:`annotate_batch`) and of writing (``annotation/write``).
    """
    run = annotation or Annotation()
    q, pi, estep = _models(source, latent)
    records = load_trace_records(dataset, text_field, id_field, max_records)
    out, shard_root = Path(out_dir), Path(out_dir) / "_shards"
    shard_root.mkdir(parents=True, exist_ok=True)
    starts = range(0, len(records), run.shard_size)
    per_shard = math.ceil(run.shard_size / run.batch_size)  # batches per shard: batch numbers survive a resume
    bar = tqdm(total=len(records), desc="annotate", disable=not progress)
    for index, start in enumerate(starts):
        path = shard_root / f"shard-{index:05d}"
        chunk = records[start : start + run.shard_size]
        if not (path / "dataset_info.json").exists():
            generator = torch.Generator().manual_seed(seed + index)
            rows = [
                row
                for i in range(0, len(chunk), run.batch_size)
                for row in _annotate_rows(
                    q,
                    pi,
                    estep,
                    chunk[i : i + run.batch_size],
                    run,
                    generator,
                    stopwatch,
                    scores_batch(index * per_shard + i // run.batch_size, run.score_fraction),
                )  # fmt: skip
            ]
            with stopwatch("annotation/write") if stopwatch else nullcontext():
                _save_atomically(datasets.Dataset.from_list(rows, features=ANNOTATION_FEATURES), path)
        bar.update(len(chunk))
    bar.close()
    shards = [datasets.load_from_disk(str(shard_root / f"shard-{i:05d}")) for i in range(len(starts))]
    merged = (
        datasets.concatenate_datasets(shards)
        if shards
        else datasets.Dataset.from_list([], features=ANNOTATION_FEATURES)
    )
    _save_atomically(merged, out / "data", replace=True)
    return datasets.load_from_disk(str(out / "data"))


def _annotate_rows(q, pi, estep, rows, annotation, generator, stopwatch, score) -> list[dict[str, Any]]:
    ids = [r["id"] for r in rows]
    try:
        return annotate_batch(q, pi, estep, [r["text"] for r in rows], ids, annotation, generator, stopwatch, score)
    except DataError:
        raise
    except Exception as e:
        raise RuntimeError(f"annotation failed for records {ids}: {type(e).__name__}: {e}") from e


def _save_atomically(ds: datasets.Dataset, path: Path, replace: bool = False) -> None:
    """``save_to_disk`` into a temporary sibling, then rename (a killed run never leaves a half-written shard)."""
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    ds.save_to_disk(str(tmp))
    if replace and path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
