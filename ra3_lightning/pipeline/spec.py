"""The ``ra3 demo`` configuration and its report directory: what every stage, the report and the tables share.

:class:`PipelineConfig` groups the knobs of the pipeline by stage (``world``, ``pretrain``, ``midtrain``, ``ra3``,
``oracle``, ``rlvr``, ``eval``); ``ra3`` holds the RA3 arm's own knobs as RA3Module's groups (``latent``,
``annotation``, ``optim``), passed through. :class:`Paths` says where each stage reads and writes under the report
directory. Nothing here runs a stage, so the report modules (:mod:`.report`, :mod:`.aggregate`, :mod:`.fairness`,
:mod:`.signals`) depend on this module and :mod:`.stages` depends on them, never the other way round.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ra3_lightning.estep.config import Annotation, LatentRL
from ra3_lightning.models import TinyLMConfig
from ra3_lightning.optim import Optim

ARMS: tuple[str, ...] = ("ntp", "ra3")  # the two mid-training arms
# Oracle mid-training arms, by name -> what they write at every true skill start (``synthetic.ORACLE_CONTENTS``).
ORACLE_ARMS: dict[str, str] = {"oracle": "true", "oracle_wrong": "wrong"}
MODELS: tuple[str, ...] = ("base", "ntp", "ra3", "rlvr_ntp", "rlvr_ra3")
MODEL_LABELS: dict[str, str] = {
    "base": "base (pre-trained)",
    "ntp": "NTP mid-training",
    "ra3": "RA3 mid-training",
    "rlvr_ntp": "RLVR from NTP",
    "rlvr_ra3": "RLVR from RA3",
}


# --------------------------------------------------------------------------------------------- configuration
@dataclass
class WorldSpec:
    """Sizes of the synthetic splits.

    Args:
        pretrain: Programs in the pre-training corpus (sparse ground-truth comments).
        midtrain: Expert programs (no comments) for both mid-training arms.
        rlvr: RLVR training tasks.
        eval: Held-out evaluation tasks (compositions never seen in training).
        comment_rate: Probability of a ``# <skill>`` comment before a skill start in the pre-training corpus.
        docstring: How a program's docstring states its task, the same in every split
            (:class:`~ra3_lightning.data.synthetic.WorldConfig`): ``steps`` (the plan, step by step in order),
            ``shuffled``, ``reversed`` or ``examples`` (worlds whose docstring does not dictate the body).
    """

    pretrain: int = 3000
    midtrain: int = 1000
    rlvr: int = 128
    eval: int = 64
    comment_rate: float = 0.2
    docstring: str = "steps"


@dataclass
class PretrainSpec:
    """Pre-training of the base model (next-token prediction from scratch).

    Args:
        steps: Optimizer steps.
        batch_size: Packed sequences per step.
        max_length: Tokens per packed sequence.
        lr: Peak learning rate.
        warmup_steps: Linear warm-up steps.
        min_lr_ratio: Cosine floor as a fraction of ``lr``.
        weight_decay: AdamW weight decay.
        val_every: Validate (``val/loss``) every this many steps.
    """

    steps: int = 1200
    batch_size: int = 16
    max_length: int = 256
    lr: float = 3e-3
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    val_every: int = 300


@dataclass
class MidtrainSpec:
    """Both mid-training arms: NTP (``iterations * m_steps`` steps) and RA3 EM (the same M-steps plus E-steps) — their
    schedule, batches, data and the LR of the M-step, which is the NTP arm's. The RA3 arm's own knobs are in ``ra3``.

    Args:
        iterations: ``K`` EM iterations.
        e_steps: E-steps (latent-policy RL updates) per EM iteration.
        m_steps: M-steps per EM iteration; the NTP arm trains ``iterations * m_steps`` steps.
        batch_size: Packed sequences per M-step / NTP step.
        max_length: Tokens per packed sequence.
        lr: Peak LR of the M-step and the NTP arm.
        warmup_steps: Warm-up steps of that LR.
        min_lr_ratio: Cosine floor of that LR.
        weight_decay: AdamW weight decay of both arms.
        e_batch_size: Traces per E-step.
        records_per_iteration: Traces annotated per EM iteration (``None``: every training program, so no M-phase
            is confined to a slice of the corpus; an ``int`` takes a wrapping slice per iteration).
        loss_on: M-step loss on ``"all"`` tokens or ``"code"`` only.
        val_size: The validation holdout of the mid-training corpus, shared by both arms (fraction < 1 or count).
    """

    iterations: int = 2
    e_steps: int = 8
    m_steps: int = 60
    batch_size: int = 16
    max_length: int = 256
    lr: float = 1e-3
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    e_batch_size: int = 4
    records_per_iteration: int | None = None
    loss_on: str = "all"
    val_size: float = 0.05


# RA3Module's E-step groups that the ``ra3`` section passes through, by their name in the module's signature.
RA3_GROUPS: dict[str, type] = {"latent": LatentRL, "annotation": Annotation, "optim": Optim}
# The pipeline's defaults of the latent and annotation groups (the demo stage YAMLs' values, and the paper's ``c``).
RA3_LATENT: dict[str, Any] = {
    "think_cost": 0.05, "max_latent_tokens": 8, "temperature": 1.0, "act_likelihood": "conditional",
    "hindsight_lines": 0,
}  # fmt: skip
RA3_ANNOTATION: dict[str, Any] = {"choose": "sample", "num_generations": 1, "batch_size": 16}


@dataclass
class RA3Spec:
    """The RA3 arm's own knobs: :class:`~ra3_lightning.modules.RA3Module`'s E-step groups, in the module's own names.

    The ``ra3`` stage gets ``model.num_generations`` and ``model.<group>.<key>`` for every key a group here gives, as
    it is; a key left out keeps the stage YAML's value, and a group given whole (in a YAML file or as
    ``--ra3.latent '{...}'``) replaces the one below (``--ra3.latent.think_cost 0.2`` changes one key). Each group's
    keys and values are checked against its dataclass, so every field of it can be set here.

    Args:
        num_generations: ``G``, latent rollouts per trace in an E-step.
        latent: How ``q`` writes rationales and ``π`` scores them (:class:`~ra3_lightning.estep.LatentRL`:
            ``think_cost``, ``max_latent_tokens``, ``temperature``, ``act_likelihood``, ``hindsight_lines``,
            ``engine``, ``logprob_chunk_size``).
        annotation: How each EM iteration's traces are annotated (:class:`~ra3_lightning.estep.Annotation`:
            ``choose``, ``num_generations``, ``batch_size``, ``shard_size``, ``score_fraction``).
        optim: The optimizer of the latent policy ``q`` (:class:`~ra3_lightning.optim.Optim`: ``lr``, ...); the
            M-step's is ``midtrain``'s schedule.
    """

    num_generations: int = 4
    latent: dict[str, Any] = field(default_factory=lambda: dict(RA3_LATENT))
    annotation: dict[str, Any] = field(default_factory=lambda: dict(RA3_ANNOTATION))
    optim: dict[str, Any] = field(default_factory=lambda: {"lr": 2e-4})

    def __post_init__(self) -> None:
        for name, group in RA3_GROUPS.items():
            setattr(self, name, group_values(group, dict(getattr(self, name)), f"ra3.{name}"))

    def latent_value(self, key: str) -> Any:
        """``latent.<key>`` as this section gives it, else ``LatentRL``'s default (the stage YAML may set another)."""
        return self.latent.get(key, getattr(LatentRL(), key))


def group_values(group: type, values: dict[str, Any], name: str) -> dict[str, Any]:
    """``values`` of a dataclass ``group`` (a subset of its fields) checked and typed as the stage's parser will type
    them (``100`` for a float field is ``100.0``), and run through the group's own checks (with its defaults for the
    rest); raises ``ValueError`` naming ``name`` and the group's fields."""
    from jsonargparse import ArgumentError, ArgumentParser

    known = [f.name for f in fields(group)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{name}: {unknown} not a field of {group.__name__} ({', '.join(known)})")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(group, fail_untyped=True)
    try:
        parsed = parser.parse_object(values)
    except ArgumentError as error:  # which key, what type it expected
        raise ValueError(f"{name}: {error}") from error
    typed = {key: parsed[key] for key in values}
    try:
        group(**typed)
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from error
    return typed


@dataclass
class RLVRSpec:
    """RLVR from each mid-trained arm (identical settings for both).

    Args:
        steps: Optimizer updates (= generation batches, ``mu = 1``).
        batch_size: Prompts per step.
        num_generations: ``G``, samples per prompt.
        max_completion_length: Completion budget in tokens.
        lr: Learning rate.
        loss_type: ``grpo`` | ``dapo`` | ``bnpo`` | ``dr_grpo``.
        scale_rewards: ``group`` | ``batch`` | ``none``.
        target_pass_rate: The report gives the first step at which the smoothed training pass rate reaches this.
        smoothing: Window (steps) of the moving average used for ``target_pass_rate``.
        workers: Sandbox worker processes.
        heldin: Tasks of the ``rlvr`` split kept out of RLVR training for its validation (``val/pass@1`` every
            ``val_every`` steps); tune RLVR on these and on the training reward, never on ``eval``.
        val_every: Steps between those validations (0: none).
        train_tasks: Train on only the first this many of the training tasks (0: all of them), so that the run
            makes ``steps * batch_size / train_tasks`` passes over each (a testbed in which RL has room to learn).
        val_num_samples: Samples per held-in task in those validations.
        checkpoint_every: Save the policy every this many steps (0: never); the eval stage scores each saved
            checkpoint on the held-out tasks (held-out pass@1 along the RLVR run).
    """

    steps: int = 30
    batch_size: int = 4
    num_generations: int = 8
    max_completion_length: int = 96
    lr: float = 5e-4
    loss_type: str = "dapo"
    scale_rewards: str = "group"
    target_pass_rate: float = 0.2
    smoothing: int = 5
    workers: int = 2
    heldin: int = 0
    val_every: int = 0
    train_tasks: int = 0
    val_num_samples: int = 4
    checkpoint_every: int = 0


@dataclass
class EvalSpec:
    """pass@k of the five models on the held-out tasks.

    Args:
        num_samples: ``n`` completions per task.
        ks: The ``k`` values of pass@k (each ``<= num_samples``).
        temperature: Sampling temperature.
        max_completion_length: Completion budget in tokens (checked: the longest reference body plus one rationale of
            ``ra3.latent.max_latent_tokens`` per skill must fit; ``LatentRL``'s default when ``ra3.latent`` leaves
            it out).
        batch_size: Tasks per generation batch.
        no_rationale_models: Models also scored with comment-start tokens forbidden at decode time (reported as
            ``<model>_nothink``): how much the model leans on its rationales.
        curve_num_samples: Samples per task for the RLVR checkpoints along the run (``rlvr.checkpoint_every``).
        check_budget: Refuse a ``max_completion_length`` below what the eval tasks need (off only for smoke tests).
    """

    num_samples: int = 8
    ks: tuple[int, ...] = (1, 8)
    temperature: float = 0.8
    max_completion_length: int = 96
    batch_size: int = 8
    no_rationale_models: tuple[str, ...] = ()
    curve_num_samples: int = 4
    check_budget: bool = True


@dataclass
class OracleSpec:
    """Oracle mid-training arms (no E-step): the NTP arm's stage — its stage YAML and args, optimizer, schedule,
    steps, batch, length and holdout, which are also the RA3 M-steps' — on the ``midtrain`` traces annotated with the
    ground truth, a comment line before every true skill start. Run after ``ra3``; the eval stage scores each with and
    without comments forbidden (``<arm>`` and ``<arm>_nothink``).

    Args:
        arms: The oracle arms to run, by name (none by default): ``oracle`` (each skill's own comment: the ceiling of
            a perfect E-step) and ``oracle_wrong`` (another skill's comment, drawn per seed: a marker where a block
            starts, but the wrong plan).
    """

    arms: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.arms = tuple(self.arms)
        unknown = [a for a in self.arms if a not in ORACLE_ARMS]
        if unknown or len(set(self.arms)) != len(self.arms):
            raise ValueError(f"oracle.arms={list(self.arms)}: name each of {sorted(ORACLE_ARMS)} at most once")


@dataclass
class StageYAML:
    """The stage config one stage runs (through ``RA3CLI``, as ``ra3 fit -c <config>`` would) and extra flags for it.

    Args:
        config: The stage YAML: a path, or one relative to the packaged ``configs/`` (``demo/ntp_tiny.yaml``).
        args: Extra flags in the stage's own names, applied after the pipeline's (they win), e.g.
            ``{"model.latent.engine": "reencode"}`` or ``{"trainer.precision": "bf16-mixed"}``.
    """

    config: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageConfigs:
    """Which stage YAML each Lightning stage of the pipeline runs. The pipeline sets from its own sections what the
    fair comparison ties together (sizes, schedules, seeds, paths: ``docs/pipeline.md`` lists the flags); every other
    knob is the stage YAML's, and ``args`` changes any of them.

    Args:
        pretrain: The base model (next-token prediction from scratch).
        ntp: The NTP mid-training arm.
        ra3: The RA3 mid-training arm (the EM loop).
        rlvr: RLVR, the same for both arms.
        eval: pass@k of every model (``ra3 test``).
    """

    pretrain: StageYAML = field(default_factory=lambda: StageYAML("demo/ntp_tiny.yaml"))
    ntp: StageYAML = field(default_factory=lambda: StageYAML("demo/ntp_tiny.yaml"))
    ra3: StageYAML = field(default_factory=lambda: StageYAML("demo/ra3_em_tiny.yaml"))
    rlvr: StageYAML = field(default_factory=lambda: StageYAML("demo/rlvr_tiny.yaml"))
    eval: StageYAML = field(default_factory=lambda: StageYAML("demo/rlvr_tiny.yaml"))


@dataclass
class PipelineConfig:
    """The one-command demo: every knob of every stage.

    Args:
        seed: Seed of the synthetic world and of every stage.
        out: Report directory (checkpoints, data, TensorBoard logs, ``summary.md``, plots).
        accelerator: Lightning accelerator of every stage (``cpu``, ``gpu``, ``auto``).
        progress_bar: Show Lightning's progress bars.
        model: The tiny base model (and its tokenizer).
        world: Sizes of the synthetic splits.
        pretrain: Pre-training of the base model.
        midtrain: The NTP and RA3 mid-training arms: what they share.
        ra3: The RA3 arm's own knobs (RA3Module's E-step groups).
        rlvr: RLVR from each arm.
        eval: pass@k evaluation.
        oracle: Oracle mid-training arms (off by default).
        stages: The stage YAML each stage runs, and extra flags per stage.
    """

    seed: int = 0
    out: str = "reports/demo"
    accelerator: str = "cpu"
    progress_bar: bool = True
    model: TinyLMConfig = field(default_factory=lambda: TinyLMConfig(tokenizer_corpus="synthetic:pretrain?n=2000"))
    world: WorldSpec = field(default_factory=WorldSpec)
    pretrain: PretrainSpec = field(default_factory=PretrainSpec)
    midtrain: MidtrainSpec = field(default_factory=MidtrainSpec)
    ra3: RA3Spec = field(default_factory=RA3Spec)
    rlvr: RLVRSpec = field(default_factory=RLVRSpec)
    eval: EvalSpec = field(default_factory=EvalSpec)
    oracle: OracleSpec = field(default_factory=OracleSpec)
    stages: StageConfigs = field(default_factory=StageConfigs)

    def __post_init__(self) -> None:
        if max(self.eval.ks) > self.eval.num_samples:
            raise ValueError(f"eval.ks={self.eval.ks} needs eval.num_samples >= {max(self.eval.ks)}")
        m, r = self.midtrain, self.rlvr
        if m.records_per_iteration is not None and m.records_per_iteration < m.e_batch_size:
            raise ValueError("midtrain.records_per_iteration must be >= midtrain.e_batch_size (or null: all records)")
        if r.heldin >= self.world.rlvr:
            raise ValueError(f"rlvr.heldin={r.heldin} leaves no RLVR training tasks of world.rlvr={self.world.rlvr}")
        if r.val_every and not r.heldin:
            raise ValueError("rlvr.val_every needs rlvr.heldin > 0 tasks to validate on")
        if not 0 <= r.train_tasks <= self.world.rlvr - r.heldin:
            raise ValueError(
                f"rlvr.train_tasks={r.train_tasks} must be in [0, {self.world.rlvr - r.heldin}] "
                f"(world.rlvr={self.world.rlvr} minus rlvr.heldin={r.heldin}; 0: all of them)"
            )


# --------------------------------------------------------------------------------------------- paths
@dataclass(frozen=True)
class Paths:
    """Where every stage reads and writes, under the report directory (made absolute: a stage's relative output
    paths would be rebased under its ``trainer.default_root_dir``, the same directory, a second time)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).absolute())

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def tb(self) -> Path:
        return self.root / "tb"

    @property
    def em_work(self) -> Path:
        return self.root / "work" / "ra3_em"

    def split(self, name: str) -> str:
        return str(self.data / name)

    def ckpt(self, stage: str) -> Path:
        return self.root / "checkpoints" / f"{stage}.ckpt"

    def oracle_split(self, arm: str) -> str:
        """The oracle arm's annotated copy of the ``midtrain`` split."""
        return self.split(f"midtrain_{arm}")

    def training_tokens(self, stage: str) -> Path:
        """The tokens a mid-training stage trained on (total, rationale, code)."""
        return self.root / "tokens" / f"{stage}.json"

    def eval_result(self, model: str) -> Path:
        return self.root / "eval" / f"{model}.json"

    def log_dir(self, stage: str) -> Path:
        return self.tb / stage / "version_0"

    @property
    def results(self) -> Path:
        return self.root / "results.json"

    def seed_dir(self, seed: int) -> Path:
        """A seed's report directory in a ``--seeds`` run (this ``root`` holds the aggregate)."""
        return self.root / f"seed{seed}"


def rlvr_checkpoint_steps(cfg: PipelineConfig) -> list[int]:
    """Steps at which an RLVR run saves its policy for the held-out curve (the final step is the stage's own)."""
    every = cfg.rlvr.checkpoint_every
    return list(range(every, cfg.rlvr.steps, every)) if every else []


def midtrain_token_budget(cfg: PipelineConfig) -> int:
    """Tokens every mid-training arm trains on: ``iterations * m_steps`` steps x batch x length (packed blocks)."""
    m = cfg.midtrain
    return m.iterations * m.m_steps * m.batch_size * m.max_length


def config_dict(cfg: PipelineConfig) -> dict[str, Any]:
    """The config as plain data (for the report)."""
    return json.loads(json.dumps(asdict(cfg), default=list))
