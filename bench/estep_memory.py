"""Peak memory and time of the E-step's two teacher-forced passes at the real Qwen2.5 vocabulary, dense logits vs
chunked :class:`~ra3_lightning.logit_stats.LogitStats`, one CPU run.

A random Qwen2 (width ``--hidden``, 2 layers) on the real Qwen2.5 tokenizer (``models.qwen_tokenizer``, offline)
rolls out ``--traces`` synthetic programs × ``--samples`` latent samples (comment-biased, so rationales occur), then
does what ``LatentPolicyModule.training_step`` does after the rollout: ``π``'s scoring pass (expert-line
log-likelihoods and ``π``'s own ``log q`` terms) and ``q``'s ``log q`` pass with its backward. Each variant runs in
its own process, so its peak resident memory (``ru_maxrss``) is its own; the rollout and the model are in both.

    python bench/estep_memory.py
    python bench/estep_memory.py --traces 8 --samples 8 --chunk 256
"""

from __future__ import annotations

import argparse
import json
import resource
import time

from _variants import run_variant_process


def run_variant(args: argparse.Namespace) -> dict[str, float]:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from ra3_lightning.data.synthetic import load_split
    from ra3_lightning.estep import (
        LatentVocab,
        ThinkBias,
        encode_trace,
        expert_line_logp,
        layout_stats,
        policy_logq,
        rollout,
    )
    from ra3_lightning.models import qwen_tokenizer

    torch.manual_seed(0)
    tokenizer = qwen_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=args.hidden, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=2 * args.hidden, tie_word_embeddings=True,
    )  # fmt: skip
    model = Qwen2ForCausalLM(config)
    vocab = LatentVocab.from_tokenizer(tokenizer)
    texts = list(load_split("midtrain", n=args.traces, seed=0)["text"])
    traces = [encode_trace(tokenizer, t) for t in texts]
    sampler = ThinkBias(model, vocab.think, 4.0).eval()
    with torch.no_grad():
        roll = rollout(sampler, traces, vocab, args.samples, 8, 1.0, torch.Generator().manual_seed(0), "kv")
    chunk = None if args.variant == "dense" else args.chunk
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with torch.no_grad():  # π: expert lines under both likelihoods and π's own log q terms (the KL reference)
        stats = layout_stats(model, roll.layout, vocab, (1.0,), chunk)[0]
        line_logp = expert_line_logp(stats, roll.layout, traces, args.samples, vocab, "conditional")
        ref = policy_logq(model, roll.layout, roll.think, roll.line_mask, vocab, 1.0, stats)
    terms = policy_logq(model, roll.q_layout, roll.think, roll.line_mask, vocab, 1.0, chunk_size=chunk)
    (terms.logq * line_logp).sum().backward()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "peak_rss_gb": peak / 2**20, "pass_gb": (peak - base) / 2**20, "seconds": seconds,
        "positions": int(roll.layout.input_ids.numel()), "think_rate": float(roll.think[roll.line_mask].float().mean()),
        "line_logp_sum": float(line_logp.sum()), "ref_logq_sum": float(ref.logq.sum()),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--traces", type=int, default=4)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--variant", choices=["dense", "chunked"], default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    results = {}
    for variant in ("dense", "chunked"):
        results[variant] = r = run_variant_process(variant)
        if variant == "dense":
            gib = r["positions"] * 151_646 * 4 / 2**30
            print(f"V=151,646, N·L={r['positions']} positions (one fp32 [N, L, V] tensor = {gib:.2f} GiB), "
                  f"THINK rate {r['think_rate']:.2f}, chunk={args.chunk}")  # fmt: skip
        print(
            f"{variant:8s} peak RSS {r['peak_rss_gb']:6.2f} GiB  (passes +{r['pass_gb']:5.2f} GiB)  "
            f"{r['seconds']:6.2f} s  sum line logp {r['line_logp_sum']:.3f}  sum ref log q {r['ref_logq_sum']:.3f}"
        )
    d, c = results["dense"], results["chunked"]
    print(f"chunked/dense: pass memory {c['pass_gb'] / max(d['pass_gb'], 1e-9):.2f}x, "
          f"time {c['seconds'] / d['seconds']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
