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

import functools
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import datasets
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from ra3_lightning.data.sources import DataError, text_problem
from ra3_lightning.data.texts import load_trace_records
from ra3_lightning.estep.engines import resolve_engine
from ra3_lightning.estep.format import LatentFormat
from ra3_lightning.estep.layout import plain_layout
from ra3_lightning.estep.sampler import Rollout, rollout
from ra3_lightning.estep.scoring import ActLikelihood, expert_line_logp, layout_stats
from ra3_lightning.estep.text import strip_rationales
from ra3_lightning.estep.vocab import LatentVocab, encode_trace
from ra3_lightning.rl.returns import elbo_rewards

Choose = Literal["sample", "best"]

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


@dataclass(frozen=True)
class LatentRL:
    """How ``q`` writes rationales and how ``π`` scores them: one value that the E-step's training
    (``model.latent`` of ``LatentPolicyModule`` / ``RA3Module``) and annotation (:class:`AnnotationConfig`) share.

    Attributes:
        think_cost: ``c`` in ``r_t = log π(a_t|…) − c·1[THINK]`` (paper: 0.05; ablations 0.01, 0.2).
        max_latent_tokens: Most tokens in a rationale, its newline included (>= 2).
        temperature: Sampling temperature of ``q`` (decisions and rationale tokens).
        act_likelihood: How an expert line's ``log π(a_t | …)`` is scored. ``"conditional"``: given the latent, the
            line is code, so its first token is renormalised over the tokens that do not start a comment (a THINK
            pays off only if its text makes the code more likely). ``"marginal"``: the plain token likelihood, in
            which not commenting costs ``log(1 − P_π(#))`` wherever ``π`` expects a comment (THINKs pay off there
            whatever they say). The paper does not say which it uses.
        hindsight_lines: ``k``: before deciding THINK/ACT at line ``t`` and writing its rationale, ``q`` sees the
            next ``k`` expert lines ``t..t+k-1`` (fewer at the end of a trace) in a context that ``π``'s scoring,
            the annotated text and the M-step never see. 0 (default): the rationale is a plan written from the
            prefix alone, as the model must at inference time. Needs SDPA or eager attention for ``k > 0``, and the line
            engine (``engine="auto"`` picks it; ``"wave"`` with ``k > 0`` raises).
        engine: How the rollout feeds ``q``: ``"wave"`` (one forward call over the rest of every trace per THINK;
            ``hindsight_lines = 0`` only, naming it with ``k > 0`` raises), ``"kv"`` (one KV cache, one call per line),
            ``"reencode"`` (naive; for benchmarks) or ``"auto"`` (default: ``"wave"``, ``"kv"`` with hindsight). All
            sample the same rollouts from the same generator state; ``bench/estep_rollout.py`` times them.
        logprob_chunk_size: Positions per chunk of the LM head in ``π``'s scoring pass and ``q``'s ``log q`` pass:
            only five numbers per position are kept (:class:`ra3_lightning.logit_stats.LogitStats`), never the fp32
            ``[N, L, V]`` logits; ``None``: dense logits (models whose logits are not ``lm_head(hidden)``).
    """

    think_cost: float = 0.05
    max_latent_tokens: int = 16
    temperature: float = 1.0
    act_likelihood: ActLikelihood = "conditional"
    hindsight_lines: int = 0
    engine: Literal["auto", "wave", "kv", "reencode"] = "auto"
    logprob_chunk_size: int | None = 256

    def __post_init__(self) -> None:
        if self.max_latent_tokens < 2:
            raise ValueError(f"latent.max_latent_tokens={self.max_latent_tokens} must be >= 2 (a marker and a newline)")
        if self.temperature <= 0:
            raise ValueError(f"latent.temperature={self.temperature} must be > 0")
        k = self.hindsight_lines
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(
                f"latent.hindsight_lines={k!r} must be an integer >= 0: the number of next expert lines q sees "
                "before it writes a rationale (0: none)"
            )
        resolve_engine(self.engine, k)


@dataclass(frozen=True)
class AnnotationConfig:
    """How traces are annotated: ``num_samples`` rollouts per trace with the E-step's :class:`LatentRL`, one kept.

    Args:
        num_samples: ``G`` rollouts per trace.
        choose: ``"sample"`` (first draw) or ``"best"`` (highest total return of the ``G``).
        latent: The E-step's sampling and scoring, unchanged (``think_cost`` also gives the return of ``"best"``
            and ``elbo``).
    """

    num_samples: int = 4
    choose: Choose = "sample"
    latent: LatentRL = LatentRL()


def _choose_sample(returns: torch.Tensor) -> torch.Tensor:  # [B, G] -> [B]
    return torch.zeros(returns.shape[0], dtype=torch.long)


def _choose_best(returns: torch.Tensor) -> torch.Tensor:  # [B, G] -> [B]
    return returns.argmax(dim=1)


CHOOSERS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"sample": _choose_sample, "best": _choose_best}


@torch.no_grad()
def annotate_batch(
    q: torch.nn.Module,
    pi: torch.nn.Module,
    vocab: LatentVocab,
    texts: Sequence[str],
    ids: Sequence[str],
    cfg: AnnotationConfig,
    generator: torch.Generator | None = None,
) -> list[dict[str, Any]]:
    """Annotate ``texts`` (one record per text, in order) with the annotated-trace schema."""
    if cfg.choose not in CHOOSERS:
        raise ValueError(f"choose={cfg.choose!r}; choose one of {sorted(CHOOSERS)}")
    for i, text in zip(ids, texts, strict=True):
        problem = text_problem(text)
        if problem:
            raise DataError(f"record {i!r}: field 'text' {problem}")
    traces = [encode_trace(vocab.tokenizer, t) for t in texts]
    roll = rollout(
        q, traces, vocab, cfg.num_samples, cfg.latent.max_latent_tokens, cfg.latent.temperature, generator,
        cfg.latent.engine, cfg.latent.hindsight_lines,
    )  # fmt: skip
    device = next(pi.parameters()).device
    score = functools.partial(expert_line_logp, vocab=vocab, act_likelihood=cfg.latent.act_likelihood)
    stats = functools.partial(layout_stats, pi, vocab=vocab, chunk_size=cfg.latent.logprob_chunk_size)
    with_r = score(stats(roll.layout)[0], roll.layout, traces, cfg.num_samples).cpu() * roll.line_mask
    plain = plain_layout(traces, vocab, device)
    without = score(stats(plain)[0], plain, traces, 1).cpu()  # [B, T]
    returns = elbo_rewards(with_r, roll.think, cfg.latent.think_cost).sum(-1)
    returns = returns.view(len(texts), cfg.num_samples)  # [B, G]
    picks = CHOOSERS[cfg.choose](returns)
    return [
        _record(roll, b * cfg.num_samples + int(g), ids[b], with_r, without[b], float(returns[b, g]), vocab)
        for b, g in enumerate(picks)
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


def _models(source: Any) -> tuple[torch.nn.Module, torch.nn.Module, PreTrainedTokenizerBase, LatentFormat | None]:
    """``(q, π, tokenizer, format)`` from a ``LatentPolicyModule`` or a ``(q, π, tokenizer)`` tuple."""
    if isinstance(source, tuple):
        q, pi, tokenizer = source
        return q, pi, tokenizer, None
    if getattr(source, "model", None) is None:
        source.configure_model()
    return source.model, source.pi, source.tokenizer, source.latent_format()


def annotate(
    source: Any,
    dataset: str | datasets.Dataset,
    out_dir: str | Path,
    text_field: str = "text",
    id_field: str | None = None,
    shard_size: int = 256,
    batch_size: int = 8,
    config: AnnotationConfig | None = None,
    seed: int = 0,
    max_records: int | None = None,
    progress: bool = True,
) -> datasets.Dataset:
    """Annotate every record of ``dataset`` and save the annotated traces to ``out_dir`` (resumable by shard).

    Args:
        source: A ``LatentPolicyModule`` (its ``model`` is ``q``, ``pi`` is ``π``) or a ``(q, π, tokenizer)`` tuple.
        dataset: A data source string or a ``datasets.Dataset``.
        out_dir: Output directory: the merged dataset goes to ``out_dir/data``, finished shards to ``out_dir/_shards``.
        text_field: Field of the traces.
        id_field: Field of record ids (default: the record index).
        shard_size: Records per shard (the unit of resumption).
        batch_size: Traces rolled out together.
        config: Sampling / choice settings.
        seed: Seed; shard ``i`` uses ``seed + i``, so a resumed run writes what an uninterrupted one would.
        max_records: Annotate only the first records.
        progress: Show a tqdm progress bar.
    """
    cfg = config or AnnotationConfig()
    q, pi, tokenizer, fmt = _models(source)
    vocab = LatentVocab.from_tokenizer(tokenizer, fmt)
    records = load_trace_records(dataset, text_field, id_field, max_records)
    out, shard_root = Path(out_dir), Path(out_dir) / "_shards"
    shard_root.mkdir(parents=True, exist_ok=True)
    starts = range(0, len(records), shard_size)
    bar = tqdm(total=len(records), desc="annotate", disable=not progress)
    for index, start in enumerate(starts):
        path = shard_root / f"shard-{index:05d}"
        chunk = records[start : start + shard_size]
        if not (path / "dataset_info.json").exists():
            generator = torch.Generator().manual_seed(seed + index)
            rows = [
                row
                for i in range(0, len(chunk), batch_size)
                for row in _annotate_rows(q, pi, vocab, chunk[i : i + batch_size], cfg, generator)
            ]
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


def _annotate_rows(q, pi, vocab, rows, cfg, generator) -> list[dict[str, Any]]:
    ids = [r["id"] for r in rows]
    try:
        return annotate_batch(q, pi, vocab, [r["text"] for r in rows], ids, cfg, generator)
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
