"""Raw trace texts for the RA3 E-step: batches of whole documents, not packed token blocks.

The E-step rolls out latent annotations over complete traces line by line, so it needs the texts themselves
(and their ids, for annotation and error messages). Batches are ``{"id": list[str], "text": list[str]}``.
"""

from __future__ import annotations

import datasets
import lightning as L
import torch
from torch.utils.data import DataLoader

from ra3_lightning.data.sources import DataError, check_text_field, load_records


class TextDataModule(L.LightningDataModule):
    """Whole trace texts from any source :func:`ra3_lightning.data.sources.load_records` reads.

    Args:
        path: The data source (local ``.jsonl``/``.parquet``/arrow, hub id, or ``synthetic:<split>?n=..``).
        text_field: Field holding the code.
        id_field: Field holding a record id (defaults to the record index as a string).
        batch_size: Traces per batch (each is rolled out ``num_generations`` times by the E-step).
        max_records: Read at most this many records.
        shuffle: Shuffle the traces each epoch (seeded by ``seed`` and the epoch).
        seed: Shuffle seed.
        split: Split of a hub dataset or saved ``DatasetDict``.
    """

    def __init__(
        self,
        path: str,
        text_field: str = "text",
        id_field: str | None = None,
        batch_size: int = 4,
        max_records: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        split: str = "train",
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        self.path, self.text_field, self.id_field, self.batch_size = path, text_field, id_field, batch_size
        self.max_records, self.shuffle, self.seed, self.split = max_records, shuffle, seed, split
        self.records: list[dict[str, str]] | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.records is None:
            self.records = load_trace_records(self.path, self.text_field, self.id_field, self.max_records, self.split)

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(
            self.seed + (self.trainer.current_epoch if self.trainer is not None else 0)
        )
        return DataLoader(
            self.records,
            batch_size=self.batch_size,
            shuffle=self.shuffle,
            generator=generator,
            collate_fn=collate_texts,
        )

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.records, batch_size=self.batch_size, shuffle=False, collate_fn=collate_texts)


def collate_texts(rows: list[dict[str, str]]) -> dict[str, list[str]]:
    """``[{"id", "text"}, ...]`` -> ``{"id": [...], "text": [...]}``."""
    return {"id": [r["id"] for r in rows], "text": [r["text"] for r in rows]}


def load_trace_records(
    source: str | datasets.Dataset,
    text_field: str = "text",
    id_field: str | None = None,
    max_records: int | None = None,
    split: str = "train",
) -> list[dict[str, str]]:
    """Validated ``{"id", "text"}`` records of ``source`` (raises :class:`DataError` naming the bad record)."""
    ds = source if isinstance(source, datasets.Dataset) else load_records(source, split)
    if max_records is not None:
        ds = ds.select(range(min(max_records, len(ds))))
    name = source if isinstance(source, str) else "dataset"
    check_text_field(ds, text_field, name)
    if id_field is not None and id_field not in ds.column_names:
        raise DataError(f"{name}: records have no id field {id_field!r} (fields: {', '.join(ds.column_names)})")
    ids = [str(i) for i in (ds[id_field] if id_field else range(len(ds)))]
    return [{"id": i, "text": t} for i, t in zip(ids, ds[text_field], strict=True)]
