"""What a job leaves in its sandbox worker, removed before the next job: files and System V / POSIX IPC objects.

The zygote (``_harness.py``) calls these after every process of the job is dead, so nothing changes under them (no
symlink races, no object created while the list is read). They report what they could not remove instead of
raising: a worker that cannot clean up is replaced before its next job (``pool._Worker``), and no other sample is
charged for it.

* Files: :func:`remove` deletes a tree of any depth and any permissions without recursion and without following
  symbolic links, holding at most two descriptors (names relative to the directory's descriptor, so no path grows
  past ``PATH_MAX``).
* IPC: :class:`Ipc` finds the System V shared memory segments, message queues and semaphore sets of this
  process's IPC namespace (``/proc/sysvipc``) and the POSIX message queues of a mounted ``mqueue`` file system, and
  removes them: System V objects by ``IPC_RMID`` (a segment's memory is freed as soon as no process has it
  attached, i.e. at once) in a short-lived helper process (:func:`remove_sysv`), so that the zygote never maps
  ``ctypes``; message queues by ``unlink``.

Standard library only: the sandbox harness loads this file inside the sandbox.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

SYSVIPC = "/proc/sysvipc"
IPC_RMID = 0
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

IpcObject = tuple[str, int, int]  # (kind: "shm" | "msg" | "sem", id, creator uid)


# ------------------------------------------------------------------------------------------------------- files


def wipe_dir(dir_fd: int, keep: Iterable[str] = (), deadline: float = float("inf")) -> list[str]:
    """Remove every entry of the directory ``dir_fd`` except the names in ``keep``; the names it could not remove
    (by ``deadline``, a ``time.monotonic()`` value)."""
    keep = set(keep)
    with os.scandir(dir_fd) as entries:
        found = [(e.name, e.is_dir(follow_symlinks=False)) for e in entries if e.name not in keep]
    return [name for name, is_dir in found if not remove(dir_fd, name, is_dir, deadline)]


def wipe_owned(path: str, owners: range, deadline: float = float("inf")) -> list[str]:
    """Remove the entries of ``path`` (e.g. ``/tmp``) whose owner is in ``owners``; the names it could not remove."""
    try:
        fd = os.open(path, _DIR)
    except OSError:
        return []
    try:
        with os.scandir(fd) as entries:
            names = [e.name for e in entries if _owner(e) in owners]
        return [name for name in names if not remove(fd, name, deadline=deadline)]
    finally:
        os.close(fd)


def _owner(entry: os.DirEntry) -> int:
    try:
        return entry.stat(follow_symlinks=False).st_uid
    except OSError:
        return -1


def remove(parent_fd: int, name: str, is_dir: bool = False, deadline: float = float("inf")) -> bool:
    """Delete ``name`` in the directory ``parent_fd`` — a file, a link or a whole tree — and say whether it is gone
    (``False`` also once ``deadline``, a ``time.monotonic()`` value, has passed).

    Iterative (a tree 100,000 levels deep is no deeper for it than one), by names relative to directory descriptors
    (no path length limit), never following a symbolic link; a directory it may not read or change is made
    readable first (where it belongs to our uid). ``is_dir``: ``name`` is known to be a directory.
    """
    if not is_dir:
        try:
            os.unlink(name, dir_fd=parent_fd)
            return True
        except FileNotFoundError:
            return True
        except IsADirectoryError:
            pass
        except OSError:
            return False
    fd = -1
    try:
        fd = _open_dir(parent_fd, name)
        stack = [(name, _clear(fd, deadline))]  # directories from ``name`` down to the current one, with subdirectories
        while stack:
            current, pending = stack[-1]
            if pending:
                sub = pending.pop()
                child = _open_dir(fd, sub)
                os.close(fd)
                fd = child
                stack.append((sub, _clear(fd, deadline)))
                continue
            stack.pop()
            up = os.open("..", _DIR, dir_fd=fd) if stack else parent_fd
            os.close(fd)
            fd = up if stack else -1
            os.rmdir(current, dir_fd=up)
        return True
    except OSError:
        return False
    finally:
        if fd >= 0:
            os.close(fd)


def _open_dir(parent_fd: int, name: str) -> int:
    try:
        return os.open(name, _DIR, dir_fd=parent_fd)
    except PermissionError:  # our own directory without read/search permission (no CAP_DAC_OVERRIDE here)
        os.chmod(name, 0o700, dir_fd=parent_fd)  # a directory, not a link: nothing can swap it, the job is dead
        return os.open(name, _DIR, dir_fd=parent_fd)


def _clear(fd: int, deadline: float) -> list[str]:
    """Unlink every non-directory in the directory ``fd``; return the names of its subdirectories."""
    try:
        return _clear_once(fd, deadline)
    except PermissionError:  # our own directory without write permission
        os.fchmod(fd, 0o700)
        return _clear_once(fd, deadline)


def _clear_once(fd: int, deadline: float) -> list[str]:
    if time.monotonic() > deadline:
        raise TimeoutError("clean-up ran out of time")
    subdirs = []
    with os.scandir(fd) as entries:
        for i, entry in enumerate(entries):
            if entry.is_dir(follow_symlinks=False):
                subdirs.append(entry.name)
            else:
                os.unlink(entry.name, dir_fd=fd)
            if i & 4095 == 4095 and time.monotonic() > deadline:
                raise TimeoutError("clean-up ran out of time")
    return subdirs


# --------------------------------------------------------------------------------------------------------- IPC


class Ipc:
    """The IPC objects of this process's IPC namespace: System V ones (``/proc/sysvipc``) and the POSIX message
    queues of the ``mqueue`` file system mounted at ``mqueue``, if one is.

    :meth:`maybe_any` asks cheaply, on descriptors opened once (after every job: one ``pread`` per System V kind,
    one ``fstat`` for the message queues, whose directory grows by 20 bytes per queue); :meth:`objects` lists them.
    """

    KINDS = ("shm", "msg", "sem")
    _EMPTY_MQUEUE_SIZE = 40  # the size of an mqueue file system's root directory with no queue in it

    def __init__(self, mqueue: str | None) -> None:
        self.mqueue = mqueue
        self.fds = {}
        for kind in self.KINDS:
            try:
                self.fds[kind] = os.open(f"{SYSVIPC}/{kind}", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
        self.header = {kind: len(os.pread(fd, 4096, 0).partition(b"\n")[0]) + 1 for kind, fd in self.fds.items()}
        self.mq_fd = os.open(mqueue, _DIR) if mqueue else None

    def maybe_any(self) -> bool:
        """False if there is certainly no object; True if there may be one."""
        for kind, fd in self.fds.items():
            if len(os.pread(fd, self.header[kind] + 1, 0)) > self.header[kind]:
                return True
        return self.mq_fd is not None and os.fstat(self.mq_fd).st_size != self._EMPTY_MQUEUE_SIZE

    def objects(self) -> list[tuple[str, int | str, int]]:
        """Every object as ``(kind, id or queue name, creator uid)``; kind ``"mq"`` for a POSIX message queue."""
        found: list[tuple[str, int | str, int]] = []
        for kind, fd in self.fds.items():
            header, *rows = _pread_all(fd).split(b"\n")
            if any(rows):
                cuid = header.split().index(b"cuid")
                found += [(kind, int(row.split()[1]), int(row.split()[cuid])) for row in rows if row.strip()]
        if self.mq_fd is not None:
            with os.scandir(self.mq_fd) as entries:
                found += [("mq", e.name, _owner(e)) for e in entries]
        return found

    def remove(self, objects: list[tuple[str, int | str, int]], as_creator: bool) -> None:
        """Remove ``objects`` (whatever is gone already is skipped); the caller looks again to see what is left."""
        sysv = [o for o in objects if o[0] != "mq"]
        if sysv:
            remove_sysv(sysv, as_creator)  # type: ignore[arg-type]
        for _, name, _ in (o for o in objects if o[0] == "mq"):
            try:
                os.unlink(str(name), dir_fd=self.mq_fd)
            except OSError:
                pass


def _pread_all(fd: int) -> bytes:
    chunks = [os.pread(fd, 1 << 16, 0)]
    while len(chunks[-1]) == 1 << 16:
        chunks.append(os.pread(fd, 1 << 16, (1 << 16) * len(chunks)))
    return b"".join(chunks)


def mount_of_type(fstype: str) -> str | None:
    """Where a file system of type ``fstype`` is mounted in this mount namespace (``/proc/self/mountinfo``)."""
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                _, _, after = line.partition(" - ")
                if after.split(" ", 1)[0] == fstype:
                    return line.split()[4]
    except OSError:
        pass
    return None


def remove_sysv(objects: list[IpcObject], as_creator: bool) -> None:
    """``IPC_RMID`` every object, in a helper process (``ctypes`` stays out of the caller); ``as_creator``: switch
    the effective uid to each object's creator first (root without ``CAP_SYS_ADMIN`` may remove only its own)."""
    pid = os.fork()
    if pid == 0:
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            control = {
                "shm": lambda ident: libc.shmctl(ident, IPC_RMID, None),
                "msg": lambda ident: libc.msgctl(ident, IPC_RMID, None),
                "sem": lambda ident: libc.semctl(ident, 0, IPC_RMID),
            }
            for kind, ident, creator in objects:
                if as_creator:
                    os.seteuid(creator)
                control[kind](ident)
                if as_creator:
                    os.seteuid(0)  # the saved uid is still 0
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
