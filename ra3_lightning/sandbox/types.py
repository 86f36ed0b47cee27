"""The sandbox's vocabulary: what to run (a program and a test suite), within which limits, and what came out.

Kept free of any execution machinery so that task loaders, rewards and metrics can import it cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

TestStyle = Literal["assert", "check", "stdio"]
Status = Literal["passed", "failed", "timeout", "error", "memory", "crashed"]


@dataclass(frozen=True)
class TestSuite:
    """The tests a program is judged by, in one of three styles.

    Args:
        style: ``"assert"`` — MBPP-style assert statements, one test each; ``"check"`` — a HumanEval-style
            ``check(candidate)`` function called with the program's ``entry_point``; ``"stdio"`` —
            LiveCodeBench / CodeContests-style stdin → stdout cases compared word by word per line, numbers as
            ``Decimal``s where words differ (LiveCodeBench's rule).
        asserts: ``"assert"`` style: the statements.
        setup_code: ``"assert"`` style: code run before the asserts (MBPP ``test_setup_code`` / ``test_imports``),
            in the judge and also in the program's process (it may define what the program needs; it is not told
            the assertions).
        check_code: ``"check"`` style: source that defines ``check(candidate)`` (and any helpers it needs).
        entry_point: ``"check"`` style: name of the function under test.
        stdio_cases: ``"stdio"`` style: ``(stdin, expected_stdout)`` pairs.
    """

    __test__ = False  # not a pytest test class, despite the name

    style: TestStyle
    asserts: tuple[str, ...] = ()
    setup_code: str = ""
    check_code: str = ""
    entry_point: str = ""
    stdio_cases: tuple[tuple[str, str], ...] = ()

    @property
    def num_tests(self) -> int:
        return {"assert": len(self.asserts), "check": 1, "stdio": len(self.stdio_cases)}[self.style]


@dataclass(frozen=True)
class Limits:
    """Resource limits for one program (the whole test suite of one sample)."""

    timeout_s: float = 10.0
    memory_mb: int = 1024
    max_processes: int = 64
    max_file_mb: int = 16
    max_open_files: int = 64
    max_output_bytes: int = 1 << 16


@dataclass
class ExecResult:
    """What running one program against its tests produced.

    ``passed`` is true only when the harness itself reported after the last test and every test passed; a
    program that exits early, is killed or crashes is never ``passed``. ``tests`` holds per-test outcomes where
    they are known (tests that never ran count as failed).
    """

    status: Status
    tests: list[bool] = field(default_factory=list)
    runtime_s: float = 0.0
    stdout_tail: str = ""
    stderr_tail: str = ""
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def pass_fraction(self) -> float:
        return sum(self.tests) / len(self.tests) if self.tests else float(self.passed)
