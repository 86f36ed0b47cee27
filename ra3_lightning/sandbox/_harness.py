"""The sandbox's processes: runs INSIDE the sandbox; a zygote forks one candidate per program, a judge tests it.

This file is executed as a script (``python -I -S /ra3-harness/_harness.py ...``) inside a bubblewrap sandbox,
which sees only it and its siblings of this package (``_wire.py``, ``_judge.py``, ``_cleanup.py``), bound
read-only; or, without bubblewrap, as a plain child process. It imports only the standard library and those
siblings and is never imported by the trainer.

Three kinds of process per sandbox worker:

* the **zygote** (this script's main process, root inside the sandbox where it can be): it never sees a job's
  program or tests. Per job it forks a **candidate** ahead of time, hands the candidate's channel to the judge,
  enforces the wall-clock limit from outside and kills and reaps everything of the job afterwards;
* the **judge** (forked once at start, before any job, then under its own uid; ``_judge.serve_jobs``): it reads
  each job from the trainer on a pipe the zygote never reads, runs the tests itself against values the candidate
  sends as plain data, and writes the result line back to the trainer on a second such pipe. It never forks, so
  no program ever runs in a copy of memory that holds tests or results;
* the **candidate** (one per job, its own uid and session, rlimits): runs the program and answers the judge.

Protocol with the trainer: on the zygote's stdin / stdout (newline-delimited JSON), ``{"ready": true, ...}`` first,
then per job a header ``{"timeout_s": float, "max_output_bytes": int}`` in and the facts of the run out:
``{"judged": bool, "timed_out": bool, "runtime_s": float, "exit_code": int | null, "signal": int | null,
"cpu_s": float | null, "cpu_exceeded": bool, "stdout_tail": str, "stderr_tail": str}`` (``exit_code``, ``signal``,
``cpu_s``: how the candidate ended, if it did so before the judge finished). The job itself ``{"nonce", "program",
"tests", "limits"}`` goes to the judge on ``--job-fd``, and, where ``judged``, the judge's result line is waiting on
``--record-fd``. The trainer turns both into an :class:`~ra3_lightning.sandbox.types.ExecResult`
(``ra3_lightning.sandbox.verdict``). A zygote that could not clean up after a job answers the next header with
``{"unclean": why}`` instead, without running it, and exits: the trainer runs that job on a fresh worker.

Killing a job: the candidate's session by ``killpg``, and then every process that escaped it — with a PID
namespace (bubblewrap) every process of the namespace but pid 1, the zygote and the judge; without one every orphan
re-parented to the zygote as child subreaper. Waiting for the dead, removing what the job left (its files, its
System V and POSIX IPC objects: ``_cleanup.py``) and forking the next candidate happen after the answer went out.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import select
import signal
import socket
import sys
import time


def _load_sibling(name: str):
    """Import ``<name>.py`` from this file's directory (it is not on ``sys.path``: ``-I``)."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


if __package__:
    from . import _cleanup, _judge
else:
    _wire = _load_sibling("_wire")
    _judge = _load_sibling("_judge")
    _cleanup = _load_sibling("_cleanup")

# Modules most generated programs import: loading them once here makes them free in every forked candidate. Kept
# short: every preloaded page makes each fork (page tables, copy-on-write faults, teardown) a little dearer.
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
JUDGE_GRACE_S = 5.0  # after the candidate is killed at the deadline, how long the judge may take to report
CLEANUP_BUDGET_S = 5.0  # a clean-up that takes longer fails (the worker is replaced): within pool.BACKSTOP_SLACK_S
PATH_FD_BASE = 1000  # descriptors of interpreter directories candidates reach through /proc (_expose_hidden_paths)
JUDGE_UID_OFFSET = 4096  # candidate uids are uid_base + job % 4096; the judge's is uid_base + 4096
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 4, 36, 38
CLONE_NEWIPC = 0x08000000
SHARED_DIRS = ("/tmp", "/var/tmp", "/dev/shm")  # without a mount namespace: world-writable places jobs may write

_libc = None


def _prctl(option: int, arg: int) -> None:
    """``prctl(2)`` through ctypes, loaded on first use: only a zygote without a PID namespace and the judge need it,
    and every shared library the zygote maps makes each of its forks dearer."""
    global _libc
    if _libc is None:
        import ctypes

        _libc = ctypes.CDLL(None, use_errno=True)
    _libc.prctl(option, arg, 0, 0, 0)


def _unshare(flags: int) -> None:
    """``unshare(2)`` (``os.unshare`` from Python 3.12 on, else through ctypes)."""
    global _libc
    if hasattr(os, "unshare"):
        os.unshare(flags)
        return
    if _libc is None:
        import ctypes

        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.unshare(flags) != 0:
        import ctypes

        raise OSError(ctypes.get_errno(), "unshare failed")


def _can_unshare_ipc() -> bool:
    """Whether a child of this process may enter a new IPC namespace (root with ``CAP_SYS_ADMIN``)."""
    pid = os.fork()
    if pid == 0:
        try:
            _unshare(CLONE_NEWIPC)
            os._exit(0)
        finally:
            os._exit(1)
    return os.waitpid(pid, 0)[1] == 0


def _ensure_no_new_privs() -> None:
    """Set ``PR_SET_NO_NEW_PRIVS`` (inherited by every child) unless it is already set, as bubblewrap does."""
    with open("/proc/self/status") as f:
        if any(line.split() == ["NoNewPrivs:", "1"] for line in f):
            return
    _prctl(PR_SET_NO_NEW_PRIVS, 1)


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


def _close_fds_except(keep: set[int]) -> None:
    low = 0
    for fd in sorted(keep):
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 16)


def _drop_privileges(uid: int | None, pidns: bool) -> None:
    """Become ``uid`` (where the zygote is root) and, without a PID namespace, die with the parent."""
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    if not pidns:  # with one, the namespace dies with the zygote; a uid change clears the flag, so set it after
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


# ----------------------------------------------------------------------------------------------------- candidate


def _candidate(jobdir: str, to_r: int, from_w: int, uid: int | None, pidns: bool, keep: tuple[int, ...],
               ipc_ns: bool) -> None:  # fmt: skip
    """Body of a forked candidate; never returns. Own session, fds 0-2 on ``/dev/null`` and the job's output files,
    its channel from and to the judge, its own uid (and, with ``ipc_ns``, its own IPC namespace); then it serves the
    judge (``_judge.Candidate``), which applies the rlimits before the program runs."""
    os.setsid()
    if ipc_ns:  # without bubblewrap, as root: the job's IPC objects die with its last process
        _unshare(CLONE_NEWIPC)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    for fd, name in ((1, ".stdout"), (2, ".stderr")):
        os.dup2(os.open(os.path.join(jobdir, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), fd)
    _close_fds_except({0, 1, 2, to_r, from_w, *keep})
    os.chdir(jobdir)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # the only disposition the zygote wants different
    _drop_privileges(uid, pidns)
    # sys.stdin/stdout/stderr already wrap fds 0/1/2, which now point at the job's files; the zygote never uses
    # these objects (it reads and writes raw fds), so their buffers are empty and new ones would only cost pages.
    _judge.Candidate(to_r, from_w, _apply_limits).serve()


# --------------------------------------------------------------------------------------------------------- judge


def _start_judge(args, uid: int | None, pidns: bool, keep: tuple[int, ...]) -> tuple[int, socket.socket]:
    """Fork the judge, before any job exists; it keeps the trainer's job and record pipes, the zygote drops them.
    Returns its pid and the zygote's end of the control socket (candidate channels out, "done" bytes in)."""
    mine, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        try:
            mine.close()
            null = os.open(os.devnull, os.O_RDWR)
            os.dup2(null, 0)
            os.dup2(null, 1)  # test code that prints must not write into the zygote's answers
            _close_fds_except({0, 1, 2, args.job_fd, args.record_fd, theirs.fileno(), *keep})
            os.chdir("/")
            _drop_privileges(uid, pidns)
            _prctl(PR_SET_DUMPABLE, 0)  # no process of the same uid may trace it or read its memory
            _limit_judge_memory(args.judge_memory_mb)
            _judge.serve_jobs(args.job_fd, args.record_fd, theirs)
        finally:
            os._exit(70)
    theirs.close()
    os.close(args.job_fd)
    os.close(args.record_fd)
    if mine.recv(1) != b"r":
        raise SystemExit("harness: the judge failed to start")
    return pid, mine


def _limit_judge_memory(memory_mb: int) -> None:
    """Cap the judge's address space, so that a program sending a huge value makes a ``MemoryError``, not an OOM."""
    limit = memory_mb << 20
    current = resource.getrlimit(resource.RLIMIT_AS)[1]
    if current != resource.RLIM_INFINITY:
        limit = min(limit, current)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


# -------------------------------------------------------------------------------------------------------- zygote


class Worker:
    """The long-lived zygote: forks a candidate per program, hands it to the judge, and cleans up after it."""

    def __init__(self, scratch: str, pidns: bool, uid_base: int | None, judge: tuple[int, socket.socket],
                 keep_fds: tuple[int, ...] = (), ipc_ns: bool = False) -> None:  # fmt: skip
        self.scratch = scratch
        self.pidns = pidns  # bubblewrap: this worker's own PID, mount and IPC namespaces
        self.uid_base = uid_base
        self.judge_pid, self.judge = judge
        self.keep_fds = keep_fds  # descriptors every candidate keeps open (see _expose_hidden_paths)
        self.ipc_ns = ipc_ns  # each candidate enters an IPC namespace of its own
        # bubblewrap mounts an mqueue file system at /dev/mqueue; the host may have one
        self.ipc = _cleanup.Ipc(_cleanup.mount_of_type("mqueue"))
        self.ipc_before: set[tuple[str, int | str]] = set()  # without a uid or namespace of the jobs' own (see _ipc)
        self.jobs = 0
        self.pending: int | None = None
        self.scratch_fd = os.open(scratch, os.O_RDONLY | os.O_DIRECTORY)
        self.keep = _entries_holding_mounts(scratch)  # e.g. a venv under /tmp bound back read-only: never wiped
        problem = self._clean()  # leftovers of a predecessor that was killed mid-job
        if problem:
            raise SystemExit(f"harness: {problem}")
        self.prefork()

    def prefork(self) -> None:
        """Fork the next job's candidate now, so that fork and isolation overlap with the trainer's round trip, and
        give the judge its end of the candidate's channel."""
        self.jobs += 1
        uid = None if self.uid_base is None else self.uid_base + self.jobs % JUDGE_UID_OFFSET
        jobdir = os.path.join(self.scratch, f"job{self.jobs}-{os.urandom(4).hex()}")
        os.mkdir(jobdir, 0o700)
        if uid is not None:
            os.chown(jobdir, uid, uid)
        # Set here, not in the candidate: it inherits them and writes one page fewer (see _prepare_worker).
        os.environ["HOME"] = os.environ["TMPDIR"] = jobdir
        if not self.pidns and self.uid_base is None:
            self.ipc_before = {o[:2] for o in self.ipc.objects()}
        to_r, to_w = os.pipe()
        from_r, from_w = os.pipe()
        gc.freeze()  # the child's collector then skips the zygote's objects: no copy-on-write of all their pages
        pid = os.fork()
        if pid == 0:
            try:
                _candidate(jobdir, to_r, from_w, uid, self.pidns, self.keep_fds, self.ipc_ns)
            finally:
                os._exit(70)
        socket.send_fds(self.judge, [b"c"], [to_w, from_r])
        for fd in (to_r, to_w, from_r, from_w):
            os.close(fd)
        self.spare = (pid, jobdir)

    def run(self, header: dict) -> dict:
        """Wait until the judge has tested the spare candidate (or the deadline) and return the facts of the run;
        clean-up waits for :meth:`finish` unless the deadline passed."""
        pid, jobdir = self.spare
        start = time.monotonic()
        judged = on_time = self._await_judge(start + header["timeout_s"])
        facts: dict = {"runtime_s": time.monotonic() - start, "exit_code": None, "signal": None, "cpu_s": None}
        facts.update(_early_exit(pid))
        facts["cpu_exceeded"] = (facts["cpu_s"] or 0.0) >= int(header["timeout_s"]) + 1  # SIGKILL at the hard limit
        self._signal_all(pid)
        self.pending = pid
        if not judged:  # kill all of the job, so that the judge sees the channel close, and let it report
            self._reap(pid)
            self.pending = None
            judged = self._await_judge(time.monotonic() + JUDGE_GRACE_S)
        facts.update(judged=judged, timed_out=not on_time)
        return {**facts, **_tails(jobdir, header["max_output_bytes"])}

    def finish(self) -> str | None:
        """Clean up after the last job and fork the next candidate (after the answer went out: this overlaps with
        the trainer's work). Returns why this worker cannot take another job, if it cannot (it must then be
        replaced: whatever the last program left must not reach the next one)."""
        try:
            if self.pending is not None:
                self._reap(self.pending)
            self.pending = None
            problem = self._clean()
            if problem is None:
                self.prefork()
            return problem
        except Exception as exc:  # noqa: BLE001 — whatever broke, the worker is not fit for another job
            return f"clean-up failed: {_judge.describe(exc)}"

    def _await_judge(self, deadline: float) -> bool:
        """Whether the judge reported "done" before ``deadline``; exits the zygote if the judge is gone."""
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([self.judge], [], [], remaining)[0]:
            return False
        if self.judge.recv(1) != b"d":
            raise SystemExit("harness: the judge died")
        return True

    def _signal_all(self, pid: int) -> None:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def _reap(self, pid: int) -> None:
        """Wait for the candidate and make sure every other process of the job is gone."""
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:  # already reaped by _early_exit
            pass
        if self.pidns:
            _kill_namespace(spare={1, os.getpid(), self.judge_pid})
        else:
            _kill_orphans(spare={self.judge_pid})

    def _clean(self) -> str | None:
        """Remove what the last job left: its files and its IPC objects (its processes are dead by now, so nothing
        changes under us). Returns what could not be removed, if anything."""
        deadline = time.monotonic() + CLEANUP_BUDGET_S
        left = _cleanup.wipe_dir(self.scratch_fd, self.keep, deadline)
        if left:
            return f"could not remove {left[:3]} from the scratch directory within {CLEANUP_BUDGET_S:g} s"
        if not self.pidns and self.uid_base is not None:  # no mount namespace: job uids may write in /tmp & co.
            owners = range(self.uid_base, self.uid_base + JUDGE_UID_OFFSET + 1)
            left = [f"{d}/{name}" for d in SHARED_DIRS for name in _cleanup.wipe_owned(d, owners, deadline)]
            if left:
                return f"could not remove {left[:3]}"
        left = self._ipc()
        if left:
            self.ipc.remove(left, as_creator=os.geteuid() == 0)
            left = self._ipc()
            if left:
                return f"could not remove the IPC objects {left[:3]} (kind, id, creator uid)"
        return None

    def _ipc(self) -> list[tuple[str, int | str, int]]:
        """The IPC objects the last job (or the judge) may have left: System V objects, POSIX message queues.

        With bubblewrap this worker has an IPC namespace of its own, so everything in it; without, as root, those
        of the job uids (the judge's included); as a normal user, those of our uid that did not exist before the
        job (objects another process of yours made meanwhile cannot be told apart from the job's).
        """
        if not self.ipc.maybe_any():
            return []
        found = self.ipc.objects()
        if self.pidns:
            return found
        if self.uid_base is not None:
            return [o for o in found if self.uid_base <= o[2] <= self.uid_base + JUDGE_UID_OFFSET]
        return [o for o in found if o[2] == os.getuid() and o[:2] not in self.ipc_before]


def _early_exit(pid: int) -> dict:
    """How the candidate ended, if it did before being killed (reaps it then); else nothing."""
    try:
        done, status, usage = os.wait4(pid, os.WNOHANG)
    except ChildProcessError:
        return {}
    if not done:
        return {}
    return {**_exit_facts(status), "cpu_s": usage.ru_utime + usage.ru_stime}


def _entries_holding_mounts(root: str) -> set[str]:
    """Names of the entries of ``root`` that are, or contain, a mount point (read from ``/proc/self/mountinfo``)."""
    keep = set()
    try:
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4] for line in f]
    except OSError:
        return keep
    for point in points:
        if point.startswith(root.rstrip("/") + "/"):
            keep.add(point[len(root.rstrip("/")) + 1 :].split("/")[0])
    return keep


def _pid1_is_bwrap() -> bool:
    try:
        with open("/proc/1/cmdline", "rb") as f:
            return os.path.basename(f.read().split(b"\0")[0]) == b"bwrap"
    except OSError:
        return False


def _kill_namespace(spare: set[int]) -> None:
    """SIGKILL every process of this PID namespace but ``spare``; wait until they are gone (bwrap's pid 1 reaps
    the orphans)."""
    for _ in range(5000):
        others = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) not in spare]
        if not others:
            return
        for p in others:
            try:
                os.kill(p, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        _reap_children()
        time.sleep(0.0005)


def _kill_orphans(spare: set[int]) -> None:
    """Without a PID namespace: kill (and reap) every orphan re-parented to us as child subreaper."""
    me = os.getpid()
    for _ in range(1000):
        orphans = [p for p in _children_of(me) if p not in spare]
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
    """The last ``limit`` bytes of the job's stdout and stderr (most programs print nothing: one ``lstat`` each).

    Read without following links: the program owns its job directory and could have replaced ``.stdout`` by a link
    to a file only the zygote may read.
    """
    tails = {}
    for name in ("stdout", "stderr"):
        path = os.path.join(jobdir, "." + name)
        try:
            empty = os.lstat(path).st_size == 0
            tails[name + "_tail"] = "" if empty else _read_tail(path, limit)
        except OSError:
            tails[name + "_tail"] = ""
    return tails


def _read_tail(path: str, limit: int) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        size = os.fstat(fd).st_size
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
    """Everything every candidate would otherwise do for itself, done once: after a fork each page a process writes
    costs a copy-on-write fault, so work done here is work no candidate repeats.

    Preloads common modules, runs the compiler, ``exec``, the judge protocol (on a loopback), JSON and exception
    formatting once (their lazy state, e.g. the AST types the first ``compile`` creates, and their specialised
    bytecode then live in pages the candidates only read), and sets the environment and the signal dispositions
    that candidates keep.
    """
    for name in PRELOAD:
        __import__(name)
    exec(compile(WARM_UP, "<warm-up>", "exec"), {"__name__": "__warm_up__"})
    _judge.warm_up(rounds=20)
    for bad in ("raise ValueError('warm-up')", "return 1 )"):  # a runtime error and a syntax error
        try:
            exec(compile(bad, "<warm-up>", "exec"), {})
        except (ValueError, SyntaxError) as exc:
            _judge.describe(exc)
    os.environ.clear()
    os.environ.update(PATH="/usr/local/bin:/usr/bin:/bin", LANG="C.UTF-8")
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # candidates: oversized writes raise OSError in the program
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # zygote and judge: a dead peer's pipe raises instead of killing


def _hidden_ancestor(path: str) -> str | None:
    """The outermost directory on ``path`` that other users cannot traverse (e.g. ``/root``), if any."""
    current = "/"
    for part in path.split(os.sep)[1:]:
        current = os.path.join(current, part)
        try:
            if not os.stat(current).st_mode & 0o001:
                return current
        except OSError:
            return None
    return None


def _relink(path: str, links: dict[str, str]) -> str:
    for root, link in links.items():
        if path == root or path.startswith(root + os.sep):
            return link + path[len(root) :]
    return path


def _expose_hidden_paths() -> tuple[int, ...]:
    """Without a mount namespace, as root: let candidates (unprivileged uids) import from the interpreter's
    directories under a directory other users cannot traverse (a pyenv in ``/root``, mode 0700).

    Each such ``sys.path`` directory is opened once (``O_PATH``) on a descriptor every candidate keeps, and
    ``sys.path`` and the ``__path__`` of loaded packages name it as ``/proc/self/fd/N``: following that link needs
    no search permission on the hidden ancestor, only on the directory itself and below. Returns the descriptors.
    """
    dirs = [p for p in dict.fromkeys(sys.path) if p.startswith(os.sep) and os.path.isdir(p) and _hidden_ancestor(p)]
    outer = [p for p in dirs if not any(p != q and p.startswith(q + os.sep) for q in dirs)]
    links = {}
    for i, path in enumerate(outer):
        fd = os.open(path, os.O_PATH | os.O_DIRECTORY)
        os.dup2(fd, PATH_FD_BASE + i)
        os.close(fd)
        links[path] = f"/proc/self/fd/{PATH_FD_BASE + i}"
    sys.path[:] = [_relink(p, links) for p in sys.path]
    for module in list(sys.modules.values()):
        search = getattr(module, "__path__", None)
        if isinstance(search, list):
            search[:] = [_relink(p, links) for p in search]
    sys.path_importer_cache.clear()
    return tuple(range(PATH_FD_BASE, PATH_FD_BASE + len(outer)))


def _parse_args(argv: list[str]):
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--scratch", required=True)
    p.add_argument("--job-fd", type=int, required=True)
    p.add_argument("--record-fd", type=int, required=True)
    p.add_argument("--judge-memory-mb", type=int, default=4096)
    p.add_argument("--pidns", action="store_true")
    p.add_argument("--uid-base", type=int, default=None)
    p.add_argument("--parent-pid", type=int, default=None)
    p.add_argument("--site-dir", action="append", default=[])
    p.add_argument("--cpu", type=int, default=None)
    return p.parse_args(argv)


def _setup(args) -> tuple[bool, tuple[int, ...]]:
    """Checks and process settings before any child exists; returns (PID namespace?, descriptors to keep)."""
    pidns = args.pidns and os.getpid() == 2 and os.getppid() == 1 and _pid1_is_bwrap()
    if args.pidns and not pidns:
        raise SystemExit("harness: --pidns given but this process is not in a fresh bubblewrap PID namespace")
    if args.parent_pid is not None:  # without bubblewrap's --die-with-parent: die with the trainer
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != args.parent_pid:
            raise SystemExit("harness: parent already gone")
    if not pidns:
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
    _ensure_no_new_privs()
    return pidns, (_expose_hidden_paths() if args.uid_base is not None and not pidns else ())


def main(argv: list[str]) -> None:
    args = _parse_args(argv)
    if args.cpu is not None:  # judge and candidates on one CPU: a hand-over between them then costs no wake-up IPI
        os.sched_setaffinity(0, {args.cpu})
    sys.path.extend(args.site_dir)
    _prepare_worker()
    pidns, keep_fds = _setup(args)
    judge_uid = None if args.uid_base is None else args.uid_base + JUDGE_UID_OFFSET
    judge = _start_judge(args, judge_uid, pidns, keep_fds)
    ipc_ns = not pidns and os.geteuid() == 0 and _can_unshare_ipc()
    worker = Worker(args.scratch, pidns, args.uid_base, judge, keep_fds, ipc_ns)
    stdin = open(0, "rb", closefd=False)  # noqa: SIM115
    _write_line({"ready": True, "pid": os.getpid(), "uid": os.getuid(), "pidns": worker.pidns, "ipc_ns": ipc_ns})
    problem = None
    for header in stdin:
        if problem is not None:  # the trainer runs this job on a fresh worker; no sample is charged for our failure
            _write_line({"unclean": problem})
            return
        try:
            _write_line(worker.run(json.loads(header)))
        except Exception as exc:  # a bug in the zygote itself: report it instead of hanging the trainer
            _write_line({"worker_error": _judge.describe(exc)})
            return
        problem = worker.finish()


if __name__ == "__main__":
    main(sys.argv[1:])
