"""Ablations paired with finished ``ra3 demo`` seeds: rerun only one arm with changed knobs, then compare.

An ablation reuses everything of a finished seed directory that it does not change — the synthetic splits, the
pre-trained base model, the NTP arm and its evaluation — and reruns the ``ra3`` stage and the evaluation of the RA3
model (with and without its rationales) under the same seed, config and code, with the overrides given::

    python experiments/ablations.py run --base reports/full --out reports/ablations --name hindsight2 --seeds 0 1 2 \\
        -c configs/demo/pipeline_full.yaml -- --ra3.latent.hindsight_lines 2
    python experiments/ablations.py table --base reports/full --out reports/ablations

``run`` writes ``<out>/<name>/seed<S>/ablation.json`` (resumable: a finished stage or evaluation is skipped).
``ntp`` does the same for the NTP arm: it reruns the ``ntp`` stage and its evaluation (``ntp``, no THINK bias) under
the overrides. With a stage argument that changes only the order of the NTP arm's training batches, it measures how
far the NTP arm's pass@1 moves with the batch order alone::

    python experiments/ablations.py ntp --base reports/full --out reports/ablations --name ntp_order1 --seeds 3 4 \\
        -c configs/demo/pipeline_full.yaml -- --stages.ntp.args '{"data.shuffle_seed": 1}'

``oracle`` runs the oracle arms the overrides name (no E-step: the NTP arm's stage on the mid-training traces with a
comment before every true skill start — each skill's own, or another skill's for ``oracle_wrong``) and evaluates each
with and without comments forbidden; ``table`` pairs them with the seed's NTP and RA3 arms and reports the code and
total tokens each trained on::

    python experiments/ablations.py oracle --base reports/pair --out reports/ablations --name oracle --seeds 3 4 5 \\
        -c configs/demo/pipeline_full.yaml -- --oracle.arms '[oracle, oracle_wrong]'

``rlvr`` reruns instead both RLVR stages from the seed's own NTP and RA3 checkpoints under the overrides, with the
held-out evaluation of the RLVR models and the seed's report; ``experiments/fair_tables.py`` reads the new seed
folders::

    python experiments/ablations.py rlvr --base reports/full --out reports/ablations --name rlvr_tasks64 \\
        --seeds 0 1 2 -c configs/demo/pipeline_full.yaml -- --rlvr.train_tasks 64

``base`` rebuilds finished seeds on a machine that lacks them, from the committed raw results: it reruns the ``data``
and ``pretrain`` stages of each seed (deterministic on CPU), checks that the rebuilt base model scores exactly the
committed ``eval/base.json``, and writes the committed NTP and RA3 results where ``run`` and ``table`` read them
(run it from a checkout at the commit the raw results name)::

    python experiments/ablations.py base --raw docs/results/fair_results/raw --base reports/full --seeds 1 2 \\
        -c configs/demo/pipeline_full.yaml

``pair`` builds a new pairing of a seed on this machine, for when ``base`` cannot (another CPU trains another base
model from the same seed): it runs the ``data``, ``pretrain``, ``ntp`` and ``ra3`` stages of each seed and evaluates
the base, NTP and RA3 models (RA3 also with its rationales forbidden), so that ``run`` and ``table`` pair with it::

    python experiments/ablations.py pair --base reports/pair_cpu2 --seeds 2 -c configs/demo/pipeline_full.yaml

``table`` prints, for every ablation found under ``<out>``, the pass@1 of the ablated RA3 model paired by seed with
the NTP arm and the default RA3 arm of ``<base>/seed<S>`` (mean ± sample std over seeds, and the sign count), and
the E-step's THINK rate per EM iteration; for an ``ntp`` rerun, its pass@1 paired with the seed's NTP and RA3 arms;
for ``oracle``, each oracle arm's pass@1 paired with them (and the wrong-content arm with the oracle), and its tokens.
Seeds run one after the other: each one uses the whole machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RUNS = (("ra3", None), ("ra3_nothink", float("-inf")))  # result name, decode-time THINK bias
RA3_RUNS = tuple((name, "ra3", bias) for name, bias in RUNS)  # result name, checkpoint, THINK bias: what `run` scores
NTP_RUNS = (("ntp", "ntp", None),)  # what `ntp` scores


def oracle_runs(arm: str) -> tuple[tuple[str, str, float | None], ...]:
    """What `oracle` scores of an oracle arm: with and without comments forbidden."""
    return ((arm, arm, None), (f"{arm}_nothink", arm, float("-inf")))


def prepare(base: Path, out: Path) -> None:
    """Give ``out`` the base seed's splits and pre-trained checkpoint (a copy: stages write caches next to data)."""
    if not (out / "data" / "DONE").exists():
        shutil.copytree(base / "data", out / "data", dirs_exist_ok=True)
    ckpt = out / "checkpoints" / "pretrain.ckpt"
    if not ckpt.exists():
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(base / "checkpoints" / "pretrain.ckpt", ckpt)


MIDTRAINED = ("pretrain", "ntp", "ra3")  # checkpoints an RLVR rerun starts from (and the eval results it keeps)


def prepare_rlvr(base: Path, out: Path) -> None:
    """Give ``out`` everything of the base seed up to mid-training: splits, checkpoints, their logs and evaluations."""
    prepare(base, out)
    for name in MIDTRAINED[1:]:
        if not (out / "checkpoints" / f"{name}.ckpt").exists():
            os.symlink((base / "checkpoints" / f"{name}.ckpt").resolve(), out / "checkpoints" / f"{name}.ckpt")
    if (base / "work").exists() and not (out / "work").exists():  # the RA3 arm's annotated traces (its recovery)
        os.symlink((base / "work").resolve(), out / "work")
    for name in MIDTRAINED:
        if (base / "tb" / name).exists() and not (out / "tb" / name).exists():
            shutil.copytree(base / "tb" / name, out / "tb" / name)
    (out / "eval").mkdir(exist_ok=True)
    for result in (base / "eval").glob("*.json"):
        if result.stem.split("_")[0] in ("base", "ntp", "ra3"):  # base, ntp, ra3, ra3_nothink; not rlvr_*
            shutil.copy2(result, out / "eval" / result.name)
    times = json.loads((base / "stage_times.json").read_text())
    kept = {k: v for k, v in times.items() if k in ("data", *MIDTRAINED)}
    own = out / "stage_times.json"  # a resumed rerun keeps the times of the stages it already ran
    (out / "stage_times.json").write_text(
        json.dumps(kept | (json.loads(own.read_text()) if own.exists() else {}), indent=1)
    )


def commit() -> str:
    """The commit of the library that ran (``git describe`` of the ``ra3_lightning`` package's checkout)."""
    import ra3_lightning

    where = Path(ra3_lightning.__file__).resolve().parent
    cmd = ["git", "-C", str(where), "rev-parse", "--short", "HEAD"]
    return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip() or "unknown"


def seeded(seed: int, work: Callable[..., object], *args: Any) -> float:
    """``work(*args)`` under ``seed`` (what every stage and evaluation of a pipeline seed starts from); its seconds."""
    import lightning as L

    L.seed_everything(seed, verbose=False)
    start = time.perf_counter()
    work(*args)
    return round(time.perf_counter() - start, 1)


def evaluate_once(cfg: Any, paths: Any, seed: int, name: str, checkpoint: str, bias: float | None) -> float | None:
    """Write ``eval/<name>.json`` of ``checkpoint`` unless it exists (resumable); its seconds, ``None`` if skipped."""
    from ra3_lightning.pipeline.stages import EvalRun, evaluate_checkpoint

    path = paths.eval_result(name)
    if path.exists():
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    run = EvalRun(name, checkpoint, bias)
    return seeded(seed, lambda: path.write_text(json.dumps(evaluate_checkpoint(cfg, paths, run))))


def seed_argv(config: str, seed: int, out: Path, overrides: list[str]) -> list[str]:
    """The ``ra3 demo`` arguments of one seed into ``out`` under ``overrides``."""
    return ["-c", config, "--seed", str(seed), "--out", str(out), "--progress_bar", "false", *overrides]


def rerun_seed(
    config: str, base: Path, out: Path, seed: int, overrides: list[str], stage: str, runs: tuple[tuple, ...]
) -> tuple[Any, Any, dict[str, Any]]:
    """Stage ``stage`` of one seed rerun into ``out`` under ``overrides``, then the evaluations ``runs`` (result name,
    checkpoint, THINK bias), each skipped when done before; returns the config, the paths and the record."""
    from ra3_lightning.pipeline.stages import ORACLE_STAGES, STAGES, Paths, parse_config

    cfg, paths = parse_config(seed_argv(config, seed, out, overrides)), Paths(out)
    prepare(base, out)
    times_file = out / "stage_times.json"
    times = json.loads(times_file.read_text()) if times_file.exists() else {}
    rerun = next(s for s in (*STAGES, *ORACLE_STAGES.values()) if s.name == stage)
    if not rerun.done(paths):
        times[stage] = seeded(seed, rerun.run, cfg, paths)
        times_file.write_text(json.dumps(times, indent=1))
    results = {}
    for name, checkpoint, bias in runs:
        seconds = evaluate_once(cfg, paths, seed, name, checkpoint, bias)
        if seconds is not None:
            times[f"eval_{name}"] = seconds
            times_file.write_text(json.dumps(times, indent=1))
        results[name] = json.loads(paths.eval_result(name).read_text())
    record = {
        "seed": seed, "stage": stage, "overrides": overrides, "config": config, "commit": commit(), "eval": results,
        "stage_times": times,
    }  # fmt: skip
    return cfg, paths, record


def run_seed(config: str, base: Path, out: Path, seed: int, overrides: list[str]) -> dict[str, Any]:
    """The ``ra3`` stage and the RA3 evaluations of one seed under ``overrides``; returns what ``ablation.json``
    holds."""
    from ra3_lightning.pipeline.report import recovery_rows

    cfg, paths, record = rerun_seed(config, base, out, seed, overrides, "ra3", RA3_RUNS)
    record["recovery"] = recovery_rows(paths, cfg.midtrain.iterations)
    (out / "ablation.json").write_text(json.dumps(record, indent=1))
    return record


def ntp_seed(config: str, base: Path, out: Path, seed: int, overrides: list[str]) -> dict[str, Any]:
    """The ``ntp`` stage and the NTP evaluation of one seed under ``overrides``; returns what ``ablation.json``
    holds."""
    record = rerun_seed(config, base, out, seed, overrides, "ntp", NTP_RUNS)[2]
    (out / "ablation.json").write_text(json.dumps(record, indent=1))
    return record


def oracle_seed(config: str, base: Path, out: Path, seed: int, overrides: list[str]) -> dict[str, Any]:
    """The oracle arms that ``oracle.arms`` names (in ``config`` or ``overrides``), one after the other into ``out``,
    each evaluated with and without comments forbidden; returns what ``ablation.json`` holds (all arms, their
    evaluations and the tokens each trained on)."""
    from ra3_lightning.pipeline.stages import Paths, parse_config

    arms = parse_config(seed_argv(config, seed, out, overrides)).oracle.arms
    if not arms:
        raise SystemExit("name the oracle arms to run: -- --oracle.arms '[oracle, oracle_wrong]'")
    results: dict[str, Any] = {}
    for arm in arms:
        record = rerun_seed(config, base, out, seed, overrides, arm, oracle_runs(arm))[2]
        results |= record["eval"]
    tokens = {arm: json.loads(Paths(out).training_tokens(arm).read_text()) for arm in arms}
    record |= {"stage": "oracle", "arms": list(arms), "eval": results, "tokens": tokens}
    (out / "ablation.json").write_text(json.dumps(record, indent=1))
    return record


RERUNS = {"run": run_seed, "ntp": ntp_seed, "oracle": oracle_seed}  # subcommand: one seed's rerun


def cmd_rerun(args: argparse.Namespace) -> None:
    for seed in args.seeds:
        base, out = Path(args.base) / f"seed{seed}", Path(args.out) / args.name / f"seed{seed}"
        print(f"=== {args.name} seed {seed}: {' '.join(args.overrides)} -> {out}", file=sys.stderr, flush=True)
        record = RERUNS[args.command](args.config, base, out, seed, args.overrides)
        scores = {name: result["pass@1"] for name, result in record["eval"].items()}
        print(json.dumps({"seed": seed, "pass@1": scores, "times": record["stage_times"]}))


def cmd_rlvr(args: argparse.Namespace) -> None:
    from ra3_lightning.pipeline.stages import parse_config, run_pipeline

    for seed in args.seeds:
        base, out = Path(args.base) / f"seed{seed}", Path(args.out) / args.name / f"seed{seed}"
        print(f"=== {args.name} seed {seed}: {' '.join(args.overrides)} -> {out}", file=sys.stderr, flush=True)
        prepare_rlvr(base, out)
        argv = ["-c", args.config, "--seed", str(seed), "--out", str(out), "--progress_bar", "false", *args.overrides]
        command = f"python experiments/ablations.py rlvr ... (commit {commit()}) -- {' '.join(args.overrides)}"
        run_pipeline(parse_config(argv), command=command)


KEPT_RESULTS = ("base", "ntp", "ra3", "ra3_nothink")  # what a rebuilt base seed takes over from the raw results


def restore_results(raw: dict[str, Any], seed_dir: Path) -> None:
    """Write a seed's committed mid-training results as ``<seed_dir>/eval/<model>.json``.

    ``raw["eval"]`` holds only the report's headline models; every evaluation run (``ra3_nothink`` among them) is in
    ``raw["fairness"]["eval_runs"]``.
    """
    runs = raw["fairness"]["eval_runs"]
    missing = [name for name in KEPT_RESULTS if name not in runs]
    if missing:
        raise SystemExit(f"the raw results have no fairness.eval_runs entry for {missing}")
    (seed_dir / "eval").mkdir(parents=True, exist_ok=True)
    for name in KEPT_RESULTS:
        (seed_dir / "eval" / f"{name}.json").write_text(json.dumps(runs[name]))


def cmd_base(args: argparse.Namespace) -> None:
    import lightning as L

    from ra3_lightning.pipeline.stages import STAGES, EvalRun, Paths, evaluate_checkpoint, parse_config

    for seed in args.seeds:
        raw = json.loads((Path(args.raw) / f"seed{seed}.json").read_text())
        seed_dir = Path(args.base) / f"seed{seed}"
        argv = ["-c", args.config, "--seed", str(seed), "--out", str(seed_dir), "--progress_bar", "false"]
        cfg, paths = parse_config(argv), Paths(seed_dir)
        seed_dir.mkdir(parents=True, exist_ok=True)
        for stage in STAGES[:2]:  # data, pretrain
            if not stage.done(paths):
                print(f"=== seed {seed}: {stage.name}", file=sys.stderr, flush=True)
                seeded(seed, stage.run, cfg, paths)
        L.seed_everything(seed, verbose=False)
        rebuilt = evaluate_checkpoint(cfg, paths, EvalRun("base", "pretrain"))
        if rebuilt != raw["eval"]["base"]:
            raise SystemExit(
                f"seed {seed}: the rebuilt base model scores {rebuilt}, the committed one {raw['eval']['base']}: "
                "not the same base model (run from a checkout at the commit the raw results came from, on a machine "
                "with the same CPU: another CPU's float rounding trains another model)"
            )
        restore_results(raw, seed_dir)
        print(json.dumps({"seed": seed, "base pass@1": rebuilt["pass@1"], "same as committed": True}))


PAIRED_RUNS = (("base", "pretrain", None), *NTP_RUNS, *RA3_RUNS)  # what `run`, `ntp` and `table` pair with


def cmd_pair(args: argparse.Namespace) -> None:
    from ra3_lightning.pipeline.stages import STAGES, Paths, parse_config

    for seed in args.seeds:
        seed_dir = Path(args.base) / f"seed{seed}"
        argv = ["-c", args.config, "--seed", str(seed), "--out", str(seed_dir), "--progress_bar", "false"]
        cfg, paths = parse_config(argv), Paths(seed_dir)
        seed_dir.mkdir(parents=True, exist_ok=True)
        times_file = seed_dir / "stage_times.json"
        times = json.loads(times_file.read_text()) if times_file.exists() else {}
        for stage in STAGES[:4]:  # data, pretrain, ntp, ra3
            if not stage.done(paths):
                print(f"=== seed {seed}: {stage.name}", file=sys.stderr, flush=True)
                times[stage.name] = seeded(seed, stage.run, cfg, paths)
                times_file.write_text(json.dumps(times, indent=1))
        for run in PAIRED_RUNS:
            evaluate_once(cfg, paths, seed, *run)
        scores = {name: json.loads(paths.eval_result(name).read_text())["pass@1"] for name, _, _ in PAIRED_RUNS}
        print(json.dumps({"seed": seed, "commit": commit(), "pass@1": scores, "times": times}))


# --------------------------------------------------------------------------------------------- tables
def paired(values: list[float]) -> str:
    """``v1, v2, ... (mean m ± s; > 0 in a of n)`` of paired differences."""
    mean = statistics.mean(values)
    spread = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
    above = sum(v > 0 for v in values)
    return f"{', '.join(f'{v:+.3f}' for v in values)} (mean {mean:+.3f}{spread}; > 0 in {above} of {len(values)})"


def pass1(seed_dir: Path, model: str) -> float:
    return json.loads((seed_dir / "eval" / f"{model}.json").read_text())["pass@1"]


def ablation_rows(base: Path, folder: Path) -> list[str]:
    """The table lines of one ablation folder (``<out>/<name>``), one seed per ``seed<S>/ablation.json``."""
    records = [json.loads(p.read_text()) for p in sorted(folder.glob("seed*/ablation.json"))]
    if not records:
        return []
    rows = TABLES.get(records[0].get("stage"), ra3_rows)  # records before `ntp` existed are RA3's
    seeds = ", ".join(str(r["seed"]) for r in records)
    return [
        f"### {folder.name}: `{' '.join(records[0]['overrides'])}` (seeds {seeds}; "
        f"commit {', '.join(sorted({r['commit'] for r in records}))})",
        "",
        "| quantity | value |",
        "|---|---|",
        *rows(base, records),
        "",
    ]


def ntp_rows(base: Path, records: list[dict[str, Any]]) -> list[str]:
    """A rerun NTP arm paired by seed with the seed's own NTP and RA3 arms."""
    own = [r["eval"]["ntp"]["pass@1"] for r in records]
    ntp = [pass1(base / f"seed{r['seed']}", "ntp") for r in records]
    ra3 = [pass1(base / f"seed{r['seed']}", "ra3") for r in records]
    return [
        f"| pass@1 rerun NTP | {', '.join(f'{v:.3f}' for v in own)} |",
        f"| rerun NTP − NTP | {paired([a - b for a, b in zip(own, ntp, strict=True)])} |",
        f"| RA3 − rerun NTP | {paired([a - b for a, b in zip(ra3, own, strict=True)])} |",
        f"| RA3 − NTP (the seeds' pairing) | {paired([a - b for a, b in zip(ra3, ntp, strict=True)])} |",
    ]


def ra3_rows(base: Path, records: list[dict[str, Any]]) -> list[str]:
    """An ablated RA3 arm paired by seed with the seed's NTP and default RA3 arms, and its THINK rates."""
    seeds = [r["seed"] for r in records]
    own = [r["eval"]["ra3"]["pass@1"] for r in records]
    nothink = [r["eval"]["ra3_nothink"]["pass@1"] for r in records]
    ntp = [pass1(base / f"seed{s}", "ntp") for s in seeds]
    ra3 = [pass1(base / f"seed{s}", "ra3") for s in seeds]
    think = [" → ".join(f"{row['think_rate']:.3f}" for row in r["recovery"]) for r in records]
    rate = [r["eval"]["ra3"].get("rationale_rate", float("nan")) for r in records]
    return [
        f"| pass@1 ablated RA3 | {', '.join(f'{v:.3f}' for v in own)} |",
        f"| ablated − NTP | {paired([a - b for a, b in zip(own, ntp, strict=True)])} |",
        f"| ablated − default RA3 | {paired([a - b for a, b in zip(own, ra3, strict=True)])} |",
        f"| ablated, comments forbidden − ablated | {paired([a - b for a, b in zip(nothink, own, strict=True)])} |",
        f"| E-step THINK rate by EM iteration | {'; '.join(think)} |",
        f"| eval rationale rate | {', '.join(f'{v:.3f}' for v in rate)} |",
    ]


def oracle_rows(base: Path, records: list[dict[str, Any]]) -> list[str]:
    """Each oracle arm paired by seed with the seed's NTP and RA3 arms (the wrong-content arm with the oracle too),
    with comments forbidden, and the code and total tokens it trained on."""
    arms = [a for a in records[0]["arms"] if all(a in r["eval"] for r in records)]
    score = {n: [r["eval"][n]["pass@1"] for r in records] for a in arms for n in (a, f"{a}_nothink")}
    score |= {arm: [pass1(base / f"seed{r['seed']}", arm) for r in records] for arm in ("ntp", "ra3")}
    rows = []
    for arm in arms:
        rows += [
            f"| pass@1 {arm} | {', '.join(f'{v:.3f}' for v in score[arm])} |",
            f"| {arm} − NTP | {_paired_diff(score, arm, 'ntp')} |",
            f"| {arm} − RA3 | {_paired_diff(score, arm, 'ra3')} |",
            f"| {arm}, comments forbidden − {arm} | {_paired_diff(score, f'{arm}_nothink', arm)} |",
            f"| {arm} code / total tokens trained on | {'; '.join(_tokens(r['tokens'][arm]) for r in records)} |",
        ]
    if {"oracle", "oracle_wrong"} <= set(arms):
        rows.append(f"| oracle_wrong − oracle | {_paired_diff(score, 'oracle_wrong', 'oracle')} |")
    return rows


def _paired_diff(score: dict[str, list[float]], a: str, b: str) -> str:
    return paired([x - y for x, y in zip(score[a], score[b], strict=True)])


def _tokens(counted: dict[str, int]) -> str:
    """``code / total (comments share)`` of one arm's counted tokens."""
    return f"{counted['code']:,} / {counted['total']:,} ({counted['rationale'] / counted['total']:.1%} comments)"


TABLES = {"ntp": ntp_rows, "oracle": oracle_rows}  # an ablation record's stage -> its table rows (else RA3's)


def cmd_table(args: argparse.Namespace) -> None:
    base = Path(args.base)
    for folder in sorted(p for p in Path(args.out).iterdir() if p.is_dir()):
        print("\n".join(ablation_rows(base, folder)))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    reruns = (
        ("run", "rerun the RA3 arm"), ("ntp", "rerun the NTP arm"), ("rlvr", "rerun both RLVR stages"),
        ("oracle", "run the oracle arms the overrides name (--oracle.arms)"),
    )  # fmt: skip
    for name, what in reruns:
        rerun = sub.add_parser(name, help=f"{what} of finished seeds with overrides")
        rerun.add_argument("--base", required=True, help="the finished `ra3 demo --seeds` directory (seed<S>/ inside)")
        rerun.add_argument("--out", required=True, help="where ablations go (<out>/<name>/seed<S>)")
        rerun.add_argument("--name", required=True, help="the ablation's folder name")
        rerun.add_argument("--seeds", type=int, nargs="+", required=True)
        rerun.add_argument("-c", "--config", required=True, help="the pipeline YAML the base seeds ran with")
        rerun.add_argument("overrides", nargs="*", help="pipeline overrides after `--`, e.g. --rlvr.train_tasks 64")
    base = sub.add_parser("base", help="rebuild finished seeds' data + base model from the committed raw results")
    raw_help = "the folder of the committed seed<S>.json (docs/results/fair_results/raw)"
    base.add_argument("--raw", required=True, help=raw_help)
    base.add_argument("--base", required=True, help="where the rebuilt seeds go (seed<S>/ inside)")
    base.add_argument("--seeds", type=int, nargs="+", required=True)
    base.add_argument("-c", "--config", required=True, help="the pipeline YAML the raw results ran with")
    pair = sub.add_parser("pair", help="a new pairing on this machine: data, base model, NTP and RA3 arms, evaluated")
    pair.add_argument("--base", required=True, help="where the seeds go (seed<S>/ inside)")
    pair.add_argument("--seeds", type=int, nargs="+", required=True)
    pair.add_argument("-c", "--config", required=True, help="the pipeline YAML")
    table = sub.add_parser("table", help="paired tables of every ablation under --out")
    table.add_argument("--base", required=True)
    table.add_argument("--out", required=True)
    return parser


def main(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    commands = {
        "run": cmd_rerun, "ntp": cmd_rerun, "oracle": cmd_rerun, "rlvr": cmd_rlvr, "base": cmd_base, "pair": cmd_pair,
        "table": cmd_table,
    }  # fmt: skip
    commands[args.command](args)


if __name__ == "__main__":
    main(sys.argv[1:])
