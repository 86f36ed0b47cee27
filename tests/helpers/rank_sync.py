"""Whether the ranks of a multi-process fit end with one model: each rank writes the digest of the full weights.

Under FSDP2 over every rank, the full state dict gathered from the shards is the same on each rank. Under a strategy
that leaves each rank its own copy (a one-rank mesh, DDP without gradient sync) the ranks see different data and the
digests differ.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import lightning as L
import torch

from ra3_lightning.modules.base import full_state_dict

ROOT = Path(__file__).resolve().parents[2]
# configs/fsdp2.yaml as the docs quote it, on 2 CPU processes (gloo)
FSDP2_OVERLAY = ("-c", str(ROOT / "configs" / "fsdp2.yaml"), "--trainer.accelerator", "cpu", "--trainer.devices", "2")
RANK_WEIGHTS = ("--trainer.callbacks+=helpers.rank_sync.RankWeights",)


def digest(state_dict: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(state_dict):
        h.update(name.encode())
        h.update(state_dict[name].detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()


class RankWeights(L.Callback):
    """At the end of fit, every rank writes ``<default_root_dir>/rank_weights/rank<r>.json``: the digest of its
    full weights and the data-parallel size of its device mesh (``None`` without one)."""

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        weights = digest(full_state_dict(pl_module.model, all_ranks=True))
        mesh = getattr(trainer.strategy, "device_mesh", None)
        out = Path(trainer.default_root_dir) / "rank_weights"
        out.mkdir(parents=True, exist_ok=True)
        record = {"weights": weights, "data_parallel": None if mesh is None else mesh["data_parallel"].size()}
        (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


def assert_ranks_in_sync(root: Path, world: int = 2, sharded: bool = True) -> None:
    """Every rank wrote one record; all hold the same weights (``sharded``: over a mesh of all ``world`` ranks)."""
    records = [json.loads(p.read_text()) for p in sorted((root / "rank_weights").glob("rank*.json"))]
    assert len(records) == world, records
    assert len({r["weights"] for r in records}) == 1, f"ranks ended with different weights: {records}"
    assert all(r["data_parallel"] == (world if sharded else None) for r in records), records
