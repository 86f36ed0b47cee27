"""Where a stage's time goes: wall-clock seconds per named part, summed over calls.

RA3's cost is split between parts that run inside and between training steps (E-steps, annotation, M-steps, the
logged ELBO gain, the raw validation loss). ``RA3Module`` and ``LatentPolicyModule`` time each with one
:class:`Stopwatch` and log the running totals as ``timing_s/<part>`` (TensorBoard, once per EM iteration), which
``bench/ra3_vs_ntp.py`` reads back to explain the RA3 / NTP cost ratio.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class Stopwatch:
    """Seconds per part: ``with watch("annotation/sample"): ...`` adds the block's wall time to that part.

    Parts nest freely (an outer part includes its inner ones). On a GPU the device is synchronised at both ends of
    a part, so the part owns the kernels it launched rather than the next part that waits for them; that costs a
    sync per part, which is why parts are phases and passes, never single ops.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, part: str, device: torch.device | None = None) -> Iterator[None]:
        sync = device is not None and device.type == "cuda"
        if sync:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        try:
            yield
        finally:
            if sync:
                torch.cuda.synchronize(device)
            self.seconds[part] += time.perf_counter() - start

    def totals(self) -> dict[str, float]:
        """The running totals, sorted by part name."""
        return dict(sorted(self.seconds.items()))
