"""Peak memory and time of RLVR's log-prob + entropy pass (forward and backward) at a real vocabulary size, dense vs
chunked (:func:`ra3_lightning.logprobs.selective_logprobs`), one CPU run.

A tiny Qwen2 (width ``--hidden``, 2 layers) with the Qwen2.5 vocabulary size (151,646 by default) scores ``--batch``
completions of ``--tokens`` tokens after a ``--prompt``-token prompt, exactly as ``RLVRModule.completion_logps``
does, then back-propagates ``sum(logp)``. Each variant runs in its own process, so its peak resident memory
(``ru_maxrss``) is its own; the model's own weights are in both figures.

    python bench/logprob_memory.py
    python bench/logprob_memory.py --batch 8 --tokens 768 --chunk 256
"""

from __future__ import annotations

import argparse
import json
import resource
import time

from _variants import run_variant_process, small_qwen


def run_variant(args: argparse.Namespace) -> dict[str, float]:
    import torch

    from ra3_lightning.logprobs import selective_logprobs

    model = small_qwen(args.vocab, args.hidden)
    length = args.prompt + args.tokens
    ids = torch.randint(0, args.vocab, (args.batch, length))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "use_cache": False}
    targets = ids[:, -args.tokens :]
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if args.variant == "dense":  # what RLVRModule.completion_logps did: fp32 [b, T, V], logsumexp, gather, entropy
        logits = model(**inputs, logits_to_keep=args.tokens + 1).logits[:, :-1].float()
        log_norm = logits.logsumexp(-1)
        logp = logits.gather(-1, targets[..., None]).squeeze(-1) - log_norm
        with torch.no_grad():
            entropy = log_norm - ((logits - log_norm[..., None]).exp() * logits).sum(-1)
    else:
        logp, entropy = selective_logprobs(model, inputs, targets, args.chunk, with_entropy=True)
    logp.sum().backward()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_rss_gb": peak / 2**20, "pass_gb": (peak - base) / 2**20, "seconds": seconds,
            "logp_sum": float(logp.sum()), "entropy_mean": float(entropy.mean())}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=151_646)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--variant", choices=["dense", "chunked"], default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    dense_gb = args.batch * args.tokens * args.vocab * 4 / 2**30
    print(f"V={args.vocab} B={args.batch} T={args.tokens} (one fp32 [B, T, V] tensor = {dense_gb:.2f} GiB), "
          f"chunk={args.chunk}")  # fmt: skip
    results = {}
    for variant in ("dense", "chunked"):
        results[variant] = r = run_variant_process(variant)
        print(
            f"{variant:8s} peak RSS {r['peak_rss_gb']:6.2f} GiB  (pass +{r['pass_gb']:5.2f} GiB)  "
            f"{r['seconds']:6.2f} s  sum logp {r['logp_sum']:.4f}  mean entropy {r['entropy_mean']:.4f}"
        )
    d, c = results["dense"], results["chunked"]
    memory, time_ratio = c["pass_gb"] / max(d["pass_gb"], 1e-9), c["seconds"] / d["seconds"]
    print(f"chunked/dense: pass memory {memory:.2f}x, time {time_ratio:.2f}x")


if __name__ == "__main__":
    main()
