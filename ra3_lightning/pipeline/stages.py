"""``ra3 demo``: the whole RA3 experiment in the synthetic code world — one command, one report directory.

Stages (each a Lightning ``Trainer`` run of the library's own modules, started from the previous stage's ``.ckpt``
through ``init_from``; TensorBoard logs under ``<out>/tb/<stage>``):

1. ``data`` — write the synthetic splits (``pretrain`` / ``midtrain`` / ``rlvr`` / ``eval``) under ``<out>/data``;
2. ``pretrain`` — a tiny base model, :class:`NTPModule` from scratch on the pre-training corpus (sparse comments);
3. ``ntp`` — mid-training arm 1: :class:`NTPModule` on the mid-training corpus for ``K * m_steps`` steps;
4. ``ra3`` — mid-training arm 2: :class:`RA3Module` + :class:`EMScheduler` + :class:`EMDataModule`, ``K`` iterations
   of ``e_steps`` E-steps and ``m_steps`` M-steps with the same batch size, ``max_length`` and LR schedule, so the
   M-steps see as many tokens as the NTP arm (their tokens include the inserted rationales);
5. ``rlvr_ntp`` / ``rlvr_ra3`` — :class:`RLVRModule` from each arm with identical settings on the ``rlvr`` tasks;
6. ``eval`` — pass@k of base / NTP / RA3 / RLVR-from-NTP / RLVR-from-RA3 on the held-out ``eval`` tasks
   (``trainer.test`` of :class:`RLVRModule`: ``n`` samples per task, sandbox-scored, :class:`PassAtK`);
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
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lightning as L

from ra3_lightning.config_paths import PACKAGED_CONFIGS
from ra3_lightning.models import TinyLMConfig
from ra3_lightning.optim import Optim
from ra3_lightning.pipeline.spec import (
    ARMS,
    MODELS,
    EvalSpec,
    MidtrainSpec,
    Paths,
    PipelineConfig,
    PretrainSpec,
    RLVRSpec,
    WorldSpec,
    rlvr_checkpoint_steps,
)


# --------------------------------------------------------------------------------------------- stage helpers
def _trainer(cfg: PipelineConfig, paths: Paths, stage: str, max_steps: int, **kwargs: Any) -> L.Trainer:
    from lightning.pytorch.loggers import TensorBoardLogger

    shutil.rmtree(paths.tb / stage, ignore_errors=True)  # an unfinished earlier attempt restarts from scratch
    return L.Trainer(
        accelerator=cfg.accelerator,
        devices=1,
        max_steps=max_steps,
        logger=TensorBoardLogger(str(paths.tb), name=stage, version=0),
        enable_checkpointing=False,
        enable_progress_bar=cfg.progress_bar,
        enable_model_summary=False,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        default_root_dir=str(paths.root),
        **kwargs,
    )


def _fit_and_save(trainer: L.Trainer, module: L.LightningModule, data: L.LightningDataModule, ckpt: Path) -> None:
    """Fit, then write the checkpoint atomically: its existence marks the stage as finished."""
    trainer.fit(module, datamodule=data)
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    partial = ckpt.with_suffix(".partial")
    trainer.save_checkpoint(str(partial))
    os.replace(partial, ckpt)


def _m_optim(m: MidtrainSpec) -> Optim:
    """The NTP arm's optimizer group, which is also the M-step's: the two arms share their LR schedule."""
    return Optim(lr=m.lr, warmup_steps=m.warmup_steps, min_lr_ratio=m.min_lr_ratio, weight_decay=m.weight_decay)


def _sandbox_reward(cfg: PipelineConfig) -> Any:
    from ra3_lightning.rewards import SandboxReward

    return SandboxReward(mode="binary", workers=cfg.rlvr.workers)


# --------------------------------------------------------------------------------------------- stages
def stage_data(cfg: PipelineConfig, paths: Paths) -> None:
    """Write the four synthetic splits with ``save_to_disk``."""
    from ra3_lightning.data.synthetic import write_splits

    w = cfg.world
    sizes = {"pretrain": w.pretrain, "midtrain": w.midtrain, "rlvr": w.rlvr, "eval": w.eval}
    write_splits(paths.data, sizes, seed=cfg.seed, comment_rate=w.comment_rate)
    (paths.data / "DONE").write_text(json.dumps(sizes))


def stage_pretrain(cfg: PipelineConfig, paths: Paths) -> None:
    """The tiny base model: next-token prediction from scratch on the pre-training corpus."""
    from ra3_lightning.data.traces import TraceDataModule
    from ra3_lightning.modules.ntp import NTPModule

    p = cfg.pretrain
    module = NTPModule(
        tiny=cfg.model,
        optim=Optim(lr=p.lr, warmup_steps=p.warmup_steps, min_lr_ratio=p.min_lr_ratio, weight_decay=p.weight_decay),
    )
    data = TraceDataModule(paths.split("pretrain"), max_length=p.max_length, batch_size=p.batch_size, seed=cfg.seed)
    val = {"val_check_interval": min(p.val_every, p.steps), "check_val_every_n_epoch": None}
    _fit_and_save(_trainer(cfg, paths, "pretrain", p.steps, **val), module, data, paths.ckpt("pretrain"))


def stage_ntp(cfg: PipelineConfig, paths: Paths) -> None:
    """Mid-training arm 1: plain next-token prediction on the expert programs, ``K * m_steps`` steps."""
    from ra3_lightning.data.traces import TraceDataModule
    from ra3_lightning.modules.ntp import NTPModule

    m = cfg.midtrain
    steps = m.iterations * m.m_steps
    module = NTPModule(
        init_from=str(paths.ckpt("pretrain")), optim=_m_optim(m), loss_on=m.loss_on,
    )  # fmt: skip
    data = TraceDataModule(
        paths.split("midtrain"), max_length=m.max_length, batch_size=m.batch_size, val_size=m.val_size, seed=cfg.seed
    )
    val = {"val_check_interval": steps, "check_val_every_n_epoch": None}
    _fit_and_save(_trainer(cfg, paths, "ntp", steps, **val), module, data, paths.ckpt("ntp"))


def stage_ra3(cfg: PipelineConfig, paths: Paths) -> None:
    """Mid-training arm 2: RA3's EM loop, ``K`` x (``e_steps`` E-steps, annotation, ``m_steps`` M-steps)."""
    from ra3_lightning.callbacks import EMScheduler
    from ra3_lightning.data.em_data import EMDataModule
    from ra3_lightning.estep import LatentRL
    from ra3_lightning.modules.ra3 import AnnotationRun, RA3Module

    m = cfg.midtrain
    shutil.rmtree(paths.em_work, ignore_errors=True)
    module = RA3Module(
        init_from=str(paths.ckpt("pretrain")), num_generations=m.num_generations,
        latent=LatentRL(
            think_cost=m.think_cost, max_latent_tokens=m.max_latent_tokens, temperature=m.temperature,
            act_likelihood=m.act_likelihood, hindsight_lines=m.hindsight_lines,
        ),
        annotation=AnnotationRun(
            choose=m.annotate_choose, num_samples=m.annotate_samples, batch_size=m.annotate_batch_size
        ),
        optim=Optim(lr=m.q_lr), m_optim=_m_optim(m), loss_on=m.loss_on, work_dir=str(paths.em_work), seed=cfg.seed,
        log_samples_every_n_steps=max(1, m.e_steps),
    )  # fmt: skip
    data = EMDataModule(
        paths.split("midtrain"), id_field="id", e_batch_size=m.e_batch_size, m_batch_size=m.batch_size,
        max_length=m.max_length, records_per_iteration=m.records_per_iteration, val_size=m.val_size, seed=cfg.seed,
    )  # fmt: skip
    scheduler = EMScheduler(iterations=m.iterations, e_steps=m.e_steps, m_steps=m.m_steps)
    trainer = _trainer(cfg, paths, "ra3", scheduler.schedule.total_steps, callbacks=[scheduler])
    _fit_and_save(trainer, module, data, paths.ckpt("ra3"))


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


class SaveEvery(L.Callback):
    """Save the module's weights every ``every`` optimizer steps to ``path(step)`` (for evaluation along a run)."""

    def __init__(self, every: int, path: Callable[[int], Path]) -> None:
        self.every, self.path = every, path

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        step = trainer.global_step
        if self.every and step % self.every == 0 and step < trainer.max_steps:
            self.path(step).parent.mkdir(parents=True, exist_ok=True)
            trainer.save_checkpoint(str(self.path(step)), weights_only=True)


def _rlvr_stage(arm: str) -> Callable[[PipelineConfig, Paths], None]:
    def run(cfg: PipelineConfig, paths: Paths) -> None:
        from ra3_lightning.data.task_data import TaskDataModule
        from ra3_lightning.modules.rlvr import Evaluation, RLVRModule
        from ra3_lightning.rl.config import PolicyLoss

        r = cfg.rlvr
        module = RLVRModule(
            init_from=str(paths.ckpt(arm)), num_generations=r.num_generations,
            max_completion_length=r.max_completion_length, optim=Optim(lr=r.lr, max_grad_norm=1.0),
            loss=PolicyLoss(loss_type=r.loss_type, scale_rewards=r.scale_rewards, drop_zero_variance_groups=True),
            reward_fn=_sandbox_reward(cfg), seed=cfg.seed, log_samples_every_n_steps=max(1, r.steps // 3),
            evaluation=Evaluation(num_samples=r.val_num_samples, temperature=cfg.eval.temperature),
        )  # fmt: skip
        train, heldin = rlvr_splits(cfg, paths)
        data = TaskDataModule(
            train, val_path=heldin, batch_size=r.batch_size, val_batch_size=cfg.eval.batch_size,
            prompt_template="plain", max_tasks=r.train_tasks or None, seed=cfg.seed,
        )  # fmt: skip
        stage = f"rlvr_{arm}"
        save = SaveEvery(r.checkpoint_every, lambda step: paths.ckpt(f"{stage}_step{step}"))
        val = {"val_check_interval": r.val_every, "check_val_every_n_epoch": None} if r.val_every and heldin else {}
        trainer = _trainer(cfg, paths, stage, r.steps, callbacks=[save], limit_val_batches=1.0 if val else 0, **val)
        if val:
            trainer.validate(module, datamodule=data, verbose=False)  # held-in pass@1 before the first update
        _fit_and_save(trainer, module, data, paths.ckpt(stage))

    run.__doc__ = f"RLVR (GRPO-family, sandbox rewards) from the {arm.upper()} arm on the rlvr tasks."
    return run


@dataclass(frozen=True)
class EvalRun:
    """One evaluation of the eval stage: result name, checkpoint, decode-time THINK bias, samples per task."""

    name: str
    checkpoint: str
    think_bias: float | None = None
    num_samples: int | None = None


def eval_runs(cfg: PipelineConfig) -> list[EvalRun]:
    """Every evaluation of the eval stage: the five models, the ``no_rationale_models`` with comments forbidden, and
    the RLVR checkpoints along each run (``rlvr.checkpoint_every``)."""
    runs = [EvalRun(m, "pretrain" if m == "base" else m) for m in MODELS]
    for model in cfg.eval.no_rationale_models:
        runs.append(EvalRun(f"{model}_nothink", "pretrain" if model == "base" else model, float("-inf")))
    for arm in ARMS:
        for step in rlvr_checkpoint_steps(cfg):
            name = f"rlvr_{arm}_step{step}"
            runs.append(EvalRun(name, name, None, cfg.eval.curve_num_samples))
    return runs


def check_budget(cfg: PipelineConfig, paths: Paths, tokenizer: Any) -> None:
    """Raise unless ``eval.max_completion_length`` fits every eval task's reference body plus its rationales."""
    from ra3_lightning.data.tasks import load_tasks
    from ra3_lightning.eval_diagnostics import required_completion_budget

    need = required_completion_budget(load_tasks(paths.split("eval")), tokenizer, cfg.midtrain.max_latent_tokens)
    if cfg.eval.max_completion_length < need.tokens:
        raise ValueError(
            f"eval.max_completion_length={cfg.eval.max_completion_length} < {need.tokens} tokens, what task "
            f"{need.task_id!r} needs for its reference body plus one rationale per skill: raise "
            "eval.max_completion_length (and rlvr.max_completion_length)"
        )


def evaluate_checkpoint(cfg: PipelineConfig, paths: Paths, run: EvalRun) -> dict[str, float]:
    """pass@k and the diagnostics of one checkpoint on the held-out tasks, through ``RLVRModule.test_step``."""
    from ra3_lightning.data.task_data import TaskDataModule
    from ra3_lightning.modules.rlvr import Evaluation, RLVRModule

    e = cfg.eval
    n = run.num_samples or e.num_samples
    samples = paths.eval_result(run.name).with_suffix(".samples.jsonl")
    samples.unlink(missing_ok=True)
    module = RLVRModule(
        init_from=str(paths.ckpt(run.checkpoint)), max_completion_length=e.max_completion_length,
        evaluation=Evaluation(
            num_samples=n, temperature=e.temperature, pass_at_k=tuple(k for k in e.ks if k <= n),
            think_bias=run.think_bias, samples_path=str(samples),
        ),
        reward_fn=_sandbox_reward(cfg), seed=cfg.seed,
    )  # fmt: skip
    data = TaskDataModule(paths.split("eval"), val_batch_size=e.batch_size, prompt_template="plain", shuffle=False)
    results = _trainer(cfg, paths, f"eval_{run.name}", -1).test(module, datamodule=data, verbose=False)[0]
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
    Stage("rlvr_ntp", _rlvr_stage("ntp"), lambda p: [p.ckpt("rlvr_ntp")]),
    Stage("rlvr_ra3", _rlvr_stage("ra3"), lambda p: [p.ckpt("rlvr_ra3")]),
    Stage("eval", stage_eval, lambda p: [p.root / "eval" / "DONE"]),
)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_pipeline(cfg: PipelineConfig, command: str = "ra3 demo") -> Path:
    """Run every unfinished stage, then write the report; returns the path of ``summary.md``."""
    from ra3_lightning.pipeline.report import write_report

    paths = Paths(Path(cfg.out))
    paths.root.mkdir(parents=True, exist_ok=True)
    timings = _read_json(paths.root / "stage_times.json")
    total = len(STAGES) + 1
    for i, stage in enumerate(STAGES, 1):
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
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=None,
        help="several seeds: one run per seed into OUT/seed{S}, then mean ± std in OUT/summary.md (not with --seed)",
    )  # fmt: skip
    return parser


def parse_args(argv: Sequence[str]) -> tuple[PipelineConfig, list[int] | None]:
    """``argv`` (without ``demo``) as a :class:`PipelineConfig` and the ``--seeds`` list (``None``: one run)."""
    parser = build_parser()
    namespace = parser.parse_args(list(argv))
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
    specs |= {"rlvr": RLVRSpec, "eval": EvalSpec}
    kwargs = {k: (specs[k](**v) if k in specs and isinstance(v, dict) else v) for k, v in values.items()}
    if isinstance(kwargs.get("eval"), EvalSpec):
        kwargs["eval"].ks = tuple(kwargs["eval"].ks)
    return PipelineConfig(**kwargs)


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
