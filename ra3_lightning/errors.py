"""Errors in what a user handed a command, and how the commands report them: one line, exit status 1.

:class:`InputError` is the base of :class:`~ra3_lightning.data.sources.DataError` (a data record is unusable) and
:class:`CheckpointError` (a checkpoint or model directory is unusable). Their messages name the file, the line or
record, the field and what to do, so the entry points (``ra3 ...`` and ``python -m ra3_lightning.evaluate``) print
the message alone — ``error: <message>`` on stderr — and exit with status 1 (:func:`exit_on_input_error`). Setting
the environment variable ``RA3_DEBUG=1`` shows the traceback instead.

An ``InputError`` raised inside a library that wraps exceptions (jsonargparse instantiating a module, ``datasets``
building a dataset) is still found: the handler looks through the exception's causes.

This module imports nothing heavy, so that the scoring command stays free of torch.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

DEBUG_ENV = "RA3_DEBUG"


class InputError(ValueError):
    """Something a user gave a command (a file, a directory, a record) is unusable; the message says which and why."""


class CheckpointError(InputError):
    """A checkpoint file or model directory cannot be used; the message names the path and what to give instead."""


def input_error_in(exc: BaseException) -> InputError | None:
    """``exc`` itself or the first :class:`InputError` among its causes and contexts (``None`` if there is none)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, InputError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def debug_requested() -> bool:
    """Whether ``RA3_DEBUG`` asks for tracebacks (any value but empty, ``0`` or ``false``)."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


@contextmanager
def exit_on_input_error() -> Iterator[None]:
    """Turn an :class:`InputError` (or an exception caused by one) into ``error: <message>`` and exit status 1.

    Other exceptions propagate unchanged; with ``RA3_DEBUG=1`` every exception does.
    """
    try:
        yield
    except Exception as e:
        error = input_error_in(e)
        if error is None or debug_requested():
            raise
        print(f"error: {error}\n(set {DEBUG_ENV}=1 for the traceback)", file=sys.stderr)
        sys.exit(1)
