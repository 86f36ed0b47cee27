"""Which synthetic world lets an abstraction help? Base, NTP and oracle arms per docstring style, held-in tasks only.

``run`` builds, for each ``--docstrings`` style (``WorldConfig.docstring``) and ``--seed``, the pipeline's data,
pre-trained base model, NTP arm and ``oracle`` arm (each skill's own comment before every true skill start) of
``-c CONFIG`` with ``--world.docstring STYLE`` into ``<out>/<style>/seed<S>``, then scores the base, NTP and oracle
checkpoints — the oracle also with comments forbidden — on the **held-in** RLVR tasks (``rlvr_heldin``: the last
``rlvr.heldin`` tasks of the ``rlvr`` split, compositions the training splits can contain; never the held-out
``eval`` split, so choosing a world tunes nothing on it). Every stage and evaluation is skipped when done before
(resumable). ``table`` prints each style's pass@1 and oracle − NTP, the quantity the world is chosen by::

    python experiments/worlds.py run --out /work/runs/worlds --seed 0 -c configs/demo/pipeline_full.yaml \\
        --docstrings shuffled reversed examples
    python experiments/worlds.py table --out /work/runs/worlds --seed 0
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

STAGES_RUN = ("data", "pretrain", "ntp")
ORACLE_ARM = "oracle"
RUNS = (  # result name, checkpoint, THINK bias
    ("base", "pretrain", None),
    ("ntp", "ntp", None),
    (ORACLE_ARM, ORACLE_ARM, None),
    (f"{ORACLE_ARM}_nothink", ORACLE_ARM, float("-inf")),
)


def commit() -> str:
    import ra3_lightning

    where = Path(ra3_lightning.__file__).resolve().parent
    cmd = ["git", "-C", str(where), "rev-parse", "--short", "HEAD"]
    return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip() or "unknown"


def timed(seed: int, work: Any, *args: Any) -> float:
    import lightning as L

    L.seed_everything(seed, verbose=False)
    start = time.perf_counter()
    work(*args)
    return round(time.perf_counter() - start, 1)


def run_world(config: str, out: Path, seed: int, style: str, overrides: list[str]) -> dict[str, Any]:
    """One style's stages and held-in evaluations into ``out``; returns (and writes) its ``world.json``."""
    from ra3_lightning.pipeline.stages import (
        ORACLE_STAGES,
        STAGES,
        EvalRun,
        Paths,
        evaluate_checkpoint,
        parse_config,
        rlvr_splits,
    )

    argv = ["-c", config, "--seed", str(seed), "--out", str(out), "--progress_bar", "false",
            "--world.docstring", style, "--oracle.arms", f"[{ORACLE_ARM}]", *overrides]  # fmt: skip
    cfg, paths = parse_config(argv), Paths(out)
    times_file = out / "stage_times.json"
    times = json.loads(times_file.read_text()) if times_file.exists() else {}
    for stage in (*(s for s in STAGES if s.name in STAGES_RUN), ORACLE_STAGES[ORACLE_ARM]):
        if not stage.done(paths):
            times[stage.name] = timed(seed, stage.run, cfg, paths)
            times_file.write_text(json.dumps(times, indent=1))
    rlvr_splits(cfg, paths)  # writes rlvr_heldin
    results = {}
    for name, checkpoint, bias in RUNS:
        path = paths.eval_result(f"heldin_{name}")
        if not path.exists():
            run = EvalRun(f"heldin_{name}", checkpoint, bias, tasks="rlvr_heldin")
            times[f"eval_{name}"] = timed(seed, lambda r=run, p=path: p.write_text(
                json.dumps(evaluate_checkpoint(cfg, paths, r))))  # fmt: skip
            times_file.write_text(json.dumps(times, indent=1))
        results[name] = json.loads(path.read_text())
    record = {"style": style, "seed": seed, "config": config, "overrides": overrides, "commit": commit(),
              "heldin": results, "stage_times": times}  # fmt: skip
    (out / "world.json").write_text(json.dumps(record, indent=1))
    return record


def table(out: Path, seed: int) -> list[str]:
    """One row per style found under ``out``: held-in pass@1 of base / NTP / oracle (and forbidden), oracle − NTP."""
    rows = [
        "| docstring | base | NTP | oracle | oracle, comments forbidden | oracle − NTP |",
        "|---|---|---|---|---|---|",
    ]
    for record_file in sorted(out.glob(f"*/seed{seed}/world.json")):
        r = json.loads(record_file.read_text())
        p = {name: r["heldin"][name]["pass@1"] for name, _, _ in RUNS}
        rows.append(f"| {r['style']} | {p['base']:.3f} | {p['ntp']:.3f} | {p[ORACLE_ARM]:.3f} | "
                    f"{p[f'{ORACLE_ARM}_nothink']:.3f} | {p[ORACLE_ARM] - p['ntp']:+.3f} |")  # fmt: skip
    return rows


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("--out", type=Path, required=True)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("-c", "--config", default="configs/demo/pipeline_full.yaml")
    run.add_argument("--docstrings", nargs="+", default=["shuffled", "reversed", "examples"])
    run.add_argument("overrides", nargs="*", help="after --: pipeline flags for every style")
    tab = sub.add_parser("table")
    tab.add_argument("--out", type=Path, required=True)
    tab.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "table":
        print("\n".join(table(args.out, args.seed)))
        return
    for style in args.docstrings:
        record = run_world(args.config, args.out / style / f"seed{args.seed}", args.seed, style, args.overrides)
        print(json.dumps({"style": style, **{k: v["pass@1"] for k, v in record["heldin"].items()}}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
