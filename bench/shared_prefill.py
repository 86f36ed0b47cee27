"""RLVR generation with each prompt prefilled once for its ``G`` samples vs prefilled ``G`` times, one CPU run.

``KVSample`` (``ra3_lightning.generation.decode(..., num_samples=G)``) prefills the ``B`` prompts once and repeats
their KV cache ``G`` times; the alternative (what ``KVSample`` did before, and what a loop over ``generate`` with
repeated prompts does) prefills ``B·G`` copies. Same model, prompts and sampler; the two variants alternate for
``--rounds`` rounds (so a busy machine slows both alike) and the median of each is reported.

    python bench/shared_prefill.py
    python bench/shared_prefill.py --prompt-tokens 1024 --G 16 --new-tokens 64

The saving grows with the prompt length over the completion length: a long problem statement and a short answer.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from ra3_lightning.generation import KVSample, decode

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--G", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=4096, hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=2 * args.hidden,
    )  # fmt: skip
    model = Qwen2ForCausalLM(config).eval()
    ids = torch.randint(10, 4096, (args.prompts, args.prompt_tokens))
    mask = torch.ones_like(ids)
    sampler = KVSample(temperature=1.0)
    G, T = args.G, args.new_tokens

    def shared() -> None:
        decode(model, ids, mask, T, [0], 0, sampler, None, G)

    def repeated() -> None:
        decode(model, ids.repeat_interleave(G, 0), mask.repeat_interleave(G, 0), T, [0], 0, sampler, None, 1)

    times: dict[str, list[float]] = {"prefill once per prompt": [], "prefill per sample": []}
    with torch.no_grad():
        shared(), repeated()  # warm-up
        for _ in range(args.rounds):
            for name, fn in zip(times, (shared, repeated), strict=True):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    print(f"B={args.prompts} prompts x G={G}, {args.prompt_tokens}-token prompts, {T} new tokens (EOS never drawn), "
          f"width {args.hidden} x {args.layers} layers, median of {args.rounds}")  # fmt: skip
    medians = {name: statistics.median(v) for name, v in times.items()}
    for name, m in medians.items():
        print(f"{name:24s} {m:7.3f} s")
    print(f"once/per-sample: {medians['prefill once per prompt'] / medians['prefill per sample']:.2f}x")


if __name__ == "__main__":
    main()
