"""Verifiable rewards for RLVR: plain callables ``reward(completions, tasks) -> list[float]``.

Every reward that executes code goes through :func:`run_completions`, the same checker
:mod:`ra3_lightning.evaluate` scores pass@k with, so a training reward and the evaluation metric cannot drift apart.
The completions run in :class:`ra3_lightning.sandbox.Sandbox` worker processes; the trainer never imports or execs
them. Users replace a reward by passing any callable with the same signature (TRL's reward-function convention;
unlike TRL, a reward here never returns ``None``).

* :class:`SandboxReward` — ``mode="binary"`` (1.0 when every test passes) or ``"fraction"`` (share of tests
  passed; a program that dies before its harness reports scores 0 on the tests that never ran), with
  ``last_results`` for logging and :meth:`SandboxReward.submit` to overlap scoring with the next rollout.
* :func:`binary_reward`, :func:`pass_fraction_reward` — module-level instances on a shared default sandbox.
* :func:`format_reward` — 1.0 when the program parses as Python (``ast.parse``; nothing is executed).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Literal

from ra3_lightning.data.tasks import CodingTask, extract_code, parses
from ra3_lightning.sandbox.types import ExecResult, Limits

if TYPE_CHECKING:
    from ra3_lightning.sandbox import Sandbox

RewardFn = Callable[[list[str], list[CodingTask]], list[float]]
RewardMode = Literal["binary", "fraction"]
Isolation = Literal["auto", "bwrap", "none"]

_SCORES: dict[str, Callable[[ExecResult], float]] = {
    "binary": lambda result: float(result.passed),
    "fraction": lambda result: float(result.pass_fraction),
}


def run_completions(
    sandbox: Sandbox, completions: Sequence[str], tasks: Sequence[CodingTask], progress: bool = False
) -> list[ExecResult]:
    """Run ``tasks[i].program(completions[i])`` against ``tasks[i].tests`` for every ``i`` in ``sandbox``."""
    _check_lengths(completions, tasks)
    jobs = [(task.program(completion), task.tests) for completion, task in zip(completions, tasks, strict=True)]
    return list(sandbox.run_batch(jobs, progress=progress)) if jobs else []


def _check_lengths(completions: Sequence[str], tasks: Sequence[CodingTask]) -> None:
    if len(completions) != len(tasks):
        raise ValueError(f"reward: got {len(completions)} completions but {len(tasks)} tasks (one task per completion)")


class SandboxReward:
    r"""Reward by executing each completion against its task's tests in the sandbox.

    The sandbox (a pool of worker processes) starts on first use, so building a reward in a config is cheap and
    the object can be pickled before use.

    Args:
        mode: ``"binary"`` — 1.0 if all tests pass else 0.0; ``"fraction"`` — the fraction of tests passed.
        workers: sandbox worker processes (``None``: this rank's share of the CPUs the process may use,
            :func:`~ra3_lightning.sandbox.pool.default_workers`; ``RLVRModule`` fills it in from the trainer's
            devices per node). A given number wins.
        limits: resource limits per program (default :class:`~ra3_lightning.sandbox.types.Limits`).
        isolation: the sandbox's isolation setting (``"auto"`` uses bubblewrap when present).

    Example:
        >>> from ra3_lightning.data.tasks import CodingTask
        >>> from ra3_lightning.sandbox import TestSuite
        >>> tests = TestSuite("assert", asserts=("assert add(1, 2) == 3", "assert add(2, 2) == 4"))
        >>> task = CodingTask("add", "def add(a, b):\n", tests, entry_point="add")
        >>> with SandboxReward(mode="fraction", workers=1) as reward:
        ...     reward(["    return a + b\n", "    return a * b\n", "    return a - b\n"], [task] * 3)
        [1.0, 0.5, 0.0]
    """

    def __init__(
        self,
        mode: RewardMode = "binary",
        workers: int | None = None,
        limits: Limits | None = None,
        isolation: Isolation = "auto",
    ) -> None:
        if mode not in _SCORES:
            raise ValueError(f"SandboxReward: mode must be one of {sorted(_SCORES)}, got {mode!r}")
        self.mode, self.workers, self.limits, self.isolation = mode, workers, limits or Limits(), isolation
        self.last_results: list[ExecResult] = []
        self._sandbox = None
        self._lock = threading.Lock()

    @property
    def __name__(self) -> str:  # loggers and TRL-style trainers name reward columns by __name__
        return f"sandbox_{self.mode}_reward"

    @property
    def sandbox(self) -> Sandbox:
        """The :class:`~ra3_lightning.sandbox.Sandbox`, started on first access."""
        with self._lock:
            if self._sandbox is None:
                from ra3_lightning.sandbox import Sandbox

                self._sandbox = Sandbox(workers=self.workers, limits=self.limits, isolation=self.isolation)
            return self._sandbox

    def __call__(self, completions: list[str], tasks: list[CodingTask]) -> list[float]:
        """One reward per completion; ``tasks[i]`` is the task of ``completions[i]``."""
        self.last_results = run_completions(self.sandbox, completions, tasks)
        return self.scores(self.last_results)

    def scores(self, results: Sequence[ExecResult]) -> list[float]:
        """The reward of each execution result under this reward's ``mode``."""
        return [_SCORES[self.mode](result) for result in results]

    def submit(self, completions: list[str], tasks: list[CodingTask]) -> Future[list[float]]:
        """Start scoring and return at once; the future's result is what :meth:`__call__` would return.

        ``last_results`` is updated when the future completes. Lets a trainer overlap execution with the next
        rollout's generation.
        """
        _check_lengths(completions, tasks)
        futures = [self.sandbox.submit(task.program(c), task.tests) for c, task in zip(completions, tasks, strict=True)]
        return _gather(futures, self._finish)

    def _finish(self, results: list[ExecResult]) -> list[float]:
        self.last_results = results
        return self.scores(results)

    def close(self) -> None:
        """Stop the sandbox's workers (a later call starts a new sandbox)."""
        with self._lock:
            if self._sandbox is not None:
                self._sandbox.close()
                self._sandbox = None

    def __enter__(self) -> SandboxReward:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict:  # picklable before and after use: the worker pool never travels
        state = self.__dict__.copy()
        state.update(_sandbox=None, _lock=None, last_results=[])
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


def _gather(futures: list[Future], finish: Callable[[list], list[float]]) -> Future[list[float]]:
    """One future resolving to ``finish([f.result() for f in futures])`` once all of ``futures`` are done."""
    combined: Future[list[float]] = Future()
    remaining = [len(futures)]
    lock = threading.Lock()

    def on_done(_: Future) -> None:
        with lock:
            remaining[0] -= 1
            if remaining[0] > 0:
                return
        try:
            combined.set_result(finish([f.result() for f in futures]))
        except BaseException as e:  # noqa: BLE001 - the caller sees it through the future
            combined.set_exception(e)

    if not futures:
        combined.set_result(finish([]))
    for future in futures:
        future.add_done_callback(on_done)
    return combined


_DEFAULT_REWARDS: dict[str, SandboxReward] = {}


def _default(mode: RewardMode) -> SandboxReward:
    if mode not in _DEFAULT_REWARDS:
        _DEFAULT_REWARDS[mode] = SandboxReward(mode=mode)
    return _DEFAULT_REWARDS[mode]


def binary_reward(completions: list[str], tasks: list[CodingTask]) -> list[float]:
    """1.0 for a completion that passes every test of its task, else 0.0 (a shared default :class:`SandboxReward`)."""
    return _default("binary")(completions, tasks)


def pass_fraction_reward(completions: list[str], tasks: list[CodingTask]) -> list[float]:
    """The fraction of its task's tests each completion passes (a shared default :class:`SandboxReward`)."""
    return _default("fraction")(completions, tasks)


def format_reward(completions: list[str], tasks: list[CodingTask] | None = None) -> list[float]:
    r"""1.0 when the program a completion yields parses as Python, else 0.0. Nothing is executed.

    With ``tasks``, the parsed text is ``tasks[i].program(completions[i])`` (a HumanEval body only parses inside its
    prompt); without, the completion's fenced code block or the completion itself.

    Example:
        >>> format_reward(["```python\nx = 1\n```", "def f(:\n"])
        [1.0, 0.0]
    """
    if tasks is not None:
        _check_lengths(completions, tasks)
        programs = [task.program(c) for c, task in zip(completions, tasks, strict=True)]
    else:
        programs = [extract_code(c) or c for c in completions]
    return [float(parses(program)) for program in programs]
