"""Turn the raw facts a sandbox worker reports about one run into an :class:`ExecResult`.

Pure functions, run in the trainer: a program is ``passed`` only if the harness's own result line — written after
the last test and carrying the job's random nonce — is present, well formed, and says every test passed. An exit
code never counts: a program that ``sys.exit(0)``-s, ``os._exit(0)``-s, kills its parent or segfaults before the
harness reports is a failure.
"""

from __future__ import annotations

import json
import signal
from typing import Any

from ra3_lightning.sandbox.types import ExecResult, TestSuite

TIMEOUT_SIGNALS = {int(signal.SIGXCPU)}  # the CPU-time rlimit; the wall clock is reported as ``timed_out``


def parse_record(record: str | None, nonce: str, num_tests: int) -> dict[str, Any] | None:
    """The harness's result line if it is exactly one well-formed line with the right nonce, else ``None``.

    Anything else in the result channel (a second line, a wrong nonce, a wrong number of tests) means the program
    wrote to it, and is treated as "no valid result".
    """
    if not record or not record.endswith("\n") or record.count("\n") != 1:
        return None
    try:
        rec = json.loads(record)
    except ValueError:
        return None
    if not isinstance(rec, dict) or rec.get("nonce") != nonce:
        return None
    tests = rec.get("tests")
    if not isinstance(tests, list) or len(tests) != num_tests or not all(isinstance(t, bool) for t in tests):
        return None
    return rec


def _status_from_record(rec: dict[str, Any]) -> tuple[str, str]:
    if rec.get("error"):
        return ("memory" if rec.get("memory") else "error"), str(rec["error"])
    if all(rec["tests"]):
        return "passed", ""
    return ("memory" if rec.get("memory") else "failed"), str(rec.get("test_error") or "")


def _status_without_record(facts: dict[str, Any], had_record: bool) -> tuple[str, str]:
    sig = facts.get("signal")
    if facts.get("timed_out"):
        return "timeout", f"killed after the wall-clock limit ({facts.get('runtime_s', 0.0):.1f} s)"
    if sig in TIMEOUT_SIGNALS:
        return "timeout", "CPU-time limit exceeded"
    if had_record:
        return "crashed", "the result channel was tampered with (no valid harness result)"
    if sig is not None:
        return "crashed", f"killed by {signal.Signals(sig).name} before the harness reported"
    return "crashed", f"exited with code {facts.get('exit_code')} before the harness reported"


def verdict(facts: dict[str, Any], tests: TestSuite) -> ExecResult:
    """Score one run from the worker's facts (see ``_harness.py`` for their fields)."""
    rec = parse_record(facts.get("record"), facts.get("nonce", ""), tests.num_tests)
    if rec is not None:
        status, detail = _status_from_record(rec)
        outcomes = list(rec["tests"])
    else:
        status, detail = _status_without_record(facts, had_record=bool(facts.get("record")))
        outcomes = [False] * tests.num_tests
    return ExecResult(
        status=status,  # type: ignore[arg-type]
        tests=outcomes,
        runtime_s=float(facts.get("runtime_s", 0.0)),
        stdout_tail=str(facts.get("stdout_tail", "")),
        stderr_tail=str(facts.get("stderr_tail", "")),
        detail=detail,
    )
