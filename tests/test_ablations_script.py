"""``scripts/ablations.py rlvr``: what a rerun of the RLVR stages takes over from a finished seed, and what it must
not (its RLVR checkpoints, evaluations and stage times, which the rerun replaces)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("ablations", ROOT / "scripts" / "ablations.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def finished_seed(root: Path) -> Path:
    for folder in ("data", "checkpoints", "eval", "tb/pretrain", "tb/ntp", "tb/ra3", "tb/rlvr_ntp", "work/ra3_em"):
        (root / folder).mkdir(parents=True)
    (root / "data" / "DONE").write_text("")
    for ckpt in ("pretrain", "ntp", "ra3", "rlvr_ntp", "rlvr_ntp_step40"):
        (root / "checkpoints" / f"{ckpt}.ckpt").write_text(ckpt)
    for result in ("base", "ntp", "ra3", "ra3_nothink", "rlvr_ntp", "rlvr_ra3_nothink", "rlvr_ntp_step40"):
        (root / "eval" / f"{result}.json").write_text(json.dumps({"pass@1": 0.5}))
    times = {"data": 1.0, "pretrain": 2.0, "ntp": 3.0, "ra3": 4.0, "rlvr_ntp": 5.0, "eval": 6.0}
    (root / "stage_times.json").write_text(json.dumps(times))
    return root


def test_prepare_rlvr_keeps_midtraining_and_drops_rlvr(tmp_path):
    base, out = finished_seed(tmp_path / "base"), tmp_path / "out"
    load_script().prepare_rlvr(base, out)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["ntp.ckpt", "pretrain.ckpt", "ra3.ckpt"]
    assert (out / "checkpoints" / "ra3.ckpt").read_text() == "ra3"
    assert sorted(p.stem for p in (out / "eval").iterdir()) == ["base", "ntp", "ra3", "ra3_nothink"]
    assert sorted(p.name for p in (out / "tb").iterdir()) == ["ntp", "pretrain", "ra3"]
    assert (out / "work" / "ra3_em").is_dir()  # the annotated traces the report's recovery table reads
    assert json.loads((out / "stage_times.json").read_text()) == {"data": 1.0, "pretrain": 2.0, "ntp": 3.0, "ra3": 4.0}
    (out / "stage_times.json").write_text(json.dumps({"data": 1.0, "rlvr_ntp": 9.0}))  # the rerun ran rlvr_ntp
    load_script().prepare_rlvr(base, out)  # resuming into the same folder keeps what the rerun did
    assert sorted(p.stem for p in (out / "eval").iterdir()) == ["base", "ntp", "ra3", "ra3_nothink"]
    assert json.loads((out / "stage_times.json").read_text())["rlvr_ntp"] == 9.0


def test_restore_results_writes_the_committed_midtraining_results(tmp_path):
    names = ["base", "ntp", "ra3", "ra3_nothink", "rlvr_ra3"]
    raw = {
        "eval": {"base": {"pass@1": 9.0}},
        "fairness": {"eval_runs": {n: {"pass@1": i / 10} for i, n in enumerate(names)}},
    }
    load_script().restore_results(raw, tmp_path / "seed1")
    written = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "seed1" / "eval").iterdir()}
    assert written == {
        "base": {"pass@1": 0.0},
        "ntp": {"pass@1": 0.1},
        "ra3": {"pass@1": 0.2},
        "ra3_nothink": {"pass@1": 0.3},
    }
    assert load_script().pass1(tmp_path / "seed1", "ra3") == 0.2  # where `table` pairs an ablation with its seed


def test_restore_results_reads_a_committed_raw_file(tmp_path):
    raw = json.loads((ROOT / "docs" / "fair_results" / "raw" / "seed0.json").read_text())
    load_script().restore_results(raw, tmp_path / "seed0")
    for name in ("base", "ntp", "ra3"):
        assert json.loads((tmp_path / "seed0" / "eval" / f"{name}.json").read_text()) == raw["eval"][name]
    nothink = json.loads((tmp_path / "seed0" / "eval" / "ra3_nothink.json").read_text())
    assert nothink["rationale_rate"] == 0.0  # decoded with comment starts forbidden


def test_pair_runs_the_unfinished_stages_and_evaluates_what_run_and_table_pair_with(tmp_path, monkeypatch):
    import math

    from ra3_lightning.pipeline import stages

    ran, evaluated = [], []

    def fake_stage(name):
        def run(cfg, paths):
            ran.append(name)
            paths.ckpt(name).parent.mkdir(parents=True, exist_ok=True)
            paths.ckpt(name).write_text(name)

        return stages.Stage(name, run, lambda p: [p.ckpt(name)])

    def fake_evaluate(cfg, paths, run):
        evaluated.append((run.name, run.checkpoint, run.think_bias))
        return {"pass@1": {"pretrain": 0.1, "ntp": 0.3}.get(run.checkpoint, 0.2 if run.think_bias is None else 0.25)}

    fake = tuple(fake_stage(n) for n in ("data", "pretrain", "ntp", "ra3", "rlvr_ntp"))
    monkeypatch.setattr(stages, "STAGES", fake)
    monkeypatch.setattr(stages, "evaluate_checkpoint", fake_evaluate)
    monkeypatch.setattr(stages, "parse_config", lambda argv: argv)
    (tmp_path / "seed2" / "checkpoints").mkdir(parents=True)
    (tmp_path / "seed2" / "checkpoints" / "data.ckpt").write_text("data")  # finished before: not run again
    script = load_script()
    script.main(["pair", "--base", str(tmp_path), "--seeds", "2", "-c", "unused.yaml"])
    assert ran == ["pretrain", "ntp", "ra3"]  # never an RLVR stage
    assert [e[:2] for e in evaluated] == [("base", "pretrain"), ("ntp", "ntp"), ("ra3", "ra3"), ("ra3_nothink", "ra3")]
    assert evaluated[2][2] is None and evaluated[3][2] == -math.inf  # rationales forbidden only in ra3_nothink
    seed = tmp_path / "seed2"
    assert [script.pass1(seed, m) for m in ("base", "ntp", "ra3", "ra3_nothink")] == [0.1, 0.3, 0.2, 0.25]
    assert sorted(json.loads((seed / "stage_times.json").read_text())) == ["ntp", "pretrain", "ra3"]
    script.main(["pair", "--base", str(tmp_path), "--seeds", "2", "-c", "unused.yaml"])  # resumed: nothing to redo
    assert len(ran) == 3 and len(evaluated) == 4
