"""The two ends of one sandboxed job: the *judge* runs a task's tests, the *candidate* runs the untrusted program.

Both are processes of one sandbox worker (``_harness.py``): the candidate is forked per job by the zygote, which
never holds a job, and runs under the job's own uid; the judge is forked once, before any job, runs under a uid of
its own, never forks, and gets each job from the trainer on a pipe the zygote does not read (:func:`serve_jobs`).
The judge runs the task's test code itself. Every name the tests use that the program defines (the entry point, a
``Solution`` class, a helper) is a :class:`Remote` in the judge: calling it, or reading an attribute of it, is a
request to the candidate, which runs the program's code and answers with the result as plain data (:mod:`._wire`)
or as a new handle. So the assertions compare values of built-in types, built by the judge, with the judge's own
builtins and standard library, in a process the program never ran in: an ``__eq__`` that always answers ``True``, a
patched ``math.isclose``, a ``sys.settrace`` hook, an exit from inside a comparison or a forged result never reach
it. ``docs/sandbox.md`` gives the threat model.

Deviations from running program and tests in one interpreter (all documented in ``docs/sandbox.md``): the tests
see the program's objects only through calls, attributes and iteration (a ``Remote`` has no truth value and
compares by identity); only plain data and the program's own objects can be passed to the program; and a
program's in-place changes to an argument are not seen by the tests.

Standard library only: the sandbox harness loads this file inside the sandbox.
"""

from __future__ import annotations

import builtins
import functools
import importlib
import os
import sys
import traceback
import types
from collections.abc import Callable
from typing import Any, NoReturn

if __package__:
    from . import _wire
else:  # loaded by _harness.py from its own directory, outside the package
    import _wire

_BUILTIN_NAMES = frozenset(dir(builtins))
_NO_IMPORT = frozenset({"antigravity", "this", "__hello__", "__phello__", "idlelib", "tkinter", "turtle"})
_PROTOCOL = "the program wrote to the harness channel outside the protocol"
# Exceptions that are control flow to the code that sees them: a StopIteration out of ``candidate(x)`` ends the
# ``map`` in ``all(map(candidate, xs))`` and the test passes. A program's one becomes a plain RuntimeError (PEP 479
# does the same for a generator); the BaseException ones (SystemExit, KeyboardInterrupt, GeneratorExit) abort the
# test (ProgramAbort).
_CONTROL_FLOW = (StopIteration, StopAsyncIteration)
ENDED = "the program ended before the tests finished"  # the trainer's verdict adds how, from the zygote's facts


def describe(exc: BaseException) -> str:
    """``"ValueError: boom"``: the last line of a traceback, at most 500 characters."""
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()[-500:]


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


class _Lines:
    """Newline-delimited messages read from a pipe."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = bytearray()

    def read(self) -> bytes | None:
        """The next line (without its newline), or ``None`` at end of file."""
        while True:
            end = self.buf.find(b"\n")
            if end >= 0:
                line = bytes(self.buf[:end])
                del self.buf[: end + 1]
                return line
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                return None
            self.buf += chunk


# ------------------------------------------------------------------------------------------------------ the judge


class ProgramAbort(BaseException):
    """The program left a test in a way no value expresses (it exited, broke the channel, raised ``SystemExit``).

    A ``BaseException``, so that ``except Exception`` in test code does not swallow it; and where test code
    swallows it anyway, :func:`run_test` fails the test regardless.
    """


class Outcome:
    """What the judge reports: per-test booleans, the first error, and why the job failed as a whole, if it did."""

    def __init__(self, num_tests: int) -> None:
        self.tests = [False] * num_tests
        self.error: str | None = None
        self.test_error: str | None = None
        self.memory = False
        self.crashed: str | None = None

    def fail_exec(self, exc: BaseException | str, memory: bool = False) -> None:
        self.error = exc if isinstance(exc, str) else describe(exc)
        self.memory = self.memory or memory or isinstance(exc, MemoryError)

    def record_test(self, i: int, exc: BaseException | None) -> None:
        self.tests[i] = exc is None
        if exc is not None:
            self.test_error = self.test_error or f"test {i}: {describe(exc)}"
            self.memory = self.memory or isinstance(exc, MemoryError)

    def record(self, nonce: str) -> dict:
        """The result line's fields (``ra3_lightning.sandbox.verdict`` reads them)."""
        if self.crashed:
            self.tests = [False] * len(self.tests)
        return {
            "nonce": nonce,
            "tests": self.tests,
            "error": self.error,
            "test_error": self.test_error,
            "memory": self.memory,
            "crashed": self.crashed,
            "ended": self.crashed == ENDED,  # the trainer then says how, from the zygote's facts
        }


class Remote:
    """An object that stays in the program's process: a function, a class, an instance, an iterator.

    Calls, attribute reads (except dunder names) and iteration are requests to the program; their results come
    back as plain data or as another ``Remote``. It has no truth value, no arithmetic and compares by identity,
    so no behaviour of the program's objects decides a test.
    """

    __slots__ = ("_link", "_id")

    def __init__(self, link: Link, ident: int) -> None:
        self._link, self._id = link, ident

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = {"op": "call", "h": self._id, "a": self._link.encode(list(args))}
        if kwargs:
            request["k"] = self._link.encode(kwargs)
        return self._link.value(request)

    def __getattr__(self, name: str) -> Any:
        if name in Remote.__slots__ or (name.startswith("__") and name.endswith("__")):
            raise AttributeError(f"{name} of a program object is not visible to the tests")
        return self._link.value({"op": "getattr", "h": self._id, "n": name})

    def __iter__(self) -> Any:
        return self._link.value({"op": "iter", "h": self._id})

    def __next__(self) -> Any:
        return self._link.value({"op": "next", "h": self._id})

    def __bool__(self) -> bool:
        raise TypeError("a program object has no truth value for the tests: return plain data (e.g. a bool)")

    def __repr__(self) -> str:
        return f"<program object {self._id}>"


class Link:
    """The judge's end of the channel to the candidate: requests out, replies decoded into built-in values."""

    def __init__(self, send_fd: int, recv_fd: int) -> None:
        self.send_fd, self.lines = send_fd, _Lines(recv_fd)
        self.broken: str | None = None  # sticky: the job is scored as crashed (the trainer adds how the program ended)
        self.aborts = 0
        self.last_abort = ""
        self.remotes: dict[int, Remote] = {}

    def ask(self, message: dict) -> dict:
        """Send one request and return the raw reply; :class:`ProgramAbort` once the channel is broken."""
        if self.broken:
            raise ProgramAbort(self.broken)
        try:
            line = self.exchange(_wire.dumps(message))
        except OSError:  # the candidate is gone (a broken pipe)
            line = None
        if line is None:
            return self.fail(ENDED)
        try:
            return _wire.loads(line)
        except _wire.WireError:
            return self.fail(_PROTOCOL)

    def exchange(self, request: bytes) -> bytes | None:
        """Send one request line, read one reply line (``None``: the candidate closed the channel)."""
        _write_all(self.send_fd, request)
        return self.lines.read()

    def fail(self, reason: str) -> NoReturn:
        """Mark the channel broken (the job fails as a whole) and leave the current test."""
        self.broken = self.broken or reason
        raise ProgramAbort(self.broken)

    def value(self, message: dict) -> Any:
        """Send a request whose reply is a value: return it, or raise what the program raised (a control-flow
        exception as a plain ``RuntimeError``). Only the end of an iteration the tests asked for, the reply to
        ``next``, raises ``StopIteration``."""
        reply = self.ask(message)
        if "v" in reply:
            return self.decode(reply["v"])
        if "raise" in reply:
            raise self._exception(reply)
        if reply.get("stop") is True and message["op"] == "next":
            raise StopIteration
        if "abort" in reply:
            self.aborts += 1
            self.last_abort = f"the program raised {str(reply['abort'])[:300]} during a test"
            raise ProgramAbort(self.last_abort)
        return self.fail(_PROTOCOL)

    def encode(self, value: Any) -> Any:
        """A test's value as a wire value for the program (plain data, or the program's own objects)."""
        return _wire.encode(value, self._remote_id)

    def decode(self, wire: Any) -> Any:
        try:
            return _wire.decode(wire, self._remote)
        except _wire.WireError as exc:
            return self.fail(f"the program sent a value that is not plain data ({exc})")

    def program_globals(self, found: Any, names: set[str]) -> dict[str, Any]:
        """The program's globals the tests use, from the candidate's ``load`` reply."""
        if type(found) is not dict:
            self.fail(_PROTOCOL)
        env: dict[str, Any] = {}
        for name, wire in found.items():
            if name not in names:
                continue
            if type(wire) is dict and list(wire) == ["m"]:
                module = _trusted_module(wire["m"])
                if module is not None:
                    env[name] = module
            else:
                env[name] = self.decode(wire)
        return env

    def _remote(self, ident: int) -> Remote:
        if ident not in self.remotes:
            self.remotes[ident] = Remote(self, ident)
        return self.remotes[ident]

    def _remote_id(self, obj: Any) -> dict:
        if type(obj) is Remote and obj._link is self:
            return {"h": obj._id}
        raise TypeError(f"a test passed a {type(obj).__name__} to the program: only plain data crosses the sandbox")

    def _exception(self, reply: dict) -> BaseException:
        """The program's exception as the nearest built-in exception class it derives from, with its args."""
        names = reply["raise"] if type(reply["raise"]) is list else []
        try:
            args = tuple(_wire.decode(reply.get("args", []), lambda n: None))
        except _wire.WireError:
            args = ()
        for name in names:
            cls = getattr(builtins, name, None) if type(name) is str else None
            if isinstance(cls, type) and issubclass(cls, _CONTROL_FLOW):
                return RuntimeError(f"the program raised {name} {list(args)!r}"[:300])
            if isinstance(cls, type) and issubclass(cls, Exception):
                try:
                    return cls(*args)
                except Exception:  # noqa: S112 — e.g. UnicodeDecodeError wants five arguments: try its base
                    continue
        return Exception(*args)


def _trusted_module(name: Any) -> types.ModuleType | None:
    """The judge's own copy of a standard-library module the program imported (e.g. ``math``), or ``None``."""
    if type(name) is not str or name in _NO_IMPORT or name.partition(".")[0] not in sys.stdlib_module_names:
        return None
    try:
        return importlib.import_module(name)
    except Exception:  # noqa: BLE001 — e.g. a module missing from this installation: the name stays unbound
        return None


def referenced_names(code: types.CodeType) -> set[str]:
    """Names test code may look up in the program's globals: its names that are neither builtins nor dunders.

    Example:
        >>> sorted(referenced_names(compile("assert math.isclose(f(x), abs(y))", "<t>", "exec")))
        ['f', 'isclose', 'math', 'x', 'y']
    """
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= referenced_names(const)
    return {n for n in names if n not in _BUILTIN_NAMES and not (n.startswith("__") and n.endswith("__"))}


def run_test(out: Outcome, link: Link, i: int, fn: Callable[..., Any], *args: Any) -> None:
    """Run test ``i`` (``fn(*args)``) and record it; a test during which the program aborted fails, whatever the
    test code did with the exception."""
    aborts = link.aborts
    try:
        fn(*args)
        exc = None
    except BaseException as e:  # noqa: B036 — SystemExit / KeyboardInterrupt from a test are failures too
        exc = e
    if exc is None and (link.aborts != aborts or link.broken):
        exc = ProgramAbort(link.broken or link.last_abort)
    out.record_test(i, exc)


def _load(link: Link, job: dict, setup: str, names: set[str], out: Outcome) -> dict | None:
    """Have the candidate run the program (and ``setup``); the judge's globals for the tests, or ``None``."""
    request = {"op": "load", "program": job["program"], "setup": setup, "style": job["tests"]["style"]}
    try:
        reply = link.ask({**request, "limits": job["limits"], "names": sorted(names)})
        if "error" in reply:
            out.fail_exec(str(reply["error"]), memory=reply.get("memory") is True)
            return None
        return {"__name__": "__sandbox__", **link.program_globals(reply.get("ok"), names)}
    except ProgramAbort:
        return None


@functools.lru_cache(maxsize=256)
def _compile(source: str, filename: str) -> tuple[types.CodeType, frozenset[str]]:
    """Test code compiled, with the names it references; cached, since under RLVR the judge sees each task's tests
    once per sample (code objects are immutable: every job still runs them in a fresh namespace)."""
    code = compile(source, filename, "exec")
    return code, frozenset(referenced_names(code))


def _judge_check(job: dict, link: Link, out: Outcome) -> None:
    tests = job["tests"]
    entry = tests["entry_point"]
    try:
        code, names = _compile(tests.get("check_code", ""), "<check>")
    except BaseException as exc:  # noqa: B036
        return out.fail_exec(exc)
    env = _load(link, job, "", names | {entry}, out)
    if env is None:
        return None
    if entry not in env:
        return out.fail_exec(KeyError(entry))
    candidate = env[entry]
    try:
        exec(code, env)
        check = env["check"]
    except BaseException as exc:  # noqa: B036
        return out.fail_exec(exc)
    run_test(out, link, 0, check, candidate)
    return None


def _compile_tests(statements: list[str]) -> list[tuple[types.CodeType, frozenset[str]] | BaseException]:
    compiled: list[tuple[types.CodeType, frozenset[str]] | BaseException] = []
    for i, stmt in enumerate(statements):
        try:
            compiled.append(_compile(stmt, f"<test {i}>"))
        except BaseException as exc:  # noqa: B036 — a test that does not compile fails alone
            compiled.append(exc)
    return compiled


def _judge_assert(job: dict, link: Link, out: Outcome) -> None:
    tests = job["tests"]
    setup_code = tests.get("setup_code", "")
    try:
        setup, names = _compile(setup_code, "<setup>")
    except BaseException as exc:  # noqa: B036
        return out.fail_exec(exc)
    compiled = _compile_tests(list(tests.get("asserts", ())))
    names = names.union(*(c[1] for c in compiled if not isinstance(c, BaseException)))
    env = _load(link, job, setup_code, set(names), out)
    if env is None:
        return None
    try:
        exec(setup, env)
    except BaseException as exc:  # noqa: B036
        return out.fail_exec(exc)
    for i, test in enumerate(compiled):
        if isinstance(test, BaseException):
            out.record_test(i, test)
        else:
            run_test(out, link, i, exec, test[0], env)
    return None


def _stdio_case(link: Link, stdin: str, expected: str) -> None:
    reply = link.ask({"op": "stdio", "stdin": stdin})
    status, got = reply.get("status"), reply.get("out")
    if type(status) is not int or type(got) is not str:
        link.fail(_PROTOCOL)
    if status != 0:
        raise RuntimeError(f"program exited with status {status:#x}")
    if not _wire.outputs_match(got, expected):
        raise AssertionError(f"wrong output: {got[:200]!r}")


def _judge_stdio(job: dict, link: Link, out: Outcome) -> None:
    if _load(link, job, "", set(), out) is None:
        return
    for i, (stdin, expected) in enumerate(job["tests"].get("stdio_cases", ())):
        run_test(out, link, i, _stdio_case, link, stdin, expected)


_JUDGES = {"assert": _judge_assert, "check": _judge_check, "stdio": _judge_stdio}


def num_tests(tests: dict) -> int:
    return {"assert": len(tests["asserts"]), "check": 1, "stdio": len(tests["stdio_cases"])}[tests["style"]]


def judge(job: dict, link: Link) -> Outcome:
    """Run ``job``'s tests against the program behind ``link``; the program is never run in this process."""
    out = Outcome(num_tests(job["tests"]))
    _JUDGES[job["tests"]["style"]](job, link, out)
    if link.broken:
        out.crashed = link.broken
    return out


# -------------------------------------------------------------------------------------------------- the candidate


class _Loopback(Link):
    """A link to a :class:`Candidate` in the same process: lets the zygote run the code paths of a job once."""

    def __init__(self) -> None:
        super().__init__(-1, -1)
        self.candidate = Candidate(-1, -1, lambda limits: None)

    def exchange(self, request: bytes) -> bytes | None:
        return self.candidate.answer(request[:-1])[:-1]


_WARM_LIMITS = {"timeout_s": 1, "memory_mb": 1, "max_processes": 1, "max_file_mb": 1, "max_open_files": 1}
_WARM_JOBS = [
    {
        "program": "def f(x, k=None):\n    return 1\nclass C:\n    def m(self):\n        return [1]\n",
        "limits": _WARM_LIMITS,
        "tests": {"style": style, "entry_point": "f", "stdio_cases": [], **tests},
    }
    for style, tests in (
        ("check", {"check_code": "def check(f):\n    assert f([1, (2.5, 'a')], k={3}) == 1\n", "asserts": []}),
        ("assert", {"asserts": ["assert f([1], k={2: None}) == 1", "assert C().m() == [1]"], "setup_code": "x = 1"}),
    )
]


def warm_up(rounds: int) -> None:
    """Run a check-style and an assert-style job, judge and candidate in this process, ``rounds`` times: their
    bytecode is then specialised once here rather than in every forked candidate (each write is a page fault)."""
    for _ in range(rounds):
        for job in _WARM_JOBS:
            judge(job, _Loopback()).record("")


def serve_jobs(job_fd: int, record_fd: int, control: Any) -> NoReturn:
    """The judge's loop: per job from the trainer (``job_fd``), the next candidate's channel from the zygote
    (``control``, a unix socket), the tests, the result line to the trainer (``record_fd``), ``b"d"`` to the zygote.
    """
    import socket

    jobs = _Lines(job_fd)
    control.send(b"r")
    while (line := jobs.read()) is not None:
        job = _wire.loads(line)
        _, (send_fd, recv_fd), _, _ = socket.recv_fds(control, 1, 2)
        try:
            out = judge(job, Link(send_fd, recv_fd))
        except Exception as exc:  # noqa: BLE001 — a bug in the judge: the job fails, the judge goes on
            out = Outcome(num_tests(job["tests"]))
            out.crashed = f"sandbox judge error: {describe(exc)}"
        finally:
            os.close(send_fd)
            os.close(recv_fd)
        _write_all(record_fd, _wire.dumps(out.record(job["nonce"])))
        control.send(b"d")
    os._exit(0)


class Candidate:
    """The program's end of the channel: runs the program and answers the judge's requests with plain data.

    Everything here runs in the untrusted process and may be subverted by the program; nothing the judge does
    depends on it beyond the values it sends, which the judge decodes into built-in types.
    """

    def __init__(self, recv_fd: int, send_fd: int, apply_limits: Callable[[dict], None]) -> None:
        self.lines, self.send_fd, self.apply_limits = _Lines(recv_fd), send_fd, apply_limits
        self.objects: list[Any] = []
        self.ids: dict[int, int] = {}
        self.env: dict[str, Any] = {"__name__": "__sandbox__"}
        self.code: types.CodeType | None = None
        self.ops: dict[str, Callable[[dict], dict]] = {
            "load": self._load,
            "call": self._call,
            "getattr": lambda m: {"v": self._encode(getattr(self.objects[m["h"]], m["n"]))},
            "iter": lambda m: {"v": self._encode(iter(self.objects[m["h"]]))},
            "next": self._next,
            "stdio": self._stdio,
        }

    def answer(self, line: bytes) -> bytes:
        """The reply line to one request line."""
        try:
            message = _wire.loads(line)
            reply = self.ops[message["op"]](message)
        except BaseException as exc:  # noqa: B036 — every failure becomes an answer
            reply = _failure(exc)
        try:
            return _wire.dumps(reply)
        except BaseException as exc:  # noqa: B036
            return _wire.dumps({"abort": describe(exc)})

    def serve(self) -> NoReturn:
        """Answer requests until the judge closes the channel (or the job is killed)."""
        exit_, write = os._exit, _write_all  # bound before the program can replace them
        while (line := self.lines.read()) is not None:
            reply = self.answer(line)
            _flush_stdio()  # the output comes back from the job's files; the candidate never exits by itself
            write(self.send_fd, reply)
        exit_(0)

    def _load(self, m: dict) -> dict:
        self.apply_limits(m["limits"])
        try:
            code = compile(m["program"], "<program>", "exec")
            if m["style"] == "stdio":
                self.code = code
                return {"ok": {}}
            exec(code, self.env)
            if m.get("setup"):
                exec(compile(m["setup"], "<setup>", "exec"), self.env)
        except BaseException as exc:  # noqa: B036 — SystemExit / KeyboardInterrupt from the program are failures too
            return {"error": describe(exc), "memory": isinstance(exc, MemoryError)}
        return {"ok": {n: self._global(self.env[n]) for n in m["names"] if n in self.env}}

    def _global(self, value: Any) -> Any:
        if isinstance(value, types.ModuleType):
            return {"m": value.__name__}
        return self._encode(value)

    def _call(self, m: dict) -> dict:
        fn = self.objects[m["h"]]
        args, kwargs = self._decode(m["a"]), self._decode(m.get("k", {"d": []}))
        return {"v": self._encode(fn(*args, **kwargs))}

    def _next(self, m: dict) -> dict:
        try:
            value = next(self.objects[m["h"]])
        except StopIteration:
            return {"stop": True}
        return {"v": self._encode(value)}

    def _stdio(self, m: dict) -> dict:
        assert self.code is not None, "stdio request before the program was loaded"
        status = stdio_case(self.code, m["stdin"], (self.lines.fd, self.send_fd))
        with open(".stdout-case", errors="replace") as f:
            return {"status": status, "out": f.read()}

    def _encode(self, value: Any) -> Any:
        return _wire.encode(value, self._handle)

    def _decode(self, wire: Any) -> Any:
        return _wire.decode(wire, self.objects.__getitem__)

    def _handle(self, obj: Any) -> dict:
        key = id(obj)
        if key not in self.ids:
            self.ids[key] = len(self.objects)
            self.objects.append(obj)  # kept alive, so that its id is not reused
        return {"h": self.ids[key]}


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: B036, S110 — a program that broke its own streams loses its output
            pass


def _failure(exc: BaseException) -> dict:
    """The reply for a request the program failed: an exception to re-raise in the test, or an abort."""
    if isinstance(exc, _wire.WireError):
        return {"abort": f"a value the tests cannot receive ({exc})"}
    if not isinstance(exc, Exception):
        return {"abort": describe(exc)}
    try:
        args = _wire.encode(list(exc.args), lambda obj: repr(obj)[:200])
    except BaseException:  # noqa: B036
        args = []
    return {"raise": [c.__name__ for c in type(exc).__mro__], "args": args}


def stdio_case(code: types.CodeType, stdin: str, channel: tuple[int, int]) -> int:
    """Run the program as ``__main__`` in a fresh process on ``stdin`` (output in ``.stdout-case``); its status."""
    with open(".stdin-case", "w") as f:
        f.write(stdin)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        _run_main(code, channel)
    return os.waitpid(pid, 0)[1]


def _run_main(code: types.CodeType, channel: tuple[int, int]) -> NoReturn:
    status = 1
    try:
        for fd in channel:
            os.close(fd)
        os.dup2(os.open(".stdin-case", os.O_RDONLY), 0)
        os.dup2(os.open(".stdout-case", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 1)
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
