"""Fault injection for the EM resume tests: an ``RA3Module`` that SIGKILLs its own process at a chosen point.

``RA3_TEST_KILL`` selects the point:
* ``annotate:<iteration>:<shards>`` — right after ``<shards>`` annotation shards of ``<iteration>`` are on disk;
* ``m:<iteration>:<step>`` — at M-step ``<step>`` of ``<iteration>``, before its optimizer step.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import ra3_lightning.estep.annotation as annotate_module
from ra3_lightning.modules.ra3 import RA3Module


def _kill_point() -> tuple[str, int, int] | None:
    spec = os.environ.get("RA3_TEST_KILL")
    if not spec:
        return None
    kind, iteration, count = spec.split(":")
    return kind, int(iteration), int(count)


class KillingRA3Module(RA3Module):
    def annotate_iteration(self, iteration: int) -> str:
        point = _kill_point()
        if point is None or point[:2] != ("annotate", iteration):
            return super().annotate_iteration(iteration)
        original, written = annotate_module._save_atomically, []

        def save_then_maybe_die(ds: Any, path: Any, replace: bool = False) -> None:
            original(ds, path, replace)
            written.append(path)
            if len(written) >= point[2]:
                os.kill(os.getpid(), signal.SIGKILL)

        annotate_module._save_atomically = save_then_maybe_die
        try:
            return super().annotate_iteration(iteration)
        finally:
            annotate_module._save_atomically = original

    def m_step(self, batch: Any) -> Any:
        point, position = _kill_point(), self.em_position
        if point == ("m", position.iteration, position.step_in_phase):
            os.kill(os.getpid(), signal.SIGKILL)
        return super().m_step(batch)

    def on_fit_start(self) -> None:
        """Record this rank's parameter bytes of ``q`` and of ``π`` (``π`` with LoRA: none of its own)."""
        super().on_fit_start()
        from ra3_lightning.lora import AdapterOff, _local

        nbytes = lambda m: sum(_local(p).numel() * p.element_size() for p in m.parameters())  # noqa: E731
        pi = 0 if isinstance(self.pi, AdapterOff) else nbytes(self.pi)
        out = Path(self.hparams.work_dir) / f"param_bytes_rank{self.trainer.global_rank}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"q": nbytes(self.model), "pi": pi}))
