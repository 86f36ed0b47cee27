"""The pure EM schedule, and the EMScheduler callback's hand-over, hooks and state, without a Trainer."""

import pytest

from ra3_lightning.callbacks.em_scheduler import EMScheduler
from ra3_lightning.em_schedule import EMPosition, EMSchedule


def test_phase_at_by_hand():
    # iterations=2, e=3, m=2 -> 10 steps: E E E M M | E E E M M
    s = EMSchedule(iterations=2, e_steps=3, m_steps=2)
    assert s.total_steps == 10 and s.total_m_steps == 4
    assert [s.phase_at(i).phase for i in range(10)] == list("EEEMMEEEMM")
    assert s.phase_at(0) == EMPosition(0, "E", 0)
    assert s.phase_at(3) == EMPosition(0, "M", 0)
    assert s.phase_at(4) == EMPosition(0, "M", 1)
    assert s.phase_at(5) == EMPosition(1, "E", 0)
    assert s.phase_at(9) == EMPosition(1, "M", 1)
    with pytest.raises(ValueError, match="outside the EM schedule"):
        s.phase_at(10)
    assert [s.phase_end(i) for i in range(10)] == [3, 3, 3, 5, 5, 8, 8, 8, 10, 10]
    assert s.steps_left_in_phase(1) == range(1, 3) and s.steps_left_in_phase(8) == range(8, 10)
    assert s.steps_left_in_phase(10) == range(0)  # the schedule is over: the last epoch is empty


def test_rejects_bad_schedule():
    with pytest.raises(ValueError, match=">= 1"):
        EMScheduler(iterations=0, e_steps=1, m_steps=1)
    with pytest.raises(ValueError, match=">= 1"):
        EMSchedule(iterations=1, e_steps=0, m_steps=1)


def test_state_round_trip_and_schedule_mismatch():
    s = EMScheduler(iterations=2, e_steps=3, m_steps=2)
    s.annotated = {0: "/runs/em/iter_0"}
    s.current = s.schedule.phase_at(4)
    state = s.state_dict()
    assert state["iteration"] == 0 and state["phase"] == "M" and state["step_in_phase"] == 1
    t = EMScheduler(iterations=2, e_steps=3, m_steps=2)
    t.load_state_dict(state)
    assert t.annotated == {0: "/runs/em/iter_0"}
    with pytest.raises(ValueError, match="same schedule"):
        EMScheduler(iterations=3, e_steps=3, m_steps=2).load_state_dict(state)


class FakeModule:
    def __init__(self):
        self.calls = []
        self.schedule = None

    def use_em_schedule(self, schedule):
        self.schedule = schedule

    def begin_e_phase(self, iteration, fresh):
        self.calls.append(("E", iteration, fresh))

    def annotate_iteration(self, iteration):
        self.calls.append(("annotate", iteration))
        return f"iter_{iteration}"

    def begin_m_phase(self, iteration, annotated, fresh):
        self.calls.append(("M", iteration, annotated, fresh))

    def end_m_phase(self, iteration):
        self.calls.append(("end_M", iteration))


class FakeTrainer:
    global_step = 0
    checkpoint_callback = None


def drive(s, module, steps, trainer=None):
    trainer = trainer or FakeTrainer()
    for step in steps:
        trainer.global_step = step
        s.on_train_batch_start(trainer, module, None, 0)
        s.on_train_batch_end(trainer, module, None, None, 0)


def test_hooks_call_module_at_phase_changes():
    s, module = EMScheduler(iterations=2, e_steps=2, m_steps=1), FakeModule()
    drive(s, module, range(6))
    assert module.calls == [
        ("E", 0, True), ("annotate", 0), ("M", 0, "iter_0", True), ("end_M", 0),
        ("E", 1, True), ("annotate", 1), ("M", 1, "iter_1", True), ("end_M", 1),
    ]  # fmt: skip


def test_resume_mid_phase_keeps_q_and_reuses_annotation():
    s, module = EMScheduler(iterations=2, e_steps=2, m_steps=2), FakeModule()
    drive(s, module, range(3))  # E E | annotate, M(step 2)
    state = s.state_dict()
    resumed, module2 = EMScheduler(iterations=2, e_steps=2, m_steps=2), FakeModule()
    resumed.load_state_dict(state)
    drive(resumed, module2, [3, 4])  # second M step of iteration 0, then E of iteration 1
    # no second annotation, and model is not reset to π inside the M-phase (the checkpoint restored it)
    assert module2.calls == [("M", 0, "iter_0", False), ("end_M", 0), ("E", 1, True)]
    resumed_e, module3 = EMScheduler(iterations=2, e_steps=2, m_steps=2), FakeModule()
    drive(resumed_e, module3, [1])  # resuming in the middle of an E-phase: q is not reset
    assert module3.calls == [("E", 0, False)]


class FakeData:
    def __init__(self):
        self.schedule = None

    def use_em_schedule(self, schedule):
        self.schedule = schedule


class SetupTrainer:
    def __init__(self, max_steps, datamodule, accumulate_grad_batches=1):
        self.max_steps, self.datamodule, self.accumulate_grad_batches = max_steps, datamodule, accumulate_grad_batches


def test_setup_hands_the_one_schedule_to_module_and_data():
    s, module, data = EMScheduler(iterations=2, e_steps=3, m_steps=2), FakeModule(), FakeData()
    s.setup(SetupTrainer(10, data), module, "fit")
    assert module.schedule is s.schedule and data.schedule is s.schedule
    s.setup(SetupTrainer(10, None), FakeModule(), "fit")  # a data module that takes no schedule is left alone


def test_setup_rejects_a_trainer_or_module_that_does_not_fit():
    s = EMScheduler(iterations=2, e_steps=3, m_steps=2)
    with pytest.raises(ValueError, match="trainer.max_steps: 10"):
        s.setup(SetupTrainer(9, None), FakeModule(), "fit")
    with pytest.raises(ValueError, match="accumulate_grad_batches: 1"):
        s.setup(SetupTrainer(10, None, accumulate_grad_batches=2), FakeModule(), "fit")
    with pytest.raises(TypeError, match="use_em_schedule"):
        s.setup(SetupTrainer(10, None), object(), "fit")
