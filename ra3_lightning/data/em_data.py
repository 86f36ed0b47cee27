"""Data for RA3's EM loop inside one ``ra3 fit``: raw traces for the E-phase, annotated traces for the M-phase.

The two phases need different batches (whole trace texts vs. packed token blocks), the M-phase data only exists
after the annotation pass of its iteration, and a resumed run must continue with exactly the batches an
uninterrupted run would have seen. So batches are *addressed*, not streamed: the batch of a step is a pure
function of ``(iteration, phase, step_in_phase, rank)`` (:meth:`EMDataModule.e_batch`, :meth:`EMDataModule.m_batch`),
and the Trainer's train loader only ticks (:class:`PhaseTicker`). Nothing to fast-forward on resume, no prefetched
batch of the wrong phase at a phase switch, and every rank takes its own stride of the same order.

Iteration ``k`` works on a slice of ``records_per_iteration`` training records (wrapping around the corpus, in a
seeded order; default: the whole training split every iteration): its E-phase samples batches from the slice, its
annotation pass annotates the whole slice (each rank a stride of it), its M-phase trains on the packed annotation.

The M-phases' batch order (``m_order``) is by default the NTP arm's: the annotated traces are packed in corpus order,
and M-step ``s``, counted over all M-phases, takes batch ``s`` of the stream a
:class:`~ra3_lightning.data.traces.TraceDataModule` with the same seed and batch size draws (one seeded shuffle of
the blocks per epoch, epochs running on across phases, the last batch of an epoch short). An annotation without a
single rationale therefore trains on exactly the NTP arm's batches, so the two arms differ in their rationales and
nothing else.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import datasets
import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset

from ra3_lightning.data.texts import load_trace_records
from ra3_lightning.data.traces import PadCollator, TraceDataModule
from ra3_lightning.em_schedule import EMSchedule


class PhaseTicker(IterableDataset):
    """The Trainer's batches in the EM loop: the global steps left in the current EM phase, then the epoch ends.

    The module fetches each step's real data itself; one EM phase is one Lightning epoch.
    """

    def __init__(self, steps: Callable[[], range]) -> None:
        self.steps = steps

    def __iter__(self) -> Iterator[int]:
        return iter(self.steps())


class EMDataModule(L.LightningDataModule):
    """Expert traces for :class:`ra3_lightning.modules.RA3Module`.

    :class:`ra3_lightning.callbacks.EMScheduler` hands it the schedule (:meth:`use_em_schedule`), so that each train
    epoch ends with its EM phase.

    Args:
        path: The trace corpus (any source :mod:`ra3_lightning.data.sources` reads, e.g. ``synthetic:midtrain``).
        text_field: Field holding the code.
        id_field: Field holding record ids (default: the record index).
        e_batch_size: Traces per E-step batch (per device); each is rolled out ``num_generations`` times.
        m_batch_size: Packed sequences per M-step batch (per device).
        max_length: Tokens per packed M-step sequence.
        records_per_iteration: Training records each EM iteration works on (``None``: all of them).
        val_size: Raw validation traces (fraction < 1 or count), for the M-step loss on un-annotated code.
        seed: Seed of the split, of the E-step batches and, unless ``shuffle_seed`` is given, of the M-phases' order.
        max_records: Read at most this many records.
        split: Split of a hub dataset or saved ``DatasetDict``.
        m_order: The M-phases' batches. ``"ntp"`` (default): the NTP arm's stream over the annotated traces, packed
            in corpus order (module docstring; on one device and with every iteration annotating the whole split,
            no rationale = the NTP arm's batches exactly). ``"per_phase"``: each iteration's annotation packed in
            annotation order, every M-phase drawing from its own seeded shuffles from epoch 0, no short batch (the
            order of releases before this option; it gives the arms different batch streams).
        shuffle_seed: Seed of the M-phases' batch order only (``None``: ``seed``); the split, the packing and the
            validation set stay those of ``seed``. With ``m_order="ntp"`` the arms share one stream when this equals
            the NTP arm's ``TraceDataModule.shuffle_seed``.
    """

    def __init__(
        self,
        path: str,
        text_field: str = "text",
        id_field: str | None = None,
        e_batch_size: int = 4,
        m_batch_size: int = 8,
        max_length: int = 512,
        records_per_iteration: int | None = None,
        val_size: float = 0.05,
        seed: int = 0,
        max_records: int | None = None,
        split: str = "train",
        m_order: Literal["ntp", "per_phase"] = "ntp",
        shuffle_seed: int | None = None,
    ) -> None:
        super().__init__()
        if m_order not in ("ntp", "per_phase"):
            raise ValueError(f"m_order={m_order!r} must be 'ntp' or 'per_phase'")
        if min(e_batch_size, m_batch_size) < 1 or (records_per_iteration is not None and records_per_iteration < 1):
            raise ValueError("e_batch_size, m_batch_size and records_per_iteration must be >= 1")
        self.path, self.text_field, self.id_field, self.split = path, text_field, id_field, split
        self.e_batch_size, self.m_batch_size, self.max_length = e_batch_size, m_batch_size, max_length
        self.records_per_iteration, self.val_size, self.seed = records_per_iteration, val_size, seed
        self.max_records, self.m_order = max_records, m_order
        self.order_seed = seed if shuffle_seed is None else shuffle_seed
        self.tokenizer = None
        self.train_records: list[dict[str, str]] = []
        self.val_blocks: datasets.Dataset | None = None
        self.m_blocks: dict[int, datasets.Dataset] = {}
        self.em_schedule: EMSchedule | None = None

    def use_em_schedule(self, schedule: EMSchedule) -> None:
        self.em_schedule = schedule

    # ------------------------------------------------------------------------------------------- setup
    def connect(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def setup(self, stage: str | None = None) -> None:
        if self.train_records:
            return
        if self.tokenizer is None:
            self.tokenizer = self.trainer.lightning_module.tokenizer
        records = load_trace_records(self.path, self.text_field, self.id_field, self.max_records, self.split)
        n_val = int(round(self.val_size * len(records))) if self.val_size < 1 else int(self.val_size)
        if n_val >= len(records):
            raise ValueError(f"val_size={self.val_size} leaves no training records out of {len(records)}")
        order = _permutation(len(records), self.seed)
        self.train_records = [records[i] for i in sorted(order[n_val:])]
        val = [records[i] for i in sorted(order[:n_val])]
        self.val_blocks = self._packer(spans=False).prepare(datasets.Dataset.from_list(val)) if val else None

    def _packer(self, spans: bool) -> TraceDataModule:
        packer = TraceDataModule(
            self.path,
            "text",
            self.max_length,
            self.m_batch_size,
            rationale_spans_field="rationale_spans" if spans else None,
        )
        packer.connect(self.tokenizer)
        return packer

    def train_dataloader(self) -> DataLoader:
        return DataLoader(PhaseTicker(self._steps_of_current_phase), batch_size=None)

    def _steps_of_current_phase(self) -> range:
        if self.em_schedule is None:
            raise RuntimeError("EMDataModule is driven by the EMScheduler callback: add it to `trainer.callbacks`")
        return self.em_schedule.steps_left_in_phase(self.trainer.global_step)

    # ------------------------------------------------------------------------------------------- addressing
    def iteration_records(self, iteration: int) -> list[dict[str, str]]:
        """The training records EM iteration ``iteration`` works on (a wrapping slice of a seeded order)."""
        n = len(self.train_records)
        size = self.records_per_iteration or n
        order = _permutation(n, self.seed + 1)
        return [self.train_records[order[(iteration * size + i) % n]] for i in range(size)]

    def e_batch(self, iteration: int, step: int, rank: int = 0, world: int = 1) -> dict[str, list[str]]:
        """Trace texts of E-step ``step`` of ``iteration`` on ``rank``: ``{"id": [...], "text": [...]}``."""
        records = self.iteration_records(iteration)
        rows = [records[i] for i in _indices(len(records), self.e_batch_size, step, rank, world, self.seed + iteration)]
        return {"id": [r["id"] for r in rows], "text": [r["text"] for r in rows]}

    def annotation_records(self, iteration: int, rank: int = 0, world: int = 1) -> list[dict[str, str]]:
        """This rank's stride of the records to annotate in ``iteration``."""
        return self.iteration_records(iteration)[rank::world]

    def load_annotated(self, iteration: int, directories: list[Path]) -> datasets.Dataset:
        """Read the annotated traces of ``iteration`` (one directory per rank) and pack them for the M-phase."""
        annotated = datasets.concatenate_datasets([datasets.load_from_disk(str(d)) for d in directories])
        packed = annotated if self.m_order == "per_phase" else self._in_corpus_order(annotated)
        self.m_blocks[iteration] = self._packer(spans=True).prepare(packed)
        return annotated

    def _in_corpus_order(self, annotated: datasets.Dataset) -> datasets.Dataset:
        """``annotated`` sorted as its records stand in the training split (ranks write strides of another order)."""
        position = {r["id"]: i for i, r in enumerate(self.train_records)}
        ids = annotated["id"]
        missing = [i for i in ids if i not in position]
        if missing:
            raise ValueError(f"annotated traces with ids not in the training split: {missing[:5]}")
        return annotated.select(sorted(range(len(ids)), key=lambda row: position[ids[row]]))

    def m_batch(self, iteration: int, step: int, rank: int = 0, world: int = 1) -> dict[str, torch.Tensor]:
        """Packed annotated sequences of M-step ``step`` of ``iteration`` on ``rank``."""
        blocks = self.m_blocks[iteration]
        if self.m_order == "per_phase":
            indices = _indices(len(blocks), self.m_batch_size, step, rank, world, self.order_seed + iteration)
        else:
            if self.em_schedule is None:
                raise RuntimeError("m_order='ntp' counts M-steps across phases: call use_em_schedule first")
            global_step = iteration * self.em_schedule.m_steps + step
            indices = stream_indices(len(blocks), self.m_batch_size, global_step, rank, world, self.order_seed)
        return PadCollator(self.tokenizer.pad_token_id)([blocks[i] for i in indices])

    def val_batches(self, rank: int = 0, world: int = 1) -> Iterator[dict[str, torch.Tensor]]:
        """Packed raw (un-annotated) validation sequences, this rank's stride, in order."""
        if self.val_blocks is None:
            return
        mine = list(range(rank, len(self.val_blocks), world))
        collate = PadCollator(self.tokenizer.pad_token_id)
        for start in range(0, len(mine), self.m_batch_size):
            yield collate([self.val_blocks[i] for i in mine[start : start + self.m_batch_size]])


@functools.lru_cache(maxsize=16)
def _permutation(n: int, seed: int) -> tuple[int, ...]:
    return tuple(torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist())


def _indices(n: int, batch_size: int, step: int, rank: int, world: int, seed: int) -> list[int]:
    """Indices of a batch: consecutive slices of seeded epoch permutations, ranks interleaved, wrapping epochs."""
    first = (step * world + rank) * batch_size
    out = []
    for position in range(first, first + batch_size):
        epoch, offset = divmod(position, n)
        out.append(_permutation(n, seed * 1_000_003 + epoch)[offset])
    return out


def stream_indices(n: int, batch_size: int, step: int, rank: int, world: int, seed: int) -> list[int]:
    """Indices of batch ``step`` of the stream :class:`~ra3_lightning.data.traces.TraceDataModule` draws on one
    device: epoch ``e`` is ``randperm(n)`` seeded ``seed * 1_000_003 + e`` cut into batches of ``batch_size``, the
    last one short. Over ``world`` ranks each epoch's order is padded from its start to a multiple of ``world`` and
    ranks take strides of it (as ``DistributedSampler`` does), so every rank has the same number of batches."""
    per_rank = -(-n // world)  # ceil
    batches_per_epoch = -(-per_rank // batch_size)
    epoch, batch = divmod(step, batches_per_epoch)
    order = _permutation(n, seed * 1_000_003 + epoch)
    first = batch * batch_size  # this rank's positions in the epoch; rank r's p-th is the padded order's r + p*world
    return [order[(rank + p * world) % n] for p in range(first, min(first + batch_size, per_rank))]
