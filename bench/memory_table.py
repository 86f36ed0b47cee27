"""Per-GPU memory of every shipped stage for Qwen2.5-Coder-1.5B and -7B, on 1 GPU and on 8 (FSDP2), printed as the
markdown tables of docs/memory.md.

Parameter counts are exact, from meta-device models (``bench/pi_memory.py``'s ``meta_model`` and ``SHAPES``: nothing
is allocated); parameter, gradient, optimizer and frozen-copy bytes are those counts times the bytes per parameter of
each precision (:data:`PRECISIONS`). Activations, logits, FSDP2 all-gathers, the autocast weight cache and KV caches
are estimates from the formulas in :func:`activations`, :func:`logits` and :func:`transients` (docs/memory.md states
them); the batch shapes are those of the stage configs (:data:`PHASES`).

    python bench/memory_table.py
"""

from __future__ import annotations

from dataclasses import dataclass

from pi_memory import SHAPES, meta_model

GIB = 1024**3
GPU_GIB = 79.0  # an 80 GB H100 / A100 as the allocator sees it (81,559 MiB, less the CUDA context)
LAYOUTS = ((1, "1 GPU"), (8, "8 GPUs"))


@dataclass(frozen=True)
class Counts:
    """Exact parameter counts of one model, and the widths the estimates need."""

    params: int  # all parameters (tied embeddings once)
    root: int  # outside the decoder layers: embeddings, LM head (if untied), final norm — FSDP2's root unit
    layer: int  # one decoder layer
    layers: int
    hidden: int
    intermediate: int
    kv_width: int  # num_key_value_heads · head_dim
    vocab: int  # rows of the LM head (the padded vocabulary)


@dataclass(frozen=True)
class Precision:
    """Bytes per parameter of a trained model (weights + grads + one AdamW's two states), of a second AdamW's states,
    of a frozen copy; bytes per element of the residual stream; the ``H`` coefficient of a layer's activations
    (:func:`activations`); and whether bf16 autocast caches bf16 copies of fp32 weights."""

    name: str
    trained: int
    second_adamw: int
    frozen: int
    residual: int
    layer_h: int
    autocast: bool


PRECISIONS = (
    Precision("fp32 weights + bf16-mixed (ntp.yaml; ra3_em.yaml after the precision fix)", 16, 8, 4, 4, 36, True),
    Precision("bf16-true (estep.yaml, rlvr.yaml, ra3_em.yaml as shipped)", 8, 4, 2, 2, 26, False),
)


@dataclass(frozen=True)
class Phase:
    """One peak of a stage: a loss's forward + backward, or a rollout (KV cache, model unsharded under FSDP2)."""

    name: str
    adamw: int = 1  # AdamW optimizers with state at this point
    frozen: int = 0  # frozen copies (π, RLVR's reference)
    tokens: int = 0  # tokens per forward/backward with gradient
    checkpointing: bool = False
    head_positions: int = 0  # positions through the LM head with gradient
    chunk: int | None = None  # the stage's LM-head chunk (None: the dense logits)
    kv_tokens: int = 0  # sequences × tokens of a rollout's KV cache
    unsharded: int = 0  # whole models all-gathered on every rank during the rollout (FSDP2)
    autocast: bool = True  # runs inside the training step's autocast region (annotation runs in a callback: not)


E_TOKENS = 4 * 8 * 1024  # E-step: 4 traces × G = 8 rollouts × 1,024 tokens each (assumed; traces are not truncated)
PHASES = (
    Phase("NTP step (ntp.yaml: 8 × 2048, checkpointing)", tokens=8 * 2048, checkpointing=True,
          head_positions=8 * 2048, chunk=1024),
    Phase("RA3 EM: M-step (ra3_em.yaml: 8 × 2048, no checkpointing)", adamw=2, frozen=1, tokens=8 * 2048,
          head_positions=8 * 2048, chunk=1024),
    Phase("RA3 EM: M-step with gradient_checkpointing: true", adamw=2, frozen=1, tokens=8 * 2048,
          checkpointing=True, head_positions=8 * 2048, chunk=1024),
    Phase("RA3 EM: E-step loss (4 × 8 × ~1k tokens, no checkpointing)", adamw=2, frozen=1, tokens=E_TOKENS,
          head_positions=E_TOKENS, chunk=256),
    Phase("RA3 EM: E-step loss with gradient_checkpointing: true", adamw=2, frozen=1, tokens=E_TOKENS,
          checkpointing=True, head_positions=E_TOKENS, chunk=256),
    Phase("RA3 EM: annotation (16 × 4 samples × ~1k tokens; q and π unsharded)", adamw=2, frozen=1,
          kv_tokens=64 * 1024, unsharded=2, autocast=False),
    Phase("E-step loss (estep.yaml: 4 × 8 × ~1k tokens, no checkpointing)", frozen=1, tokens=E_TOKENS,
          head_positions=E_TOKENS, chunk=256),
    Phase("E-step rollout (32 × ~1k tokens; q unsharded)", frozen=1, kv_tokens=E_TOKENS, unsharded=1),
    Phase("RLVR loss (rlvr.yaml: 8 × (1024 + 768), checkpointing, β = 0)", tokens=8 * 1792, checkpointing=True,
          head_positions=8 * 768, chunk=256),
    Phase("RLVR rollout (16 prompts × 8 × 1792 tokens; policy unsharded)", kv_tokens=128 * 1792, unsharded=1),
)  # fmt: skip


def counts(shape: tuple) -> Counts:
    """Exact counts from the meta-device model of ``shape`` (a :data:`SHAPES` entry)."""
    model = meta_model(shape)
    hidden, layers, intermediate, heads, kv, vocab, _ = shape
    params = sum(p.numel() for p in model.parameters())
    layer = sum(p.numel() for p in model.model.layers[0].parameters())
    return Counts(params, params - layers * layer, layer, layers, hidden, intermediate, kv * hidden // heads, vocab)


def state(c: Counts, p: Precision, phase: Phase, world: int) -> float:
    """Resident bytes per GPU (exact): trained weights, grads and AdamW state(s), frozen copies, sharded over
    ``world`` (FSDP2 shards every parameter; the rounding of shards is ignored)."""
    per_param = p.trained + (phase.adamw - 1) * p.second_adamw + phase.frozen * p.frozen
    return c.params * per_param / world


def activations(c: Counts, p: Precision, phase: Phase) -> float:
    """Estimated bytes kept for backward by the decoder layers, per GPU.

    One layer keeps ``a·H + 8·I + 4·H_kv`` bytes per token: SwiGLU's four bf16 ``I``-wide tensors; the two RMSNorms'
    fp32 input copy and output (16·H, or 12·H in bf16); the q/k/v/o and gate/up matmul inputs, autocast's bf16 casts
    made once per matmul under bf16-mixed (10·H, or 4·H); SDPA's q, k and v repeated to ``H`` wide, and output (8·H);
    k and v before the repeat — ``a = 36`` under bf16-mixed, ``26`` in bf16 (no ``L²`` term: SDPA / flash). With
    gradient checkpointing each layer keeps only its input (the residual stream, ``residual`` bytes per element) and
    one layer at a time is rebuilt with everything.
    """
    per_token_layer = p.layer_h * c.hidden + 8 * c.intermediate + 4 * c.kv_width
    if not phase.checkpointing:
        return phase.tokens * c.layers * per_token_layer
    return phase.tokens * (c.layers * p.residual * c.hidden + per_token_layer)


def logits(c: Counts, phase: Phase, chunked: bool) -> float:
    """Estimated bytes of the LM head's logits and their gradient at the peak.

    Dense: ``14·V`` bytes per position (bf16 logits, their shifted bf16 copy, the fp32 copy and log-softmax, the
    fp32 gradient). Chunked: ``24·chunk·V`` whatever the number of positions (``bench/ce_memory.py`` measures
    ``≈ 22·chunk·V`` for the fp32 chunk's forward and backward; plus its bf16 logits).
    """
    if not phase.head_positions:
        return 0.0
    if chunked and phase.chunk is not None:
        return 24 * min(phase.chunk, phase.head_positions) * c.vocab
    return 14 * phase.head_positions * c.vocab


def transients(c: Counts, p: Precision, phase: Phase, world: int) -> float:
    """Estimated bytes that exist only during the phase, per GPU.

    * the autocast weight cache (bf16-mixed): a bf16 copy of every fp32 weight of the trained model that ran in the
      forward, kept until the autocast region ends — the whole model, also under FSDP2 (the all-gathered weights
      are the ones cached; ``bench/autocast_cache.py``);
    * FSDP2 all-gathers (``world > 1``) of a training step: the root unit (embeddings, head, final norm: the root
      stays unsharded from forward to backward) and two decoder layers, params and unsharded grads;
    * a rollout's KV cache (``2 · layers · H_kv`` elements per token, bf16 under autocast, else the weights' dtype)
      and the whole models it unshards (``world > 1``; on one GPU they are the resident weights already).
    """
    weight = p.trained // 4  # bytes per trained weight: 4 (fp32) or 2 (bf16)
    autocast = p.autocast and phase.autocast
    total = 2.0 * c.params if autocast else 0.0
    if world > 1 and phase.tokens:
        total += 2 * (c.root + 2 * c.layer) * weight
    total += phase.kv_tokens * 2 * c.layers * c.kv_width * (2 if autocast else weight)
    if world > 1 and phase.unsharded:
        total += c.params * (weight + (phase.unsharded - 1) * p.frozen)
    return total


def peak(c: Counts, p: Precision, phase: Phase, world: int, chunked: bool = True) -> float:
    return (
        state(c, p, phase, world)
        + activations(c, p, phase)
        + logits(c, phase, chunked)
        + transients(c, p, phase, world)
    )


def verdict(gib: float) -> str:
    return "fits" if gib <= GPU_GIB - 6 else ("tight" if gib <= GPU_GIB else "**OOM**")


def cell(c: Counts, p: Precision, phase: Phase, world: int) -> str:
    """``chunked GiB verdict`` (and the dense logits' total where the phase has an LM-head chunk)."""
    chunked = peak(c, p, phase, world) / GIB
    text = f"{chunked:.0f} {verdict(chunked)}"
    if phase.chunk is not None:
        dense = peak(c, p, phase, world, chunked=False) / GIB
        text += f" (dense {dense:.0f} {verdict(dense)})"
    return text


def print_counts(models: dict[str, Counts]) -> None:
    print("| model | parameters | root unit (embeddings + head + norm) | per layer | layers | H, I, H_kv, V |")
    print("|---|---:|---:|---:|---:|---|")
    for name, c in models.items():
        widths = f"{c.hidden}, {c.intermediate}, {c.kv_width}, {c.vocab}"
        print(f"| {name} | {c.params:,} | {c.root:,} | {c.layer:,} | {c.layers} | {widths} |")


def print_state(models: dict[str, Counts]) -> None:
    header = " | ".join(f"{name.removeprefix('Qwen2.5-Coder-')} {label}" for name in models for _, label in LAYOUTS)
    print(f"| resident state, GiB per GPU | bytes / param | {header} |")
    print("|---|---:|" + "---:|" * len(models) * len(LAYOUTS))
    for p in PRECISIONS:
        for label, phase in (("NTP / RLVR β = 0", Phase("")), ("E-step, RLVR β > 0", Phase("", frozen=1)),
                             ("RA3 EM (two AdamW + π)", Phase("", adamw=2, frozen=1))):  # fmt: skip
            per_param = state(Counts(1, 0, 0, 0, 0, 0, 0, 0), p, phase, 1)
            cells = " | ".join(f"{state(c, p, phase, w) / GIB:.1f}" for c in models.values() for w, _ in LAYOUTS)
            print(f"| {label}, {p.name.split(' (')[0]} | {per_param:.0f} | {cells} |")


def print_peaks(models: dict[str, Counts], p: Precision) -> None:
    header = " | ".join(f"{name.removeprefix('Qwen2.5-Coder-')} {label}" for name in models for _, label in LAYOUTS)
    print(f"\n{p.name}: peak GiB per GPU, chunked logits (dense in brackets)\n")
    print(f"| phase | {header} |")
    print("|---|" + "---|" * len(models) * len(LAYOUTS))
    for phase in PHASES:
        cells = " | ".join(cell(c, p, phase, w) for c in models.values() for w, _ in LAYOUTS)
        print(f"| {phase.name} | {cells} |")


def print_breakdown(models: dict[str, Counts], p: Precision, phase: Phase) -> None:
    print(f"\n{phase.name}, {p.name}: GiB per GPU\n")
    print("| model, GPUs | state (exact) | activations | logits chunked / dense | transients | total |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, c in models.items():
        for world, label in LAYOUTS:
            parts = (state(c, p, phase, world), activations(c, p, phase), logits(c, phase, True),
                     logits(c, phase, False), transients(c, p, phase, world))  # fmt: skip
            s, a, lc, ld, t = (x / GIB for x in parts)
            print(f"| {name} {label} | {s:.1f} | {a:.1f} | {lc:.1f} / {ld:.1f} | {t:.1f} | {s + a + lc + t:.1f} |")


def main() -> None:
    models = {name: counts(shape) for name, shape in SHAPES.items()}
    print_counts(models)
    print()
    print_state(models)
    for p in PRECISIONS:
        print_peaks(models, p)
    print_breakdown(models, PRECISIONS[0], PHASES[0])
    print_breakdown(models, PRECISIONS[0], PHASES[2])


if __name__ == "__main__":
    main()
