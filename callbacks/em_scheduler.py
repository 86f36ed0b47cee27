"""``EMScheduler``: RA3's EM loop — E-phase, annotation, M-phase, ``iterations`` times — inside one ``ra3 fit``.

The callback is the one owner of the schedule. It builds the pure :class:`ra3_lightning.em_schedule.EMSchedule` from
its arguments and, in ``setup``, hands it to the module and to the data module (``use_em_schedule``): the module
sizes its M-step learning-rate schedule with it and reads each step's phase from it, the data module ends each
Lightning epoch with the phase. Each phase is one epoch, so per-step metrics of one phase never linger in the logs of
the next.

The hooks are thin. The module does the work through four methods (:class:`ra3_lightning.em_schedule.EMModule`);
the callback only decides *when*, remembers which iterations' annotation is complete, and saves a checkpoint right
after each annotation so that a killed run never redoes finished work. Its ``state_dict`` holds the iteration, the
phase, the steps done in the phase and the completed annotations, so ``--ckpt_path last`` continues in the same place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from ra3_lightning.em_schedule import EMDriven, EMModule, EMPosition, EMSchedule


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
        self.schedule = EMSchedule(iterations, e_steps, m_steps)
        self.checkpoint_after_annotation = checkpoint_after_annotation
        self.annotated: dict[int, str] = {}  # iteration -> annotated dataset directory
        self.current: EMPosition | None = None  # the position whose phase the module is set up for

    # ------------------------------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Check the Trainer against the schedule and hand the schedule to the module and the data module."""
        if stage != "fit":
            return
        if not isinstance(pl_module, EMModule):
            raise TypeError(
                "EMScheduler drives a module with use_em_schedule/begin_e_phase/annotate_iteration/begin_m_phase/"
                f"end_m_phase (e.g. ra3_lightning.modules.RA3Module); got {type(pl_module).__name__}."
            )
        total = self.schedule.total_steps
        if trainer.max_steps != total:
            raise ValueError(
                f"trainer.max_steps={trainer.max_steps} but the EM schedule has iterations*(e_steps+m_steps) = "
                f"{total} steps: set `trainer.max_steps: {total}`."
            )
        if trainer.accumulate_grad_batches != 1:
            raise ValueError("EMScheduler counts optimizer steps per batch: set `trainer.accumulate_grad_batches: 1`.")
        pl_module.use_em_schedule(self.schedule)
        if isinstance(trainer.datamodule, EMDriven):
            trainer.datamodule.use_em_schedule(self.schedule)

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.current = None  # set the module up afresh, also after a resume

    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        position = self.schedule.phase_at(trainer.global_step)
        previous, self.current = self.current, position
        if previous is not None and (previous.iteration, previous.phase) == (position.iteration, position.phase):
            return
        # fresh: the phase starts here; otherwise a resumed run keeps the state restored from the checkpoint
        fresh = position.step_in_phase == 0
        if position.phase == "E":
            pl_module.begin_e_phase(position.iteration, fresh=fresh)
            return
        if position.iteration not in self.annotated:
            self._checkpoint(trainer)  # a run killed during annotation resumes here, reusing finished shards
            self.annotated[position.iteration] = pl_module.annotate_iteration(position.iteration)
            self._checkpoint(trainer)
        pl_module.begin_m_phase(position.iteration, self.annotated[position.iteration], fresh=fresh)

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        position = self.current
        if position is not None and position.phase == "M" and position.step_in_phase == self.schedule.m_steps - 1:
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
            "schedule": self._schedule_list(),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if list(state_dict["schedule"]) != self._schedule_list():
            raise ValueError(
                f"checkpoint was written with EM schedule (iterations, e_steps, m_steps) = {state_dict['schedule']}, "
                f"this run has {self._schedule_list()}: resume with the same schedule."
            )
        self.annotated = {int(k): v for k, v in state_dict["annotated"].items()}

    def _schedule_list(self) -> list[int]:
        return [self.schedule.iterations, self.schedule.e_steps, self.schedule.m_steps]
