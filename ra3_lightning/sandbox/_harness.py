"""The sandbox's worker ("zygote"): runs INSIDE the sandbox, forks one runner per untrusted program.

This file is executed as a script (``python -I _harness.py ...``) inside a bubblewrap sandbox (or, without
bubblewrap, as a plain child process). It imports only the standard library and is never imported by the trainer.

Protocol (newline-delimited JSON on the worker's stdin / stdout):

* the worker first writes ``{"ready": true, ...}``;
* then, per request, two lines: a header ``{"timeout_s": float, "max_output_bytes": int}`` (all the worker itself
  reads) and the runner's job ``{"program": str, "tests": {...TestSuite fields...}, "limits": {...Limits
  fields...}}``, which the worker forwards unparsed (decoding it would only cost pages). It answers with the raw
  facts of the run: ``{"record": str | null, "nonce": str, "timed_out": bool, "exit_code": int | null, "signal":
  int | null, "runtime_s": float, "stdout_tail": str, "stderr_tail": str}``. The trainer turns these facts into an
  :class:`~ra3_lightning.sandbox.types.ExecResult` (``ra3_lightning.sandbox.verdict``).

Per program the worker uses a *runner* it forked ahead of time (while the trainer was busy with the previous
answer): the runner starts a new session, closes every descriptor except its job and result pipes, drops to a
per-job uid where it can (the worker runs as root inside the sandbox), then waits for its job, applies the rlimits,
runs the program and its tests, writes ONE result line carrying a per-job random nonce to the result pipe and
``_exit``s. The worker enforces the wall-clock limit from outside the runner and then kills every process of the
job: with its own PID namespace (bubblewrap) by ``kill(-1, SIGKILL)``, which reaches all processes of the namespace
however they ``setsid``; without one by killing the runner's process group and sweeping the orphans it inherits as
child subreaper. Waiting for the dead and wiping the scratch directory happen after the answer went out.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import select
import signal
import sys
import time
import traceback

# Modules most generated programs import: loading them once here makes them free in every forked runner. Kept short:
# every preloaded page makes each fork (page tables, copy-on-write faults, teardown) a little dearer.
PRELOAD = (
    "bisect",
    "collections",
    "copy",
    "functools",
    "heapq",
    "itertools",
    "math",
    "random",
    "re",
    "string",
    "typing",
)
MAX_RECORD_BYTES = 1 << 20
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 36, 38

_libc = None


def _prctl(option: int, arg: int) -> None:
    """``prctl(2)`` through ctypes, loaded on first use: only the worker without a PID namespace needs it, and every
    shared library the worker maps makes each of its forks dearer."""
    global _libc
    if _libc is None:
        import ctypes

        _libc = ctypes.CDLL(None, use_errno=True)
    _libc.prctl(option, arg, 0, 0, 0)


def _ensure_no_new_privs() -> None:
    """Set ``PR_SET_NO_NEW_PRIVS`` (inherited by every runner) unless it is already set, as bubblewrap does."""
    with open("/proc/self/status") as f:
        if any(line.split() == ["NoNewPrivs:", "1"] for line in f):
            return
    _prctl(PR_SET_NO_NEW_PRIVS, 1)


# ----------------------------------------------------------------------------------------------- runner (child)


def _normalize_output(text: str) -> list[list[str]]:
    """Whitespace-tolerant form of a program's output: lines split into words, blank lines at the ends dropped."""
    return [line.split() for line in text.strip().splitlines()]


def _describe(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()[-500:]


class _Outcome:
    """What the runner reports: per-test booleans, the first error, whether memory ran out."""

    def __init__(self, num_tests: int) -> None:
        self.tests = [False] * num_tests
        self.error: str | None = None
        self.test_error: str | None = None
        self.memory = False

    def fail_exec(self, exc: BaseException) -> None:
        self.error = _describe(exc)
        self.memory = self.memory or isinstance(exc, MemoryError)

    def record_test(self, i: int, exc: BaseException | None) -> None:
        self.tests[i] = exc is None
        if exc is not None:
            self.test_error = self.test_error or f"test {i}: {_describe(exc)}"
            self.memory = self.memory or isinstance(exc, MemoryError)


def _run_assert_style(program: str, tests: dict, out: _Outcome) -> None:
    env: dict = {"__name__": "__sandbox__"}
    try:
        exec(compile(program, "<program>", "exec"), env)
        exec(compile(tests.get("setup_code", ""), "<setup>", "exec"), env)
    except BaseException as exc:  # noqa: B036 — SystemExit / KeyboardInterrupt from the program are failures too
        return out.fail_exec(exc)
    for i, stmt in enumerate(tests.get("asserts", ())):
        try:
            exec(compile(stmt, f"<test {i}>", "exec"), env)
            out.record_test(i, None)
        except BaseException as exc:  # noqa: B036
            out.record_test(i, exc)


def _run_check_style(program: str, tests: dict, out: _Outcome) -> None:
    env: dict = {"__name__": "__sandbox__"}
    try:
        exec(compile(program, "<program>", "exec"), env)
        candidate = env[tests["entry_point"]]
        exec(compile(tests.get("check_code", ""), "<check>", "exec"), env)
        check = env["check"]
    except BaseException as exc:  # noqa: B036
        return out.fail_exec(exc)
    try:
        check(candidate)
        out.record_test(0, None)
    except BaseException as exc:  # noqa: B036
        out.record_test(0, exc)


def _stdio_case(code, stdin_path: str, stdout_path: str) -> int:
    """Fork one process that runs the program as ``__main__`` on one stdin; return its exit status."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.dup2(os.open(stdin_path, os.O_RDONLY), 0)
            os.dup2(os.open(stdout_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 1)
            sys.stdin, sys.stdout = open(0, closefd=False), open(1, "w", closefd=False)  # noqa: SIM115
            exec(code, {"__name__": "__main__"})
            status = 0
        except SystemExit as exc:
            status = 0 if exc.code in (None, 0) else 1
        except BaseException:  # noqa: B036
            traceback.print_exc()
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except BaseException:  # noqa: B036, S110
                    pass
            os._exit(status)
    return os.waitpid(pid, 0)[1]


def _run_stdio_style(program: str, tests: dict, out: _Outcome) -> None:
    try:
        code = compile(program, "<program>", "exec")
    except BaseException as exc:  # noqa: B036
        return out.fail_exec(exc)
    for i, (stdin, expected) in enumerate(tests.get("stdio_cases", ())):
        stdin_path, stdout_path = f".stdin{i}", f".stdout{i}"
        with open(stdin_path, "w") as f:
            f.write(stdin)
        status = _stdio_case(code, stdin_path, stdout_path)
        with open(stdout_path, errors="replace") as f:
            got = f.read()
        if status != 0:
            out.record_test(i, RuntimeError(f"program exited with status {status:#x}"))
        elif _normalize_output(got) != _normalize_output(expected):
            out.record_test(i, AssertionError(f"wrong output: {got[:200]!r}"))
        else:
            out.record_test(i, None)


STYLES = {"assert": _run_assert_style, "check": _run_check_style, "stdio": _run_stdio_style}


def _apply_limits(limits: dict) -> None:
    mb = 1 << 20
    cpu = int(limits["timeout_s"]) + 1
    for name, value in (
        ("RLIMIT_AS", limits["memory_mb"] * mb),
        ("RLIMIT_CPU", cpu),
        ("RLIMIT_NPROC", limits["max_processes"]),
        ("RLIMIT_FSIZE", limits["max_file_mb"] * mb),
        ("RLIMIT_NOFILE", limits["max_open_files"]),
        ("RLIMIT_CORE", 0),
    ):
        which = getattr(resource, name)
        hard = value + 1 if name == "RLIMIT_CPU" else value  # SIGXCPU at the soft limit, SIGKILL one second later
        current = resource.getrlimit(which)[1]
        if current != resource.RLIM_INFINITY:  # already unprivileged: limits can only go down
            value, hard = min(value, current), min(hard, current)
        resource.setrlimit(which, (value, hard))


def _isolate_runner(jobdir: str, job_fd: int, result_fd: int, hidden: int, uid: int | None, pidns: bool) -> None:
    """Make this forked process a runner: own session, fresh fds, unprivileged uid (rlimits come later); the result
    pipe moves to fd ``hidden``. ``PR_SET_NO_NEW_PRIVS`` and the environment it inherits from the worker."""
    os.setsid()
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    for fd, name in ((1, ".stdout"), (2, ".stderr")):
        os.dup2(os.open(os.path.join(jobdir, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), fd)
    os.dup2(result_fd, hidden)
    os.dup2(job_fd, 3)
    os.closerange(4, hidden)
    os.closerange(hidden + 1, 1 << 16)
    os.chdir(jobdir)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # the only disposition the worker wants different
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    if not pidns:  # with one, the namespace dies with the worker; the uid change above clears the flag
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    # sys.stdin/stdout/stderr already wrap fds 0/1/2, which now point at the job's files; the worker never uses
    # these objects (it reads and writes raw fds), so their buffers are empty and new ones would only cost pages.


def _read_job(fd: int) -> dict:
    data = bytearray()
    while chunk := os.read(fd, 1 << 16):
        data += chunk
    os.close(fd)
    return json.loads(data)


def _runner(jobdir: str, job_fd: int, result_fd: int, hidden: int, nonce: str, uid: int | None, pidns: bool) -> None:
    """Body of the forked runner; never returns. Forked ahead of time, it isolates itself, then waits for its job
    on ``job_fd``. The result line is written only after the last test."""
    write, dumps, exit_ = os.write, json.dumps, os._exit  # bound before untrusted code can replace them
    _isolate_runner(jobdir, job_fd, result_fd, hidden, uid, pidns)
    job = _read_job(3)
    _apply_limits(job["limits"])
    tests = job["tests"]
    out = _Outcome({"assert": len(tests["asserts"]), "check": 1, "stdio": len(tests["stdio_cases"])}[tests["style"]])
    STYLES[tests["style"]](job["program"], tests, out)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: B036, S110
            pass
    line = dumps(
        {"nonce": nonce, "tests": out.tests, "error": out.error, "test_error": out.test_error, "memory": out.memory}
    )
    write(hidden, (line + "\n").encode())
    exit_(0)


# ----------------------------------------------------------------------------------------------- worker (parent)


class Worker:
    """The long-lived process that forks a runner per program and cleans up after it."""

    def __init__(self, scratch: str, pidns: bool, uid_base: int | None) -> None:
        self.scratch = scratch
        self.pidns = pidns and os.getpid() == 2 and os.getppid() == 1 and _pid1_is_bwrap()
        if pidns and not self.pidns:
            raise SystemExit("harness: --pidns given but this process is not in a fresh bubblewrap PID namespace")
        self.uid_base = uid_base
        self.jobs = 0
        self.pending: int | None = None
        self.keep = _entries_holding_mounts(scratch)  # e.g. a venv under /tmp bound back read-only: never wiped
        if not self.pidns:
            _prctl(PR_SET_CHILD_SUBREAPER, 1)
        _ensure_no_new_privs()
        self._wipe_scratch()  # leftovers of a predecessor that was killed mid-job
        self.prefork()

    def prefork(self) -> None:
        """Fork the next job's runner now, so that fork and isolation overlap with the trainer's round trip."""
        self.jobs += 1
        uid = None if self.uid_base is None else self.uid_base + self.jobs % 4096
        jobdir = os.path.join(self.scratch, f"job{self.jobs}-{os.urandom(4).hex()}")
        os.mkdir(jobdir, 0o700)
        if uid is not None:
            os.chown(jobdir, uid, uid)
        nonce = os.urandom(16).hex()
        hidden = 200 + int.from_bytes(os.urandom(2), "little") % 700  # the result fd; obscurity only: docs/sandbox.md
        # Set here, not in the runner: the runner inherits them and writes one page fewer (see _prepare_worker).
        os.environ["HOME"] = os.environ["TMPDIR"] = jobdir
        r, w = os.pipe()
        job_r, job_w = os.pipe()
        gc.freeze()  # the child's collector then skips the worker's objects: no copy-on-write of all their pages
        pid = os.fork()
        if pid == 0:
            try:
                os.close(r)
                os.close(job_w)
                _runner(jobdir, job_r, w, hidden, nonce, uid, self.pidns)
            finally:
                os._exit(70)
        os.close(w)
        os.close(job_r)
        self.spare = (pid, r, job_w, nonce, jobdir)

    def run(self, header: dict, line: bytes) -> dict:
        """Hand one job to the spare runner and return its facts; clean-up after a report waits for :meth:`finish`."""
        pid, r, job_w, nonce, jobdir = self.spare
        start = time.monotonic()
        try:
            _write_all(job_w, line)
        except BrokenPipeError:  # the spare runner died before its job came (it is scored as crashed)
            pass
        os.close(job_w)
        record, timed_out = _collect(r, pid, start + header["timeout_s"])
        facts = {"record": record, "nonce": nonce, "timed_out": timed_out, "runtime_s": time.monotonic() - start}
        os.close(r)
        self._signal_all(pid)
        if record is not None and record.endswith("\n"):  # reported: the exit status does not matter
            facts.update(exit_code=None, signal=None)
            self.pending = pid
        else:
            facts.update(_exit_facts(self._reap(pid)))
            self.pending = None
        facts.update(_tails(jobdir, header["max_output_bytes"]))
        return facts

    def finish(self) -> None:
        """Clean up after the last job and fork the next runner (after the answer went out: this overlaps with the
        trainer's work)."""
        if self.pending is not None:
            self._reap(self.pending)
        self.pending = None
        self._wipe_scratch()
        self.prefork()

    def _signal_all(self, pid: int) -> None:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.pidns:
            os.kill(-1, signal.SIGKILL)

    def _reap(self, pid: int) -> int:
        """Wait for the runner and make sure every other process of the job is gone; return the wait status."""
        status = os.waitpid(pid, 0)[1]
        if self.pidns:
            _kill_namespace()
        else:
            _kill_orphans()
        return status

    def _wipe_scratch(self) -> None:
        """Remove everything in the scratch directory but the mounts bound back into it. Runs after every process
        of the job is dead, so nothing changes under it (no symlink races); entries it cannot remove stay."""
        with os.scandir(self.scratch) as entries:
            for entry in entries:
                if entry.path not in self.keep:
                    _remove(entry)


def _remove(entry: os.DirEntry) -> None:
    try:
        if entry.is_dir(follow_symlinks=False):
            with os.scandir(entry.path) as entries:
                for inner in entries:
                    _remove(inner)
            os.rmdir(entry.path)
        else:
            os.unlink(entry.path)
    except OSError:
        pass


def _entries_holding_mounts(root: str) -> set[str]:
    """Top-level entries of ``root`` that are, or contain, a mount point (read from ``/proc/self/mountinfo``)."""
    keep = set()
    try:
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4] for line in f]
    except OSError:
        return keep
    for point in points:
        if point.startswith(root.rstrip("/") + "/"):
            keep.add(os.path.join(root, point[len(root.rstrip("/")) + 1 :].split("/")[0]))
    return keep


def _pid1_is_bwrap() -> bool:
    try:
        with open("/proc/1/cmdline", "rb") as f:
            return os.path.basename(f.read().split(b"\0")[0]) == b"bwrap"
    except OSError:
        return False


def _collect(r: int, pid: int, deadline: float) -> tuple[str | None, bool]:
    """Read the runner's result pipe until it exits or the deadline passes; return (record line, timed out)."""
    pidfd = os.pidfd_open(pid)
    buf = bytearray()
    timed_out = False
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            ready, _, _ = select.select([r, pidfd], [], [], remaining)
            if r in ready:
                chunk = os.read(r, 65536)
                buf += chunk
                if not chunk or b"\n" in chunk or len(buf) > MAX_RECORD_BYTES:
                    break
            elif pidfd in ready:
                os.set_blocking(r, False)
                buf += _drain(r)
                break
    finally:
        os.close(pidfd)
    return (buf[:MAX_RECORD_BYTES].decode("utf-8", "replace") if buf else None), timed_out


def _drain(fd: int) -> bytes:
    data = bytearray()
    while len(data) <= MAX_RECORD_BYTES:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    return bytes(data)


def _kill_namespace() -> None:
    """SIGKILL every process of this PID namespace except pid 1 and ourselves; wait until they are gone."""
    me = os.getpid()
    for _ in range(5000):
        if not [p for p in os.listdir("/proc") if p.isdigit() and int(p) not in (1, me)]:
            return
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            pass
        time.sleep(0.0005)


def _kill_orphans() -> None:
    """Without a PID namespace: kill (and reap) every orphan re-parented to us as child subreaper."""
    me = os.getpid()
    for _ in range(1000):
        orphans = _children_of(me)
        if not orphans:
            return
        for p in orphans:
            for kill in (os.killpg, os.kill):
                try:
                    kill(p, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        _reap_children()


def _children_of(ppid: int) -> list[int]:
    kids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if int(fields[1]) == ppid:
            kids.append(int(name))
    return kids


def _reap_children() -> None:
    """Collect every exited child (orphans we inherited) without blocking."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _exit_facts(status: int) -> dict:
    if os.WIFSIGNALED(status):
        return {"exit_code": None, "signal": os.WTERMSIG(status)}
    return {"exit_code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None, "signal": None}


def _tails(jobdir: str, limit: int) -> dict:
    """The last ``limit`` bytes of the job's stdout and stderr (most programs print nothing: one ``stat`` each)."""
    tails = {}
    for name in ("stdout", "stderr"):
        path = os.path.join(jobdir, "." + name)
        try:
            size = os.stat(path).st_size
            tails[name + "_tail"] = _read_tail(path, size, limit) if size else ""
        except OSError:
            tails[name + "_tail"] = ""
    return tails


def _read_tail(path: str, size: int, limit: int) -> str:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, limit, max(0, size - limit)).decode("utf-8", "replace")
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


def _write_line(obj: dict) -> None:
    _write_all(1, (json.dumps(obj) + "\n").encode())


WARM_UP = """
import math
from collections import Counter
class _C:
    def m(self, x: int) -> list[int]:
        return [i * x for i in range(3) if i] + list({k: v for k, v in {1: 2}.items()})
def _f(a, b=2, *args, **kw):
    s = f"{a!r}:{b:>3}"
    try:
        assert a and b, "msg"
    except (AssertionError, ValueError) as e:
        s += str(e)
    finally:
        pass
    for i, j in zip(range(2), "ab"):
        while False:
            break
    return (lambda y: y)(s), sorted({3, 1}, key=lambda v: -v), Counter("aab").most_common(1)
_f(1)
_C().m(2)
"""


def _prepare_worker() -> None:
    """Everything every runner would otherwise do for itself, done once: after a fork each page a process writes
    costs a copy-on-write fault, so work done here is work no runner repeats.

    Preloads common modules, runs the compiler, ``exec``, JSON and exception formatting once (their lazy state,
    e.g. the AST types the first ``compile`` creates, then lives in pages the runners only read), and sets the
    environment and the signal dispositions that runners keep.
    """
    for name in PRELOAD:
        __import__(name)
    exec(compile(WARM_UP, "<warm-up>", "exec"), {"__name__": "__warm_up__"})
    json.loads(json.dumps({"a": [True, None, 1.5, "x"], "b": {"c": 1}}))
    for bad in ("raise ValueError('warm-up')", "return 1 )"):  # a runtime error and a syntax error
        try:
            exec(compile(bad, "<warm-up>", "exec"), {})
        except (ValueError, SyntaxError) as exc:
            _describe(exc)
    os.environ.clear()
    os.environ.update(PATH="/usr/local/bin:/usr/bin:/bin", LANG="C.UTF-8")
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # runners: oversized writes raise OSError in the program instead
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # worker: a dead runner's job pipe raises instead of killing us


def main(argv: list[str]) -> None:
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--scratch", required=True)
    p.add_argument("--pidns", action="store_true")
    p.add_argument("--uid-base", type=int, default=None)
    p.add_argument("--parent-pid", type=int, default=None)
    p.add_argument("--site-dir", action="append", default=[])
    args = p.parse_args(argv)
    sys.path.extend(args.site_dir)
    if args.parent_pid is not None:  # without bubblewrap's --die-with-parent: die with the trainer
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != args.parent_pid:
            raise SystemExit("harness: parent already gone")
    _prepare_worker()
    worker = Worker(args.scratch, args.pidns, args.uid_base)
    stdin = open(0, "rb", closefd=False)  # noqa: SIM115
    _write_line({"ready": True, "pid": os.getpid(), "uid": os.getuid(), "pidns": worker.pidns})
    for header in stdin:
        line = stdin.readline()
        try:
            _write_line(worker.run(json.loads(header), line))
            worker.finish()
        except Exception as exc:  # a bug in the worker itself: report it instead of hanging the trainer
            _write_line({"worker_error": _describe(exc)})


if __name__ == "__main__":
    main(sys.argv[1:])
