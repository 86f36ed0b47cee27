"""``ra3 demo``: the whole RA3 experiment in the synthetic code world — one command, one report directory.

Every stage after ``data`` is a ``ra3 fit`` (``ra3 test`` for ``eval``) run of a stage YAML under ``configs/demo/``
(``stages.<stage>.config``) through the same :class:`~ra3_lightning.lightning_cli.RA3CLI`, with the flags the
pipeline sets from its own sections — what ties the stages and arms together: sizes, steps, LR schedules, seeds,
paths, the start checkpoint (``init_from``) — and then the stage's own ``stages.<stage>.args`` (they win). Every other
knob is the stage YAML's. Each run leaves its whole command (``command.sh``) and resolved config (``config.yaml``)
next to its TensorBoard log under ``<out>/tb/<stage>/version_0``:

1. ``data`` — write the synthetic splits (``pretrain`` / ``midtrain`` / ``rlvr`` / ``eval``) under ``<out>/data``;
2. ``pretrain`` — ``ntp_tiny.yaml``: a tiny base model, :class:`NTPModule` from scratch on the pre-training corpus;
3. ``ntp`` — ``ntp_tiny.yaml``: mid-training arm 1, :class:`NTPModule` on the mid-training corpus, ``K * m_steps``;
4. ``ra3`` — ``ra3_em_tiny.yaml``: mid-training arm 2, :class:`RA3Module` + :class:`EMScheduler` +
   :class:`EMDataModule`, ``K`` iterations of ``e_steps`` E-steps and ``m_steps`` M-steps with the NTP arm's batch
   size, ``max_length`` and LR schedule, so the M-steps see as many tokens as the NTP arm (their tokens include the
   inserted rationales);
4b. ``oracle`` / ``oracle_wrong`` — only when ``oracle.arms`` names them: the NTP arm's run (``stages.ntp``, same
   optimizer, schedule, steps, batch and holdout) on a copy of ``midtrain`` with a comment line before every true skill
   start (each skill's own comment, or another skill's), which the stage writes first; it counts the code and comment
   tokens of the batches it trained on (``<out>/tokens/<arm>.json``);
5. ``rlvr_ntp`` / ``rlvr_ra3`` — ``rlvr_tiny.yaml``: :class:`RLVRModule` from each arm with identical settings;
6. ``eval`` — ``rlvr_tiny.yaml`` as ``ra3 test``: pass@k of base / NTP / RA3 / RLVR-from-NTP / RLVR-from-RA3 on the
   held-out ``eval`` tasks (``n`` samples per task, sandbox-scored, :class:`PassAtK`), and each oracle arm with and
   without comments forbidden;
7. ``report`` — ``summary.md``, ``results.json`` and PNG plots, from the TensorBoard event files and the annotated
   traces.

Resuming is at stage granularity: a stage whose output (checkpoint, results file) exists is skipped, an unfinished
one restarts from scratch. The report is rewritten on every run.

``--seeds A B C`` runs the whole pipeline once per seed, one after the other, into ``<out>/seed{S}`` (each resumable
as above), then writes the mean ± std over seeds to ``<out>/summary.md`` and ``<out>/results.json``
(:mod:`.aggregate`). ``--seed N`` is the single run into ``<out>`` itself.

Deviations from the paper: everything is tiny and synthetic; the "token budget" is matched by M-step *batches*
(same count, size and sequence length), so the RA3 arm sees fewer expert programs than NTP (rationales take room),
and the E-steps are extra compute the NTP arm does not get — as in the paper's setting.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import lightning as L

from ra3_lightning.config_paths import PACKAGED_CONFIGS, resolve_config_paths
from ra3_lightning.em_schedule import EMSchedule
from ra3_lightning.lightning_cli import RA3CLI
from ra3_lightning.models import TinyLMConfig
from ra3_lightning.pipeline.old_keys import add_old_keys, move_old_keys, printing_config
from ra3_lightning.pipeline.spec import (
    ARMS,
    MODELS,
    ORACLE_ARMS,
    RA3_GROUPS,
    EvalSpec,
    MidtrainSpec,
    OracleSpec,
    Paths,
    PipelineConfig,
    PretrainSpec,
    RA3Spec,
    RLVRSpec,
    StageConfigs,
    StageYAML,
    WorldSpec,
    midtrain_token_budget,
    rlvr_checkpoint_steps,
)


# --------------------------------------------------------------------------------------------- stage runs
def flag_value(value: Any, nested: bool = False) -> str:
    """``value`` as the YAML text of a command-line flag: ``-inf`` as ``-.inf``, ``1e-05`` as ``1.0e-05`` (YAML 1.1
    reads a float without a dot as a string), tuples as lists; a string as it is (the parser takes a ``str`` field
    verbatim), quoted inside a list or mapping."""
    if isinstance(value, str):
        return json.dumps(value) if nested else value
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, float) and not math.isfinite(value):
        return ".nan" if math.isnan(value) else (".inf" if value > 0 else "-.inf")
    if isinstance(value, float):
        text = repr(value)
        return text.replace("e", ".0e") if "e" in text and "." not in text else text
    if isinstance(value, int):
        return str(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {flag_value(v, True)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(flag_value(v, True) for v in value) + "]"
    raise TypeError(f"no flag text for {value!r} ({type(value).__name__})")


def render_flags(flags: dict[str, Any]) -> list[str]:
    """``{"model.optim.lr": 1e-3}`` as ``["--model.optim.lr=0.001"]``."""
    return [f"--{key}={flag_value(value)}" for key, value in flags.items()]


class _ParseOnly(RA3CLI):
    """Parses and validates a stage's command line without building its trainer, module or data."""

    def instantiate_classes(self) -> None:
        pass

    def after_instantiate_classes(self) -> None:
        pass


def check_stages(cfg: PipelineConfig) -> None:
    """Fail before the first stage, not hours later, when a stage YAML is missing or a stage's ``args`` do not parse
    with its YAML (the pipeline's own flags are checked by the tests)."""
    for entry in fields(StageConfigs):
        stage = getattr(cfg.stages, entry.name)
        path = stage_config_path(stage.config)
        if not Path(path).is_file():
            raise ValueError(
                f"stages.{entry.name}.config: {stage.config} is neither a file nor one under {PACKAGED_CONFIGS}"
            )
        if not stage.args:
            continue
        try:
            with alone_on_the_command_line():
                _ParseOnly(args=["-c", path, "--seed_everything=false", *render_flags(stage.args)], run=False)
        except SystemExit as error:  # the parser printed what is wrong
            raise ValueError(
                f"stages.{entry.name}.args {stage.args} do not parse with {stage.config} (the parser's message is "
                "above)"
            ) from error


@contextmanager
def alone_on_the_command_line() -> Iterator[None]:
    """Hide ``ra3 demo ...`` from a stage's ``LightningCLI`` (it warns when it gets both ``args`` and ``sys.argv``)."""
    argv, sys.argv[1:] = sys.argv[1:], []
    try:
        yield
    finally:
        sys.argv[1:] = argv


def stage_config_path(config: str) -> str:
    """A stage YAML as given when it exists, else the packaged one (``demo/ntp_tiny.yaml`` or ``configs/demo/...``)."""
    return resolve_config_paths(["-c", config])[1]


@dataclass(frozen=True)
class StageRun:
    """One Lightning run of the pipeline: ``ra3 <subcommand> -c <stage YAML> <the pipeline's flags> <stage args>``.

    ``name`` is its TensorBoard folder (``<out>/tb/<name>``); ``flags`` are what the pipeline sets (dotted names of
    the stage config); the stage's own ``args`` come last, so they win.
    """

    name: str
    stage: StageYAML
    flags: dict[str, Any]
    subcommand: str = "fit"
    validate_first: bool = False  # one validation before the first update (RLVR's held-in pass@1 at step 0)

    def argv(self) -> list[str]:
        return ["-c", stage_config_path(self.stage.config), *render_flags(self.flags), *render_flags(self.stage.args)]

    def command(self) -> str:
        """The run as one shell command (written next to its logs as ``command.sh``)."""
        return shlex.join(["ra3", self.subcommand, *self.argv()])

    def cli(self, paths: Paths) -> RA3CLI:
        """Parse and instantiate the run (trainer, module, data); an unfinished earlier attempt's logs go first."""
        shutil.rmtree(paths.tb / self.name, ignore_errors=True)
        command = paths.log_dir(self.name) / "command.sh"
        command.parent.mkdir(parents=True, exist_ok=True)
        command.write_text(self.command() + "\n")
        try:
            with alone_on_the_command_line():
                return RA3CLI(args=self.argv(), run=False)
        except SystemExit as error:  # the parser printed what is wrong; say which stage and where its command is
            raise ValueError(
                f"stage {self.name!r}: {self.stage.config} with the pipeline's flags and the stage's args did not "
                f"parse (the parser's message is above; the whole command is in {command})"
            ) from error

    def fit(self, paths: Paths, ckpt: Path) -> RA3CLI:
        """Fit, then write the checkpoint atomically: its existence marks the stage as finished. Returns the run."""
        cli = self.cli(paths)
        if self.validate_first:
            cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        partial = ckpt.with_suffix(".partial")
        cli.trainer.save_checkpoint(str(partial))
        os.replace(partial, ckpt)
        return cli


def trainer_flags(cfg: PipelineConfig, paths: Paths, name: str, max_steps: int) -> dict[str, Any]:
    """What every stage's trainer shares: one device, TensorBoard at ``<out>/tb/<name>/version_0``, no callbacks of
    the stage YAML (the pipeline writes its own checkpoints), every step logged, no sanity validation."""
    logger = {"save_dir": str(paths.tb), "name": name, "version": 0}
    return {
        "seed_everything": cfg.seed, "trainer.accelerator": cfg.accelerator, "trainer.devices": 1,
        "trainer.max_steps": max_steps, "trainer.default_root_dir": str(paths.root),
        "trainer.logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": logger},
        "trainer.callbacks": [], "trainer.enable_checkpointing": False, "trainer.enable_progress_bar": cfg.progress_bar,
        "trainer.enable_model_summary": False, "trainer.log_every_n_steps": 1, "trainer.num_sanity_val_steps": 0,
    }  # fmt: skip


def validate_every(steps: int) -> dict[str, Any]:
    return {"trainer.val_check_interval": steps, "trainer.check_val_every_n_epoch": None}


def start_from(paths: Paths, stage: str) -> dict[str, Any]:
    """The model source: an earlier stage's checkpoint instead of the stage YAML's tiny model."""
    return {"model.tiny": None, "model.init_from": str(paths.ckpt(stage))}


def schedule_flags(prefix: str, lr: float, warmup_steps: int, min_lr_ratio: float, weight_decay: float) -> dict:
    names = ("lr", "warmup_steps", "min_lr_ratio", "weight_decay")
    return {f"{prefix}.{n}": v for n, v in zip(names, (lr, warmup_steps, min_lr_ratio, weight_decay), strict=True)}


def m_schedule(prefix: str, m: MidtrainSpec) -> dict[str, Any]:
    """The NTP arm's optimizer schedule, which is also the M-step's: the two arms share it."""
    return schedule_flags(prefix, m.lr, m.warmup_steps, m.min_lr_ratio, m.weight_decay)


def pretrain_run(cfg: PipelineConfig, paths: Paths) -> StageRun:
    p = cfg.pretrain
    flags = trainer_flags(cfg, paths, "pretrain", p.steps) | validate_every(min(p.val_every, p.steps)) | {
        "model.tiny": asdict(cfg.model), "model.init_from": None,
        **schedule_flags("model.optim", p.lr, p.warmup_steps, p.min_lr_ratio, p.weight_decay),
        "data.path": paths.split("pretrain"), "data.max_length": p.max_length, "data.batch_size": p.batch_size,
        "data.seed": cfg.seed,
    }  # fmt: skip
    return StageRun("pretrain", cfg.stages.pretrain, flags)


def ntp_run(cfg: PipelineConfig, paths: Paths, name: str = "ntp", data: dict[str, Any] | None = None) -> StageRun:
    """The NTP arm (``stages.ntp``) as run ``name``; ``data`` replaces data flags (an oracle arm's annotated traces)."""
    m = cfg.midtrain
    steps = m.iterations * m.m_steps
    flags = trainer_flags(cfg, paths, name, steps) | validate_every(steps) | start_from(paths, "pretrain") | {
        **m_schedule("model.optim", m), "model.loss_on": m.loss_on,
        "data.path": paths.split("midtrain"), "data.max_length": m.max_length, "data.batch_size": m.batch_size,
        "data.val_size": m.val_size, "data.seed": cfg.seed,
    } | (data or {})  # fmt: skip
    return StageRun(name, cfg.stages.ntp, flags)


def oracle_run(cfg: PipelineConfig, paths: Paths, arm: str) -> StageRun:
    """An oracle arm: the NTP arm's run on the oracle-annotated ``midtrain`` copy (same records in the same order, so
    the same holdout), its comments marked as rationales so the tokens it trained on split into code and comments."""
    data = {"data.path": paths.oracle_split(arm), "data.rationale_spans_field": "rationale_spans"}
    return ntp_run(cfg, paths, arm, data)


def ra3_run(cfg: PipelineConfig, paths: Paths) -> StageRun:
    m = cfg.midtrain
    schedule = {"iterations": m.iterations, "e_steps": m.e_steps, "m_steps": m.m_steps}
    total = EMSchedule(**schedule).total_steps
    flags = trainer_flags(cfg, paths, "ra3", total) | start_from(paths, "pretrain") | {
        "trainer.callbacks": [{"class_path": "ra3_lightning.callbacks.EMScheduler", "init_args": schedule}],
        **ra3_module_flags(cfg.ra3), **m_schedule("model.m_optim", m), "model.loss_on": m.loss_on,
        "model.work_dir": str(paths.em_work), "model.seed": cfg.seed,
        "model.log_samples_every_n_steps": max(1, m.e_steps),
        "data.path": paths.split("midtrain"), "data.id_field": "id", "data.e_batch_size": m.e_batch_size,
        "data.m_batch_size": m.batch_size, "data.max_length": m.max_length,
        "data.records_per_iteration": m.records_per_iteration, "data.val_size": m.val_size, "data.seed": cfg.seed,
    }  # fmt: skip
    return StageRun("ra3", cfg.stages.ra3, flags)


def ra3_module_flags(r: RA3Spec) -> dict[str, Any]:
    """The ``ra3`` section as the RA3 stage's flags: ``model.num_generations`` and ``model.<group>.<key>`` for every
    key each group gives (the stage YAML keeps the rest)."""
    groups = {f"model.{name}.{key}": value for name in RA3_GROUPS for key, value in getattr(r, name).items()}
    return {"model.num_generations": r.num_generations, **groups}


def rlvr_run(cfg: PipelineConfig, paths: Paths, arm: str) -> StageRun:
    r, name = cfg.rlvr, f"rlvr_{arm}"
    train, heldin = rlvr_splits(cfg, paths)
    val = bool(r.val_every and heldin)
    save = {"every": r.checkpoint_every, "dirpath": str(paths.ckpt(name).parent), "filename": f"{name}_step{{step}}"}
    flags = trainer_flags(cfg, paths, name, r.steps) | start_from(paths, arm) | {
        "trainer.callbacks": [{"class_path": "ra3_lightning.callbacks.SaveWeightsEvery", "init_args": save}],
        "trainer.limit_val_batches": 1.0 if val else 0, "trainer.val_check_interval": r.val_every if val else 1.0,
        "trainer.check_val_every_n_epoch": None if val else 1,
        "model.num_generations": r.num_generations, "model.max_completion_length": r.max_completion_length,
        "model.optim.lr": r.lr, "model.loss.loss_type": r.loss_type, "model.loss.scale_rewards": r.scale_rewards,
        "model.reward_fn.init_args.workers": r.workers, "model.seed": cfg.seed,
        "model.log_samples_every_n_steps": max(1, r.steps // 3),
        "model.evaluation.num_samples": r.val_num_samples, "model.evaluation.temperature": cfg.eval.temperature,
        "model.evaluation.pass_at_k": [1],
        "data.path": train, "data.val_path": heldin, "data.batch_size": r.batch_size,
        "data.val_batch_size": cfg.eval.batch_size, "data.max_tasks": r.train_tasks or None, "data.seed": cfg.seed,
    }  # fmt: skip
    return StageRun(name, cfg.stages.rlvr, flags, validate_first=val)


def eval_run(cfg: PipelineConfig, paths: Paths, run: EvalRun) -> StageRun:
    e = cfg.eval
    n = run.num_samples or e.num_samples
    samples = paths.eval_result(run.name).with_suffix(".samples.jsonl")
    flags = trainer_flags(cfg, paths, f"eval_{run.name}", -1) | start_from(paths, run.checkpoint) | {
        "model.max_completion_length": e.max_completion_length,
        "model.evaluation": {  # the whole group (a nested `--model.evaluation.think_bias=null` does not parse)
            "num_samples": n, "temperature": e.temperature, "pass_at_k": [k for k in e.ks if k <= n],
            "think_bias": run.think_bias, "samples_path": str(samples),
        },
        "model.reward_fn.init_args.workers": cfg.rlvr.workers, "model.seed": cfg.seed,
        "data.path": paths.split(run.tasks), "data.val_path": None, "data.val_batch_size": e.batch_size,
        "data.shuffle": False,
    }  # fmt: skip
    return StageRun(f"eval_{run.name}", cfg.stages.eval, flags, subcommand="test")


# --------------------------------------------------------------------------------------------- stages
def stage_data(cfg: PipelineConfig, paths: Paths) -> None:
    """Write the four synthetic splits with ``save_to_disk``."""
    from ra3_lightning.data.synthetic import write_splits

    w = cfg.world
    sizes = {"pretrain": w.pretrain, "midtrain": w.midtrain, "rlvr": w.rlvr, "eval": w.eval}
    write_splits(paths.data, sizes, seed=cfg.seed, comment_rate=w.comment_rate, docstring=w.docstring)
    (paths.data / "DONE").write_text(json.dumps(sizes))


def stage_pretrain(cfg: PipelineConfig, paths: Paths) -> None:
    """The tiny base model: next-token prediction from scratch on the pre-training corpus."""
    pretrain_run(cfg, paths).fit(paths, paths.ckpt("pretrain"))


def stage_ntp(cfg: PipelineConfig, paths: Paths) -> None:
    """Mid-training arm 1: plain next-token prediction on the expert programs, ``K * m_steps`` steps."""
    ntp_run(cfg, paths).fit(paths, paths.ckpt("ntp"))


def stage_ra3(cfg: PipelineConfig, paths: Paths) -> None:
    """Mid-training arm 2: RA3's EM loop, ``K`` x (``e_steps`` E-steps, annotation, ``m_steps`` M-steps)."""
    shutil.rmtree(paths.em_work, ignore_errors=True)
    ra3_run(cfg, paths).fit(paths, paths.ckpt("ra3"))


def _oracle_stage(arm: str) -> Callable[[PipelineConfig, Paths], None]:
    def run(cfg: PipelineConfig, paths: Paths) -> None:
        from ra3_lightning.data.synthetic import write_oracle_split
        from ra3_lightning.data.traces import training_tokens

        if not Path(paths.oracle_split(arm)).exists():
            write_oracle_split(paths.split("midtrain"), paths.oracle_split(arm), ORACLE_ARMS[arm], seed=cfg.seed)
        cli = oracle_run(cfg, paths, arm).fit(paths, paths.ckpt(arm))
        batches = cli.trainer.global_step * cli.trainer.accumulate_grad_batches
        tokens = training_tokens(cli.datamodule, batches) | {"batches": batches, "budget": midtrain_token_budget(cfg)}
        paths.training_tokens(arm).parent.mkdir(parents=True, exist_ok=True)
        paths.training_tokens(arm).write_text(json.dumps(tokens, indent=1))

    content = {"true": "each skill's own comment", "wrong": "another skill's comment"}[ORACLE_ARMS[arm]]
    run.__doc__ = f"Oracle arm {arm}: the NTP arm on midtrain with {content} before every true skill start."
    return run


def rlvr_splits(cfg: PipelineConfig, paths: Paths) -> tuple[str, str | None]:
    """The RLVR training tasks and the held-in validation tasks: the last ``rlvr.heldin`` tasks of the ``rlvr``
    split (written once as ``rlvr_train`` / ``rlvr_heldin``), or the whole split and ``None``."""
    if not cfg.rlvr.heldin:
        return paths.split("rlvr"), None
    train, heldin = paths.data / "rlvr_train", paths.data / "rlvr_heldin"
    if not (train.exists() and heldin.exists()):
        import datasets

        tasks = datasets.load_from_disk(paths.split("rlvr"))
        cut = len(tasks) - cfg.rlvr.heldin
        tasks.select(range(cut)).save_to_disk(str(train))
        tasks.select(range(cut, len(tasks))).save_to_disk(str(heldin))
    return str(train), str(heldin)


def rlvr_stage(arm: str) -> Callable[[PipelineConfig, Paths], None]:
    """The ``rlvr_<arm>`` stage's runner: RLVR from the ``arm`` checkpoint into ``rlvr_<arm>.ckpt`` (what
    :data:`STAGES` runs, and what a tuning run outside the pipeline calls on its own)."""

    def run(cfg: PipelineConfig, paths: Paths) -> None:
        stage = rlvr_run(cfg, paths, arm)
        stage.fit(paths, paths.ckpt(stage.name))

    run.__doc__ = f"RLVR (GRPO-family, sandbox rewards) from the {arm.upper()} arm on the rlvr tasks."
    return run


@dataclass(frozen=True)
class EvalRun:
    """One evaluation of the eval stage: result name, checkpoint, decode-time THINK bias, samples per task, and the
    task split under ``<out>/data`` (``eval``, the held-out tasks; ``rlvr_heldin``, the held-in slice tuning uses)."""

    name: str
    checkpoint: str
    think_bias: float | None = None
    num_samples: int | None = None
    tasks: str = "eval"


def eval_runs(cfg: PipelineConfig) -> list[EvalRun]:
    """Every evaluation of the eval stage: the five models, the ``no_rationale_models`` with comments forbidden, each
    oracle arm with and without comments forbidden, and the RLVR checkpoints along each run
    (``rlvr.checkpoint_every``)."""
    runs = [EvalRun(m, "pretrain" if m == "base" else m) for m in MODELS]
    for model in cfg.eval.no_rationale_models:
        runs.append(EvalRun(f"{model}_nothink", "pretrain" if model == "base" else model, float("-inf")))
    for arm in cfg.oracle.arms:
        runs += [EvalRun(arm, arm), EvalRun(f"{arm}_nothink", arm, float("-inf"))]
    for arm in ARMS:
        for step in rlvr_checkpoint_steps(cfg):
            name = f"rlvr_{arm}_step{step}"
            runs.append(EvalRun(name, name, None, cfg.eval.curve_num_samples))
    return runs


def check_budget(cfg: PipelineConfig, paths: Paths, tokenizer: Any) -> None:
    """Raise unless ``eval.max_completion_length`` fits every eval task's reference body plus its rationales."""
    from ra3_lightning.data.tasks import load_tasks
    from ra3_lightning.eval_diagnostics import required_completion_budget

    latent_tokens = cfg.ra3.latent_value("max_latent_tokens")
    need = required_completion_budget(load_tasks(paths.split("eval")), tokenizer, latent_tokens)
    if cfg.eval.max_completion_length < need.tokens:
        raise ValueError(
            f"eval.max_completion_length={cfg.eval.max_completion_length} < {need.tokens} tokens, what task "
            f"{need.task_id!r} needs for its reference body plus one rationale per skill: raise "
            "eval.max_completion_length (and rlvr.max_completion_length)"
        )


def evaluate_checkpoint(cfg: PipelineConfig, paths: Paths, run: EvalRun) -> dict[str, float]:
    """pass@k and the diagnostics of one checkpoint on the held-out tasks (``ra3 test`` of the eval stage YAML)."""
    paths.eval_result(run.name).with_suffix(".samples.jsonl").unlink(missing_ok=True)
    cli = eval_run(cfg, paths, run).cli(paths)
    results = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    return {k.removeprefix("test/"): float(v) for k, v in results.items()}


def stage_eval(cfg: PipelineConfig, paths: Paths) -> None:
    """pass@k of the five models (and the extra runs); each result file is written once (resumable per run)."""
    from ra3_lightning.modules.base import load_lm_source

    if cfg.eval.check_budget:
        check_budget(cfg, paths, load_lm_source(str(paths.ckpt("pretrain")), tokenizer_only=True)[1])
    for run in eval_runs(cfg):
        out = paths.eval_result(run.name)
        if out.exists():
            _say(f"  eval {run.name}: done before, skipped")
            continue
        L.seed_everything(cfg.seed, verbose=False)
        results = evaluate_checkpoint(cfg, paths, run)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results))
        _say(f"  eval {run.name}: " + ", ".join(f"{k}={v:.3f}" for k, v in results.items() if k.startswith("pass@")))
    (paths.root / "eval" / "DONE").write_text(json.dumps([run.name for run in eval_runs(cfg)]))


@dataclass(frozen=True)
class Stage:
    """A pipeline stage: its runner and the files whose existence means it is finished."""

    name: str
    run: Callable[[PipelineConfig, Paths], None]
    outputs: Callable[[Paths], list[Path]]

    def done(self, paths: Paths) -> bool:
        return all(p.exists() for p in self.outputs(paths))


STAGES: tuple[Stage, ...] = (
    Stage("data", stage_data, lambda p: [p.data / "DONE"]),
    Stage("pretrain", stage_pretrain, lambda p: [p.ckpt("pretrain")]),
    Stage("ntp", stage_ntp, lambda p: [p.ckpt("ntp")]),
    Stage("ra3", stage_ra3, lambda p: [p.ckpt("ra3")]),
    Stage("rlvr_ntp", rlvr_stage("ntp"), lambda p: [p.ckpt("rlvr_ntp")]),
    Stage("rlvr_ra3", rlvr_stage("ra3"), lambda p: [p.ckpt("rlvr_ra3")]),
    Stage("eval", stage_eval, lambda p: [p.root / "eval" / "DONE"]),
)


ORACLE_STAGES: dict[str, Stage] = {
    arm: Stage(arm, _oracle_stage(arm), lambda p, arm=arm: [p.ckpt(arm), p.training_tokens(arm)]) for arm in ORACLE_ARMS
}


def pipeline_stages(cfg: PipelineConfig) -> tuple[Stage, ...]:
    """The stages ``cfg`` runs: :data:`STAGES`, and when ``oracle.arms`` names any, those oracle stages after ``ra3``
    with an ``eval`` that is finished only once every one of its runs (the oracle arms' included) has a result."""
    if not cfg.oracle.arms:
        return STAGES
    after = next(i for i, stage in enumerate(STAGES) if stage.name == "ra3") + 1
    names = [run.name for run in eval_runs(cfg)]
    stages = (*STAGES[:after], *(ORACLE_STAGES[arm] for arm in cfg.oracle.arms), *STAGES[after:])

    def evaluated(p: Paths) -> list[Path]:
        return [p.root / "eval" / "DONE", *(p.eval_result(name) for name in names)]

    return tuple(replace(s, outputs=evaluated) if s.name == "eval" else s for s in stages)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_pipeline(cfg: PipelineConfig, command: str = "ra3 demo") -> Path:
    """Run every unfinished stage, then write the report; returns the path of ``summary.md``."""
    from ra3_lightning.pipeline.report import write_report

    check_stages(cfg)
    paths = Paths(Path(cfg.out))
    paths.root.mkdir(parents=True, exist_ok=True)
    timings = _read_json(paths.root / "stage_times.json")
    stages = pipeline_stages(cfg)
    total = len(stages) + 1
    for i, stage in enumerate(stages, 1):
        if stage.done(paths):
            _say(f"[{i}/{total}] {stage.name}: finished earlier, skipped")
            continue
        _say(f"[{i}/{total}] {stage.name}: {(stage.run.__doc__ or '').strip().splitlines()[0]}")
        L.seed_everything(cfg.seed, verbose=False)
        start = time.perf_counter()
        stage.run(cfg, paths)
        timings[stage.name] = round(time.perf_counter() - start, 1)
        (paths.root / "stage_times.json").write_text(json.dumps(timings, indent=1))
        _say(f"[{i}/{total}] {stage.name}: done in {timings[stage.name]:.0f} s")
    _say(f"[{total}/{total}] report")
    summary = write_report(cfg, paths, command, timings)
    _say(f"report: {summary}")
    return summary


def run_seeds(cfg: PipelineConfig, seeds: Sequence[int], command: str = "ra3 demo") -> Path:
    """:func:`run_pipeline` for each seed into ``<out>/seed{S}``, then the aggregate report in ``<out>``.

    Seeds run one after the other (each already uses the whole machine); a seed whose stages are all finished only
    has its report rewritten, so rerunning the same command after an interruption picks up where it stopped.
    Returns the path of the aggregate ``summary.md``.
    """
    from ra3_lightning.pipeline.aggregate import write_aggregate

    paths = Paths(Path(cfg.out))
    for i, seed in enumerate(seeds, 1):
        _say(f"=== seed {seed} ({i}/{len(seeds)}): {paths.seed_dir(seed)}")
        run_pipeline(replace(cfg, seed=seed, out=str(paths.seed_dir(seed))), command)
    results = [json.loads(Paths(paths.seed_dir(seed)).results.read_text()) for seed in seeds]
    summary = write_aggregate(cfg, results, command, paths.root)
    _say(f"report over seeds {', '.join(map(str, seeds))}: {summary}")
    return summary


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


# --------------------------------------------------------------------------------------------- CLI
def build_parser() -> Any:
    """The ``ra3 demo`` parser: every field of :class:`PipelineConfig`, ``-c`` YAML files and ``--print_config``."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog="ra3 demo", description=__doc__.splitlines()[0], default_meta=False)
    parser.add_argument("-c", "--config", action=ActionConfigFile, help="a pipeline YAML (configs/demo/pipeline.yaml)")
    parser.add_class_arguments(PipelineConfig, fail_untyped=True)
    add_old_keys(parser)
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=None,
        help="several seeds: one run per seed into OUT/seed{S}, then mean ± std in OUT/summary.md (not with --seed)",
    )  # fmt: skip
    return parser


def parse_args(argv: Sequence[str]) -> tuple[PipelineConfig, list[int] | None]:
    """``argv`` (without ``demo``) as a :class:`PipelineConfig` and the ``--seeds`` list (``None``: one run)."""
    parser, printing = build_parser(), printing_config(argv)
    namespace = parser.parse_args([a for a in argv if a not in printing])
    move_old_keys(namespace)
    if printing:  # with the old keys in their new places
        parser.parse_args(printing[-1:], namespace=namespace)
    namespace.pop("config", None)
    seeds = namespace.pop("seeds", None)
    check_seed_options(argv, seeds)
    values = parser.instantiate_classes(namespace).as_dict()
    return _build(values), seeds


def check_seed_options(argv: Sequence[str], seeds: Sequence[int] | None) -> None:
    """Reject ``--seed`` together with ``--seeds`` (which one would win is not obvious) and repeated seeds.

    Only an explicit ``--seed`` on the command line conflicts: every config file sets ``seed``.
    """
    if seeds is None:
        return
    if any(a == "--seed" or a.startswith("--seed=") for a in argv):
        raise ValueError(
            "--seed and --seeds exclude each other: give --seed N for one run into --out, or --seeds A B C for one "
            "run per seed into <out>/seed{S} plus the mean ± std over seeds in <out>/summary.md"
        )
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds {' '.join(map(str, seeds))} repeats a seed: give each seed once")


def parse_config(argv: Sequence[str]) -> PipelineConfig:
    """``argv`` (without ``demo``) as a :class:`PipelineConfig` (a ``--seeds`` list is validated, then dropped)."""
    return parse_args(argv)[0]


def _build(values: dict[str, Any]) -> PipelineConfig:
    specs = {"model": TinyLMConfig, "world": WorldSpec, "pretrain": PretrainSpec, "midtrain": MidtrainSpec}
    specs |= {"ra3": RA3Spec, "rlvr": RLVRSpec, "eval": EvalSpec, "oracle": OracleSpec, "stages": _stage_configs}
    kwargs = {k: (specs[k](**v) if k in specs and isinstance(v, dict) else v) for k, v in values.items()}
    if isinstance(kwargs.get("eval"), EvalSpec):
        kwargs["eval"].ks = tuple(kwargs["eval"].ks)
    return PipelineConfig(**kwargs)


def _stage_configs(**stages: Any) -> StageConfigs:
    return StageConfigs(**{k: StageYAML(**v) if isinstance(v, dict) else v for k, v in stages.items()})


def with_default_config(argv: Sequence[str]) -> list[str]:
    """``argv`` with ``-c configs/demo/pipeline.yaml`` (the packaged copy) in front unless it names a config."""
    argv = list(argv)
    if any(a in ("-c", "--config") or a.startswith("--config=") for a in argv):
        return argv
    return ["-c", str(PACKAGED_CONFIGS / "demo" / "pipeline.yaml"), *argv]


def main(argv: Sequence[str]) -> Path:
    """``ra3 demo [-c configs/demo/pipeline.yaml] [--seed N | --seeds A B C] [--out DIR]`` (that config when none is
    given); returns the path of the (aggregate) ``summary.md``."""
    cfg, seeds = parse_args(with_default_config(argv))
    command = " ".join(["ra3", "demo", *argv])
    return run_pipeline(cfg, command=command) if seeds is None else run_seeds(cfg, seeds, command=command)
