"""Checkpoint files: read with errors that name the path, written so that a killed save breaks nothing.

Reading. ``torch.load`` on a truncated, empty or foreign file fails with a message that names no path (or, for
``weights_only`` refusals, advises ``weights_only=False`` — unsafe for a file of unknown origin).
:func:`read_checkpoint` checks the file's structure first (:func:`checkpoint_problem`: empty, not a zip archive, no
``data.pkl``) and raises :class:`~ra3_lightning.errors.CheckpointError` naming the path, what is wrong, and the
newest readable checkpoint beside it, if any.

Writing. Lightning's ``TorchCheckpointIO`` writes through an fsspec transaction, which for a local path writes a
temporary file in ``$TMPDIR`` and then *moves* it over the target: across file systems that is a copy, so a kill
during it leaves a truncated (often 0-byte) ``last.ckpt``, and every killed save leaves its temporary file in
``$TMPDIR``. :func:`atomic_save` writes a temporary file beside the target, flushes and fsyncs it, and renames it over
the target (``os.replace``): the target is always the old or the new checkpoint. :class:`AtomicCheckpointIO` is
``TorchCheckpointIO`` with both; ``RA3CLI`` puts it on every trainer whose strategy uses the default checkpoint IO.
Remote paths (``s3://`` and so on) keep Lightning's behaviour.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import secrets
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from fsspec.utils import get_protocol
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from typing_extensions import override

from ra3_lightning.errors import CheckpointError

TMP_SUFFIX = ".tmp"  # a save in progress: .<name>.<random>.tmp beside the target (never matches *.ckpt)


def checkpoint_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be a torch checkpoint file, judged from its size and zip directory (cheap: the tensors are
    not read); ``None`` when it looks like one."""
    path = Path(path)
    if not path.exists():
        return "no such file"
    if path.is_dir():
        return "a directory, not a checkpoint file"
    if path.stat().st_size == 0:
        return "the file is empty (0 bytes): a save that was killed, or a copy that failed"
    if not zipfile.is_zipfile(path):
        return "not a zip archive, as torch checkpoints are: truncated (a killed save, a broken copy) or no checkpoint"
    with zipfile.ZipFile(path) as archive:
        if not any(name.endswith("data.pkl") for name in archive.namelist()):
            return "a zip archive without the data.pkl of a torch checkpoint"
    return None


def newest_readable_checkpoint(directory: str | Path, exclude: tuple[str | Path, ...] = ()) -> Path | None:
    """The most recently modified ``*.ckpt`` in ``directory`` that passes :func:`checkpoint_problem`, or ``None``."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    skip = {Path(p).resolve() for p in exclude}
    candidates = [p for p in directory.glob("*.ckpt") if p.is_file() and p.resolve() not in skip]
    for candidate in sorted(candidates, key=lambda p: p.stat().st_mtime, reverse=True):
        if checkpoint_problem(candidate) is None:
            return candidate
    return None


def unreadable(path: str | Path, problem: str) -> CheckpointError:
    """The error for a checkpoint file that cannot be read, with the newest readable checkpoint beside it as a hint."""
    other = newest_readable_checkpoint(Path(path).parent, exclude=(path,)) if Path(path).parent.is_dir() else None
    hint = f"; the newest readable checkpoint beside it is {other}" if other else ""
    return CheckpointError(f"{path}: not a readable checkpoint ({problem}){hint}")


def read_checkpoint(
    path: str | Path, weights_only: bool | None = True, mmap: bool = True, map_location: Any = "cpu"
) -> dict[str, Any]:
    """``torch.load`` a local checkpoint file, raising :class:`~ra3_lightning.errors.CheckpointError` (naming the path
    and what is wrong) for a missing, empty, truncated or foreign file."""
    return _loading(path, lambda: torch.load(path, map_location=map_location, weights_only=weights_only, mmap=mmap))


def _loading(path: str | Path, load: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    problem = checkpoint_problem(path)
    if problem is not None:
        raise unreadable(path, problem)
    try:
        return load()
    except pickle.UnpicklingError as e:
        raise unreadable(path, f"its pickled data does not load: {_unpickling_detail(e)}") from e
    except (RuntimeError, EOFError, zipfile.BadZipFile) as e:
        raise unreadable(path, f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}") from e


def _unpickling_detail(error: pickle.UnpicklingError) -> str:
    """The reason in torch's unpickling error, without its advice to load with ``weights_only=False``."""
    found = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\. Please use|\n\n|$)", str(error), flags=re.S)
    return " ".join((found.group(1) if found else str(error).splitlines()[0]).split())[:200]


def atomic_save(checkpoint: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, fsync it, then rename it over ``path``: a kill at any
    moment leaves ``path`` as it was or complete. Leftovers of killed saves of the same target are removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for leftover in path.parent.glob(f".{path.name}.*{TMP_SUFFIX}"):
        leftover.unlink(missing_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{TMP_SUFFIX}"
    try:
        with open(tmp, "xb") as f:  # not mkstemp: its files are private (0600), checkpoints keep the umask's mode
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable (POSIX); a no-op where directories cannot be opened."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def is_local(path: str | Path) -> bool:
    return get_protocol(str(path)) in ("file", "local")


def _storage_in_place(storage: Any, location: str) -> Any:
    """``TorchCheckpointIO.load_checkpoint``'s default ``map_location``: storages stay where they were saved."""
    return storage


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that saves local checkpoints with :func:`atomic_save` and loads them with errors that
    name the path (:class:`~ra3_lightning.errors.CheckpointError`); remote paths behave as in Lightning."""

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or not is_local(path):
            super().save_checkpoint(checkpoint, path, storage_options=storage_options)
            return
        atomic_save(checkpoint, path)

    @override
    def load_checkpoint(
        self, path: Any, map_location: Any = _storage_in_place, weights_only: bool | None = None
    ) -> dict[str, Any]:
        if not is_local(path) or Path(path).is_dir():
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        return _loading(path, lambda: super(AtomicCheckpointIO, self).load_checkpoint(path, map_location, weights_only))
