"""``Evaluation``: the pass@k evaluation group (``model.evaluation`` in YAML) of every module."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ra3_lightning.estep import LatentFormat
from ra3_lightning.generation import GenerationBackend
from ra3_lightning.rewards import RewardFn


@dataclass(frozen=True)
class Evaluation:
    """The validation / test group (``model.evaluation`` in YAML): how tasks are sampled, scored and logged.

    Attributes:
        num_samples: Samples per task for pass@k (``n``).
        temperature: Sampling temperature of the default backend (``0`` = greedy).
        pass_at_k: The k values of pass@k (each ``<= num_samples``).
        think_bias: Added to the logits of rationale-opening tokens (text starting with the ``latent_format``'s
            marker, ``#`` by default, after spaces/tabs) when sampling for evaluation: ``-inf`` (``-.inf`` in YAML
            and on the command line) or a large negative number forbids rationales, so an RA3 model can be scored
            without them; ``None`` or ``0`` = off. Training rollouts never see it.
        samples_path: Write one JSON line per sample here: ``task_id``, ``completion``, ``solution``, ``passed``,
            ``truncated``, ``num_tokens``, ``num_code_tokens``, ``num_rationales`` (and ``skills`` when the task
            has them). ``{stage}`` (``val`` / ``test``) and ``{step}`` (global step) in the path are filled in; each
            evaluation rewrites its file. With several processes each rank writes its part,
            ``<stem>.rank<r><suffix>``, and at the end of the evaluation (after a barrier) rank 0 merges the parts
            into the one ``samples_path`` file — ordered by task id, then sample — and deletes them
            (:func:`~ra3_lightning.eval_diagnostics.merge_sample_files`); the ranks must share the file system
            (else the parts are kept and a warning says so). Not written during the sanity check. ``None`` = no
            file. A relative path follows ``--trainer.default_root_dir``.
        max_completion_length: Completion budget in tokens. ``None``: the module's own ``max_completion_length``
            (RLVR's); a module without one (e.g. :class:`~ra3_lightning.modules.CausalLMModule`, ``NTPModule``)
            needs it set.
        generation: The sampling backend (default :class:`~ra3_lightning.generation.KVSample` at ``temperature``);
            e.g. ``HFGenerate`` or a vLLM backend, by ``class_path`` in YAML. It gets the module's
            ``stop_strings`` (it must then be a ``SamplingBackend``).
        latent_format: How a rationale is written (:class:`~ra3_lightning.estep.LatentFormat`, the E-step's
            ``latent_format``; default a ``# `` comment line): which tokens ``think_bias`` biases and which lines
            the diagnostics count as rationales.
        reward_fn: Scores the completions, ``(completions, tasks) -> list[float]``; a sample passes on the
            sandbox's verdict (``last_results``), else when its reward is ``>= 1``. ``None``: the module's own
            reward (RLVR's ``reward_fn``), else a binary :class:`~ra3_lightning.rewards.SandboxReward` with this
            rank's share of the node's CPUs.
    """

    num_samples: int = 4
    temperature: float = 1.0
    pass_at_k: tuple[int, ...] = (1,)
    think_bias: float | None = None
    samples_path: str | None = None
    max_completion_length: int | None = None
    generation: GenerationBackend | None = None
    latent_format: LatentFormat | None = None
    reward_fn: RewardFn | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "pass_at_k", tuple(self.pass_at_k))  # YAML gives a list
        if self.pass_at_k and max(self.pass_at_k) > self.num_samples:
            raise ValueError(f"evaluation.pass_at_k={self.pass_at_k} needs num_samples >= {max(self.pass_at_k)}")
        if self.think_bias is not None and math.isnan(self.think_bias):
            raise ValueError("evaluation.think_bias is NaN; give a number, -.inf to forbid comments, or null for off")
        if self.max_completion_length is not None and self.max_completion_length < 1:
            raise ValueError(f"evaluation.max_completion_length={self.max_completion_length} must be >= 1 (or null)")
