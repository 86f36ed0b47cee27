"""One RLVR tuning run from a finished seed's NTP checkpoint, scored on the training reward and the held-in slice
only (never on the held-out ``eval`` tasks).

It runs the pipeline's own RLVR stage (``ra3_lightning.pipeline.stages``) in ``<out>/<name>`` with the seed's data and
NTP checkpoint linked in, then prints and appends to ``<out>/results.jsonl``: the training pass rate by quarter of
the run (the data order is seeded, so quarters pair across runs of one seed), the held-in pass@1 at each
validation, and the policy entropy at the start and end.

    python experiments/rlvr_tuning.py --seed-dir reports/full/seed0 --out runs/tune --name lr3e-4 -- --rlvr.lr 3e-4
    # memorisation check: 16 training tasks (the other 496 held in, not validated), 30 passes over each
    python experiments/rlvr_tuning.py --seed-dir reports/full/seed0 --out runs/tune --name mem16 --fresh-splits \\
        -- --rlvr.heldin 496 --rlvr.val_every 0
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo" / "pipeline_full.yaml"


def link_inputs(seed_dir: Path, root: Path, fresh_splits: bool) -> None:
    """Link the seed's data splits and NTP checkpoint into ``root``; ``fresh_splits`` lets ``rlvr.heldin`` re-cut."""
    (root / "checkpoints").mkdir(parents=True, exist_ok=True)
    (root / "data").mkdir(exist_ok=True)
    skip = {"rlvr_train", "rlvr_heldin"} if fresh_splits else set()
    for split in (seed_dir / "data").iterdir():
        if split.name not in skip and not (root / "data" / split.name).exists():
            os.symlink(split.resolve(), root / "data" / split.name)
    if not (root / "checkpoints" / "ntp.ckpt").exists():
        os.symlink((seed_dir / "checkpoints" / "ntp.ckpt").resolve(), root / "checkpoints" / "ntp.ckpt")


def summarise(log_dir: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    scalars = acc.Tags()["scalars"]
    series = {tag: [e.value for e in acc.Scalars(tag)] for tag in ("train/pass_rate", "train/entropy", "val/pass@1")
              if tag in scalars}  # fmt: skip
    passed, n = series["train/pass_rate"], len(series["train/pass_rate"]) // 4
    mean = lambda xs: round(sum(xs) / len(xs), 3)  # noqa: E731
    return {
        "train_pass_quarters": [mean(passed[i * n : (i + 1) * n]) for i in range(4)],
        "heldin_pass_at_1": [round(v, 3) for v in series.get("val/pass@1", [])],
        "entropy_first_last_quarter": [mean(series["train/entropy"][:n]), mean(series["train/entropy"][-n:])],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed-dir", type=Path, required=True, help="a finished `ra3 demo` seed directory")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--fresh-splits", action="store_true", help="re-cut rlvr_train / rlvr_heldin (new heldin)")
    parser.add_argument("overrides", nargs="*", help="pipeline config overrides, after `--`")
    args = parser.parse_args()
    from ra3_lightning.pipeline.stages import Paths, parse_config, rlvr_stage

    root = args.out / args.name
    link_inputs(args.seed_dir, root, args.fresh_splits)
    seed = json.loads((args.seed_dir / "results.json").read_text())["config"]["seed"]
    argv = ["-c", str(CONFIG), "--seed", str(seed), "--out", str(root), "--progress_bar", "false"]
    cfg = parse_config([*argv, "--rlvr.checkpoint_every", "0", *args.overrides])
    start = time.time()
    rlvr_stage("ntp")(cfg, Paths(root))
    result = {"name": args.name, "seed": seed, "overrides": args.overrides, "seconds": round(time.time() - start)}
    result |= summarise(root / "tb" / "rlvr_ntp" / "version_0")
    print(json.dumps(result))
    with open(args.out / "results.jsonl", "a") as f:
        f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
