"""``ra3 demo`` end to end in miniature (a few steps per stage, a handful of tasks), its stage-level resuming, the
report it writes (``summary.md``, ``results.json``), ``--seeds`` over finished seed directories, and ``ra3 test``
(``RLVRModule.test_step`` on ``TaskDataModule.test_dataloader``)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
from pathlib import Path

import pytest
import yaml

from ra3_lightning.cli import main
from ra3_lightning.pipeline.report import moving_average, steps_to_reach
from ra3_lightning.pipeline.stages import MODELS, STAGES, parse_args, parse_config

ROOT = Path(__file__).resolve().parents[1]
MINI = [
    "--progress_bar", "false",
    "--model.hidden_size", "32", "--model.intermediate_size", "64", "--model.vocab_size", "400",
    "--model.tokenizer_corpus", "synthetic:pretrain?n=200",
    "--world.pretrain", "60", "--world.midtrain", "40", "--world.rlvr", "8", "--world.eval", "4",
    "--pretrain.steps", "4", "--pretrain.batch_size", "4", "--pretrain.max_length", "128", "--pretrain.val_every", "2",
    "--pretrain.warmup_steps", "1",
    "--midtrain.iterations", "2", "--midtrain.e_steps", "1", "--midtrain.m_steps", "2", "--midtrain.batch_size", "2",
    "--midtrain.max_length", "128", "--midtrain.warmup_steps", "1", "--midtrain.e_batch_size", "2",
    "--midtrain.records_per_iteration", "4",
    "--ra3.num_generations", "2", "--ra3.latent.max_latent_tokens", "4", "--ra3.annotation.batch_size", "4",
    "--rlvr.steps", "2", "--rlvr.batch_size", "2", "--rlvr.num_generations", "2", "--rlvr.max_completion_length", "16",
    "--rlvr.smoothing", "1", "--rlvr.heldin", "2", "--rlvr.val_every", "1", "--rlvr.val_num_samples", "2",
    "--rlvr.checkpoint_every", "1", "--rlvr.train_tasks", "4",
    "--eval.num_samples", "2", "--eval.ks", "[1,2]", "--eval.max_completion_length", "16", "--eval.batch_size", "4",
    "--eval.curve_num_samples", "2", "--eval.check_budget", "false",
]  # fmt: skip


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    root, cwd = tmp_path_factory.mktemp("demo"), os.getcwd()
    os.chdir(root)
    try:  # a relative --out, as `ra3 demo` is run
        main(["demo", "-c", str(ROOT / "configs" / "demo" / "pipeline.yaml"), "--out", "report", "--seed", "1", *MINI])
    finally:
        os.chdir(cwd)
    assert sorted(p.name for p in root.iterdir()) == ["report"]  # nothing written beside the report directory
    assert not (root / "report" / "report").exists()  # nor a second copy of its relative path inside it
    return root / "report"


def test_demo_writes_the_report(demo):
    summary = (demo / "summary.md").read_text()
    assert "--seed 1" in summary and "Seed: 1" in summary
    row = re.compile(r"\| (base|NTP|RA3|RLVR)[^|]*\| [\d.]+ \| [\d.]+ \|$")
    pass_at_k = summary.split("## pass@k")[1].split("## ")[0]
    table = [line for line in pass_at_k.splitlines() if row.match(line)]
    assert len(table) == 5, table
    for row in table:  # a number for pass@1 and pass@2 on every row, each a probability
        values = [float(c) for c in row.strip("|").split("|")[1:]]
        assert len(values) == 2 and all(0.0 <= v <= 1.0 for v in values) and values[0] <= values[1]
    for model in MODELS:  # the table shows what the evaluation stage measured
        pass1 = json.loads((demo / "eval" / f"{model}.json").read_text())["pass@1"]
        assert f"{pass1:.3f}" in summary
    recovery = [line for line in summary.splitlines() if re.match(r"\| [01] \| -?\d", line)]
    assert len(recovery) == 2, "one abstraction-recovery row per EM iteration, with a measured ELBO per line"
    for name in ("rlvr_reward.png", "em_iterations.png", "estep.png", "losses.png"):
        assert (demo / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    learning = summary.split("## Is each stage learning?")[1].split("## ")[0]
    signals = {row["name"]: row for row in json.loads((demo / "results.json").read_text())["signals"]}
    for name in ("pre-training loss", "RA3 M-step loss (annotated traces)", "E-phase 1: THINK rate",
                 "RLVR from RA3: training reward", "RLVR from NTP: held-in pass@1"):  # fmt: skip
        assert f"| {name} | {signals[name]['points']} | {signals[name]['first']:.4f} |" in learning, name
    assert signals["pre-training loss"]["points"] == 4 and signals["RLVR from NTP: training reward"]["points"] == 2
    for stage in ("pretrain", "ntp", "ra3", "rlvr_ntp", "rlvr_ra3"):
        assert list((demo / "tb" / stage / "version_0").glob("events.out.tfevents.*")), stage


def test_demo_writes_its_numbers_as_json(demo):
    results = json.loads((demo / "results.json").read_text())
    assert results["seed"] == 1 and results["config"]["seed"] == 1 and "--seed 1" in results["command"]
    assert results["eval"] == {m: json.loads((demo / "eval" / f"{m}.json").read_text()) for m in MODELS}
    assert [row["iteration"] for row in results["recovery"]] == [0, 1]
    assert all(row["elbo_per_line"] < 0 and row["num_traces"] > 0 for row in results["recovery"])
    for arm in results["rlvr"]["arms"].values():  # 2 RLVR steps, target 0.2 with a 1-step window
        assert arm["logged_steps"] == 2 and 0.0 <= arm["final_reward"] <= 1.0
        assert arm["steps_to_target"] in (None, 1, 2)
    assert set(results["stage_times"]) == {stage.name for stage in STAGES}


def test_rerun_skips_finished_stages(demo, capsys):
    stamps = {p: p.stat().st_mtime_ns for p in (demo / "checkpoints").glob("*.ckpt")}
    assert len(stamps) == 5 + 2  # the stages' and one RLVR checkpoint along each run (--rlvr.checkpoint_every 1)
    (demo / "eval" / "ra3.json").unlink()  # one unfinished piece of work: only it runs again
    (demo / "eval" / "DONE").unlink()
    main(["demo", "-c", str(ROOT / "configs" / "demo" / "pipeline.yaml"), "--out", str(demo), "--seed", "1", *MINI])
    err = capsys.readouterr().err
    for stage in STAGES[:-1]:
        assert f"{stage.name}: finished earlier, skipped" in err
    assert "eval ra3: pass@1=" in err and "eval ntp: done before, skipped" in err
    assert {p: p.stat().st_mtime_ns for p in (demo / "checkpoints").glob("*.ckpt")} == stamps
    assert (demo / "eval" / "ra3.json").exists()


def test_ra3_test_on_a_task_file(demo, tmp_path, monkeypatch):
    from ra3_lightning.data.synthetic import load_split

    tasks = tmp_path / "tasks.jsonl"
    load_split("eval", n=3, seed=5).select_columns(["task_id", "prompt", "entry_point", "canonical_solution", "test"]) \
        .to_json(str(tasks))  # fmt: skip
    monkeypatch.chdir(tmp_path)
    cli_args = [
        "test", "-c", str(ROOT / "configs" / "eval_humaneval.yaml"), "--data.path", str(tasks),
        "--model.init_from", str(demo / "checkpoints" / "ntp.ckpt"), "--model.evaluation.max_completion_length", "8",
        "--model.evaluation.num_samples", "2", "--model.evaluation.pass_at_k", "[1, 2]", "--trainer.accelerator", "cpu",
        "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    from ra3_lightning.cli import RA3CLI

    cli = RA3CLI(args=cli_args)
    assert len(cli.datamodule.test_tasks) == 3
    metrics = cli.trainer.callback_metrics
    assert 0.0 <= float(metrics["test/pass@1"]) <= float(metrics["test/pass@2"]) <= 1.0
    assert len(cli.model.evaluator.reward_fn.last_results) == 3 * 2  # one batch (val_batch_size 8): 3 x 2 samples
    assert "val/pass@1" not in metrics


def test_config_knobs_reach_the_pipeline():
    cfg = parse_config(["-c", str(ROOT / "configs" / "demo" / "pipeline.yaml"), "--ra3.latent.think_cost", "0.2"])
    assert cfg.ra3.latent["think_cost"] == 0.2 and cfg.ra3.latent["max_latent_tokens"] == 8 and cfg.eval.ks == (1, 8)
    with pytest.raises(ValueError, match="num_samples"):
        parse_config(["--eval.ks", "[1, 16]", "--eval.num_samples", "8"])
    with pytest.raises(ValueError, match=r"rlvr.train_tasks=97 must be in \[0, 96\]"):  # 128 rlvr tasks, 32 held in
        parse_config(["-c", str(ROOT / "configs" / "demo" / "pipeline.yaml"), "--rlvr.train_tasks", "97"])


def test_seeds_over_finished_runs_only_aggregates(demo, tmp_path, capsys):
    for seed in (1, 2):  # two finished seed directories (copies of the miniature run)
        shutil.copytree(demo, tmp_path / f"seed{seed}")
    main(["demo", "-c", str(ROOT / "configs" / "demo" / "pipeline.yaml"), "--seeds", "1", "2", "--out", str(tmp_path),
          *MINI])  # fmt: skip
    err = capsys.readouterr().err
    summary = tmp_path / "summary.md"
    for stage in STAGES:
        assert err.count(f"] {stage.name}: finished earlier, skipped") == 2
    assert "pass@1=" not in err, "nothing is evaluated again"
    for seed in (1, 2):  # each seed's own report is rewritten with its seed
        assert json.loads((tmp_path / f"seed{seed}" / "results.json").read_text())["seed"] == seed
    record = json.loads((tmp_path / "results.json").read_text())
    pass1 = json.loads((demo / "eval" / "ra3.json").read_text())["pass@1"]
    assert record["seeds"] == [1, 2]
    assert record["eval"]["ra3"]["pass@1"] == {"mean": pass1, "std": 0.0, "n": 2, "values": [pass1, pass1]}
    text = summary.read_text()
    assert "# RA3 demo report over 2 seeds" in text and "--seeds 1 2" in text
    assert f"| RA3 mid-training | {pass1:.3f} ± 0.000 |" in text


def test_seed_and_seeds_exclude_each_other():
    assert parse_args(["--seeds", "0", "1", "2", "--out", "x"])[1] == [0, 1, 2]
    assert parse_args(["--seed", "3"]) == (parse_config(["--seed", "3"]), None)
    with pytest.raises(ValueError, match="--seed and --seeds exclude each other"):
        main(["demo", "--seed", "1", "--seeds", "1", "2"])
    with pytest.raises(ValueError, match="--seed and --seeds exclude each other"):
        parse_args(["--seeds", "1", "2", "--seed=1"])
    with pytest.raises(ValueError, match="repeats a seed"):
        parse_args(["--seeds", "1", "1"])


def test_steps_to_reach_uses_the_trailing_mean():
    # pass rates 0, 0.5, 0.5, 1 -> trailing 2-means 0, 0.25, 0.5, 0.75: 0.5 is first reached at the 3rd step
    series = [(0, 0.0), (1, 0.5), (2, 0.5), (3, 1.0)]
    assert moving_average([v for _, v in series], 2) == [0.0, 0.25, 0.5, 0.75]
    assert steps_to_reach(series, 0.5, 2) == 3
    assert steps_to_reach(series, 0.9, 2) is None


def test_steps_to_reach_counts_only_full_windows():
    # one lucky first batch: its own "mean" is 1.0, but the first full 3-window (1, 0, 0) averages 1/3; the
    # trailing 3-means are 1/3, 1/3, 2/3 from the 3rd step on, so 0.6 is first reached at the 5th step
    series = [(0, 1.0), (1, 0.0), (2, 0.0), (3, 1.0), (4, 1.0)]
    assert steps_to_reach(series, 0.6, 3) == 5
    assert steps_to_reach(series[:2], 0.1, 3) is None  # never a full window


def test_plain_ra3_demo_uses_the_shipped_pipeline_config():
    from ra3_lightning.pipeline.stages import parse_config, with_default_config

    assert with_default_config(["--seed", "3"])[:1] == ["-c"]
    assert with_default_config(["-c", "x.yaml"]) == ["-c", "x.yaml"]
    shipped = Path(__file__).resolve().parents[1] / "configs" / "demo" / "pipeline.yaml"
    assert parse_config(with_default_config([])) == parse_config(["-c", str(shipped)])


def test_budget_check_refuses_a_budget_the_eval_tasks_do_not_fit(tmp_path, tiny_tokenizer):
    from ra3_lightning.data.synthetic import write_splits
    from ra3_lightning.pipeline.stages import Paths, check_budget

    write_splits(tmp_path / "data", {"pretrain": 1, "midtrain": 1, "rlvr": 1, "eval": 4}, seed=0)
    small = parse_config(["-c", str(ROOT / "configs/demo/pipeline.yaml"), "--eval.max_completion_length", "16"])
    with pytest.raises(ValueError, match="eval.max_completion_length=16 < .* tokens, what task"):
        check_budget(small, Paths(tmp_path), tiny_tokenizer)
    large = parse_config(["-c", str(ROOT / "configs/demo/pipeline.yaml"), "--eval.max_completion_length", "100000"])
    check_budget(large, Paths(tmp_path), tiny_tokenizer)  # fits: no error


def test_flag_value_by_hand():
    from ra3_lightning.pipeline.stages import flag_value

    assert [flag_value(v) for v in (None, True, False, 3, 0.001, 1e-05, float("-inf"), "synthetic:x?n=2")] == [
        "null", "true", "false", "3", "0.001", "1.0e-05", "-.inf", "synthetic:x?n=2"
    ]  # fmt: skip
    nested = {"think_bias": float("-inf"), "pass_at_k": (1, 8), "samples_path": "a b.jsonl", "none": None}
    text = flag_value(nested)
    assert text == '{"think_bias": -.inf, "pass_at_k": [1, 8], "samples_path": "a b.jsonl", "none": null}'
    assert yaml.safe_load(text) == {**nested, "pass_at_k": [1, 8]}
    assert yaml.safe_load(flag_value([2e-4, "true"])) == [2e-4, "true"]  # a nested string stays a string


def test_each_stage_runs_its_stage_yaml_and_the_stage_args_win(demo, tmp_path):
    from ra3_lightning.lightning_cli import RA3CLI
    from ra3_lightning.pipeline.spec import Paths
    from ra3_lightning.pipeline.stages import ntp_run

    for stage in ("pretrain", "ntp", "ra3", "rlvr_ntp", "rlvr_ra3", "eval_ra3_nothink"):
        command = (demo / "tb" / stage / "version_0" / "command.sh").read_text()
        assert command.startswith("ra3 test -c " if stage.startswith("eval") else "ra3 fit -c "), stage
        assert (demo / "tb" / stage / "version_0" / "config.yaml").exists(), stage  # the resolved stage config
    assert "configs/demo/ra3_em_tiny.yaml" in (demo / "tb" / "ra3" / "version_0" / "command.sh").read_text()
    args = ["--stages.ntp.args", '{"model.loss_on": "code", "trainer.max_steps": 1}']
    cfg = parse_config(["-c", str(ROOT / "configs" / "demo" / "pipeline.yaml"), "--seed", "1", *MINI, *args])
    argv = ntp_run(cfg, Paths(demo)).argv()
    cli = RA3CLI(args=[*argv, "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}"], run=False)
    assert cli.model.hparams.loss_on == "code" and cli.trainer.max_steps == 1  # the stage args beat the pipeline's
    assert cli.model.optim.lr == cfg.midtrain.lr and cli.datamodule.batch_size == cfg.midtrain.batch_size


def test_a_stage_command_reruns_the_stage(demo, tmp_path):
    """``tb/<stage>/version_0/command.sh`` is the stage's Lightning run: rerun by hand, it logs the same losses."""
    from ra3_lightning.pipeline.scalars import read_scalars

    argv = shlex.split((demo / "tb" / "ntp" / "version_0" / "command.sh").read_text())
    assert argv[:2] == ["ra3", "fit"]
    main([*argv[1:], f"--trainer.logger.init_args.save_dir={tmp_path}"])
    again, before = (
        read_scalars(tmp_path / "ntp" / "version_0", "train/loss"),
        read_scalars(demo / "tb" / "ntp" / "version_0", "train/loss"),
    )
    assert len(before) == 4 and again == before


def test_a_stage_arg_that_does_not_parse_names_the_stage(tmp_path):
    from ra3_lightning.pipeline.spec import Paths
    from ra3_lightning.pipeline.stages import ntp_run

    args = ["--stages.ntp.args", '{"model.no_such_knob": 1}']
    cfg = parse_config(["-c", str(ROOT / "configs" / "demo" / "pipeline.yaml"), *MINI, *args])
    with pytest.raises(ValueError, match="stage 'ntp': demo/ntp_tiny.yaml with the pipeline's flags"):
        ntp_run(cfg, Paths(tmp_path)).cli(Paths(tmp_path))
    assert "--model.no_such_knob=1" in (tmp_path / "tb" / "ntp" / "version_0" / "command.sh").read_text()


def test_a_bad_stage_config_or_arg_fails_before_the_first_stage(tmp_path):
    from ra3_lightning.pipeline.stages import check_stages, run_pipeline

    base = ["-c", str(ROOT / "configs" / "demo" / "pipeline.yaml"), *MINI, "--out", str(tmp_path / "out")]
    with pytest.raises(ValueError, match=r"stages.rlvr.args \{'model.loss.bta': 0.04\} do not parse with demo/rlvr"):
        run_pipeline(parse_config([*base, "--stages.rlvr.args", '{"model.loss.bta": 0.04}']))
    with pytest.raises(ValueError, match="stages.ntp.config: nope.yaml is neither a file"):
        run_pipeline(parse_config([*base, "--stages.ntp.config", "nope.yaml"]))
    assert not (tmp_path / "out").exists()  # nothing ran
    check_stages(parse_config([*base, "--stages.rlvr.args", '{"model.loss.beta": 0.04}']))  # the right name passes


def test_an_ntp_stage_arg_reaches_only_the_ntp_arms_data_module(tmp_path):
    """``--stages.ntp.args '{"data.shuffle_seed": 1}'`` (the order-only rerun of ``experiments/ablations.py ntp``)
    gets to the NTP arm's ``TraceDataModule`` and nowhere else; its split ``seed`` stays the pipeline's."""
    from ra3_lightning.pipeline.spec import Paths
    from ra3_lightning.pipeline.stages import _ParseOnly, alone_on_the_command_line, check_stages, ntp_run, pretrain_run

    args = ["--stages.ntp.args", '{"data.shuffle_seed": 1}']
    cfg = parse_config(["-c", str(ROOT / "configs" / "demo" / "pipeline_full.yaml"), "--seed", "4", *args])
    check_stages(cfg)
    assert cfg.stages.ntp.config == "demo/ntp_tiny.yaml"  # the YAML's stage config survives the args override
    data = {}
    for run in (ntp_run, pretrain_run):
        with alone_on_the_command_line():
            parsed = _ParseOnly(args=run(cfg, Paths(tmp_path)).argv(), run=False).config
        data[run.__name__] = parsed["data"]["init_args"]
    assert data["ntp_run"]["shuffle_seed"] == 1 and data["ntp_run"]["seed"] == 4
    assert data["pretrain_run"]["shuffle_seed"] is None and data["pretrain_run"]["seed"] == 4


def test_oracle_arms_are_off_unless_named(tmp_path):
    from ra3_lightning.pipeline.stages import eval_runs, pipeline_stages

    for name in ("pipeline.yaml", "pipeline_full.yaml"):
        cfg = parse_config(["-c", str(ROOT / "configs" / "demo" / name)])
        assert cfg.oracle.arms == () and pipeline_stages(cfg) is STAGES  # `ra3 demo` runs what it ran before
        assert not [run for run in eval_runs(cfg) if "oracle" in run.name]
    with pytest.raises(ValueError, match=r"oracle.arms=\['oracle', 'orcale'\]: name each of"):
        parse_config(["--oracle.arms", "[oracle, orcale]"])


def test_oracle_arms_are_the_ntp_arms_run_on_their_annotated_split(tmp_path):
    """Named arms run after ``ra3`` and before RLVR; each is the NTP arm's stage run with only its name, its data and
    the rationale spans changed; the eval stage scores each with and without comments forbidden."""
    import math

    from ra3_lightning.pipeline.spec import Paths
    from ra3_lightning.pipeline.stages import (
        _ParseOnly,
        alone_on_the_command_line,
        eval_runs,
        ntp_run,
        oracle_run,
        pipeline_stages,
    )

    base = ["-c", str(ROOT / "configs" / "demo" / "pipeline_full.yaml"), "--seed", "4"]
    cfg = parse_config([*base, "--oracle.arms", "[oracle_wrong, oracle]"])
    names = [stage.name for stage in pipeline_stages(cfg)]
    assert names == ["data", "pretrain", "ntp", "ra3", "oracle_wrong", "oracle", "rlvr_ntp", "rlvr_ra3", "eval"]
    runs = {run.name: (run.checkpoint, run.think_bias) for run in eval_runs(cfg)}
    assert {k: v for k, v in runs.items() if "oracle" in k} == {
        "oracle_wrong": ("oracle_wrong", None), "oracle_wrong_nothink": ("oracle_wrong", -math.inf),
        "oracle": ("oracle", None), "oracle_nothink": ("oracle", -math.inf),
    }  # fmt: skip
    paths = Paths(tmp_path)
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "DONE").write_text("[]")  # an eval stage finished before the oracle arms were named
    assert not pipeline_stages(cfg)[-1].done(paths) and STAGES[-1].done(paths)
    ntp, oracle = ntp_run(cfg, paths), oracle_run(cfg, paths, "oracle_wrong")
    changed = {k: v for k, v in oracle.flags.items() if ntp.flags.get(k) != v}
    assert changed == {
        "trainer.logger": {**ntp.flags["trainer.logger"], "init_args": {
            "save_dir": str(tmp_path / "tb"), "name": "oracle_wrong", "version": 0}},
        "data.path": str(tmp_path / "data" / "midtrain_oracle_wrong"),
        "data.rationale_spans_field": "rationale_spans",
    }  # fmt: skip
    assert set(ntp.flags) - set(oracle.flags) == set() and oracle.stage == cfg.stages.ntp
    with alone_on_the_command_line():
        parsed = {run.name: _ParseOnly(args=run.argv(), run=False).config for run in (ntp, oracle)}
    assert parsed["oracle_wrong"]["model"] == parsed["ntp"]["model"]  # same optimizer, schedule, loss, base model
    assert parsed["oracle_wrong"]["trainer"]["max_steps"] == parsed["ntp"]["trainer"]["max_steps"] == 3 * 150
    ntp_data, oracle_data = (parsed[n]["data"]["init_args"] for n in ("ntp", "oracle_wrong"))
    assert oracle_data["rationale_spans_field"] == "rationale_spans" and oracle_data["path"].endswith("_oracle_wrong")
    same = ("batch_size", "max_length", "val_size", "seed", "packing", "shuffle_seed", "text_field")
    assert {k: oracle_data[k] for k in same} == {k: ntp_data[k] for k in same}  # same batches and holdout


def test_an_oracle_stage_trains_on_the_annotated_split_and_counts_its_tokens(demo, tmp_path):
    import datasets

    from ra3_lightning.estep.text import strip_rationales
    from ra3_lightning.pipeline.fairness import token_budget
    from ra3_lightning.pipeline.spec import Paths
    from ra3_lightning.pipeline.stages import ORACLE_STAGES, pipeline_stages

    shutil.copytree(demo / "data", tmp_path / "data")
    (tmp_path / "checkpoints").mkdir()
    shutil.copy2(demo / "checkpoints" / "pretrain.ckpt", tmp_path / "checkpoints" / "pretrain.ckpt")
    argv = ["-c", str(ROOT / "configs" / "demo" / "pipeline.yaml"), "--seed", "1", *MINI, "--oracle.arms", "[oracle]"]
    cfg, paths = parse_config([*argv, "--out", str(tmp_path)]), Paths(tmp_path)
    stage = ORACLE_STAGES["oracle"]
    assert stage in pipeline_stages(cfg) and not stage.done(paths)
    stage.run(cfg, paths)
    assert stage.done(paths)
    midtrain = datasets.load_from_disk(paths.split("midtrain"))
    annotated = datasets.load_from_disk(paths.oracle_split("oracle"))
    assert [strip_rationales(r["text"], r["rationale_spans"]) for r in annotated] == midtrain["text"]
    tokens = json.loads(paths.training_tokens("oracle").read_text())
    # 2 iterations x 2 M-steps of 2 sequences x 128 tokens
    assert tokens["batches"] == 4 and tokens["budget"] == 4 * 2 * 128
    assert 0 < tokens["rationale"] < tokens["total"] <= tokens["budget"]
    assert tokens["code"] == tokens["total"] - tokens["rationale"]
    assert token_budget(cfg, paths)["oracle_tokens"] == {"oracle": tokens}
    command = (tmp_path / "tb" / "oracle" / "version_0" / "command.sh").read_text()
    assert "demo/ntp_tiny.yaml" in command and "--data.path=" + paths.oracle_split("oracle") in command
