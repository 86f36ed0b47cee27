"""``SamplesFile``: the per-sample results file of one evaluation (one JSON line per sample, ranks merged)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from torch import Tensor

from ra3_lightning.data.tasks import CodingTask
from ra3_lightning.eval_diagnostics import CompletionStats, merge_sample_files, rank_samples_path, sample_record


class SamplesFile:
    """Writes ``Evaluation.samples_path``: each rank appends to its own part while it evaluates; at the end rank 0
    merges the parts into one file (:func:`~ra3_lightning.eval_diagnostics.merge_sample_files`).

    Args:
        template: The path, with ``{stage}`` and ``{step}`` filled in per evaluation; ``None`` = no file.
    """

    def __init__(self, template: str | None) -> None:
        self.template = template
        self.path: str | None = None  # what this rank appends to during the evaluation
        self.merged: str | None = None  # with several processes: the file rank 0 merges the parts into

    def start(self, trainer: Any, stage: str, step: int) -> None:
        """Empty this evaluation's file, or this rank's part of it (none during the sanity check)."""
        self.path = self.merged = None
        if self.template is None or trainer.sanity_checking:
            return
        path = Path(self.template.format(stage=stage, step=step))
        if trainer.world_size > 1:
            self.merged = str(path)
            path = rank_samples_path(path, trainer.global_rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
        self.path = str(path)

    def write(
        self,
        tasks: list[CodingTask],
        texts: list[str],
        passed: Tensor,  # [N] bool
        truncated: Tensor,  # [N] bool
        stats: list[CompletionStats],
    ) -> None:
        """Append one :func:`~ra3_lightning.eval_diagnostics.sample_record` line per sample."""
        if self.path is None:
            return
        rows = zip(tasks, texts, passed.tolist(), truncated.tolist(), stats, strict=True)
        with open(self.path, "a") as f:
            f.writelines(json.dumps(sample_record(*row)) + "\n" for row in rows)

    def merge(self, trainer: Any) -> None:
        """With several processes: once every rank has written its part (a barrier), rank 0 merges the parts into
        the one file and deletes them; parts it cannot see (no shared file system) are kept, with a warning."""
        merged, self.merged = self.merged, None
        if merged is None:
            return
        trainer.strategy.barrier("ra3-samples-file")
        if not trainer.is_global_zero:
            return
        parts = [rank_samples_path(merged, r) for r in range(trainer.world_size)]
        missing = [str(p) for p in parts if not p.exists()]
        if missing:
            warnings.warn(f"samples file not merged: rank 0 does not see {missing}; the parts are kept", stacklevel=1)
            return
        merge_sample_files(parts, merged)
