"""What RA3 mid-training costs next to NTP on the same corpus and M-step token budget, and where its time goes.

    python bench/ra3_vs_ntp.py --seed-dir RUN/seedS -c configs/demo/pipeline_full.yaml [--iterations 1] [-- FLAGS]

``--seed-dir`` is a finished ``ra3 demo`` seed (its ``data/`` splits and ``checkpoints/pretrain.ckpt``). The bench
copies them into a temporary folder and runs the pipeline's own ``ntp`` and ``ra3`` stages from that base model, one
after the other, with ``--midtrain.iterations`` set to ``--iterations`` (the NTP arm then trains ``iterations x
m_steps`` steps, the RA3 arm ``iterations`` x (``e_steps`` E-steps, annotation of every training program,
``m_steps`` M-steps): both stages scale with the iterations, so one iteration gives the ratio at a third of the
cost of ``pipeline_full.yaml``'s three). FLAGS go to both stages' pipeline config (e.g. ``--midtrain.engine``).

Printed: each stage's wall seconds, the ratio, and the RA3 stage's breakdown from its ``timing_s/*`` log
(:class:`ra3_lightning.stopwatch.Stopwatch`): E-steps (rollout of ``q``, ``π``'s scoring, ``q``'s forward for the
policy gradient, the logged ELBO gain), annotation (``q``'s rollout, ``π``'s line scores with and without the
rationales, writing the shards), M-steps and the raw validation loss; what is left is Lightning, data loading and
checkpoints.

Run it alone: both stages share the machine with nothing else, or the ratio measures the neighbours.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

ANNOTATION_PASSES = ("annotation/sample", "annotation/score", "annotation/plain", "annotation/write")
ESTEP_PARTS = ("estep/rollout", "estep/score", "estep/policy_forward", "estep/elbo_gain")


def prepare(seed_dir: Path, out: Path) -> None:
    """``out`` gets a copy of the seed's splits and pre-trained checkpoint (stages write caches next to data)."""
    shutil.copytree(seed_dir / "data", out / "data")
    (out / "checkpoints").mkdir(parents=True)
    shutil.copy2(seed_dir / "checkpoints" / "pretrain.ckpt", out / "checkpoints" / "pretrain.ckpt")


def run_stage(name: str, argv: list[str], seed: int) -> float:
    """Seconds of the pipeline's stage ``name`` under ``argv`` (a ``ra3 demo`` command line)."""
    import lightning as L

    from ra3_lightning.pipeline.stages import STAGES, Paths, parse_config

    cfg = parse_config(argv)
    stage = next(s for s in STAGES if s.name == name)
    L.seed_everything(seed, verbose=False)
    start = time.perf_counter()
    stage.run(cfg, Paths(Path(cfg.out)))
    return time.perf_counter() - start


def last_timing(tb: Path) -> dict[str, float]:
    """The last ``timing_s/<part>`` value of each part in the stage's TensorBoard log."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    prefix, parts = "timing_s/", {}
    for events in sorted(tb.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        tags = [t for t in acc.Tags()["scalars"] if t.startswith(prefix)]
        parts |= {t[len(prefix) :]: acc.Scalars(t)[-1].value for t in tags}
    return parts


def breakdown(parts: dict[str, float], ra3_s: float, ntp_s: float) -> list[tuple[str, float]]:
    """Rows ``(part, seconds)`` of the RA3 stage, each group followed by its passes; ``other`` is the rest."""
    rows = [("E-steps", parts.get("estep", 0.0))]
    rows += [(f"  {p.split('/')[1]}", parts.get(p, 0.0)) for p in ESTEP_PARTS]
    rows += [("annotation", parts.get("annotation", 0.0))]
    rows += [(f"  {p.split('/')[1]}", parts.get(p, 0.0)) for p in ANNOTATION_PASSES]
    rows += [("M-steps", parts.get("mstep", 0.0)), ("raw validation loss", parts.get("raw_val_loss", 0.0))]
    top = sum(parts.get(p, 0.0) for p in ("estep", "annotation", "mstep", "raw_val_loss"))
    rows += [("other (Lightning, data, checkpoints)", ra3_s - top), ("NTP stage, for scale", ntp_s)]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed-dir", type=Path, required=True)
    parser.add_argument("-c", "--config", default="configs/demo/pipeline_full.yaml")
    parser.add_argument("--seed", type=int, default=None, help="default: the seed directory's name (seedS)")
    parser.add_argument("--iterations", type=int, default=1)
    parser.add_argument("--keep", type=Path, default=None, help="run here and keep the outputs (default: a temp dir)")
    parser.add_argument("flags", nargs="*", help="after --: pipeline flags for both stages")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else int(args.seed_dir.name.removeprefix("seed"))
    with tempfile.TemporaryDirectory() as tmp:
        out = args.keep or Path(tmp) / "run"
        prepare(args.seed_dir, out)
        argv = ["-c", args.config, "--seed", str(seed), "--out", str(out), "--progress_bar", "false"]
        argv += ["--midtrain.iterations", str(args.iterations), *args.flags]
        ntp_s = run_stage("ntp", argv, seed)
        ra3_s = run_stage("ra3", argv, seed)
        parts = last_timing(out / "tb" / "ra3")
    flags = " ".join(args.flags) or "none"
    print(f"config {args.config}, seed {seed}, {args.iterations} EM iteration(s); flags: {flags}")
    print(f"NTP stage {ntp_s:7.1f} s | RA3 stage {ra3_s:7.1f} s | RA3 / NTP = {ra3_s / ntp_s:.2f}x")
    print("| part of the RA3 stage | seconds | share of RA3 | x NTP stage |")
    print("|---|---|---|---|")
    for name, seconds in breakdown(parts, ra3_s, ntp_s):
        print(f"| {name} | {seconds:.1f} | {seconds / ra3_s:.0%} | {seconds / ntp_s:.2f} |")
    print(json.dumps({"ntp_s": round(ntp_s, 1), "ra3_s": round(ra3_s, 1), "parts": parts}))


if __name__ == "__main__":
    main()
