"""Per-rank parameter bytes of the E-step's ``q`` and ``π`` under FSDP2, at the shapes of real code models.

Three layouts, through the library's own functions (``shard_lm``, ``frozen_copy``, ``apply_lora``) on 2 gloo
processes, with the models on the meta device (shapes only, nothing is allocated):

* ``π replicated`` — ``q`` sharded, ``π`` a full copy on every rank (the layout before ``π`` was sharded);
* ``π sharded``   — both sharded (``LatentPolicyModule`` without LoRA now);
* ``LoRA``        — ``q`` = base + adapters, sharded; ``π`` = the same base with the adapter off: no bytes of its own.

    python bench/pi_memory.py              # bf16 parameters, world size 2 (the figures scale as 1 / world size)

Parameter bytes only: gradients and AdamW state come on top for whatever trains (all of ``q``, or the adapters).
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

SHAPES = {  # the Qwen2.5-Coder configs (hidden, layers, intermediate, heads, kv heads, vocab, tied embeddings)
    "Qwen2.5-Coder-1.5B": (1536, 28, 8960, 12, 2, 151936, True),
    "Qwen2.5-Coder-7B": (3584, 28, 18944, 28, 4, 152064, False),
}
WORLD = 2
GIB = 1024**3


def meta_model(shape: tuple) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM, Qwen2Config

    hidden, layers, inter, heads, kv, vocab, tied = shape
    config = Qwen2Config(
        hidden_size=hidden, num_hidden_layers=layers, intermediate_size=inter, num_attention_heads=heads,
        num_key_value_heads=kv, vocab_size=vocab, tie_word_embeddings=tied,
    )  # fmt: skip
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)


def local_bytes(model: torch.nn.Module | None) -> int:
    from ra3_lightning.lora import _local

    return 0 if model is None else sum(_local(p).numel() * p.element_size() for p in model.parameters())


def layouts(shape: tuple, mesh) -> dict[str, tuple[int, int]]:
    """``{layout: (q bytes, π bytes)}`` on this rank."""
    from ra3_lightning.lora import LoRASpec, apply_lora
    from ra3_lightning.modules.base import shard_lm
    from ra3_lightning.modules.latent_policy import frozen_copy

    out = {}
    q = meta_model(shape)
    pi = frozen_copy(q)
    shard_lm(q, mesh)
    out["π replicated"] = (local_bytes(q), local_bytes(pi))
    shard_lm(pi, mesh)
    out["π sharded"] = (local_bytes(q), local_bytes(pi))
    q = apply_lora(meta_model(shape), LoRASpec(r=16, alpha=32))
    shard_lm(q, mesh)
    out["LoRA r=16"] = (local_bytes(q), 0)
    return out


def worker(rank: int, results: dict) -> None:
    from torch.distributed.device_mesh import init_device_mesh

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29533")
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    mesh = init_device_mesh("cpu", (WORLD,))
    for name, shape in SHAPES.items():
        results[(rank, name)] = layouts(shape, mesh)
    dist.destroy_process_group()


def main() -> None:
    results = mp.Manager().dict()
    mp.spawn(worker, args=(results,), nprocs=WORLD, join=True)
    print(f"per-rank parameter GiB (bf16), world size {WORLD}: q + π = total (max over ranks)\n")
    print(f"| model | {' | '.join(next(iter(results.values())))} |")
    print("|---|" + "---:|" * len(next(iter(results.values()))))
    for name in SHAPES:
        cells = []
        for layout in results[(0, name)]:
            q, pi = max((results[(r, name)][layout] for r in range(WORLD)), key=sum)
            cells.append(f"{q / GIB:.2f} + {pi / GIB:.2f} = {(q + pi) / GIB:.2f}")
        print(f"| {name} | {' | '.join(cells)} |")


if __name__ == "__main__":
    sys.exit(main())
