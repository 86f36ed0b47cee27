"""RA3's EM schedule as a pure value: which iteration and phase every global step of one ``ra3 fit`` belongs to.

Iteration ``k`` owns the optimizer steps ``[k·(e+m), (k+1)·(e+m))``: the first ``e_steps`` of them are its E-phase
(train the latent policy ``q`` against the frozen model ``π``), the rest its M-phase (next-token prediction of ``π``
on the traces ``q`` annotated). Annotation is not a step: it runs once between an iteration's last E-step and its
first M-step.

:class:`ra3_lightning.callbacks.EMScheduler` is the one owner of the schedule: it builds the :class:`EMSchedule`
from its YAML arguments and hands it, in ``setup``, to the module and the data module (:meth:`EMDriven.use_em_schedule`)
— nobody looks for the callback. It then calls the module's phase transitions (:class:`EMModule`) when a phase starts
or ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

Phase = Literal["E", "M"]


@dataclass(frozen=True)
class EMPosition:
    """Where a global step falls in the EM schedule."""

    iteration: int
    phase: Phase
    step_in_phase: int


@dataclass(frozen=True)
class EMSchedule:
    """``iterations`` EM iterations of ``e_steps`` E-steps then ``m_steps`` M-steps each."""

    iterations: int
    e_steps: int
    m_steps: int

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.e_steps < 1 or self.m_steps < 1:
            raise ValueError(
                f"iterations, e_steps and m_steps must be >= 1 (got {self.iterations}, {self.e_steps}, {self.m_steps})"
            )

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the whole run (``trainer.max_steps`` must equal it)."""
        return self.iterations * (self.e_steps + self.m_steps)

    @property
    def total_m_steps(self) -> int:
        """M-steps of the whole run: the length of the M-step learning-rate schedule."""
        return self.iterations * self.m_steps

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

    def steps_left_in_phase(self, step: int) -> range:
        """The global steps from ``step`` to the end of its phase (empty once the schedule is over)."""
        return range(step, self.phase_end(step)) if step < self.total_steps else range(0)


@runtime_checkable
class EMDriven(Protocol):
    """What takes the schedule from :class:`ra3_lightning.callbacks.EMScheduler` (the module and the data module)."""

    def use_em_schedule(self, schedule: EMSchedule) -> None: ...


@runtime_checkable
class EMModule(EMDriven, Protocol):
    """What a LightningModule must offer to be driven by :class:`ra3_lightning.callbacks.EMScheduler`.

    ``fresh`` is false when a resumed run continues inside the phase: the state the phase start would set up (``q``
    restarted from ``π``, ``model`` restored to ``π``) came back from the checkpoint instead.
    """

    def begin_e_phase(self, iteration: int, fresh: bool) -> None: ...

    def annotate_iteration(self, iteration: int) -> str: ...

    def begin_m_phase(self, iteration: int, annotated: str, fresh: bool) -> None: ...

    def end_m_phase(self, iteration: int) -> None: ...
