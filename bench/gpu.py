"""GPU figures of the three hot loops on a Qwen2.5-Coder-1.5B-shaped random model (nothing downloaded), in the
precision the shipped configs train in: fp32 master weights under bf16 autocast (``bf16-mixed``).

* **M-step** (next-token prediction on packed sequences, gradient checkpointing, the chunked LM-head loss the
  modules use): tokens/s of forward + backward + AdamW, MFU (``6 · parameters · tokens/s`` over the GPU's dense
  bf16 peak; recomputation not counted) and peak memory.
* **E-step rollout**: expert lines/s of :func:`ra3_lightning.estep.rollout` over synthetic programs, ``G`` latent
  samples each, THINK-biased so that rationales are written, for every rollout engine; peak memory.
* **RLVR decode**: generated tokens/s of ``KVSample`` (our loop, one prefill per prompt) from the fp32 master
  weights under autocast (what an RLVR step does) and from a bf16 copy, and of HF ``generate`` with a dynamic cache,
  and with a static cache + ``torch.compile``; each against the HBM roofline of decoding (every step reads all
  bf16 weights once: ``rows · bandwidth / parameter bytes`` tokens/s, KV reads ignored); peak memory.

    python bench/gpu.py                     # on one GPU: ~5 minutes; prints a table and one JSON line
    python bench/gpu.py --smoke             # a tiny shape on CPU, to check that the script runs

The tokenizer is a byte-level BPE trained here on the synthetic corpus (no download); the model's vocabulary is
Qwen2.5's size (151,936), so the LM head costs what it costs on the real model. Peak figures default to an H100
SXM (989 TFLOP/s dense bf16, 3.35 TB/s HBM); pass ``--peak-tflops`` / ``--hbm-tbps`` for another GPU (H200: 4.8).
Not yet run on a GPU: no device was lent to the sessions that wrote it.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import json
import time
from collections.abc import Callable

import torch

SHAPES = {  # hidden, layers, intermediate, heads, kv heads, vocab
    "1.5b": (1536, 28, 8960, 12, 2, 151_936),
    "smoke": (64, 2, 128, 4, 2, 4096),
}


def build(shape: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    hidden, layers, inter, heads, kv, vocab = SHAPES[shape]
    config = Qwen2Config(
        hidden_size=hidden, num_hidden_layers=layers, intermediate_size=inter, num_attention_heads=heads,
        num_key_value_heads=kv, vocab_size=vocab, tie_word_embeddings=True, max_position_embeddings=4096,
    )  # fmt: skip
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config).to(device=device, dtype=dtype)


def peak_gib(device: torch.device) -> float | None:
    """Peak allocated GPU memory since the last reset, GiB (``None`` on CPU)."""
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast on a GPU (``bf16-mixed``); disabled on CPU (the smoke run checks the plumbing only)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def timed(fn: Callable[[], int], device: torch.device, repeats: int) -> float:
    """Units per second of ``fn`` (it returns how many units it did), after one warm-up call."""
    fn()
    sync(device)
    start, units = time.perf_counter(), 0
    for _ in range(repeats):
        units += fn()
    sync(device)
    return units / (time.perf_counter() - start)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def mstep_tokens_per_s(model: torch.nn.Module, args: argparse.Namespace, device: torch.device) -> float:
    from ra3_lightning.modules.ntp import lm_loss

    model.train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    ids = torch.randint(10, model.config.vocab_size, (args.batch, args.seq), device=device)
    batch = {"input_ids": ids, "labels": ids}

    def step() -> int:
        with autocast(device):
            loss, _ = lm_loss(model, batch, None, 1024)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return ids.numel()

    rate = timed(step, device, args.repeats)
    model.gradient_checkpointing_disable()
    optimizer.state.clear()  # free AdamW's moments before the other measurements
    return rate


def estep_lines_per_s(
    model: torch.nn.Module, tokenizer, args: argparse.Namespace, device: torch.device
) -> dict[str, float]:
    """Expert lines/s of one rollout of ``args.traces`` traces x ``G`` with each engine (``args.engines``)."""
    from ra3_lightning.data.synthetic import load_split
    from ra3_lightning.estep import LatentVocab, ThinkBias, encode_trace, rollout

    vocab = LatentVocab.from_tokenizer(tokenizer)
    width = model.config.vocab_size - len(vocab.think)  # the model's vocabulary is larger than the local BPE's
    masks = {name: torch.nn.functional.pad(getattr(vocab, name), (0, width)) for name in ("think", "comment", "ends")}
    vocab = dataclasses.replace(vocab, **masks)
    traces = [encode_trace(tokenizer, t) for t in load_split("midtrain", n=args.traces, seed=0)["text"]]
    sampler = ThinkBias(model.eval(), vocab.think.to(device), 3.0)
    rates = {}
    for engine in args.engines:
        generator = torch.Generator().manual_seed(0)
        run = functools.partial(rollout_lines, rollout, sampler, traces, vocab, args.G, generator, engine, device)
        rates[engine] = timed(run, device, max(1, args.repeats // 2))
    return rates


def rollout_lines(rollout, sampler, traces, vocab, G: int, generator, engine: str, device: torch.device) -> int:
    """Expert lines of one rollout with ``engine`` (16-token rationales at most, temperature 1)."""
    with torch.no_grad(), autocast(device):
        roll = rollout(sampler, traces, vocab, G, 16, 1.0, generator, engine)
    return int(roll.line_mask.sum())


def decode_tokens_per_s(model: torch.nn.Module, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Generated tokens/s: our loop from the fp32 master weights under autocast (an RLVR step) and from a bf16 copy,
    and HF ``generate`` from the bf16 copy."""
    from ra3_lightning.generation import KVSample, decode

    model.eval()
    bf16 = copy.deepcopy(model).to(torch.bfloat16) if device.type == "cuda" else model
    rows = args.prompts * args.G
    ids = torch.randint(10, model.config.vocab_size, (args.prompts, args.prompt_tokens), device=device)
    mask = torch.ones_like(ids)
    never = [model.config.vocab_size - 1]  # an EOS id random weights essentially never draw: full-length rows
    out = {}

    def ours(weights: torch.nn.Module) -> Callable[[], int]:
        def run() -> int:
            with torch.no_grad(), autocast(device):
                decode(weights, ids, mask, args.new_tokens, never, 0, KVSample(temperature=1.0), None, args.G)
            return rows * args.new_tokens

        return run

    out["KVSample, fp32 weights + autocast (an RLVR step)"] = timed(ours(model), device, args.repeats)
    out["KVSample, bf16 copy"] = timed(ours(bf16), device, args.repeats)
    many, many_mask = ids.repeat_interleave(args.G, 0), mask.repeat_interleave(args.G, 0)

    def hf(**kwargs) -> Callable[[], int]:
        def run() -> int:
            with torch.no_grad():
                bf16.generate(
                    input_ids=many, attention_mask=many_mask, max_new_tokens=args.new_tokens,
                    min_new_tokens=args.new_tokens, do_sample=True, pad_token_id=0, **kwargs,
                )  # fmt: skip
            return rows * args.new_tokens

        return run

    out["HF generate, bf16, dynamic cache"] = timed(hf(), device, args.repeats)
    if device.type == "cuda" and not args.no_compile:
        forward = bf16.forward
        bf16.forward = torch.compile(forward, mode="reduce-overhead", fullgraph=True)
        try:
            out["HF generate, bf16, static cache + torch.compile"] = timed(
                hf(cache_implementation="static"), device, args.repeats
            )
        finally:
            bf16.forward = forward
    return out


def measured(stage: Callable[[], object], device: torch.device) -> tuple[object, float | None]:
    """``stage()`` and its peak GPU memory in GiB."""
    reset_peak(device)
    result = stage()
    return result, peak_gib(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny shape (CPU is fine): check that the script runs")
    parser.add_argument("--batch", type=int, default=8, help="M-step sequences per step")
    parser.add_argument("--seq", type=int, default=2048, help="M-step tokens per sequence")
    parser.add_argument("--traces", type=int, default=16, help="E-step traces per rollout")
    parser.add_argument("--G", type=int, default=8, help="samples per trace / prompt")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU (H100/H200)")
    parser.add_argument("--hbm-tbps", type=float, default=3.35, help="HBM bandwidth, TB/s (H100 SXM; H200: 4.8)")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--engines", nargs="+", default=None, help="E-step engines to time (default: all but reencode)")
    args = parser.parse_args()
    if args.smoke:
        args.batch, args.seq, args.traces, args.G, args.prompts = 2, 64, 2, 2, 2
        args.prompt_tokens, args.new_tokens, args.repeats = 16, 8, 1
    from ra3_lightning.data.synthetic import load_split
    from ra3_lightning.estep.engines import ENGINES
    from ra3_lightning.models import train_bpe_tokenizer

    args.engines = args.engines or [name for name in ENGINES if name != "reencode"]  # re-encoding is quadratic

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shape = "smoke" if args.smoke else "1.5b"
    model = build(shape, device, torch.float32)  # fp32 master weights; compute in bf16 autocast on a GPU
    corpus = load_split("pretrain", n=100 if args.smoke else 500, seed=0)["text"]
    tokenizer = train_bpe_tokenizer(corpus, vocab_size=512 if args.smoke else 2048)
    params = sum(p.numel() for p in model.parameters())
    mstep, mstep_peak = measured(lambda: mstep_tokens_per_s(model, args, device), device)
    estep, estep_peak = measured(lambda: estep_lines_per_s(model, tokenizer, args, device), device)
    decode_rates, decode_peak = measured(lambda: decode_tokens_per_s(model, args, device), device)
    roofline = args.prompts * args.G * args.hbm_tbps * 1e12 / (2 * params)  # bf16 weights read once per step
    result = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "shape": shape,
        "parameters": params, "mstep_tokens_per_s": mstep,
        "mstep_mfu": 6 * params * mstep / (args.peak_tflops * 1e12), "estep_lines_per_s": estep,
        "decode_tokens_per_s": decode_rates, "decode_roofline_tokens_per_s": roofline,
        "peak_gib": {"mstep": mstep_peak, "estep": estep_peak, "decode": decode_peak},
    }  # fmt: skip
    print(table(result, args))
    print(json.dumps(result))


def table(result: dict, args: argparse.Namespace) -> str:
    """The figures as one Markdown table (peak memory per stage in GiB, "-" on CPU)."""

    def gib(stage: str) -> str:
        value = result["peak_gib"][stage]
        return "-" if value is None else f"{value:.1f}"

    params, roofline = result["parameters"], result["decode_roofline_tokens_per_s"]
    rows = [
        f"{result['device']}, {result['shape']} shape ({params / 1e9:.2f} B parameters, fp32 weights, bf16 autocast)",
        "| stage | rate | notes | peak GiB |",
        "|---|---:|---|---:|",
        f"| M-step | {result['mstep_tokens_per_s']:,.0f} tokens/s | {args.batch} x {args.seq}, MFU "
        f"{result['mstep_mfu']:.1%} | {gib('mstep')} |",
    ]
    for engine, rate in result["estep_lines_per_s"].items():
        rows.append(f"| E-step rollout, {engine} engine | {rate:,.1f} lines/s | {args.traces} traces x G={args.G} "
                    f"| {gib('estep')} |")  # fmt: skip
    for name, rate in result["decode_tokens_per_s"].items():
        rows.append(f"| RLVR decode, {name} | {rate:,.0f} tokens/s | {rate / roofline:.1%} of the {roofline:,.0f} "
                    f"roofline | {gib('decode')} |")  # fmt: skip
    return "\n".join(rows)


if __name__ == "__main__":
    main()
