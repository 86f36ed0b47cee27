"""GPU figures of the three hot loops on a Qwen2.5-Coder-1.5B-shaped random model in bf16 (nothing downloaded).

* **M-step** (next-token prediction on packed sequences): tokens/s of forward + backward + AdamW, and MFU
  (``6 · parameters · tokens/s`` over the GPU's dense bf16 peak).
* **E-step rollout**: expert lines/s of :func:`ra3_lightning.estep.rollout` (KV-cache engine) over synthetic
  programs, ``G`` latent samples each, THINK-biased so that rationales are written.
* **RLVR decode**: generated tokens/s of ``KVSample`` (our loop, one prefill per prompt) and of HF ``generate``
  with a dynamic cache, and with a static cache + ``torch.compile``; each against the HBM roofline of decoding
  (every step reads all weights once: ``rows · bandwidth / parameter bytes`` tokens/s, KV reads ignored).

    python bench/gpu.py                     # on a GPU: ~5 minutes; prints a table and one JSON line
    python bench/gpu.py --smoke             # a tiny shape on CPU, to check that the script runs

The tokenizer is a byte-level BPE trained here on the synthetic corpus (no download); the model's vocabulary is
Qwen2.5's size (151,936), so the LM head costs what it costs on the real model. Peak figures default to an H200
(989 TFLOP/s dense bf16, 4.8 TB/s HBM); pass ``--peak-tflops`` / ``--hbm-tbps`` for another GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
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
    from ra3_lightning.losses import causal_lm_loss

    model.train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    ids = torch.randint(10, model.config.vocab_size, (args.batch, args.seq), device=device)

    def step() -> int:
        loss, _ = causal_lm_loss(model(input_ids=ids).logits, ids)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return ids.numel()

    rate = timed(step, device, args.repeats)
    model.gradient_checkpointing_disable()
    optimizer.state.clear()  # free AdamW's moments before the other measurements
    return rate


def estep_lines_per_s(model: torch.nn.Module, tokenizer, args: argparse.Namespace, device: torch.device) -> float:
    from ra3_lightning.data.synthetic import load_split
    from ra3_lightning.estep import LatentVocab, ThinkBias, encode_trace, rollout

    vocab = LatentVocab.from_tokenizer(tokenizer)
    width = model.config.vocab_size - len(vocab.think)  # the model's vocabulary is larger than the local BPE's
    masks = {name: torch.nn.functional.pad(getattr(vocab, name), (0, width)) for name in ("think", "comment", "ends")}
    vocab = dataclasses.replace(vocab, **masks)
    traces = [encode_trace(tokenizer, t) for t in load_split("midtrain", n=args.traces, seed=0)["text"]]
    sampler = ThinkBias(model.eval(), vocab.think.to(device), 3.0)
    generator = torch.Generator().manual_seed(0)

    def run() -> int:
        with torch.no_grad():
            roll = rollout(sampler, traces, vocab, args.G, 16, 1.0, generator, "kv")
        return int(roll.line_mask.sum())

    return timed(run, device, max(1, args.repeats // 2))


def decode_tokens_per_s(model: torch.nn.Module, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    from ra3_lightning.generation import KVSample, decode

    model.eval()
    rows = args.prompts * args.G
    ids = torch.randint(10, model.config.vocab_size, (args.prompts, args.prompt_tokens), device=device)
    mask = torch.ones_like(ids)
    never = [model.config.vocab_size - 1]  # an EOS id random weights essentially never draw: full-length rows
    out = {}

    def ours() -> int:
        with torch.no_grad():
            decode(model, ids, mask, args.new_tokens, never, 0, KVSample(temperature=1.0), None, args.G)
        return rows * args.new_tokens

    out["KVSample (prefill once per prompt)"] = timed(ours, device, args.repeats)
    many, many_mask = ids.repeat_interleave(args.G, 0), mask.repeat_interleave(args.G, 0)

    def hf(**kwargs) -> Callable[[], int]:
        def run() -> int:
            with torch.no_grad():
                model.generate(
                    input_ids=many, attention_mask=many_mask, max_new_tokens=args.new_tokens,
                    min_new_tokens=args.new_tokens, do_sample=True, pad_token_id=0, **kwargs,
                )  # fmt: skip
            return rows * args.new_tokens

        return run

    out["HF generate, dynamic cache"] = timed(hf(), device, args.repeats)
    if device.type == "cuda" and not args.no_compile:
        forward = model.forward
        model.forward = torch.compile(forward, mode="reduce-overhead", fullgraph=True)
        try:
            out["HF generate, static cache + torch.compile"] = timed(
                hf(cache_implementation="static"), device, args.repeats
            )
        finally:
            model.forward = forward
    return out


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
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU")
    parser.add_argument("--hbm-tbps", type=float, default=4.8, help="HBM bandwidth of the GPU, TB/s")
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        args.batch, args.seq, args.traces, args.G, args.prompts = 2, 64, 2, 2, 2
        args.prompt_tokens, args.new_tokens, args.repeats = 16, 8, 1
    from ra3_lightning.data.synthetic import load_split
    from ra3_lightning.models import train_bpe_tokenizer

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    shape = "smoke" if args.smoke else "1.5b"
    model = build(shape, device, dtype)
    corpus = load_split("pretrain", n=100 if args.smoke else 500, seed=0)["text"]
    tokenizer = train_bpe_tokenizer(corpus, vocab_size=512 if args.smoke else 2048)
    params = sum(p.numel() for p in model.parameters())
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    mstep = mstep_tokens_per_s(model, args, device)
    estep = estep_lines_per_s(model, tokenizer, args, device)
    decode_rates = decode_tokens_per_s(model, args, device)
    roofline = args.prompts * args.G * args.hbm_tbps * 1e12 / param_bytes
    result = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "shape": shape,
        "parameters": params, "mstep_tokens_per_s": mstep,
        "mstep_mfu": 6 * params * mstep / (args.peak_tflops * 1e12), "estep_lines_per_s": estep,
        "decode_tokens_per_s": decode_rates, "decode_roofline_tokens_per_s": roofline,
    }  # fmt: skip
    print(f"{result['device']}, {shape} shape ({params / 1e9:.2f} B parameters, {dtype})")
    print(f"M-step: {mstep:,.0f} tokens/s ({args.batch} x {args.seq}), MFU {result['mstep_mfu']:.1%}")
    print(f"E-step rollout: {estep:,.1f} expert lines/s ({args.traces} traces x G={args.G})")
    for name, rate in decode_rates.items():
        print(f"RLVR decode, {name}: {rate:,.0f} tokens/s ({rate / roofline:.1%} of the {roofline:,.0f} roofline)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
