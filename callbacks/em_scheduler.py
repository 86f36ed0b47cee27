"""``EMScheduler``: RA3's EM loop — E-phase, annotation, M-phase, ``iterations`` times — inside one ``ra3 fit``.

The schedule is a pure function of the global step (:meth:`EMScheduler.phase_at`): iteration ``k`` owns the
optimizer steps ``[k·(e+m), (k+1)·(e+m))``, the first ``e_steps`` of them E-phase (train the latent policy ``q``
against the frozen model ``π``), the rest M-phase (next-token prediction of ``π`` on the traces ``q`` annotated).
Annotation is not a step: it runs once between the last E-step and the first M-step of an iteration. Each phase
is one Lightning epoch (the EM data module's train loader ends with the phase), so per-step metrics of one phase
never linger in the logs of the next.

The hooks are thin. The module does the work through four methods (see :class:`EMModule`); the callback only
decides *when*, remembers which iterations' annotation is complete, and saves a checkpoint right after each
annotation so that a killed run never redoes finished work. Its ``state_dict`` holds the iteration, the phase,
the steps done in the phase and the completed annotations, so ``--ckpt_path last`` continues in the same place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import lightning as L
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

Phase = Literal["E", "M"]


@dataclass(frozen=True)
class EMPosition:
    """Where global step ``step`` falls in the EM schedule."""

    iteration: int
    phase: Phase
    step_in_phase: int


@runtime_checkable
class EMModule(Protocol):
    """What a LightningModule must offer to be driven by :class:`EMScheduler` (``RA3Module`` does)."""

    def begin_e_phase(self, iteration: int, fresh: bool) -> None: ...

    def annotate_iteration(self, iteration: int) -> str: ...

    def begin_m_phase(self, iteration: int, annotated: str) -> None: ...

    def end_m_phase(self, iteration: int) -> None: ...


class EMScheduler(Callback):
    """Alternate E-phase → annotation → M-phase for ``iterations`` EM iterations.

    Args:
        iterations: Number of EM iterations ``K``.
        e_steps: Optimizer steps of the latent policy per E-phase.
        m_steps: Optimizer steps of next-token prediction per M-phase.
        checkpoint_after_annotation: Save ``last.ckpt`` (next to the ``ModelCheckpoint`` files) before and after
            each annotation pass, so a killed run resumes at the annotation (reusing its finished shards) or
            with the annotated data in hand.
    """

    def __init__(self, iterations: int, e_steps: int, m_steps: int, checkpoint_after_annotation: bool = True) -> None:
        if iterations < 1 or e_steps < 1 or m_steps < 1:
            raise ValueError(f"iterations, e_steps and m_steps must be >= 1 (got {iterations}, {e_steps}, {m_steps})")
        self.iterations, self.e_steps, self.m_steps = iterations, e_steps, m_steps
        self.checkpoint_after_annotation = checkpoint_after_annotation
        self.annotated: dict[int, str] = {}  # iteration -> annotated dataset directory
        self.current: EMPosition | None = None  # the position whose phase the module is set up for

    # ------------------------------------------------------------------------------------------ the schedule
    @property
    def total_steps(self) -> int:
        return self.iterations * (self.e_steps + self.m_steps)

    def phase_at(self, step: int) -> EMPosition:
        """The iteration, phase and step within the phase of global step ``step`` (0-based)."""
        if not 0 <= step < self.total_steps:
            raise ValueError(f"step {step} is outside the EM schedule of {self.total_steps} steps")
        iteration, offset = divmod(step, self.e_steps + self.m_steps)
        if offset < self.e_steps:
            return EMPosition(iteration, "E", offset)
        return EMPosition(iteration, "M", offset - self.e_steps)

    def phase_end(self, step: int) -> int:
        """The first global step after the phase that contains ``step``."""
        position = self.phase_at(step)
        length = self.e_steps if position.phase == "E" else self.m_steps
        return step - position.step_in_phase + length

    # ------------------------------------------------------------------------------------------ hooks
    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not isinstance(pl_module, EMModule):
            raise TypeError(
                f"EMScheduler drives a module with begin_e_phase/annotate_iteration/begin_m_phase/end_m_phase "
                f"(e.g. ra3_lightning.modules.RA3Module); got {type(pl_module).__name__}."
            )
        if trainer.max_steps != self.total_steps:
            raise ValueError(
                f"trainer.max_steps={trainer.max_steps} but the EM schedule has iterations*(e_steps+m_steps) = "
                f"{self.total_steps} steps: set `trainer.max_steps: {self.total_steps}`."
            )
        if trainer.accumulate_grad_batches != 1:
            raise ValueError("EMScheduler counts optimizer steps per batch: set `trainer.accumulate_grad_batches: 1`.")
        self.current = None  # set the module up afresh, also after a resume

    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        position = self.phase_at(trainer.global_step)
        previous, self.current = self.current, position
        pl_module.em_position = position
        if previous is not None and (previous.iteration, previous.phase) == (position.iteration, position.phase):
            return
        if position.phase == "E":
            # fresh: q restarts from π; otherwise a resumed run keeps the q restored from the checkpoint
            pl_module.begin_e_phase(position.iteration, fresh=position.step_in_phase == 0)
            return
        if position.iteration not in self.annotated:
            self._checkpoint(trainer)  # a run killed during annotation resumes here, reusing finished shards
            self.annotated[position.iteration] = pl_module.annotate_iteration(position.iteration)
            self._checkpoint(trainer)
        pl_module.begin_m_phase(position.iteration, self.annotated[position.iteration])

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        position = self.current
        if position is not None and position.phase == "M" and position.step_in_phase == self.m_steps - 1:
            pl_module.end_m_phase(position.iteration)

    def _checkpoint(self, trainer: L.Trainer) -> None:
        if not self.checkpoint_after_annotation or trainer.checkpoint_callback is None:
            return
        dirpath = getattr(trainer.checkpoint_callback, "dirpath", None)
        if dirpath:
            trainer.save_checkpoint(str(Path(dirpath) / "last.ckpt"))

    # ------------------------------------------------------------------------------------------ state
    @override
    def state_dict(self) -> dict[str, Any]:
        position = self.current
        return {
            "iteration": None if position is None else position.iteration,
            "phase": None if position is None else position.phase,
            "step_in_phase": None if position is None else position.step_in_phase,
            "annotated": {str(k): v for k, v in self.annotated.items()},
            "schedule": [self.iterations, self.e_steps, self.m_steps],
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if list(state_dict["schedule"]) != [self.iterations, self.e_steps, self.m_steps]:
            raise ValueError(
                f"checkpoint was written with EM schedule (iterations, e_steps, m_steps) = {state_dict['schedule']}, "
                f"this run has {[self.iterations, self.e_steps, self.m_steps]}: resume with the same schedule."
            )
        self.annotated = {int(k): v for k, v in state_dict["annotated"].items()}
