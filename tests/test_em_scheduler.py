"""EMScheduler's pure schedule and its state, without a Trainer."""

import pytest

from ra3_lightning.callbacks.em_scheduler import EMPosition, EMScheduler


def test_phase_at_by_hand():
    # iterations=2, e=3, m=2 -> 10 steps: E E E M M | E E E M M
    s = EMScheduler(iterations=2, e_steps=3, m_steps=2)
    assert s.total_steps == 10
    assert [s.phase_at(i).phase for i in range(10)] == list("EEEMMEEEMM")
    assert s.phase_at(0) == EMPosition(0, "E", 0)
    assert s.phase_at(3) == EMPosition(0, "M", 0)
    assert s.phase_at(4) == EMPosition(0, "M", 1)
    assert s.phase_at(5) == EMPosition(1, "E", 0)
    assert s.phase_at(9) == EMPosition(1, "M", 1)
    with pytest.raises(ValueError, match="outside the EM schedule"):
        s.phase_at(10)


def test_rejects_bad_schedule():
    with pytest.raises(ValueError, match=">= 1"):
        EMScheduler(iterations=0, e_steps=1, m_steps=1)


def test_state_round_trip_and_schedule_mismatch():
    s = EMScheduler(iterations=2, e_steps=3, m_steps=2)
    s.annotated = {0: "/runs/em/iter_0"}
    s.current = s.phase_at(4)
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
        self.em_position = None

    def begin_e_phase(self, iteration, fresh):
        self.calls.append(("E", iteration, fresh))

    def annotate_iteration(self, iteration):
        self.calls.append(("annotate", iteration))
        return f"iter_{iteration}"

    def begin_m_phase(self, iteration, annotated):
        self.calls.append(("M", iteration, annotated))

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
        ("E", 0, True), ("annotate", 0), ("M", 0, "iter_0"), ("end_M", 0),
        ("E", 1, True), ("annotate", 1), ("M", 1, "iter_1"), ("end_M", 1),
    ]  # fmt: skip


def test_resume_mid_phase_keeps_q_and_reuses_annotation():
    s, module = EMScheduler(iterations=2, e_steps=2, m_steps=2), FakeModule()
    drive(s, module, range(3))  # E E | annotate, M(step 2)
    state = s.state_dict()
    resumed, module2 = EMScheduler(iterations=2, e_steps=2, m_steps=2), FakeModule()
    resumed.load_state_dict(state)
    drive(resumed, module2, [3, 4])  # second M step of iteration 0, then E of iteration 1
    assert module2.calls == [("M", 0, "iter_0"), ("end_M", 0), ("E", 1, True)]  # no second annotation
    resumed_e, module3 = EMScheduler(iterations=2, e_steps=2, m_steps=2), FakeModule()
    drive(resumed_e, module3, [1])  # resuming in the middle of an E-phase: q is not reset
    assert module3.calls == [("E", 0, False)]
