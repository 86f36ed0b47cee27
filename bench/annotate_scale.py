"""Annotation at corpus scale: records/s and peak resident memory of :func:`ra3_lightning.estep.annotate` over 10k
and 100k synthetic programs with the tiny model, each size in its own process (so its peak memory is its own).

    python bench/annotate_scale.py                          # 10k and 100k mid-training programs
    python bench/annotate_scale.py --sizes 1000 10000 --score-fraction 1.0

The programs are the synthetic world's ``midtrain`` split (written to a JSONL file first, not timed); ``q`` is the
default :class:`~ra3_lightning.models.TinyLMConfig` model (randomly initialised, seeded) with a THINK logit bias
(``--think-bias``) that gives it a THINK rate like a mid-trained model's (printed), ``π`` the same model unbiased.
Printed per size: seconds, records/s, the process's peak RSS and its RSS before annotating (model and tokenizer),
so what annotating adds shows. Flat memory is the claim under test: shards of ``--shard-size`` records are written
to disk as they finish, and nothing holds the corpus's rollouts, logits or layouts at once (the records' text is
read into memory first: ~0.4 KB a program).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from _variants import run_variant_process


def rss_mib() -> float:
    """This process's peak resident memory so far: ``VmHWM`` of ``/proc/self/status`` (Linux), which starts afresh
    at ``exec`` — unlike ``getrusage``'s ``ru_maxrss``, which keeps the high-water mark of the parent's memory copied
    at ``fork`` (here: the parent that generated the corpus)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def write_corpus(path: Path, n: int, seed: int) -> None:
    from ra3_lightning.data.synthetic import WorldConfig, build_records

    with path.open("w") as f:
        for record in build_records("midtrain", n, seed, WorldConfig()):
            f.write(json.dumps({"id": record["id"], "text": record["text"]}) + "\n")


def annotate_once(args: argparse.Namespace) -> dict[str, float]:
    import torch

    from ra3_lightning.estep import Annotation, LatentRL, LatentVocab, ThinkBias, annotate
    from ra3_lightning.models import TinyLMConfig, build_tiny_lm, train_bpe_tokenizer

    torch.manual_seed(0)
    texts = [json.loads(line)["text"] for _, line in zip(range(2000), open(args.corpus), strict=False)]
    tokenizer = train_bpe_tokenizer(texts, vocab_size=1024)
    pi = build_tiny_lm(TinyLMConfig(), tokenizer).eval()
    q = ThinkBias(pi, LatentVocab.from_tokenizer(tokenizer).think, args.think_bias).eval()
    run = Annotation(batch_size=args.batch_size, shard_size=args.shard_size, score_fraction=args.score_fraction)
    before = rss_mib()
    start = time.perf_counter()
    ds = annotate((q, pi, tokenizer), args.corpus, args.out, id_field="id", annotation=run,
                  latent=LatentRL(max_latent_tokens=8), progress=False)  # fmt: skip
    seconds, peak = time.perf_counter() - start, rss_mib()  # before this bench reads columns into Python lists
    thinks = sum(len(t) for t in ds["think_lines"])
    lines = sum(len(x) for x in ds["line_logp_with"])
    return {"records": args.size, "seconds": seconds, "rss_before_mib": before, "peak_rss_mib": peak,
            "think_rate": thinks / max(1, lines)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--shard-size", type=int, default=256)
    parser.add_argument("--score-fraction", type=float, default=1.0)
    parser.add_argument("--think-bias", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--corpus", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(annotate_once(args)))
        return
    print(f"batch {args.batch_size}, shard {args.shard_size}, score_fraction {args.score_fraction}")
    print("| programs | seconds | records/s | RSS before annotating, MiB | peak RSS, MiB | THINK rate |")
    print("|---|---|---|---|---|---|")
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            corpus = Path(tmp) / "corpus.jsonl"
            write_corpus(corpus, n, args.seed)
            extra = ("--corpus", str(corpus), "--out", str(Path(tmp) / "out"), "--size", str(n))
            r = run_variant_process(f"annotate{n}", *extra)
        print(f"| {n:,} | {r['seconds']:.0f} | {n / r['seconds']:.1f} | {r['rss_before_mib']:.0f} | "
              f"{r['peak_rss_mib']:.0f} | {r['think_rate']:.3f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
