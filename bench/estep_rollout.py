"""E-step rollout throughput: the interleaved KV-cache engine vs a naive engine re-encoding the prefix each step.

Both engines run the same tiny model (random weights, THINK tokens boosted so that rationales are written), the
same traces (HumanEval canonical programs from ../shared/data when present, else the synthetic mid-training
corpus) and the same seed, so they sample identical annotations; the figure is expert lines per second.

    python bench/estep_rollout.py [--traces 16] [--samples 4] [--hidden 64] [--layers 2] [--hindsight-lines 0]
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import torch

from ra3_lightning.estep import LatentVocab, ThinkBias, encode_trace, rollout
from ra3_lightning.models import TinyLMConfig, build_tiny_lm, train_bpe_tokenizer

HUMANEVAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "HumanEval.jsonl.gz"


def load_traces(n: int) -> list[str]:
    if HUMANEVAL.exists():
        with gzip.open(HUMANEVAL, "rt") as f:
            return [(r["prompt"] + r["canonical_solution"]) for r in map(json.loads, f)][:n]
    from ra3_lightning.data.synthetic import load_split

    return list(load_split("midtrain", n=n, seed=0)["text"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=16)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--max-latent-tokens", type=int, default=8)
    parser.add_argument("--hindsight-lines", type=int, default=0, help="next expert lines q sees at each boundary")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    texts = load_traces(args.traces)
    tok = train_bpe_tokenizer(texts * 4, vocab_size=512)
    torch.manual_seed(0)
    cfg = TinyLMConfig(hidden_size=args.hidden, num_layers=args.layers, num_heads=4, num_kv_heads=2,
                       intermediate_size=3 * args.hidden)  # fmt: skip
    vocab = LatentVocab.from_tokenizer(tok)
    model = ThinkBias(build_tiny_lm(cfg, tok), vocab.think, 4.0).to(args.device).eval()
    traces = [encode_trace(tok, t) for t in texts]
    lines = sum(t.num_lines for t in traces) * args.samples
    results = {}
    for engine in ("kv", "reencode"):
        k = args.hindsight_lines
        rollout(model, traces[:2], vocab, 2, args.max_latent_tokens, engine=engine, hindsight_lines=k)  # warm-up
        start = time.perf_counter()
        roll = rollout(model, traces, vocab, args.samples, args.max_latent_tokens,
                       generator=torch.Generator().manual_seed(0), engine=engine, hindsight_lines=k)  # fmt: skip
        seconds = time.perf_counter() - start
        results[engine] = lines / seconds
        print(f"{engine:>9}: {lines} expert lines in {seconds:.2f}s = {results[engine]:.1f} lines/s "
              f"(THINK rate {roll.think[roll.line_mask].float().mean():.2f})")  # fmt: skip
    print(f"speed-up of the KV-cache engine: {results['kv'] / results['reencode']:.2f}x ({len(traces)} traces x "
          f"{args.samples} samples, hindsight_lines {args.hindsight_lines}, device {args.device})")  # fmt: skip


if __name__ == "__main__":
    main()
