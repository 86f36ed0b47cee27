"""The sandbox scores programs right: the three test styles, verdict rules, batching, HumanEval, the fallback path."""

from __future__ import annotations

import gzip
import json
import warnings
from pathlib import Path

import pytest
from conftest import RunIf

from ra3_lightning.sandbox import ExecResult, Limits, Sandbox, TestSuite, isolation_available
from ra3_lightning.sandbox import pool as sandbox_pool
from ra3_lightning.sandbox.verdict import parse_record, verdict

HUMANEVAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "HumanEval.jsonl.gz"
ADD = "def add(a, b):\n    return a + b\n"
ADD_CHECK = TestSuite(
    "check", check_code="def check(f):\n    assert f(1, 2) == 3\n    assert f(0, 0) == 0\n", entry_point="add"
)


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(workers=2) as sb:
        yield sb


# ------------------------------------------------------------------------------------ verdict: pure rules


def _facts(record: str | None, **kw) -> dict:
    return {"record": record, "nonce": "abc", "timed_out": False, "exit_code": None, "signal": None, **kw}


def test_parse_record_accepts_only_one_well_formed_line_with_the_nonce():
    good = json.dumps({"nonce": "abc", "tests": [True, False]}) + "\n"
    assert parse_record(good, "abc", 2)["tests"] == [True, False]
    assert parse_record(good, "xyz", 2) is None  # forged nonce
    assert parse_record(good, "abc", 3) is None  # wrong number of tests
    assert parse_record(good + good, "abc", 2) is None  # something else wrote to the channel too
    assert parse_record(good[:-1], "abc", 2) is None  # cut off before the newline
    assert parse_record('{"nonce": "abc", "tests": [1, 0]}\n', "abc", 2) is None  # not booleans
    assert parse_record(None, "abc", 2) is None


def test_verdict_never_trusts_an_exit_code():
    suite = TestSuite("assert", asserts=("assert True",))
    # exit code 0 but no judge record: the program ended early (sys.exit/os._exit before the tests).
    r = verdict(_facts(None, exit_code=0), suite)
    assert (r.status, r.tests, r.passed) == ("crashed", [False], False)
    assert verdict(_facts(None, signal=11), suite).detail.startswith("killed by SIGSEGV")
    assert verdict(_facts(None, timed_out=True), suite).status == "timeout"
    assert verdict(_facts(None, signal=24), suite).status == "timeout"  # SIGXCPU: CPU rlimit
    assert verdict(_facts(None, signal=9, cpu_exceeded=True), suite).status == "timeout"  # the hard CPU limit
    stale = json.dumps({"nonce": "other-job", "tests": [True]}) + "\n"
    assert verdict(_facts(stale), suite).detail.startswith("the result line does not belong to this job")
    assert verdict(_facts(None), suite).detail == "no result from the sandbox's judge"


def test_verdict_of_a_program_that_broke_off_the_tests():
    """The judge reports ``crashed``; how the program ended comes from the zygote's facts, junk from the judge."""
    suite = TestSuite("assert", asserts=("a", "b"))

    def crashed(reason: str, ended: bool) -> str:
        return json.dumps({"nonce": "abc", "tests": [True, False], "crashed": reason, "ended": ended}) + "\n"

    ended = crashed("the program ended before the tests finished", True)
    r = verdict(_facts(ended, exit_code=0), suite)
    assert (r.status, r.tests, r.detail) == ("crashed", [False, False], "exited with code 0 before the tests finished")
    assert verdict(_facts(ended, signal=11), suite).detail == "killed by SIGSEGV before the tests finished"
    assert verdict(_facts(ended, signal=24), suite).status == "timeout"
    junk = verdict(_facts(crashed("the program wrote junk", False), exit_code=0), suite)
    assert (junk.status, junk.detail) == ("crashed", "the program wrote junk")


def test_verdict_statuses_from_a_valid_record():
    suite = TestSuite("assert", asserts=("a", "b"))

    def rec(**kw) -> str:
        return json.dumps({"nonce": "abc", "tests": [True, True], **kw}) + "\n"

    assert verdict(_facts(rec()), suite).status == "passed"
    r = verdict(_facts(rec(tests=[True, False], test_error="test 1: AssertionError")), suite)
    assert (r.status, r.pass_fraction, r.detail) == ("failed", 0.5, "test 1: AssertionError")
    assert verdict(_facts(rec(tests=[False, False], error="SyntaxError: x")), suite).status == "error"
    assert verdict(_facts(rec(tests=[False, False], error="MemoryError", memory=True)), suite).status == "memory"
    assert verdict(_facts(rec(tests=[True, False], memory=True)), suite).status == "memory"


# ------------------------------------------------------------------------------------ the three test styles


def test_assert_style(sandbox):
    suite = TestSuite(
        "assert",
        asserts=("assert add(1, 2) == 3", "assert add(2, 2) == 5", "assert sq(3) == 9"),
        setup_code="def sq(x):\n    return x * x\n",
    )
    r = sandbox.run(ADD, suite)
    assert (r.status, r.tests) == ("failed", [True, False, True])
    assert r.detail.startswith("test 1: AssertionError")
    assert sandbox.run("def add(a, b) return", suite).status == "error"  # SyntaxError
    assert sandbox.run("raise ValueError('boom')", suite).detail == "ValueError: boom"


def test_check_style(sandbox):
    assert sandbox.run(ADD, ADD_CHECK).passed
    assert sandbox.run("def add(a, b):\n    return a - b\n", ADD_CHECK).status == "failed"
    missing = sandbox.run("def plus(a, b):\n    return a + b\n", ADD_CHECK)
    assert (missing.status, missing.detail) == ("error", "KeyError: 'add'")


def test_stdio_numbers_compare_as_decimals_like_livecodebench(sandbox):
    program = "print(input())\n"
    cases = (("1.50", "1.5"), ("1e2 3", "100 3.0"), ("0.30000000000000004", "0.3"), ("YES 1.0", "YES 1"))
    r = sandbox.run(program, TestSuite("stdio", stdio_cases=cases))
    assert r.tests == [True, True, False, False]  # a number equal as a Decimal passes; 1e-17 off, or a word, not


def test_stdio_style_is_whitespace_tolerant_and_judges_each_case(sandbox):
    program = "import sys\nnums = [int(x) for x in sys.stdin.read().split()]\nprint(sum(nums))\nprint(len(nums))\n"
    cases = (("1 2 3\n", "6\n3\n"), ("4 5", "  9  \r\n2\n\n"), ("1", "2\n1"), ("", "0 0"))
    r = sandbox.run(program, TestSuite("stdio", stdio_cases=cases))
    # cases 0 and 1 match up to whitespace; case 2 prints 1 not 2; case 3 prints "0\n0", not the line "0 0".
    assert (r.status, r.tests) == ("failed", [True, True, False, False])
    crash = sandbox.run("print(6)\nraise SystemExit(3)\n", TestSuite("stdio", stdio_cases=(("", "6"),)))
    assert crash.tests == [False]  # right output, but a non-zero exit status
    assert sandbox.run("print(6)\nraise SystemExit(0)\n", TestSuite("stdio", stdio_cases=(("", "6"),))).passed


def test_bad_suites_are_rejected_with_a_clear_error(sandbox):
    with pytest.raises(ValueError, match="has no tests"):
        sandbox.run(ADD, TestSuite("assert"))
    with pytest.raises(ValueError, match="needs both check_code and entry_point"):
        sandbox.run(ADD, TestSuite("check", check_code="def check(f): pass"))
    with pytest.raises(ValueError, match="style must be"):
        sandbox.run(ADD, TestSuite("pytest", asserts=("x",)))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="program must be a str"):
        sandbox.run(b"x", ADD_CHECK)  # type: ignore[arg-type]


def test_batch_keeps_order_and_outputs_are_bounded(sandbox):
    wrong = "def add(a, b):\n    return 0\n"
    jobs = [(ADD if i % 3 else wrong, ADD_CHECK) for i in range(12)]
    results = sandbox.run_batch(jobs)
    assert [r.passed for r in results] == [i % 3 != 0 for i in range(12)]
    r = sandbox.run(
        ADD + "print('x' * 5000 + 'END')\nimport sys\nprint('E' * 5000, file=sys.stderr)\n",
        ADD_CHECK,
        limits=Limits(max_output_bytes=100),
    )
    assert r.passed and len(r.stdout_tail) <= 100 and r.stdout_tail.endswith("END\n")
    assert r.stderr_tail == "E" * 99 + "\n"
    future = sandbox.submit(ADD, ADD_CHECK)
    assert isinstance(future.result(timeout=60), ExecResult)


def test_each_program_gets_a_fresh_scratch_dir(sandbox):
    suite = TestSuite("assert", asserts=("assert True",))
    for _ in range(4):  # both workers see both programs at least once
        writer = sandbox.run("import os\nos.makedirs('d/e')\nopen('leak.txt', 'w').write('x')\n", suite)
        assert writer.passed, writer
    reader = "import os, glob\nassert sorted(os.listdir('.')) == ['.stderr', '.stdout'], os.listdir('.')\n"
    reader += "assert not glob.glob('../*/leak.txt') and not glob.glob('../*/d'), glob.glob('../*')\n"
    results = sandbox.run_batch([(reader, suite)] * 4)
    assert all(r.passed for r in results), results


def test_runner_environment_and_signals_are_fresh(sandbox):
    """Set once in the worker (see ``_prepare_worker``), per job only HOME/TMPDIR: what a program sees."""
    program = (
        "import os, signal, sys\n"
        "env = dict(os.environ)\n"
        "assert sorted(env) == ['HOME', 'LANG', 'PATH', 'TMPDIR'], env\n"
        "assert env['HOME'] == env['TMPDIR'] == os.getcwd(), (env, os.getcwd())\n"
        "for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE, signal.SIGALRM):\n"
        "    assert signal.getsignal(sig) == signal.SIG_DFL, sig\n"
        "assert sys.stdin.read() == ''\n"
        "print('to stdout'); print('to stderr', file=sys.stderr)\n"
    )
    results = sandbox.run_batch([(program, TestSuite("assert", asserts=("assert True",)))] * 3)
    assert all(r.passed for r in results), results
    assert {(r.stdout_tail, r.stderr_tail) for r in results} == {("to stdout\n", "to stderr\n")}


# ------------------------------------------------------------------------------------ HumanEval canonical solutions


def _humaneval() -> list[dict]:
    if not HUMANEVAL.exists():
        pytest.skip(f"{HUMANEVAL} not found")
    with gzip.open(HUMANEVAL, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


def test_humaneval_canonical_solutions_pass_and_return_none_fails(sandbox):
    problems = _humaneval()
    assert len(problems) == 164
    suites = [TestSuite("check", check_code=p["test"], entry_point=p["entry_point"]) for p in problems]
    canonical = sandbox.run_batch(
        [(p["prompt"] + p["canonical_solution"], s) for p, s in zip(problems, suites, strict=True)]
    )
    failures = {p["task_id"]: r for p, r in zip(problems, canonical, strict=True) if not r.passed}
    assert not failures, failures
    nones = sandbox.run_batch([(p["prompt"] + "    return None\n", s) for p, s in zip(problems, suites, strict=True)])
    assert not [p["task_id"] for p, r in zip(problems, nones, strict=True) if r.passed]
    assert {r.status for r in nones} <= {"failed", "error"}


# ------------------------------------------------------------------------------------ workers per rank


def test_each_rank_of_a_node_gets_its_share_of_the_cpus():
    assert sandbox_pool.workers_per_rank(cpus=64, ranks_on_node=8) == 8  # 8 GPUs' ranks on one 64-core node
    assert sandbox_pool.workers_per_rank(cpus=6, ranks_on_node=4) == 1  # 6 // 4
    assert sandbox_pool.workers_per_rank(cpus=3, ranks_on_node=8) == 1  # fewer CPUs than ranks: still one worker
    assert sandbox_pool.workers_per_rank(cpus=16, ranks_on_node=0) == 16  # no rank count: the process alone
    # 8 CPUs, 2 workers per rank: ranks 0..3 pin to disjoint pairs; a 3-CPU node wraps around
    assert [sandbox_pool.worker_cpus(list(range(8)), 2, r) for r in range(4)] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert sandbox_pool.worker_cpus([0, 1, 2], 2, local_rank=1) == [2, 0]


def test_default_workers_divide_the_usable_cpus_by_the_local_world_size(monkeypatch):
    monkeypatch.setattr(sandbox_pool.os, "sched_getaffinity", lambda pid: set(range(4, 16)))  # 12 usable CPUs
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert sandbox_pool.default_workers() == 12  # one process: every usable CPU
    assert sandbox_pool.default_workers(ranks_on_node=6) == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun, 4 ranks on this node
    monkeypatch.setenv("LOCAL_RANK", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # no namespaces: nothing runs here
        sb, given = Sandbox(isolation="none"), Sandbox(workers=5, isolation="none")
    assert sb.workers == 3 and [w.cpu for w in sb._all] == [7, 8, 9]  # 12 // 4; rank 1 takes CPUs 4+3 .. 4+5
    assert given.workers == 5  # an explicit number wins
    sb.close()
    given.close()


# ------------------------------------------------------------------------------------ isolation modes


def test_isolation_setting_is_validated():
    with pytest.raises(ValueError, match="isolation must be"):
        Sandbox(isolation="docker")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="workers must be"):
        Sandbox(workers=0, isolation="none")


@RunIf(bwrap=True)
def test_auto_isolation_uses_bubblewrap_where_it_works():
    assert isolation_available()
    with Sandbox(workers=1) as sb:
        assert sb.isolation == "bwrap"
        r = sb.run(
            "import os, socket\nprint(os.getpid(), len(socket.if_nameindex()))\n",
            TestSuite("assert", asserts=("assert True",)),
        )
        pid, interfaces = map(int, r.stdout_tail.split())
        assert r.passed and pid < 100 and interfaces == 1  # own PID namespace; only a (down) loopback device


def test_fallback_without_namespaces_warns_once_and_still_scores_failures(monkeypatch):
    """The no-bubblewrap path: rlimits, process-group kill, and a dead worker restarted (safe programs only)."""
    monkeypatch.setattr(sandbox_pool, "_warned_no_isolation", False)
    with pytest.warns(RuntimeWarning, match="NAMESPACE ISOLATION IS OFF"):
        sb = Sandbox(workers=1, isolation="none")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Sandbox(workers=1, isolation="none").close()  # only once per process
    quick = Limits(timeout_s=1.5, memory_mb=256)
    hostile = {  # program -> acceptable statuses (as root the runner has its own uid: the parent survives)
        ADD + "while True:\n    pass\n": {"timeout"},
        ADD + "import sys\nsys.exit(0)\n": {"error"},
        ADD + "import os\nos._exit(0)\n": {"crashed"},
        ADD + "blocks = [bytearray(10**6) for _ in range(10**5)]\n": {"memory"},
        ADD + "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n": {"error", "crashed"},
        ADD + "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\nwhile True:\n    pass\n": {
            "timeout"
        },
    }
    with sb:
        futures = [(p, sb.submit(p, ADD_CHECK, quick), sb.submit(ADD, ADD_CHECK)) for p in hostile]
        for program, bad, good in futures:
            bad, good = bad.result(), good.result()
            assert bad.status in hostile[program] and good.passed, (program, bad, good)
