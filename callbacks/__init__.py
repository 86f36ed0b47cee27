"""Lightning callbacks, installed as ``ra3_lightning.callbacks`` (the folder sits at the repository top level)."""

from ra3_lightning.callbacks.checkpoint import ResumableCheckpoint, SaveWeightsEvery
from ra3_lightning.callbacks.em_scheduler import EMScheduler
from ra3_lightning.callbacks.export import ExportHF

__all__ = ["EMScheduler", "ExportHF", "ResumableCheckpoint", "SaveWeightsEvery"]
