"""Data: record sources, trace corpora, coding tasks, the synthetic world and DataModules.

The DataModules import Lightning and torch; they load on first access (``from ra3_lightning.data import
TaskDataModule`` or ``class_path: ra3_lightning.data.TaskDataModule``), so that the task loaders and the scorer
(``python -m ra3_lightning.evaluate``) start without them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {
    "EMDataModule": "ra3_lightning.data.em_data",
    "TaskDataModule": "ra3_lightning.data.task_data",
    "TextDataModule": "ra3_lightning.data.texts",
    "TraceDataModule": "ra3_lightning.data.traces",
}
__all__ = ["EMDataModule", "TaskDataModule", "TextDataModule", "TraceDataModule"]

if TYPE_CHECKING:
    from ra3_lightning.data.em_data import EMDataModule
    from ra3_lightning.data.task_data import TaskDataModule
    from ra3_lightning.data.texts import TextDataModule
    from ra3_lightning.data.traces import TraceDataModule


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # later lookups skip this hook
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
