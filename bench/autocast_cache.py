"""Does bf16 autocast keep a bf16 copy of every fp32 weight through the forward pass, with gradient checkpointing
and under FSDP2? (It caches the bf16 cast of each weight that is a leaf requiring grad until the outermost autocast
region ends; FSDP2's all-gathered weights are such leaves.) One CPU run, 2 gloo processes.

A stack of 8 ``Linear(8192, 8192)`` (2 GiB fp32, 1 GiB as bf16), each layer checkpointed and ``fully_shard``-ed, then
the root, runs one forward pass on a tiny batch without and with ``torch.autocast(bfloat16)``; rank 0 prints the rise
of its peak resident memory (``ru_maxrss``) during the forward. The difference is the cache.

    python bench/autocast_cache.py

Output (2-core CPU, torch 2.13)::

    forward rise without autocast 1.13 GiB, with autocast 2.13 GiB: the autocast cache holds 1.00 GiB
    (a bf16 copy of the whole model, 1.00 GiB; one layer is 0.12 GiB)
"""

from __future__ import annotations

import os
import resource

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.checkpoint import checkpoint

WORLD, WIDTH, LAYERS = 2, 8192, 8
GIB = 1024**3


def forward_rise(autocast: bool) -> float:
    """GiB the peak RSS rises during one forward pass of the sharded, checkpointed stack."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (WORLD,))
    model = torch.nn.Sequential(*[torch.nn.Linear(WIDTH, WIDTH, bias=False) for _ in range(LAYERS)])
    for layer in model:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    x = torch.randn(4, WIDTH, requires_grad=True)  # [4, WIDTH]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        for layer in model:
            x = checkpoint(layer, x, use_reentrant=False)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (after - before) / 2**20


def worker(rank: int, autocast: bool, results: dict) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29541")
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    results[rank] = forward_rise(autocast)
    dist.destroy_process_group()


def main() -> None:
    rise = {}
    for autocast in (False, True):  # one spawn each: every peak RSS is its own process's
        results = mp.Manager().dict()
        mp.spawn(worker, args=(autocast, results), nprocs=WORLD, join=True)
        rise[autocast] = results[0]
    bf16_model = LAYERS * WIDTH * WIDTH * 2 / GIB
    print(f"forward rise without autocast {rise[False]:.2f} GiB, with autocast {rise[True]:.2f} GiB: "
          f"the autocast cache holds {rise[True] - rise[False]:.2f} GiB\n(a bf16 copy of the whole model, "
          f"{bf16_model:.2f} GiB; one layer is {bf16_model / LAYERS:.2f} GiB)")  # fmt: skip


if __name__ == "__main__":
    main()
