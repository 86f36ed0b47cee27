"""E-step rollout throughput at three THINK rates: re-prefill vs the line engine (one KV cache, one call per line) vs
the wave engine (one call per THINK).

Every engine runs the same tiny model (random weights; ``ThinkBias`` adds a bias to the THINK tokens' logits to set
the THINK rate), the same traces (HumanEval canonical programs from ../shared/data when present, else the synthetic
mid-training corpus) and the same seed, so all three sample the same annotations (checked here); the figure is
expert lines per second, best of ``--repeats`` interleaved runs (the machine may be shared; re-prefill, 15-40x slower,
runs once), with the number of forward calls of one rollout.

    python bench/estep_rollout.py [--traces 8] [--samples 4] [--biases 2 4.2 5.9] [--repeats 3] [--threads 1]

Measured on a CPU (1 thread, 2 cores shared with other jobs; 8 HumanEval traces x 4 samples, tiny Qwen2 of width 64,
vocabulary 512, ``max_latent_tokens`` 8; 2 minutes), ``python bench/estep_rollout.py``::

    8 traces x 4 samples = 600 expert lines, hindsight_lines 0, device cpu, 1 thread(s)
    bias  2.0  THINK rate   1.2%  re-prefill:     70.9 lines/s    67 forward calls  x 0.06 vs line  (same rollout)
    bias  2.0  THINK rate   1.2%        line:   1100.1 lines/s    67 forward calls  x 1.00 vs line  (same rollout)
    bias  2.0  THINK rate   1.2%        wave:   2637.4 lines/s     9 forward calls  x 2.40 vs line  (same rollout)
    bias  4.2  THINK rate   9.5%  re-prefill:     17.7 lines/s   169 forward calls  x 0.03 vs line  (same rollout)
    bias  4.2  THINK rate   9.5%        line:    525.0 lines/s   169 forward calls  x 1.00 vs line  (same rollout)
    bias  4.2  THINK rate   9.5%        wave:   1236.2 lines/s    44 forward calls  x 2.35 vs line  (same rollout)
    bias  5.9  THINK rate  39.8%  re-prefill:     11.4 lines/s   210 forward calls  x 0.02 vs line  (same rollout)
    bias  5.9  THINK rate  39.8%        line:    476.6 lines/s   210 forward calls  x 1.00 vs line  (same rollout)
    bias  5.9  THINK rate  39.8%        wave:    615.4 lines/s    98 forward calls  x 1.29 vs line  (same rollout)

With ``--hindsight-lines K > 0`` only re-prefill and the line engine run (the wave engine needs ``K = 0``).
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import torch

from ra3_lightning.estep import LatentVocab, Rollout, ThinkBias, encode_trace, rollout
from ra3_lightning.models import TinyLMConfig, build_tiny_lm, train_bpe_tokenizer

HUMANEVAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "HumanEval.jsonl.gz"
NAMES = {"reencode": "re-prefill", "kv": "line", "wave": "wave"}


def load_traces(n: int) -> list[str]:
    if HUMANEVAL.exists():
        with gzip.open(HUMANEVAL, "rt") as f:
            return [(r["prompt"] + r["canonical_solution"]) for r in map(json.loads, f)][:n]
    from ra3_lightning.data.synthetic import load_split

    return list(load_split("midtrain", n=n, seed=0)["text"])


def timed_rollout(model, traces, vocab, args, engine: str) -> tuple[Rollout, float, int]:
    """One seeded rollout: the result, its seconds and its forward calls."""
    calls = [0]
    hook = model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    start = time.perf_counter()
    roll = rollout(model, traces, vocab, args.samples, args.max_latent_tokens, engine=engine,
                   generator=torch.Generator().manual_seed(0), hindsight_lines=args.hindsight_lines)  # fmt: skip
    seconds = time.perf_counter() - start
    hook.remove()
    return roll, seconds, calls[0]


def same_rollout(a: Rollout, b: Rollout) -> bool:
    same_ids = torch.equal(a.layout.input_ids, b.layout.input_ids)
    return torch.equal(a.think, b.think) and a.rationales == b.rationales and same_ids


def bench_rate(lm, traces, vocab, args, bias: float, engines: list[str]) -> None:
    """Time every engine at one THINK bias and print one row per engine."""
    model = ThinkBias(lm, vocab.think, bias).to(args.device).eval()
    for engine in engines:  # warm-up
        k = args.hindsight_lines
        rollout(model, traces[:2], vocab, 2, args.max_latent_tokens, engine=engine, hindsight_lines=k)
    best: dict[str, tuple[Rollout, float, int]] = {}
    for repeat in range(args.repeats):
        for engine in engines if repeat == 0 else [e for e in engines if e != "reencode"]:  # re-prefill: once, slow
            run = timed_rollout(model, traces, vocab, args, engine)
            if engine not in best or run[1] < best[engine][1]:
                best[engine] = run
    lines = sum(t.num_lines for t in traces) * args.samples
    rate = best[engines[0]][0].think[best[engines[0]][0].line_mask].float().mean()
    for engine in engines:
        roll, seconds, calls = best[engine]
        same = "same rollout" if same_rollout(roll, best["kv"][0]) else "DIFFERENT ROLLOUT"
        print(f"bias {bias:4.1f}  THINK rate {rate:6.1%}  {NAMES[engine]:>10}: {lines / seconds:8.1f} lines/s  "
              f"{calls:4d} forward calls  x{best['kv'][1] / seconds:5.2f} vs line  ({same})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=8)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--max-latent-tokens", type=int, default=8)
    parser.add_argument("--biases", type=float, nargs="+", default=[2.0, 4.2, 5.9], help="THINK biases (≈1/10/40%%)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per engine and rate; the best is kept")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--hindsight-lines", type=int, default=0, help="next expert lines q sees at each boundary")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    texts = load_traces(args.traces)
    tok = train_bpe_tokenizer(texts * 4, vocab_size=512)
    torch.manual_seed(0)
    cfg = TinyLMConfig(hidden_size=args.hidden, num_layers=args.layers, num_heads=4, num_kv_heads=2,
                       intermediate_size=3 * args.hidden)  # fmt: skip
    vocab = LatentVocab.from_tokenizer(tok)
    lm = build_tiny_lm(cfg, tok).eval()
    traces = [encode_trace(tok, t) for t in texts]
    engines = ["reencode", "kv"] + (["wave"] if args.hindsight_lines == 0 else [])
    print(f"{len(traces)} traces x {args.samples} samples = {sum(t.num_lines for t in traces) * args.samples} expert "
          f"lines, hindsight_lines {args.hindsight_lines}, device {args.device}, {args.threads} thread(s)")  # fmt: skip
    for bias in args.biases:
        bench_rate(lm, traces, vocab, args, bias, engines)


if __name__ == "__main__":
    main()
