"""M-step throughput: real (non-padding) tokens per second of forward + backward + AdamW step, packed vs padded.

Both modes train the same tiny model (same initial weights) for one pass over the same corpus, through
``NTPModule.loss`` — the code path of ``training_step``:

* ``packed``  — TraceDataModule(packing=True): documents concatenated into full ``max_length`` blocks,
  ``position_ids`` restarting per document (documents attend only to themselves, see ``modules/ntp.py``);
* ``padded``  — TraceDataModule(packing=False): one document per row, each batch padded to its longest row.

Only real tokens count towards tokens/s, so padding shows up as lost throughput. The two modes alternate in
chunks (``--rounds``) so that other load on the machine affects both alike; the time is that of the steps alone.

    python bench/ntp_throughput.py                                   # synthetic mid-training corpus
    python bench/ntp_throughput.py --source my_code.jsonl --max-length 512 --batch-size 8
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from ra3_lightning.data.traces import TraceDataModule
from ra3_lightning.models import TinyLMConfig
from ra3_lightning.modules.ntp import NTPModule


def load_batches(source: str, module: NTPModule, packing: bool, args: argparse.Namespace) -> list[dict]:
    dm = TraceDataModule(source, max_length=args.max_length, batch_size=args.batch_size, packing=packing, val_size=0)
    dm.connect(module.tokenizer)
    dm.setup("fit")
    return list(dm.train_dataloader())


class Trainee:
    """One mode's model copy and AdamW, accumulating real tokens, token slots and wall time over its batches."""

    def __init__(self, module: NTPModule, lr: float) -> None:
        self.module = module.train()
        self.optimizer = torch.optim.AdamW(module.model.parameters(), lr=lr)
        self.stats = {"batches": 0, "real": 0, "slots": 0, "seconds": 0.0}

    def step(self, batch: dict, timed: bool = True) -> None:
        """Forward + backward + AdamW step on one batch (``training_step``'s loss)."""
        start = time.perf_counter()
        loss, _ = self.module.loss(batch)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if timed:
            self.stats["seconds"] += time.perf_counter() - start
            self.stats["batches"] += 1
            self.stats["real"] += int(batch["attention_mask"].sum())
            self.stats["slots"] += batch["input_ids"].numel()


def run_interleaved(trainees: dict[str, Trainee], batches: dict[str, list[dict]], rounds: int) -> None:
    """One pass over each mode's batches, alternating modes in ``rounds`` chunks so that load from other processes
    on the machine hits both modes alike. The first batch of each mode is a warm-up and not timed."""
    for mode, trainee in trainees.items():
        trainee.step(batches[mode][0], timed=False)
    for r in range(rounds):
        for mode, trainee in trainees.items():
            rest = batches[mode][1:]
            chunk = rest[r * len(rest) // rounds : (r + 1) * len(rest) // rounds]
            for batch in chunk:
                trainee.step(batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", default="synthetic:midtrain?n=800&seed=0")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4, help="chunks the two modes alternate in")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tiny = TinyLMConfig(
        hidden_size=args.hidden_size, num_layers=args.layers, intermediate_size=3 * args.hidden_size,
        tokenizer_corpus=args.source,
    )  # fmt: skip
    base = NTPModule(tiny=tiny)
    base.configure_model()
    modes = {"packed": True, "padded": False}
    batches = {mode: load_batches(args.source, base, packing, args) for mode, packing in modes.items()}
    trainees = {mode: Trainee(copy.deepcopy(base), lr=1e-3) for mode in modes}  # same initial weights
    run_interleaved(trainees, batches, args.rounds)
    rows = {mode: t.stats for mode, t in trainees.items()}
    print(f"\nM-step throughput, tiny Qwen2 (hidden {args.hidden_size}, {args.layers} layers), {args.source}, "
          f"max_length {args.max_length}, batch {args.batch_size}, {torch.get_num_threads()} threads")  # fmt: skip
    print(f"{'mode':8} {'batches':>8} {'real tok':>10} {'pad %':>7} {'seconds':>8} {'real tok/s':>11}")
    tok_s = {mode: r["real"] / r["seconds"] for mode, r in rows.items()}
    for mode, r in rows.items():
        pad = 100 * (1 - r["real"] / r["slots"])
        print(f"{mode:8} {r['batches']:>8} {r['real']:>10} {pad:>6.1f}% {r['seconds']:>8.2f} {tok_s[mode]:>11.0f}")
    print(f"packed / padded tokens/s: {tok_s['packed'] / tok_s['padded']:.2f}x")


if __name__ == "__main__":
    main()
