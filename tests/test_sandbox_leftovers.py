"""Nothing a program leaves behind reaches a later program on the same worker, and nothing it leaves can break the
clean-up (issue 26, items 1 and 2).

A leaving program puts something in every place it can write — files, the environment, System V shared memory,
message queues and semaphores, POSIX message queues, background processes, module state — and a looking program,
run next on the same single worker under another uid, must find none of it. A littering program leaves a tree
the clean-up once choked on (1000 levels deep, names past ``PATH_MAX``, no permissions, FIFOs, sockets, links out),
and the correct program after it must pass on the same worker. A clean-up that fails anyway replaces the worker and
charges no sample. With bubblewrap and without it.
"""

from __future__ import annotations

import fcntl
import glob
import os
import shutil
import stat
import struct
import tempfile
import time
import uuid
import warnings
from pathlib import Path

import pytest
from conftest import RunIf

from ra3_lightning.sandbox import Limits, Sandbox, TestSuite, _cleanup

ADD = "def add(a, b):\n    return a + b\n"
CHECK = TestSuite("check", check_code="def check(f):\n    assert f(1, 2) == 3\n", entry_point="add")
SLOW = Limits(timeout_s=30.0)
FS_IOC_GETFLAGS, FS_IOC_SETFLAGS, FS_IMMUTABLE_FL = 0x80086601, 0x40086602, 0x10


def _sandbox(isolation: str) -> Sandbox:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "NAMESPACE ISOLATION IS OFF"
        return Sandbox(workers=1, isolation=isolation)  # type: ignore[arg-type]


def _has_cap_sys_admin() -> bool:
    with open("/proc/self/status") as f:
        eff = next(line for line in f if line.startswith("CapEff:"))
    return bool(int(eff.split()[1], 16) >> 21 & 1)


def _guaranteed(isolation: str) -> dict[str, bool]:
    """What the sandbox promises to clear in this mode (docs/sandbox.md, *Between two programs*)."""
    root = os.geteuid() == 0
    return {
        "shared_dirs": isolation == "bwrap" or root,  # /tmp, /var/tmp, /dev/shm outside the job dir
        "posix_mqueue": isolation == "bwrap" or (root and _has_cap_sys_admin()),
        "processes": True,
    }


# ---------------------------------------------------------------------------------------- what programs leave

IPC_LIB = (
    "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\nlibc.shmat.restype = ctypes.c_void_p\n"
    "IPC_CREAT = 0o1000\n"
    "rt = libc if hasattr(libc, 'mq_open') else ctypes.CDLL('librt.so.1', use_errno=True)  # glibc < 2.34\n"
)


def _leaks(tag: str, key: int, guaranteed: dict[str, bool]) -> dict[str, tuple[str, str]]:
    """name -> (program that leaves something, program that asserts it finds nothing); both define a correct add."""
    shared = ["/tmp", "/var/tmp", "/dev/shm"] if guaranteed["shared_dirs"] else []
    files_leave = (
        "import os\nos.makedirs('deep/er', exist_ok=True)\nopen('deep/er/answers.txt', 'w').write('42')\n"
        "for d in (os.environ['HOME'], os.environ['TMPDIR'], '..', '/tmp', '/var/tmp', '/dev/shm', '/dev/mqueue'):\n"
        "    try:\n"
        f"        with open(os.path.join(d, 'ra3-leak-{tag}'), 'w') as f:\n            f.write('42')\n"
        f"        os.chmod(os.path.join(d, 'ra3-leak-{tag}'), 0o666)\n"
        "    except OSError:\n        pass\n"
    )
    files_look = (
        "import os, glob\nassert sorted(os.listdir('.')) == ['.stderr', '.stdout'], os.listdir('.')\n"
        f"assert not glob.glob('../*/ra3-leak-{tag}') and not glob.glob('../*/deep'), glob.glob('../*/*')\n"
        f"for d in {shared!r}:\n    assert not os.path.exists(os.path.join(d, 'ra3-leak-{tag}')), d\n"
    )
    ipc_leave = IPC_LIB + (
        "import struct\n"
        f"shm = libc.shmget({key}, 64 << 20, IPC_CREAT | 0o666)\nassert shm >= 0, ctypes.get_errno()\n"
        "addr = libc.shmat(shm, None, 0)\nctypes.memset(addr, 7, 64 << 20)\nctypes.memmove(addr, b'ANSWER=42', 9)\n"
        "libc.shmdt(ctypes.c_void_p(addr))\n"
        f"q = libc.msgget({key + 1}, IPC_CREAT | 0o666)\nassert q >= 0\n"
        "msg = ctypes.create_string_buffer(struct.pack('l', 1) + b'ANSWER=42')\n"
        "assert libc.msgsnd(q, msg, 9, 0) == 0, ctypes.get_errno()\n"
        f"assert libc.semget({key + 2}, 4, IPC_CREAT | 0o666) >= 0\n"
        f"mq = rt.mq_open(b'/ra3-leak-{tag}', os.O_CREAT | os.O_RDWR, 0o666, None)\n"
        "assert mq >= 0, ctypes.get_errno()\nassert rt.mq_send(mq, b'ANSWER=42', 9, 0) == 0\n"
    )
    ipc_look = IPC_LIB + (
        f"assert libc.shmget({key}, 0, 0) == -1 and libc.msgget({key + 1}, 0) == -1\n"
        f"assert libc.semget({key + 2}, 0, 0) == -1\n"
        "keys = {int(row.split()[0]) for kind in ('shm', 'msg', 'sem') "
        "for row in open('/proc/sysvipc/' + kind).read().splitlines()[1:]}\n"
        f"assert not keys & {{{key}, {key + 1}, {key + 2}}}, keys\n"
    )
    if guaranteed["posix_mqueue"]:
        ipc_look += f"assert rt.mq_open(b'/ra3-leak-{tag}', os.O_RDONLY) == -1\n"
        ipc_look += "assert not os.path.isdir('/dev/mqueue') or os.listdir('/dev/mqueue') == []\n"
    memory_leave = (
        "import builtins, math, sys, gc\nmath.leak = 42\nbuiltins.leak = 42\nsys.modules['leak'] = math\n"
        "sys.path.insert(0, '/tmp')\nhog = bytearray(b'ANSWER=42' * 10**6)\ngc.freeze()\n"
    )
    memory_look = (
        "import builtins, math, sys\nassert not hasattr(math, 'leak') and not hasattr(builtins, 'leak')\n"
        "assert 'leak' not in sys.modules and '/tmp' not in sys.path\n"
    )
    env_leave = "import os\nos.environ['LEAK'] = '42'\nos.putenv('LEAK2', '42')\nos.umask(0)\nos.chdir('/')\n"
    env_look = (
        "import os\nassert sorted(os.environ) == ['HOME', 'LANG', 'PATH', 'TMPDIR'], sorted(os.environ)\n"
        "assert os.getcwd() == os.environ['HOME'] and os.umask(0o22) != 0\n"
    )
    daemon_leave = (
        "import os, time\nr, w = os.pipe()\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
        "        os.write(w, str(os.getpid()).encode())\n        time.sleep(120)\n    os._exit(0)\n"
        "os.wait()\nprint('DAEMON', os.read(r, 32).decode())\n"
    )
    return {
        "files": (files_leave, files_look),
        "environment": (env_leave, env_look),
        "IPC objects": (ipc_leave, ipc_look),
        "memory and module state": (memory_leave, memory_look),
        "processes": (daemon_leave, "import os\n"),  # the look program is made from the daemon's pid
    }


def _daemon_look(leave_stdout: str) -> str:
    pid = int(leave_stdout.split("DAEMON", 1)[1].split()[0])
    return (
        f"import os\ntry:\n    os.kill({pid}, 0)\n    raise AssertionError('the daemon {pid} survived')\n"
        "except ProcessLookupError:\n    pass\n"
    )


def _check_nothing_survives(isolation: str) -> None:
    tag = uuid.uuid4().hex[:12]
    key = 0x5A000000 + int(tag[:6], 16)  # System V keys are global without bubblewrap: one of our own
    leaks = _leaks(tag, key, _guaranteed(isolation))
    try:
        with _sandbox(isolation) as sb:
            for name, (leave, look) in leaks.items():
                left = sb.run(ADD + leave, CHECK, SLOW)
                assert left.passed, (name, left)
                if name == "processes":
                    look = _daemon_look(left.stdout_tail)
                seen = sb.run(ADD + look, CHECK, SLOW)
                assert seen.passed, (name, seen.detail, seen.stderr_tail[-500:])
            assert len(sb._all[0].uid_bases) == 1  # one worker served them all: nothing was replaced in between
    finally:  # what this mode does not promise to clear stays on the host: the test removes it
        _remove_host_leftovers(tag)


def _remove_host_leftovers(tag: str) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    rt = libc if hasattr(libc, "mq_unlink") else ctypes.CDLL("librt.so.1", use_errno=True)
    rt.mq_unlink(f"/ra3-leak-{tag}".encode())
    for d in ("/tmp", "/var/tmp", "/dev/shm"):
        Path(d, f"ra3-leak-{tag}").unlink(missing_ok=True)


@RunIf(bwrap=True)
def test_a_later_program_sees_nothing_an_earlier_one_left():
    _check_nothing_survives("bwrap")


def test_a_later_program_sees_nothing_an_earlier_one_left_without_bubblewrap():
    _check_nothing_survives("none")


@RunIf(bwrap=True)
def test_shared_memory_dies_with_its_job():
    """Segments beyond the program's memory limit (issue 26 saw 1.28 GB under 1 GB) once stayed for the worker's
    life: now they are gone after the job."""
    leave = IPC_LIB + (
        "for _ in range(5):\n    shm = libc.shmget(0, 64 << 20, IPC_CREAT | 0o600)\n"
        "    addr = libc.shmat(shm, None, 0)\n    ctypes.memset(addr, 1, 64 << 20)\n"
        "    libc.shmdt(ctypes.c_void_p(addr))\n"
        "print(sum(int(r.split()[3]) for r in open('/proc/sysvipc/shm').read().splitlines()[1:]) >> 20)\n"
    )
    look = "rows = open('/proc/sysvipc/shm').read().splitlines()[1:]\nassert not rows, rows\n"
    with Sandbox(workers=1, isolation="bwrap") as sb:
        left = sb.run(ADD + leave, CHECK, Limits(timeout_s=30.0, memory_mb=256))
        assert left.passed and int(left.stdout_tail) == 320, left  # more than its memory limit, in segments
        assert sb.run(ADD + look, CHECK).passed


# ---------------------------------------------------------------------------------------- what the clean-up meets

LITTER = (
    "import os, socket, stat\nos.mkdir('litter')\nos.chdir('litter')\n"
    # 1000 levels deep: a recursive clean-up runs out of stack
    "os.mkdir('deep')\nos.chdir('deep')\nfor _ in range(1000):\n    os.mkdir('d')\n    os.chdir('d')\n"
    "open('bottom', 'w').close()\nos.chdir(os.environ['HOME'] + '/litter')\n"
    # 30 levels of 250-character names: its paths are longer than PATH_MAX (4096)
    "os.mkdir('long')\nos.chdir('long')\nfor _ in range(30):\n    os.mkdir('n' * 250)\n    os.chdir('n' * 250)\n"
    "open('f', 'w').close()\nos.chdir(os.environ['HOME'] + '/litter')\n"
    # many entries, files and directories
    "os.mkdir('wide')\nfor i in range(5000):\n    open(f'wide/f{i}', 'w').close()\n"
    "for i in range(1000):\n    os.mkdir(f'wide/d{i}')\n"
    # no permissions: a file, a directory with a file in it, a directory that cannot be written
    "open('locked', 'w').close()\nos.chmod('locked', 0)\nos.makedirs('closed/inner')\n"
    "open('closed/inner/f', 'w').close()\nos.chmod('closed/inner', 0)\nos.chmod('closed', 0)\n"
    "os.mkdir('readonly')\nopen('readonly/f', 'w').close()\nos.chmod('readonly', 0o500)\n"
    "os.mkdir('sticky')\nopen('sticky/f', 'w').close()\nos.chmod('sticky', 0o1777)\n"
    # special files and links out of the job directory
    "os.mkfifo('fifo')\ns = socket.socket(socket.AF_UNIX)\ns.bind('sock')\n"
    "os.symlink(OUTSIDE, 'out')\nos.symlink(OUTSIDE + '/keep.txt', 'out-file')\nos.symlink('loop', 'loop')\n"
    "os.symlink('..', 'up')\nos.link('locked', 'hardlink')\n"
    # attributes the program may try to set (it has no CAP_LINUX_IMMUTABLE: refused)
    "import fcntl, struct\nfd = os.open('.', os.O_RDONLY)\n"
    "try:\n    fcntl.ioctl(fd, 0x40086602, struct.pack('l', 0x10 | 0x20))\nexcept OSError:\n    pass\n"
)


def _check_litter_is_cleared(isolation: str, outside: Path) -> None:
    """``outside``: a directory of the host the litter links to (visible only without bubblewrap)."""
    (outside / "keep.txt").write_text("intact")
    outside.chmod(0o755)
    with _sandbox(isolation) as sb:
        litter = sb.run(f"OUTSIDE = {str(outside)!r}\n" + ADD + LITTER, CHECK, SLOW)
        assert litter.passed, litter
        after = sb.run(ADD, CHECK)
        assert after.passed, after  # was "crashed" (RecursionError in the zygote's clean-up)
        if isolation == "bwrap":  # on a tmpfs it takes well under its time budget: the worker goes on
            assert len(sb._all[0].uid_bases) == 1
        # (without bubblewrap the scratch directory is on the host's /tmp; on a busy disk removing these 8000
        # entries may take longer than CLEANUP_BUDGET_S, and the worker is then replaced: either way, not charged)
    assert (outside / "keep.txt").read_text() == "intact"  # links were removed, not followed


@pytest.fixture
def outside():
    where = Path(tempfile.mkdtemp(prefix="ra3-outside-"))
    yield where
    shutil.rmtree(where, ignore_errors=True)


@RunIf(bwrap=True)
def test_what_a_program_leaves_cannot_break_the_clean_up(outside):
    _check_litter_is_cleared("bwrap", outside)


def test_what_a_program_leaves_cannot_break_the_clean_up_without_bubblewrap(outside):
    _check_litter_is_cleared("none", outside)


def _zygote(bwrap_pid: int) -> int:
    """The host pid of the zygote (pid 2 of the sandbox) under the bwrap process ``bwrap_pid``."""
    todo = [bwrap_pid]
    while todo:
        pid = todo.pop()
        with open(f"/proc/{pid}/status") as f:
            nspid = next(line for line in f if line.startswith("NSpid:")).split()
        if pid != bwrap_pid and nspid[-1] == "2":
            return pid
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                todo += [int(c) for c in f.read().split()]
    raise AssertionError("no zygote found")


@RunIf(bwrap=True)
def test_a_clean_up_that_fails_replaces_the_worker_and_charges_no_sample():
    """An entry the zygote cannot remove (made immutable from outside, which no program can do) must not fail the
    next sample: the worker says so when the next job comes, and the job runs on a fresh worker."""
    if os.geteuid() != 0:
        pytest.skip("needs root to set the immutable attribute from outside the sandbox")
    waits = ADD.replace(
        "    return", "    import os, time\n    while not os.path.exists('go'):\n        time.sleep(0.01)\n    return"
    )
    with Sandbox(workers=1, isolation="bwrap") as sb:
        assert sb.run(ADD, CHECK).passed
        future = sb.submit("open('stuck', 'w').close()\n" + waits, CHECK, SLOW)
        deadline = time.monotonic() + 20
        stuck: list[str] = []
        while not stuck and time.monotonic() < deadline:
            stuck = glob.glob(f"/proc/{_zygote(sb._all[0].proc.pid)}/root/tmp/job*/stuck")
            time.sleep(0.05)
        assert stuck, "the program never created its file"
        fd = os.open(stuck[0], os.O_RDONLY)
        try:
            flags = struct.unpack("l", fcntl.ioctl(fd, FS_IOC_GETFLAGS, struct.pack("l", 0)))[0]
            fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("l", flags | FS_IMMUTABLE_FL))
        except OSError as exc:
            Path(stuck[0]).with_name("go").touch()
            pytest.skip(f"tmpfs here does not take the immutable attribute: {exc}")
        finally:
            os.close(fd)
        Path(stuck[0]).with_name("go").touch()
        assert future.result(timeout=60).passed
        nxt = sb.run(ADD, CHECK)
        assert nxt.passed, nxt  # not "crashed": the failed clean-up is the worker's, not this sample's
        assert len(sb._all[0].uid_bases) == 2  # the worker was replaced (its tmpfs, immutable file and all, is gone)


# ---------------------------------------------------------------------------------------- the clean-up itself


def test_remove_deletes_any_tree_without_recursion_or_following_links(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("intact")
    root = tmp_path / "scratch"
    root.mkdir()
    here = os.getcwd()
    try:
        os.chdir(root)
        os.mkdir("deep")
        os.chdir("deep")
        for _ in range(3000):  # three times the recursion limit
            os.mkdir("d")
            os.chdir("d")
        os.chdir(root)
        os.mkdir("long")
        os.chdir("long")
        for _ in range(20):  # past PATH_MAX
            os.mkdir("n" * 250)
            os.chdir("n" * 250)
    finally:
        os.chdir(here)
    (root / "link").symlink_to(outside)
    (root / "locked").mkdir()
    (root / "locked" / "f").touch()
    os.chmod(root / "locked", 0)
    os.mkfifo(root / "fifo")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert _cleanup.wipe_dir(fd) == []
    finally:
        os.close(fd)
    assert os.listdir(root) == [] and (outside / "keep.txt").read_text() == "intact"


def test_a_clean_up_out_of_time_reports_what_is_left(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").touch()
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert _cleanup.wipe_dir(fd, deadline=time.monotonic() - 1) == ["d"]
    finally:
        os.close(fd)


def test_an_entry_that_cannot_be_removed_is_reported(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to set the immutable attribute")
    stuck = tmp_path / "d" / "stuck"
    stuck.parent.mkdir()
    stuck.touch()
    fd = os.open(stuck, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("l", FS_IMMUTABLE_FL))
    except OSError as exc:
        pytest.skip(f"{tmp_path} does not take the immutable attribute: {exc}")
    try:
        dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            assert _cleanup.wipe_dir(dir_fd) == ["d"]
        finally:
            os.close(dir_fd)
    finally:
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("l", 0))
        os.close(fd)
    assert stat.S_ISREG(os.lstat(stuck).st_mode)


def test_the_trainer_removes_a_deep_scratch_directory_too(tmp_path):
    """Without bubblewrap the trainer removes a replaced worker's scratch directory: no recursion there either."""
    from ra3_lightning.sandbox.pool import _Worker

    worker = _Worker("none", scratch_mb=64, judge_memory_mb=512, cpu=0)
    worker.host_scratch = str(tmp_path / "scratch")
    os.mkdir(worker.host_scratch)
    here = os.getcwd()
    try:
        os.chdir(worker.host_scratch)
        for _ in range(3000):
            os.mkdir("d")
            os.chdir("d")
    finally:
        os.chdir(here)
    worker.close()
    assert worker.host_scratch is None and os.listdir(tmp_path) == []
