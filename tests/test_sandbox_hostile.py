"""Hostile programs (issue 4, "Done when"): each is scored as a failure, nothing outside the sandbox is harmed, and
the program after it — on the same single worker — is still scored correctly.

Every program that could hurt the host if isolation were silently missing starts with ``GUARD``: it refuses to do
anything unless its parent is pid 2 of a fresh PID namespace (the sandbox worker under bubblewrap's pid-1 reaper).
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from pathlib import Path

import pytest
from conftest import RunIf

from ra3_lightning.sandbox import Limits, Sandbox, TestSuite

ADD = "def add(a, b):\n    return a + b\n"
CHECK = TestSuite("check", check_code="def check(f):\n    assert f(1, 2) == 3\n", entry_point="add")
GUARD = "import os\nif os.getppid() != 2:\n    raise SystemExit('refusing: not in a sandbox PID namespace')\n"
# A correct program that also checks that nothing of the previous program survives in the sandbox: the only
# processes it may see are bubblewrap's reaper (1), the zygote (2), the judge (its own uid) and itself.
ALONE = ADD + (
    "import os\nothers = [p for p in os.listdir('/proc') if p.isdigit() and p not in ('1', '2', str(os.getpid()))]\n"
    "assert len(others) == 1 and os.stat('/proc/' + others[0]).st_uid != os.getuid(), others\n"
)
QUICK = Limits(timeout_s=1.0, memory_mb=256)
SANDBOX_UIDS = range(100_000_000, 100_000_000 + 200_000 * 8192)  # see pool._random_uid_base


@pytest.fixture
def sentinels(tmp_path):
    """A file in the test's tmp dir and one next to this test (visible, read-only inside the sandbox)."""
    hidden, visible = tmp_path / "sentinel.txt", Path(__file__).with_name(f".sentinel-{uuid.uuid4().hex}")
    for f in (hidden, visible):
        f.write_text("intact")
    yield hidden, visible
    visible.unlink(missing_ok=True)


@pytest.fixture
def listener():
    """A TCP port the test opens on 127.0.0.1 (outside the sandbox)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.setblocking(False)
    yield srv
    srv.close()


def _hostile_programs(hidden: Path, visible: Path, port: int) -> dict[str, tuple[str, set[str]]]:
    """name -> (program, acceptable statuses). Every program defines a correct ``add`` first."""
    spy = str(visible.with_name(visible.name + "-created"))
    return {
        "infinite loop": (ADD + "while True:\n    pass\n", {"timeout"}),
        "C-level CPU burn": (ADD + "sum(range(10**12))\n", {"timeout"}),
        "regex catastrophe": (ADD + "import re\nre.match(r'(a+)+$', 'a' * 64 + 'b')\n", {"timeout"}),
        "memory bomb": (ADD + "hog = [bytearray(10**6) for _ in range(10**5)]\n", {"memory"}),
        "one huge allocation": (ADD + "hog = bytearray(10**11)\n", {"memory"}),
        "fork bomb": (
            GUARD + ADD + "while True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
            {"timeout"},
        ),
        "os._exit(0) before tests": (ADD + "import os\nos._exit(0)\n", {"crashed"}),
        "sys.exit(0) before tests": (ADD + "import sys\nsys.exit(0)\n", {"error"}),
        "exit inside the candidate": ("def add(a, b):\n    import os\n    os._exit(0)\n", {"crashed"}),
        "kill the parent": (ADD + "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n", {"error", "crashed"}),
        # kill(-1) reaches every process the runner may signal except itself: none outside its own job.
        "kill everything": (GUARD + ADD + "os.kill(-1, 9)\n", {"passed"}),
        "segfault": (ADD + "import ctypes\nctypes.string_at(0)\n", {"crashed"}),
        "delete a host file": (ADD + f"import os\nos.remove({str(visible)!r})\n", {"error"}),
        "overwrite a host file": (ADD + f"open({str(visible)!r}, 'w').write('pwned')\n", {"error"}),
        "create a host file": (ADD + f"open({spy!r}, 'w').write('pwned')\n", {"error"}),
        "delete a /tmp file": (ADD + f"import os\nos.remove({str(hidden)!r})\n", {"error"}),
        "network to the host": (
            ADD + f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=0.5)\n",
            {"error"},
        ),
        "print 100 MB": (ADD + "print('x' * 100_000_000)\n", {"error"}),
        "print 100 MB in the candidate": (
            "def add(a, b):\n    for _ in range(10**6):\n        print('y' * 100)\n    return a + b\n",
            {"failed"},
        ),
        "read stdin": (ADD + "data = input()\n", {"error"}),
        "steal the job stream": (ADD + "import os\nassert os.read(0, 1 << 16), 'stdin is empty'\n", {"error"}),
        "replace the SIGALRM handler": (
            ADD + "import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\nsignal.setitimer(signal.ITIMER_REAL,"
            " 0)\nwhile True:\n    pass\n",
            {"timeout"},
        ),
        "forge a result record": (
            ADD + "import json, os\nfor fd in range(3, 1024):\n    try:\n        os.write(fd, (json.dumps({'nonce': "
            "'0' * 32, 'tests': [True]}) + '\\n').encode())\n    except OSError:\n        pass\nos._exit(0)\n",
            {"crashed"},
        ),
    }


def _sandbox_processes(uid_bases: list[int]) -> list[int]:
    """Host pids running as any runner uid of these workers (there must be none between programs)."""
    found = []
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            uid = os.stat(f"/proc/{name}").st_uid
        except OSError:
            continue
        if any(base <= uid < base + 4096 for base in uid_bases):
            found.append(int(name))
    return found


@RunIf(bwrap=True)
def test_hostile_programs_fail_harmlessly_and_the_next_program_still_passes(sentinels, listener):
    hidden, visible = sentinels
    programs = _hostile_programs(hidden, visible, listener.getsockname()[1])
    with Sandbox(workers=1, isolation="bwrap") as sb:
        assert sb.isolation == "bwrap"
        futures = [(name, sb.submit(p, CHECK, QUICK), sb.submit(ALONE, CHECK)) for name, (p, _) in programs.items()]
        results = [(name, bad.result(), good.result()) for name, bad, good in futures]
        uid_bases = sb._all[0].uid_bases
    time.sleep(0.5)  # the sandbox's PID namespace is torn down with its worker
    leftovers = _sandbox_processes(uid_bases)
    wrong = {name: bad for name, bad, _ in results if bad.status not in programs[name][1]}
    assert not wrong, wrong
    unlucky = {name: good for name, _, good in results if not good.passed}
    assert not unlucky, unlucky
    assert hidden.read_text() == "intact" and visible.read_text() == "intact"
    assert not visible.with_name(visible.name + "-created").exists()
    with pytest.raises(BlockingIOError):
        listener.accept()  # nobody ever connected
    assert not leftovers
    out = dict((name, bad) for name, bad, _ in results)
    assert len(out["print 100 MB in the candidate"].stdout_tail) <= Limits().max_output_bytes
    assert out["read stdin"].runtime_s < 1.0 and "EOFError" in out["read stdin"].detail
    assert out["forge a result record"].detail == "the program wrote to the harness channel outside the protocol"
    assert out["one huge allocation"].runtime_s < 1.0 and out["print 100 MB"].runtime_s < 1.0


@RunIf(bwrap=True)
def test_a_worker_killed_mid_program_is_reported_and_replaced():
    with Sandbox(workers=1, isolation="bwrap") as sb:
        assert sb.run(ADD, CHECK).passed
        future = sb.submit(ADD + "while True:\n    pass\n", CHECK, Limits(timeout_s=30))
        time.sleep(0.5)
        sb._all[0].proc.kill()  # the worker dies while the program runs
        r = future.result(timeout=60)
        assert (r.status, r.tests) == ("crashed", [False]) and "worker died" in r.detail
        assert sb.run(ADD, CHECK).passed


@RunIf(bwrap=True)
def test_the_process_limit_binds():
    counter = GUARD + (
        "import time\nn = 0\nwhile n < 1000:\n    try:\n        pid = os.fork()\n    except OSError:\n        break\n"
        "    if pid == 0:\n        time.sleep(30)\n        os._exit(0)\n    n += 1\nprint(n)\n"
    )
    with Sandbox(workers=1, isolation="bwrap") as sb:
        r = sb.run(counter, TestSuite("assert", asserts=("assert True",)), Limits(max_processes=10))
    assert r.passed, r
    assert 0 < int(r.stdout_tail) < 10  # the runner itself counts as one of its uid's processes
