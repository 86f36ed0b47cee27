"""``experiments/ablations.py rlvr``: what a rerun of the RLVR stages takes over from a finished seed, and what it must
not (its RLVR checkpoints, evaluations and stage times, which the rerun replaces)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("ablations", ROOT / "experiments" / "ablations.py")
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
    raw = json.loads((ROOT / "docs" / "results" / "fair_results" / "raw" / "seed0.json").read_text())
    load_script().restore_results(raw, tmp_path / "seed0")
    for name in ("base", "ntp", "ra3"):
        assert json.loads((tmp_path / "seed0" / "eval" / f"{name}.json").read_text()) == raw["eval"][name]
    nothink = json.loads((tmp_path / "seed0" / "eval" / "ra3_nothink.json").read_text())
    assert nothink["rationale_rate"] == 0.0  # decoded with comment starts forbidden


def fake_pipeline(monkeypatch, score) -> tuple[list, list, list]:
    """Stages that only write their checkpoint, an evaluator that returns ``score(run)`` as pass@1, and a config
    parser that returns its argv; returns the stages run, the evaluations (name, checkpoint, bias) and the argvs."""
    from ra3_lightning.pipeline import stages

    ran, evaluated, argvs = [], [], []

    def fake_stage(name):
        def run(cfg, paths):
            ran.append(name)
            paths.ckpt(name).parent.mkdir(parents=True, exist_ok=True)
            paths.ckpt(name).write_text(name)

        return stages.Stage(name, run, lambda p: [p.ckpt(name)])

    def fake_evaluate(cfg, paths, run):
        evaluated.append((run.name, run.checkpoint, run.think_bias))
        return {"pass@1": score(run)}

    fake = tuple(fake_stage(n) for n in ("data", "pretrain", "ntp", "ra3", "rlvr_ntp"))
    monkeypatch.setattr(stages, "STAGES", fake)
    monkeypatch.setattr(stages, "evaluate_checkpoint", fake_evaluate)
    monkeypatch.setattr(stages, "parse_config", lambda argv: argvs.append(argv) or argv)
    return ran, evaluated, argvs


def test_pair_runs_the_unfinished_stages_and_evaluates_what_run_and_table_pair_with(tmp_path, monkeypatch):
    import math

    def score(run):
        return {"pretrain": 0.1, "ntp": 0.3}.get(run.checkpoint, 0.2 if run.think_bias is None else 0.25)

    ran, evaluated, _ = fake_pipeline(monkeypatch, score)
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


def test_ntp_reruns_only_the_ntp_arm_and_tables_it_against_the_seeds_arms(tmp_path, monkeypatch, capsys):
    base, out = tmp_path / "base", tmp_path / "abl"
    seed = finished_seed(base / "seed3")
    (seed / "eval" / "ntp.json").write_text(json.dumps({"pass@1": 0.5}))
    (seed / "eval" / "ra3.json").write_text(json.dumps({"pass@1": 0.375}))
    ran, evaluated, argvs = fake_pipeline(monkeypatch, lambda run: 0.25)
    overrides = ["--stages.ntp.args", '{"data.shuffle_seed": 1}']
    argv = ["ntp", "--base", str(base), "--out", str(out), "--name", "ntp_order1", "--seeds", "3", "-c", "p.yaml"]
    script = load_script()
    script.main([*argv, "--", *overrides])
    assert ran == ["ntp"] and evaluated == [("ntp", "ntp", None)]  # no THINK bias
    assert argvs[0][:4] == ["-c", "p.yaml", "--seed", "3"] and argvs[0][-2:] == overrides
    rerun = out / "ntp_order1" / "seed3"
    assert (rerun / "checkpoints" / "pretrain.ckpt").read_text() == "pretrain" and (rerun / "data" / "DONE").exists()
    record = json.loads((rerun / "ablation.json").read_text())
    assert {k: record[k] for k in ("seed", "stage", "overrides", "eval")} == {
        "seed": 3, "stage": "ntp", "overrides": overrides, "eval": {"ntp": {"pass@1": 0.25}},
    }  # fmt: skip
    assert sorted(record["stage_times"]) == ["eval_ntp", "ntp"] and record["commit"]
    script.main([*argv, "--", *overrides])  # resumed: nothing to redo
    assert len(ran) == 1 and len(evaluated) == 1
    old = {"seed": 3, "overrides": ["--midtrain.hindsight_lines", "2"], "commit": "abc", "recovery": [],
           "eval": {"ra3": {"pass@1": 0.5}, "ra3_nothink": {"pass@1": 0.5}}}  # fmt: skip
    (out / "hindsight2" / "seed3").mkdir(parents=True)
    (out / "hindsight2" / "seed3" / "ablation.json").write_text(json.dumps(old))  # an RA3 record, before `ntp`
    capsys.readouterr()
    script.main(["table", "--base", str(base), "--out", str(out)])
    table = capsys.readouterr().out
    assert "| ablated − default RA3 | +0.125 (mean +0.125; > 0 in 1 of 1) |" in table
    # rerun 0.25, the seed's NTP 0.5 and RA3 0.375
    assert "| pass@1 rerun NTP | 0.250 |" in table
    assert "| rerun NTP − NTP | -0.250 (mean -0.250; > 0 in 0 of 1) |" in table
    assert "| RA3 − rerun NTP | +0.125 (mean +0.125; > 0 in 1 of 1) |" in table
    assert "| RA3 − NTP (the seeds' pairing) | -0.125 (mean -0.125; > 0 in 0 of 1) |" in table


def test_run_reruns_only_the_ra3_arm_with_and_without_rationales(tmp_path, monkeypatch):
    import math
    from types import SimpleNamespace

    from ra3_lightning.pipeline import report, stages

    finished_seed(tmp_path / "base" / "seed0")
    ran, evaluated, _ = fake_pipeline(monkeypatch, lambda run: 0.25)
    monkeypatch.setattr(stages, "parse_config", lambda argv: SimpleNamespace(midtrain=SimpleNamespace(iterations=2)))
    monkeypatch.setattr(report, "recovery_rows", lambda paths, iterations: [{"think_rate": 0.1}] * iterations)
    argv = ["run", "--base", str(tmp_path / "base"), "--out", str(tmp_path / "abl"), "--name", "x", "--seeds", "0"]
    load_script().main([*argv, "-c", "p.yaml", "--", "--midtrain.hindsight_lines", "2"])
    assert ran == ["ra3"] and evaluated == [("ra3", "ra3", None), ("ra3_nothink", "ra3", -math.inf)]
    record = json.loads((tmp_path / "abl" / "x" / "seed0" / "ablation.json").read_text())
    assert record["stage"] == "ra3" and len(record["recovery"]) == 2
    assert sorted(record["eval"]) == ["ra3", "ra3_nothink"]


def fake_oracle_stages(monkeypatch, ran: list, counted: dict) -> None:
    """Oracle stages that write their checkpoint and the tokens ``counted[arm]`` they trained on."""
    from ra3_lightning.pipeline import stages

    def fake(arm):
        def run(cfg, paths):
            ran.append(arm)
            for path, text in ((paths.ckpt(arm), arm), (paths.training_tokens(arm), json.dumps(counted[arm]))):
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)

        return stages.Stage(arm, run, lambda p: [p.ckpt(arm), p.training_tokens(arm)])

    monkeypatch.setattr(stages, "ORACLE_STAGES", {arm: fake(arm) for arm in counted})


def test_oracle_runs_the_named_arms_and_tables_them_against_the_seeds_arms(tmp_path, monkeypatch, capsys):
    import math
    from types import SimpleNamespace

    from ra3_lightning.pipeline import stages

    base, out = tmp_path / "base", tmp_path / "abl"
    seed = finished_seed(base / "seed3")
    (seed / "eval" / "ntp.json").write_text(json.dumps({"pass@1": 0.5}))
    (seed / "eval" / "ra3.json").write_text(json.dumps({"pass@1": 0.375}))
    scores = {("oracle", None): 0.75, ("oracle", -math.inf): 0.625, ("oracle_wrong", None): 0.5,
              ("oracle_wrong", -math.inf): 0.25}  # fmt: skip
    ran, evaluated, argvs = fake_pipeline(monkeypatch, lambda run: scores[run.checkpoint, run.think_bias])
    counted = {"oracle": {"total": 1000, "rationale": 250, "code": 750},
               "oracle_wrong": {"total": 1000, "rationale": 200, "code": 800}}  # fmt: skip
    fake_oracle_stages(monkeypatch, ran, counted)
    named = SimpleNamespace(oracle=SimpleNamespace(arms=("oracle", "oracle_wrong")))
    monkeypatch.setattr(stages, "parse_config", lambda argv: argvs.append(argv) or named)
    overrides = ["--oracle.arms", "[oracle, oracle_wrong]"]
    argv = ["oracle", "--base", str(base), "--out", str(out), "--name", "oracle", "--seeds", "3", "-c", "p.yaml"]
    script = load_script()
    script.main([*argv, "--", *overrides])
    assert ran == ["oracle", "oracle_wrong"]  # nothing else of the seed is rerun
    assert evaluated == [
        ("oracle", "oracle", None),
        ("oracle_nothink", "oracle", -math.inf),
        ("oracle_wrong", "oracle_wrong", None),
        ("oracle_wrong_nothink", "oracle_wrong", -math.inf),
    ]
    assert all(a[:4] == ["-c", "p.yaml", "--seed", "3"] and a[-2:] == overrides for a in argvs)
    rerun = out / "oracle" / "seed3"
    assert (rerun / "checkpoints" / "pretrain.ckpt").read_text() == "pretrain" and (rerun / "data" / "DONE").exists()
    record = json.loads((rerun / "ablation.json").read_text())
    assert {k: record[k] for k in ("seed", "stage", "arms", "overrides", "tokens")} == {
        "seed": 3, "stage": "oracle", "arms": ["oracle", "oracle_wrong"], "overrides": overrides, "tokens": counted,
    }  # fmt: skip
    assert {k: v["pass@1"] for k, v in record["eval"].items()} == {
        "oracle": 0.75, "oracle_nothink": 0.625, "oracle_wrong": 0.5, "oracle_wrong_nothink": 0.25,
    }  # fmt: skip
    assert sorted(record["stage_times"]) == sorted(["oracle", "oracle_wrong", *(f"eval_{k}" for k in record["eval"])])
    script.main([*argv, "--", *overrides])  # resumed: nothing to redo
    assert len(ran) == 2 and len(evaluated) == 4
    capsys.readouterr()
    script.main(["table", "--base", str(base), "--out", str(out)])
    table = capsys.readouterr().out
    # the seed's NTP 0.5 and RA3 0.375; oracle 0.75 (0.625 without comments), oracle_wrong 0.5 (0.25)
    for row in ("| pass@1 oracle | 0.750 |", "| oracle − NTP | +0.250 (mean +0.250; > 0 in 1 of 1) |",
                "| oracle − RA3 | +0.375 (mean +0.375; > 0 in 1 of 1) |",
                "| oracle, comments forbidden − oracle | -0.125 (mean -0.125; > 0 in 0 of 1) |",
                "| oracle code / total tokens trained on | 750 / 1,000 (25.0% comments) |",
                "| oracle_wrong − NTP | +0.000 (mean +0.000; > 0 in 0 of 1) |",
                "| oracle_wrong − RA3 | +0.125 (mean +0.125; > 0 in 1 of 1) |",
                "| oracle_wrong, comments forbidden − oracle_wrong | -0.250 (mean -0.250; > 0 in 0 of 1) |",
                "| oracle_wrong code / total tokens trained on | 800 / 1,000 (20.0% comments) |",
                "| oracle_wrong − oracle | -0.250 (mean -0.250; > 0 in 0 of 1) |"):  # fmt: skip
        assert row in table, row
    monkeypatch.setattr(stages, "parse_config", lambda argv: SimpleNamespace(oracle=SimpleNamespace(arms=())))
    with pytest.raises(SystemExit, match="name the oracle arms"):
        script.main([*argv[:6], "none", *argv[7:]])  # a new folder: no arm named
