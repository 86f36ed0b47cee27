"""Turn the raw facts a sandbox worker reports about one run into an :class:`ExecResult`.

Pure functions, run in the trainer: a program is ``passed`` only if the judge's result line — written after the
last test, by a process the program never ran in, and carrying the job's random nonce — is present, well formed,
and says every test passed. An exit code never counts: a program that ``sys.exit(0)``-s, ``os._exit(0)``-s, kills
its parent or segfaults before the tests finished is a failure (``crashed``; the zygote's facts say how it ended).
"""

from __future__ import annotations

import json
import signal
from typing import Any

from ra3_lightning.sandbox.types import ExecResult, TestSuite

TIMEOUT_SIGNALS = {int(signal.SIGXCPU)}  # the CPU-time rlimit; the wall clock is reported as ``timed_out``


def parse_record(record: str | None, nonce: str, num_tests: int) -> dict[str, Any] | None:
    """The harness's result line if it is exactly one well-formed line with the right nonce, else ``None``.

    Anything else (a second line, a wrong nonce, a wrong number of tests) is treated as "no valid result": the
    judge writes exactly one line per job, so another line can only be a fault of the sandbox.
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


def _status_without_record(facts: dict[str, Any], rec: dict[str, Any] | None) -> tuple[str, str]:
    """No result, or the judge's word that the program broke off the tests: how the program ended decides."""
    sig = facts.get("signal")
    if facts.get("timed_out"):
        return "timeout", f"killed after the wall-clock limit ({facts.get('runtime_s', 0.0):.1f} s)"
    if sig in TIMEOUT_SIGNALS or facts.get("cpu_exceeded") is True:
        return "timeout", "CPU-time limit exceeded"
    if rec is not None and rec.get("ended") is not True:  # e.g. the program wrote junk into its channel
        return "crashed", str(rec["crashed"])
    if sig is not None:
        return "crashed", f"killed by {signal.Signals(sig).name} before the tests finished"
    if facts.get("exit_code") is not None:
        return "crashed", f"exited with code {facts['exit_code']} before the tests finished"
    if rec is not None:
        return "crashed", str(rec["crashed"])
    if facts.get("record"):
        return "crashed", "the result line does not belong to this job (no valid judge result)"
    return "crashed", "no result from the sandbox's judge"


def verdict(facts: dict[str, Any], tests: TestSuite) -> ExecResult:
    """Score one run from the sandbox's facts and the judge's result line (see ``_harness.py`` for their fields)."""
    rec = parse_record(facts.get("record"), facts.get("nonce", ""), tests.num_tests)
    if rec is not None and not rec.get("crashed"):
        status, detail = _status_from_record(rec)
        outcomes = list(rec["tests"])
    else:
        status, detail = _status_without_record(facts, rec)
        outcomes = [False] * tests.num_tests
    return ExecResult(
        status=status,  # type: ignore[arg-type]
        tests=outcomes,
        runtime_s=float(facts.get("runtime_s", 0.0)),
        stdout_tail=str(facts.get("stdout_tail", "")),
        stderr_tail=str(facts.get("stderr_tail", "")),
        detail=detail,
    )
