"""Expert code traces for next-token prediction (the NTP baseline and RA3's M-step).

Records come from any source :func:`ra3_lightning.data.sources.load_records` reads; the text field is validated
(missing / non-string / empty / undecodable records raise :class:`DataError` naming source, record and field),
tokenised with the module's tokenizer, and either **packed** or padded.

Packing and document boundaries: documents are tokenised, each followed by EOS, concatenated and cut into blocks of
exactly ``max_length`` tokens. ``position_ids`` restart at 0 at every document start (and at every block start), so
each document sees the positions it would see alone. ``transformers`` turns those restarts into per-document
attention (``masking_utils.find_packed_sequence_indices``) when it gets no 2-D ``attention_mask`` and no KV cache,
which is how :func:`ra3_lightning.modules.ntp.lm_inputs` calls the model: packed documents do not attend to each
other. Packing runs over chunks of ``pack_chunk_docs`` documents; only the last block of each chunk can be short,
so padding waste is at most one block per chunk. A document longer than a block continues in the next block:
nothing is truncated or dropped.

Without packing, each document (+EOS) is split into pieces of at most ``max_length`` tokens and batches are padded
to their longest member (right padding; ``labels`` are -100 there).

Batches are dicts of ``input_ids`` / ``labels`` / ``attention_mask`` / ``position_ids`` (Long ``[B, L]``) and
``rationale_mask`` (Bool ``[B, L]``, True on tokens of inserted rationales when ``rationale_spans_field`` is set).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import datasets
import lightning as L
import torch
from torch.utils.data import DataLoader, RandomSampler
from transformers import PreTrainedTokenizerBase

from ra3_lightning.data.sources import DataError, check_text_field, load_records


class TraceDataModule(L.LightningDataModule):
    """Code traces from a hub id, a local ``.jsonl``/``.jsonl.gz``/``.parquet``/arrow source or ``synthetic:<split>``.

    Args:
        path: The data source (see :mod:`ra3_lightning.data.sources`).
        text_field: Field holding the code.
        max_length: Tokens per training sequence (block length when packing).
        batch_size: Sequences per batch (per device).
        packing: Pack documents into full blocks (no padding waste) instead of padding each batch.
        val_size: Validation records: a fraction of the corpus (< 1) or a count (>= 1). The split is deterministic
            given ``seed``.
        num_workers: DataLoader worker processes.
        seed: Seed of the train/val split and, unless ``shuffle_seed`` is given, of the per-epoch shuffle.
        id_field: Optional record id field, used in error messages.
        rationale_spans_field: Field with ``[start, end)`` character spans of inserted rationales (annotated
            traces from the E-step); tokens inside them get ``rationale_mask = True``.
        max_records: Read at most this many records (before the split).
        split: Split of a hub dataset or saved ``DatasetDict`` to read.
        pack_chunk_docs: Documents packed together per chunk (memory / padding trade-off, see module docstring).
        shuffle_seed: Seed of the per-epoch shuffle of the training blocks only (``None``: ``seed``). Changes the
            batch order and nothing else: the split, the packing and the validation set stay those of ``seed``.
            Under a distributed strategy Lightning swaps in its own sampler (seeded by ``seed_everything``) and
            neither seed orders the batches.
    """

    def __init__(
        self,
        path: str,
        text_field: str = "text",
        max_length: int = 512,
        batch_size: int = 8,
        packing: bool = True,
        val_size: float = 0.05,
        num_workers: int = 0,
        seed: int = 0,
        id_field: str | None = None,
        rationale_spans_field: str | None = None,
        max_records: int | None = None,
        split: str = "train",
        pack_chunk_docs: int = 10_000,
        shuffle_seed: int | None = None,
    ) -> None:
        super().__init__()
        if max_length < 2:
            raise ValueError(f"max_length={max_length} must be >= 2")
        if val_size < 0:
            raise ValueError(f"val_size={val_size} must be >= 0 (a fraction < 1 or a record count)")
        self.path, self.text_field, self.max_length, self.batch_size = path, text_field, max_length, batch_size
        self.packing, self.val_size, self.num_workers, self.seed = packing, val_size, num_workers, seed
        self.id_field, self.rationale_spans_field = id_field, rationale_spans_field
        self.max_records, self.split, self.pack_chunk_docs = max_records, split, pack_chunk_docs
        self.shuffle_seed = shuffle_seed
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.train_set: datasets.Dataset | None = None
        self.val_set: datasets.Dataset | None = None

    def connect(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """Give the tokenizer explicitly (outside a Trainer); inside one it comes from the LightningModule."""
        self.tokenizer = tokenizer

    # ------------------------------------------------------------------------------------------- setup
    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        if self.tokenizer is None:
            self.tokenizer = self.trainer.lightning_module.tokenizer
        records = self.load_validated()
        train, val = split_records(records, self.val_size, self.seed)
        self.train_set, self.val_set = self.prepare(train), self.prepare(val) if len(val) else None

    def load_validated(self) -> datasets.Dataset:
        """Read the source and validate the text (and spans) field of every record."""
        columns = [c for c in (self.text_field, self.id_field, self.rationale_spans_field) if c]
        ds = load_records(self.path, self.split, columns=columns, text_columns=[self.text_field])
        if self.max_records is not None:
            ds = ds.select(range(min(self.max_records, len(ds))))
        if len(ds) == 0:
            raise DataError(f"{self.path}: no records")
        check_text_field(ds, self.text_field, self.path)
        if self.rationale_spans_field is not None:
            check_spans_field(ds, self.rationale_spans_field, self.text_field, self.path)
        return ds

    def prepare(self, ds: datasets.Dataset) -> datasets.Dataset:
        """Tokenise, then pack into blocks or split into pieces of at most ``max_length`` tokens."""
        tokens = ds.map(
            self._tokenize, batched=True, remove_columns=ds.column_names, desc="tokenize", load_from_cache_file=True
        )
        shape = pack_documents if self.packing else split_documents
        return tokens.map(
            shape,
            batched=True,
            batch_size=self.pack_chunk_docs,
            remove_columns=tokens.column_names,
            fn_kwargs={"max_length": self.max_length},
            desc="pack" if self.packing else "split",
        ).with_format("torch")

    def _tokenize(self, batch: dict[str, list]) -> dict[str, list]:
        texts = batch[self.text_field]
        spans = batch[self.rationale_spans_field] if self.rationale_spans_field else [[] for _ in texts]
        enc = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=bool(self.rationale_spans_field))
        eos = self.tokenizer.eos_token_id
        out: dict[str, list] = {"input_ids": [], "rationale": []}
        for i, ids in enumerate(enc["input_ids"]):
            offsets = enc["offset_mapping"][i] if self.rationale_spans_field else [(0, 0)] * len(ids)
            out["input_ids"].append(list(ids) + [eos])
            out["rationale"].append([in_spans(o, spans[i]) for o in offsets] + [False])
        return out

    # ------------------------------------------------------------------------------------------- loaders
    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val_set, shuffle=False) if self.val_set is not None else []

    def _loader(self, ds: datasets.Dataset, shuffle: bool) -> DataLoader:
        order_seed = self.seed if self.shuffle_seed is None else self.shuffle_seed
        sampler = EpochSeededSampler(ds, seed=order_seed) if shuffle else None
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=PadCollator(self.tokenizer.pad_token_id),
            persistent_workers=self.num_workers > 0,
        )


def training_tokens(dm: TraceDataModule, batches: int) -> dict[str, int]:
    """Tokens of the first ``batches`` training batches of a set-up ``dm``, in the order a one-device ``Trainer``
    draws them (it calls the sampler's ``set_epoch`` at every epoch start): ``total`` (non-padding), ``rationale``
    (inside ``rationale_spans_field`` spans) and ``code`` (the rest, EOS included)."""
    loader = dm.train_dataloader()
    if len(loader) == 0:
        raise ValueError("the training set has no batches")
    total = rationale = 0
    for batch in itertools.islice(_epochs(loader), batches):
        real = batch["attention_mask"].bool()  # [B, L]
        total += int(real.sum())
        rationale += int((batch["rationale_mask"] & real).sum())
    return {"total": total, "rationale": rationale, "code": total - rationale}


def _epochs(loader: DataLoader) -> Iterator[dict[str, torch.Tensor]]:
    for epoch in itertools.count():
        loader.sampler.set_epoch(epoch)
        yield from loader


class EpochSeededSampler(RandomSampler):
    """A random permutation that depends only on ``(seed, epoch)`` — so a resumed run sees the same order.

    Lightning calls ``set_epoch`` at every epoch start; under a distributed strategy it swaps this for a
    ``DistributedSampler`` (which is seeded per epoch in the same way).
    """

    def __init__(self, data_source: Any, seed: int = 0) -> None:
        super().__init__(data_source, generator=torch.Generator())
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        self.generator.manual_seed(self.seed * 1_000_003 + self.epoch)
        return super().__iter__()


class PadCollator:
    """Stack examples into a batch, right-padding to the longest; ``labels`` are -100 on padding."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        length = max(len(e["input_ids"]) for e in examples)
        batch = {
            "input_ids": _pad([e["input_ids"] for e in examples], length, self.pad_token_id),
            "position_ids": _pad([e["position_ids"] for e in examples], length, 0),
            "rationale_mask": _pad([e["rationale"] for e in examples], length, False).bool(),
            "attention_mask": _pad([torch.ones_like(e["input_ids"]) for e in examples], length, 0),
        }
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        return batch


def _pad(rows: list[torch.Tensor], length: int, value: int | bool) -> torch.Tensor:
    out = torch.full((len(rows), length), value, dtype=rows[0].dtype)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def pack_documents(batch: dict[str, list], max_length: int) -> dict[str, list]:
    """Concatenate tokenised documents and cut them into blocks of ``max_length`` (the last may be shorter).

    ``position_ids`` restart at every document start and at every block start.
    """
    flat_ids, flat_rat, flat_pos = [], [], []
    for ids, rat in zip(batch["input_ids"], batch["rationale"], strict=True):
        flat_ids.extend(ids)
        flat_rat.extend(rat)
        flat_pos.extend(range(len(ids)))
    out: dict[str, list] = {"input_ids": [], "rationale": [], "position_ids": []}
    for start in range(0, len(flat_ids), max_length):
        pos = flat_pos[start : start + max_length]
        offset = pos[0]  # a document continuing from the previous block restarts at position 0
        first_reset = next((i for i, p in enumerate(pos) if p == 0), len(pos))
        out["input_ids"].append(flat_ids[start : start + max_length])
        out["rationale"].append(flat_rat[start : start + max_length])
        out["position_ids"].append([p - offset for p in pos[:first_reset]] + pos[first_reset:])
    return out


def split_documents(batch: dict[str, list], max_length: int) -> dict[str, list]:
    """One example per document, documents longer than ``max_length`` split into consecutive pieces."""
    out: dict[str, list] = {"input_ids": [], "rationale": [], "position_ids": []}
    for ids, rat in zip(batch["input_ids"], batch["rationale"], strict=True):
        for start in range(0, len(ids), max_length):
            piece = ids[start : start + max_length]
            out["input_ids"].append(piece)
            out["rationale"].append(rat[start : start + max_length])
            out["position_ids"].append(list(range(len(piece))))
    return out


def split_records(ds: datasets.Dataset, val_size: float, seed: int) -> tuple[datasets.Dataset, datasets.Dataset]:
    """A deterministic train/val split: ``val_size`` is a fraction (< 1) or a record count (>= 1)."""
    n_val = int(round(val_size * len(ds))) if val_size < 1 else int(val_size)
    if n_val >= len(ds):
        raise ValueError(f"val_size={val_size} leaves no training records out of {len(ds)}")
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed)).tolist()
    return ds.select(sorted(order[n_val:])), ds.select(sorted(order[:n_val]))


def in_spans(offset: tuple[int, int], spans: list[list[int]]) -> bool:
    """Whether the token covering characters ``offset = (start, end)`` overlaps any ``[start, end)`` span."""
    start, end = offset
    return any(start < s_end and end > s_start for s_start, s_end in spans)


def check_spans_field(ds: datasets.Dataset, field: str, text_field: str, source: str) -> None:
    """Raise :class:`DataError` for a record whose spans are missing, malformed or out of the text's range."""
    if field not in ds.column_names:
        raise DataError(f"{source}: records have no field {field!r} (fields: {', '.join(ds.column_names)})")
    for index, (spans, text) in enumerate(zip(ds[field], ds[text_field], strict=True)):
        ok = isinstance(spans, list) and all(
            isinstance(s, (list, tuple)) and len(s) == 2 and 0 <= s[0] <= s[1] <= len(text) for s in spans
        )
        if not ok:
            raise DataError(f"{source}: record {index}: field {field!r} must be a list of [start, end) spans in text")
