"""``ResumableCheckpoint``: a ``ModelCheckpoint`` whose final ``last.ckpt`` resumes exactly with ``--ckpt_path last``.

Why it exists (Lightning 2.6): when no ``last.ckpt`` was written during a run — e.g. ``max_steps`` is not a
multiple of ``every_n_train_steps`` — ``ModelCheckpoint.on_train_end`` writes it after the fit loop has already
marked the epoch complete. Lightning's restart logic then counts that epoch twice: a run resumed from it starts one
epoch too far (``current_epoch`` off by one, hence a different shuffle order and a different data position). The
same problem is described for NeMo's checkpoint callback (NVIDIA-NeMo issue 6734). This subclass writes ``last``
from ``on_train_batch_end`` of the final training batch instead — the state Lightning's every-N-steps checkpoints
have, which it restores correctly — so the save in ``on_train_end`` never fires. ``tests/test_resume.py`` checks
that N straight steps equal N/2 + stop + resume N/2 with it.

Training stopped for other reasons (``EarlyStopping``, ``max_time``, ``should_stop``) still gets Lightning's
behaviour.

``--ckpt_path last`` with an unreadable ``last.ckpt`` (empty or truncated: a save killed before saves were atomic, a
broken copy) resumes from the newest readable checkpoint in the same directory, with a warning naming both files;
without one it fails naming the unreadable file. (Saves through ``RA3CLI`` are atomic,
:class:`~ra3_lightning.checkpoint_io.AtomicCheckpointIO`.)

``SaveWeightsEvery`` keeps weights-only snapshots every N steps (``ra3 demo`` scores RLVR along its run with them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from ra3_lightning.checkpoint_io import checkpoint_problem, newest_readable_checkpoint
from ra3_lightning.errors import CheckpointError


class ResumableCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` (same arguments) that also writes ``last`` right after the final training batch, and
    resumes ``last`` from the newest readable checkpoint when ``last.ckpt`` is unreadable."""

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.save_last and is_final_batch(trainer) and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    @override
    def _find_last_checkpoints(self, trainer: L.Trainer) -> set[str]:
        """Lightning's candidates for ``ckpt_path="last"``, each unreadable one replaced by the newest readable
        checkpoint beside it (with a warning), or an error naming it when there is none."""
        return {readable_or_fallback(path) for path in super()._find_last_checkpoints(trainer)}


def readable_or_fallback(path: str) -> str:
    """``path`` if it looks like a checkpoint, else the newest readable ``*.ckpt`` in its directory (warning).

    Raises:
        CheckpointError: ``path`` is unreadable and no other checkpoint in its directory is readable.
    """
    problem = checkpoint_problem(path)
    if problem is None:
        return path
    fallback = newest_readable_checkpoint(Path(path).parent, exclude=(path,))
    if fallback is None:
        raise CheckpointError(
            f"{path}: not a readable checkpoint ({problem}), and no other checkpoint in {Path(path).parent} is; "
            "start the run afresh (without --ckpt_path) or give --ckpt_path a readable checkpoint file"
        )
    rank_zero_warn(
        f"{path} is not a readable checkpoint ({problem}); resuming from {fallback}, the newest readable checkpoint "
        "beside it"
    )
    return str(fallback)


def is_final_batch(trainer: L.Trainer) -> bool:
    """Whether the batch that just ended is the last one ``fit`` will run (``max_steps`` or ``max_epochs`` reached)."""
    if trainer.max_steps != -1 and trainer.global_step >= trainer.max_steps:
        return True
    max_epochs = trainer.max_epochs
    last_batch = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
    return max_epochs not in (None, -1) and last_batch and trainer.current_epoch + 1 >= max_epochs


class SaveWeightsEvery(L.Callback):
    """Save the module's weights every ``every`` optimizer steps to ``<dirpath>/<filename>.ckpt``, where
    ``filename`` may hold ``{step}`` (e.g. ``rlvr_ntp_step{step}``): checkpoints to evaluate along a run.

    Unlike ``ModelCheckpoint`` it keeps every file, writes weights only, and never saves at ``max_steps`` (the run's
    own final checkpoint covers that step).
    """

    def __init__(self, every: int, dirpath: str, filename: str = "step{step}") -> None:
        if every < 0:
            raise ValueError(f"every={every} must be >= 0 (0: never save)")
        self.every, self.dirpath, self.filename = every, dirpath, filename

    def path(self, step: int) -> Path:
        return Path(self.dirpath) / f"{self.filename.format(step=step)}.ckpt"

    @override
    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        step = trainer.global_step
        if self.every and step % self.every == 0 and step < trainer.max_steps:
            self.path(step).parent.mkdir(parents=True, exist_ok=True)
            trainer.save_checkpoint(str(self.path(step)), weights_only=True)
