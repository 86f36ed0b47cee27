"""Batches of coding-task prompts for RLVR, with prompt templates a user can override, resumable mid-epoch.

Tasks come from any source :func:`ra3_lightning.data.tasks.load_tasks` reads (HumanEval / MBPP / LiveCodeBench
schemas, local files, ``synthetic:rlvr``). A batch (:class:`TaskBatch`) holds ``B`` *prompts*; the module samples
``G`` completions per prompt itself, so all ``G`` samples of a prompt are generated, scored and normalised on
one rank with one group id (the distributed sampler splits prompts, never samples).

Prompt templates (:data:`PROMPT_TEMPLATES`, chosen by name, or override :meth:`TaskDataModule.format_prompt`):

* ``"plain"`` (the default) — the task's prompt as a completion prompt: base models continue the function;
* ``"chat"`` — the tokenizer's chat template around ``chat_instruction`` + the prompt: use it for instruct models;
* ``"auto"`` — ``"chat"`` if the tokenizer has a chat template, else ``"plain"``. Not a base/instruct detector: base
  checkpoints often ship a chat template too (Qwen2.5 and Qwen2.5-Coder base models do), so ``"auto"`` gives them
  chat prompts; say ``"plain"`` or ``"chat"`` for a real model.

Resuming: the data module's ``state_dict`` records the epoch and how many batches of it the *training step* has
consumed (updated in ``on_after_batch_transfer``, i.e. after Lightning's one-batch prefetch, so the prefetched
batch is not counted). ``train_dataloader`` then skips the consumed batches of the same seeded permutation: no
prompt is replayed or skipped after a restart from a checkpoint.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, Sampler
from transformers import PreTrainedTokenizerBase

from ra3_lightning.data.sources import DataError
from ra3_lightning.data.tasks import CodingTask, TaskKind, load_tasks

log = logging.getLogger(__name__)

TemplateName = Literal["auto", "plain", "chat"]
DEFAULT_CHAT_INSTRUCTION = "Complete the following Python code. Answer with the code only.\n\n"


def plain_prompt(task: CodingTask, tokenizer: PreTrainedTokenizerBase, instruction: str) -> str:
    """The task prompt as-is: a base model continues it."""
    return task.prompt


def chat_prompt(task: CodingTask, tokenizer: PreTrainedTokenizerBase, instruction: str) -> str:
    """One user turn (``instruction + prompt``) through the tokenizer's chat template, ready for the answer."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("prompt_template='chat' but the tokenizer has no chat_template; use 'plain' or 'auto'")
    messages = [{"role": "user", "content": instruction + task.prompt}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def auto_prompt(task: CodingTask, tokenizer: PreTrainedTokenizerBase, instruction: str) -> str:
    """``chat_prompt`` when the tokenizer has a chat template, otherwise ``plain_prompt``."""
    template = chat_prompt if getattr(tokenizer, "chat_template", None) else plain_prompt
    return template(task, tokenizer, instruction)


PROMPT_TEMPLATES: dict[str, Callable[[CodingTask, PreTrainedTokenizerBase, str], str]] = {
    "auto": auto_prompt,
    "plain": plain_prompt,
    "chat": chat_prompt,
}


@dataclass
class TaskBatch:
    """``B`` tasks and their left-padded prompt tokens. ``index`` = position of each task in the epoch order."""

    tasks: list[CodingTask]
    prompts: list[str]
    prompt_ids: Tensor  # [B, P] left-padded
    prompt_mask: Tensor  # [B, P]
    batch_index: int  # which batch of the epoch (for resuming)

    def to(self, device: Any, **kwargs: Any) -> TaskBatch:
        """Move the tensors (Lightning's batch transfer calls this)."""
        return replace(self, prompt_ids=self.prompt_ids.to(device), prompt_mask=self.prompt_mask.to(device))

    def __len__(self) -> int:
        return len(self.tasks)


class ResumableBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of a per-epoch seeded permutation of this rank's share of the tasks, from batch ``start`` on.

    Yields lists of ``(batch_index, task_index)`` so each batch knows its position in the epoch. Prompts are split
    across ranks by striding the permutation (rank ``r`` takes items ``r, r + W, ...``); the last partial round is
    dropped so every rank runs the same number of steps. ``start`` applies to the next pass only (a resumed epoch).
    """

    def __init__(self, n: int, batch_size: int, seed: int, shuffle: bool, rank: int = 0, world_size: int = 1):
        self.n, self.batch_size, self.seed, self.shuffle = n, batch_size, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int) -> None:
        """Called before each pass; a new epoch starts from its first batch."""
        if epoch != self.epoch:
            self.epoch, self.start = epoch, 0

    def __len__(self) -> int:
        return (self.n // self.world_size) // self.batch_size

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        else:
            order = list(range(self.n))
        mine = order[self.rank : (self.n // self.world_size) * self.world_size : self.world_size]
        start, self.start = self.start, 0
        for b in range(start, len(self)):
            yield [(b, i) for i in mine[b * self.batch_size : (b + 1) * self.batch_size]]


def val_batches(n: int, batch_size: int, rank: int, world_size: int) -> list[list[tuple[int, int]]]:
    """This rank's validation batches: every task on exactly one rank (``PassAtK`` concatenates across ranks),
    and the same number of batches on every rank (padded with empty batches) so collective generation under
    FSDP2 never waits for a rank that has finished."""
    mine = list(range(rank, n, world_size))
    per_rank = math.ceil(math.ceil(n / world_size) / batch_size)
    return [[(b, i) for i in mine[b * batch_size : (b + 1) * batch_size]] for b in range(per_rank)]


class _PromptBatches(IterableDataset):
    """Yields collated :class:`TaskBatch` es in the order of ``batches`` (a batch sampler or a list of batches).

    An iterable dataset, so Lightning injects no distributed sampler: ranks are split by the batch sampler, which
    keeps every group on one rank. Before each pass the epoch is read from ``epoch_fn`` (Lightning calls
    ``set_epoch`` only on a loader's own sampler, never on a custom batch sampler).
    """

    def __init__(
        self,
        batches: Any,
        tasks: list[CodingTask],
        collate: Callable[[list[CodingTask], int], TaskBatch],
        epoch_fn: Callable[[], int] | None = None,
    ) -> None:
        self.batches, self.tasks, self.collate, self.epoch_fn = batches, tasks, collate, epoch_fn

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[TaskBatch]:
        if self.epoch_fn is not None:
            self.batches.set_epoch(self.epoch_fn())
        for items in self.batches:
            yield self.collate([self.tasks[i] for _, i in items], items[0][0] if items else -1)


class TaskDataModule(L.LightningDataModule):
    """Coding tasks as prompt batches for RLVR (train), pass@k (validation) and ``ra3 test`` (the tasks of ``path``).

    Args:
        path: Training tasks (the evaluated tasks under ``ra3 test``): hub id, local ``.jsonl``/``.jsonl.gz``/
            ``.parquet``, or ``synthetic:rlvr?n=...``.
        kind: Task schema (``"auto"`` detects HumanEval / MBPP / LiveCodeBench from the columns).
        split: Split of a hub dataset.
        val_path: Held-out tasks for pass@k validation (``None``: no validation).
        val_kind: Schema of ``val_path``.
        val_split: Split of ``val_path`` on the hub.
        batch_size: Prompts per training step per rank (each is sampled ``num_generations`` times by the module).
        val_batch_size: Prompts per validation batch (default ``batch_size``).
        prompt_template: ``"plain"`` (base models: continue the prompt) | ``"chat"`` (instruct models: the
            tokenizer's chat template) | ``"auto"`` (``"chat"`` if the tokenizer has a chat template, which base
            Qwen2.5 tokenizers have too); see the module docstring.
        chat_instruction: Text placed before the task prompt in the chat user turn.
        max_prompt_length: Prompts longer than this (tokens) raise a :class:`DataError` naming the task, or are
            dropped with a warning when ``drop_overlong`` is set.
        drop_overlong: Drop overlong prompts instead of raising.
        max_tasks: Use at most this many training tasks.
        max_val_tasks: Use at most this many validation tasks.
        shuffle: Shuffle training prompts each epoch (seeded).
        seed: Seed of the shuffle.
    """

    def __init__(
        self,
        path: str,
        kind: TaskKind = "auto",
        split: str = "test",
        val_path: str | None = None,
        val_kind: TaskKind = "auto",
        val_split: str = "test",
        batch_size: int = 8,
        val_batch_size: int | None = None,
        prompt_template: TemplateName = "plain",
        chat_instruction: str = DEFAULT_CHAT_INSTRUCTION,
        max_prompt_length: int = 1024,
        drop_overlong: bool = False,
        max_tasks: int | None = None,
        max_val_tasks: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if prompt_template not in PROMPT_TEMPLATES:
            raise ValueError(f"unknown prompt_template {prompt_template!r}; choose one of {sorted(PROMPT_TEMPLATES)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
        self.path, self.kind, self.split = path, kind, split
        self.val_path, self.val_kind, self.val_split = val_path, val_kind, val_split
        self.batch_size, self.val_batch_size = batch_size, val_batch_size or batch_size
        self.prompt_template, self.chat_instruction = prompt_template, chat_instruction
        self.max_prompt_length, self.drop_overlong = max_prompt_length, drop_overlong
        self.max_tasks, self.max_val_tasks = max_tasks, max_val_tasks
        self.shuffle, self.seed = shuffle, seed
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.train_tasks: list[CodingTask] = []
        self.val_tasks: list[CodingTask] = []
        self.test_tasks: list[CodingTask] = []
        self._epoch, self._consumed = 0, 0

    # ----------------------------------------------------------------------------------------- hooks
    def format_prompt(self, task: CodingTask) -> str:
        """Hook: the prompt text for ``task`` (override in a subclass for a custom template)."""
        return PROMPT_TEMPLATES[self.prompt_template](task, self.tokenizer, self.chat_instruction)

    # ----------------------------------------------------------------------------------------- setup
    def connect(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """Use ``tokenizer`` outside a Trainer (inside one, the LightningModule's tokenizer is taken)."""
        self.tokenizer = tokenizer

    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is None:
            self.tokenizer = self.trainer.lightning_module.tokenizer
        if not self.train_tasks and stage in (None, "fit"):
            self.train_tasks = self._load(self.path, self.kind, self.split, self.max_tasks)
        if not self.val_tasks and self.val_path is not None:
            self.val_tasks = self._load(self.val_path, self.val_kind, self.val_split, self.max_val_tasks)
        if not self.test_tasks and stage == "test":
            self.test_tasks = self._load(self.path, self.kind, self.split, self.max_tasks)

    def _load(self, path: str, kind: TaskKind, split: str, limit: int | None) -> list[CodingTask]:
        tasks = load_tasks(path, kind=kind, split=split)[:limit]
        kept = [t for t in tasks if self._prompt_fits(t, path)]
        if not kept:
            raise DataError(f"{path}: no task has a prompt of at most max_prompt_length={self.max_prompt_length}")
        return kept

    def _prompt_fits(self, task: CodingTask, path: str) -> bool:
        n = len(self.tokenizer(self.format_prompt(task), add_special_tokens=False)["input_ids"])
        if n <= self.max_prompt_length:
            return True
        message = f"{path}: task {task.task_id!r} field 'prompt' has {n} tokens > max_prompt_length"
        if not self.drop_overlong:
            raise DataError(f"{message}={self.max_prompt_length} (raise it or set drop_overlong)")
        log.warning("%s; dropped", message)
        return False

    # ----------------------------------------------------------------------------------------- loaders
    def _rank(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank()
        sampler = ResumableBatchSampler(len(self.train_tasks), self.batch_size, self.seed, self.shuffle, rank, world)
        if len(sampler) == 0:
            raise DataError(f"{self.path}: {len(self.train_tasks)} tasks < batch_size * world_size")
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        resumed = self._epoch == epoch and self._consumed < len(sampler)
        sampler.epoch, sampler.start = epoch, self._consumed if resumed else 0
        return DataLoader(_PromptBatches(sampler, self.train_tasks, self.collate, self._current_epoch), batch_size=None)

    def val_dataloader(self) -> DataLoader | list:
        if not self.val_tasks:
            return []
        rank, world = self._rank()
        batches = val_batches(len(self.val_tasks), self.val_batch_size, rank, world)
        return DataLoader(_PromptBatches(batches, self.val_tasks, self.collate), batch_size=None)

    def test_dataloader(self) -> DataLoader:
        """``ra3 test``: every task of ``path`` (the benchmark a test config names), batched like validation."""
        rank, world = self._rank()
        batches = val_batches(len(self.test_tasks), self.val_batch_size, rank, world)
        return DataLoader(_PromptBatches(batches, self.test_tasks, self.collate), batch_size=None)

    def _current_epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer is not None else 0

    def collate(self, tasks: list[CodingTask], batch_index: int = 0) -> TaskBatch:
        """Format and left-pad-tokenise the prompts of ``tasks`` (an empty list gives an empty batch)."""
        if not tasks:
            empty = torch.zeros(0, 0, dtype=torch.long)
            return TaskBatch([], [], empty, empty.clone(), batch_index)
        prompts = [self.format_prompt(t) for t in tasks]
        enc = self._tokenize_left(prompts)
        return TaskBatch(tasks, prompts, enc["input_ids"], enc["attention_mask"], batch_index)

    def _tokenize_left(self, prompts: list[str]) -> dict[str, Tensor]:
        side = self.tokenizer.padding_side
        self.tokenizer.padding_side = "left"
        try:
            return self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        finally:
            self.tokenizer.padding_side = side

    # ----------------------------------------------------------------------------------------- resuming
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, TaskBatch) and self.trainer is not None and self.trainer.training:
            self._epoch, self._consumed = self.trainer.current_epoch, batch.batch_index + 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self._epoch, "consumed": self._consumed, "seed": self.seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("seed", self.seed) != self.seed:
            log.warning("resuming with seed %s (checkpoint: %s): the prompt order changes", self.seed, state_dict)
        self._epoch, self._consumed = state_dict["epoch"], state_dict["consumed"]
