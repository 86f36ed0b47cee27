"""Data: record sources, trace corpora, coding tasks, the synthetic world and DataModules."""

from ra3_lightning.data.em_data import EMDataModule
from ra3_lightning.data.task_data import TaskDataModule
from ra3_lightning.data.texts import TextDataModule
from ra3_lightning.data.traces import TraceDataModule

__all__ = ["EMDataModule", "TaskDataModule", "TextDataModule", "TraceDataModule"]
