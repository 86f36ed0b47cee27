"""Peak memory and time of the NTP / M-step loss (forward and backward) at the real Qwen2.5 vocabulary, dense
``[B, T, V]`` logits vs the chunked LM head (:func:`ra3_lightning.modules.ntp.lm_loss`), and a check that both give
the same loss and the same gradient of every parameter; one CPU run over several sequence lengths.

A 2-layer Qwen2 of width ``--hidden`` with the Qwen2.5 vocabulary size (151,646 by default, tied embeddings) takes
``--batch`` right-padded sequences of each of ``--lengths`` tokens (the last 1/8 of row 0 is padding, labels -100)
and back-propagates ``lm_loss`` with ``chunk_size=None`` (dense: what ``NTPModule`` / ``RA3Module.m_step`` did) and
``chunk_size=--chunk`` (their default now). Each variant runs in its own process (``bench/_variants.py``), so its
peak resident memory (``ru_maxrss``) is its own; "pass" is the rise of that peak during the loss's forward and
backward (the model's own weights are in both, and outside "pass"). fp32 throughout (CPU): on a GPU under
bf16-mixed the dense path holds bf16 logits too, so it costs more than shown here, the chunked path the same.

    python bench/ce_memory.py
    python bench/ce_memory.py --batch 2 --lengths 512 1024 2048 --chunk 1024

Output on the 2-core CPU machine (shared with another job, so times are rough), the library at c7866b6 plus the
chunked loss::

    V=151646 hidden=64 B=2 chunk=1024 (loss forward + backward, fp32, CPU)
    T=512 (958 targets; one fp32 [B, T, V] = 0.58 GiB)
      dense    peak RSS   2.26 GiB  (pass + 1.72 GiB)    6.10 s  loss 11.933295
      chunked  peak RSS   3.42 GiB  (pass + 2.89 GiB)    7.68 s  loss 11.933294
      chunked/dense: pass memory 1.68x, time 1.26x; |Δloss| 9.5e-07, max relative gradient gap 3.9e-07 -> equal
    T=1024 (1918 targets; one fp32 [B, T, V] = 1.16 GiB)
      dense    peak RSS   4.01 GiB  (pass + 3.47 GiB)   12.01 s  loss 11.942053
      chunked  peak RSS   3.47 GiB  (pass + 2.94 GiB)   19.95 s  loss 11.942053
      chunked/dense: pass memory 0.85x, time 1.66x; |Δloss| 0.0e+00, max relative gradient gap 5.5e-07 -> equal
    T=2048 (3838 targets; one fp32 [B, T, V] = 2.31 GiB)
      dense    peak RSS   7.49 GiB  (pass + 6.96 GiB)   40.60 s  loss 11.941345
      chunked  peak RSS   3.50 GiB  (pass + 2.96 GiB)   26.22 s  loss 11.941346
      chunked/dense: pass memory 0.43x, time 0.65x; |Δloss| 9.5e-07, max relative gradient gap 9.7e-07 -> equal

    $ python bench/ce_memory.py --lengths 2048 --chunk 256
    T=2048 (3838 targets; one fp32 [B, T, V] = 2.31 GiB)
      dense    peak RSS   7.50 GiB  (pass + 6.97 GiB)   23.96 s  loss 11.941345
      chunked  peak RSS   1.33 GiB  (pass + 0.80 GiB)   31.04 s  loss 11.941346
      chunked/dense: pass memory 0.11x, time 1.30x; |Δloss| 9.5e-07, max relative gradient gap 5.6e-07 -> equal

Dense memory grows with ``B·T`` (≈ 3 fp32 ``[B·T, V]`` tensors: 12 bytes per position per vocabulary entry), the
chunked pass stays at ≈ 5.4 fp32 ``[chunk, V]`` tensors (≈ 22 bytes × chunk × V: the chunk's logits, its
log-sum-exp's temporaries and gradients in the backward pass) whatever ``B·T``; so a chunk of 1024 pays off once a
micro-batch has more than ~2k positions (NTP's 8 × 2048 has 16k), and 256 costs a quarter of that.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

from _variants import run_variant_process, small_qwen


def run_variant(args: argparse.Namespace) -> dict[str, float]:
    """One variant (``dense:<length>`` or ``chunked:<length>``): the loss's forward and backward; gradients saved."""
    import torch

    from ra3_lightning.modules.ntp import lm_loss

    kind, length = args.variant.split(":")
    model = small_qwen(args.vocab, args.hidden)
    ids = torch.randint(0, args.vocab, (args.batch, int(length)))  # [B, T]
    mask = torch.ones_like(ids)
    mask[0, int(length) * 7 // 8 :] = 0  # right padding in row 0
    batch = {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    loss, n = lm_loss(model, batch, None, None if kind == "dense" else args.chunk)
    loss.backward()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    torch.save({k: p.grad for k, p in model.named_parameters()}, Path(args.grads) / f"{kind}_{length}.pt")
    return {"peak_rss_gb": peak / 2**20, "pass_gb": (peak - base) / 2**20, "seconds": seconds,
            "loss": float(loss), "tokens": int(n)}  # fmt: skip


def gradient_gap(grads_dir: Path, length: int) -> float:
    """The largest ``max |g_chunked − g_dense| / max |g_dense|`` over the parameters."""
    import torch

    dense, chunked = (torch.load(grads_dir / f"{kind}_{length}.pt") for kind in ("dense", "chunked"))
    assert dense.keys() == chunked.keys()
    return max(float((chunked[k] - g).abs().max() / g.abs().max().clamp(min=1e-30)) for k, g in dense.items())


def compare(args: argparse.Namespace, length: int, grads_dir: Path) -> None:
    """Run both variants at one length, print their memory, time, loss and the gradient gap."""
    grads = ("--grads", str(grads_dir))
    results = {kind: run_variant_process(f"{kind}:{length}", *grads) for kind in ("dense", "chunked")}
    d, c = results["dense"], results["chunked"]
    logits_gib = args.batch * length * args.vocab * 4 / 2**30
    print(f"T={length} ({d['tokens']} targets; one fp32 [B, T, V] = {logits_gib:.2f} GiB)")
    for kind, r in results.items():
        print(f"  {kind:8s} peak RSS {r['peak_rss_gb']:6.2f} GiB  (pass +{r['pass_gb']:5.2f} GiB)  "
              f"{r['seconds']:6.2f} s  loss {r['loss']:.6f}")  # fmt: skip
    gap = gradient_gap(grads_dir, length)
    ok = abs(c["loss"] - d["loss"]) <= 1e-5 * abs(d["loss"]) and gap <= 1e-4 and c["tokens"] == d["tokens"]
    print(f"  chunked/dense: pass memory {c['pass_gb'] / max(d['pass_gb'], 1e-9):.2f}x, "
          f"time {c['seconds'] / d['seconds']:.2f}x; |Δloss| {abs(c['loss'] - d['loss']):.1e}, "
          f"max relative gradient gap {gap:.1e} -> {'equal' if ok else 'DIFFERENT'}")  # fmt: skip
    if not ok:
        raise SystemExit(f"chunked and dense disagree at T={length}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=151_646)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--variant", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--grads", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    print(f"V={args.vocab} hidden={args.hidden} B={args.batch} chunk={args.chunk} (loss forward + backward, fp32, CPU)")
    with tempfile.TemporaryDirectory() as grads_dir:
        for length in args.lengths:
            compare(args, length, Path(grads_dir))


if __name__ == "__main__":
    main()
