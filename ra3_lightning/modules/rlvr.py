"""``RLVRModule``: GRPO-family RL with verifiable (sandbox-executed) rewards on coding tasks.

One training step = one *generation batch*: ``B`` prompts from :class:`~ra3_lightning.data.task_data.TaskDataModule`
-> ``G`` completions each (:mod:`ra3_lightning.generation`) -> rewards (the sandbox's own worker processes; scoring
runs while the trainer computes the old / reference log-probs) -> group advantages (:mod:`ra3_lightning.rl.advantages`)
-> ``num_iterations`` optimizer updates of the clipped policy loss (:mod:`ra3_lightning.rl.losses`) over micro-batches.

Semantics worth knowing:

* **Optimisation is manual.** Each of the ``num_iterations`` passes over the generation batch accumulates gradients
  over its micro-batches and takes one optimizer step, so ``trainer.global_step`` counts *optimizer updates*:
  ``global_step = num_iterations * generation_batches`` and ``trainer.max_steps`` is in updates. The LR schedule
  steps with them.
* **Loss normalisers** (sequence count, token count — all-reduced over ranks for ``"dapo"``) are computed once per
  generation batch and passed to every micro-batch: splitting into micro-batches never changes the gradient.
* **Groups.** A batch holds prompts; all ``G`` samples of a prompt are generated and scored on one rank and form
  one group (rows ``b*G .. b*G+G-1``).
* **No reference model when ``beta == 0``** (nothing is built or loaded); with ``beta > 0`` the reference is a
  frozen copy of the initial policy, kept out of checkpoints.
* **Resuming** restores the data position (the data module's state) and the sampling RNG: each rollout is seeded
  from ``(seed, global_step, rank)``, so a resumed run draws what the uninterrupted run would have drawn.
* **Dynamic sampling** (``drop_zero_variance_groups``) masks groups whose rewards are all equal out of the loss
  and its normalisers. Deviation from DAPO: it does not re-sample more prompts to refill the batch, and a batch
  with no informative group still takes a (zero-gradient) step so ranks stay in lockstep.

Logged every ``trainer.log_every_n_steps`` generation batches (each ``self.log`` costs Lightning ~0.5 ms on CPU, and
only those steps reach the logger): ``train/reward_mean|std``, ``train/pass_rate``, ``train/frac_zero_var_groups``,
``train/kl``, ``train/clip_fraction``, ``train/entropy``, ``train/completion_len``, ``train/clipped_len_ratio``,
``timing_s/gen|reward|update``, ``perf/throughput`` (tokens/s), ``perf/mfu`` (GPU only),
``perf/sandbox_programs_per_s``; ``reward`` (progress bar) every step; sample prompts and completions with their
outcome as TensorBoard text; validation ``val/pass@k`` via :class:`PassAtK` (and
``test/pass@k`` from ``ra3 test``, on the data module's test tasks).

Evaluation explains itself (:mod:`ra3_lightning.eval_diagnostics`): besides pass@k each validation / test logs
``{val,test}/truncation_rate``, ``rationale_rate``, ``rationales_per_completion``, ``rationale_tokens``,
``completion_tokens``, ``code_tokens``; for tasks with ground truth (the synthetic world) ``rationale_matched_rate``,
``rationale_accuracy``, ``pass@1_skills{n}`` and ``tasks_skills{n}``. ``evaluation.think_bias`` biases (``-inf``:
forbids) comment-start tokens while sampling for evaluation; ``evaluation.samples_path`` writes one JSON line per
sample (one file, also with several processes: rank 0 merges the ranks' parts at the end of the evaluation).

Each rank's sandbox gets its share of the node's CPUs (:meth:`RLVRModule.setup`): ``trainer.devices`` ranks per
node each start ``usable CPUs // devices`` workers unless ``reward_fn.workers`` is given.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import Tensor

from ra3_lightning.data.task_data import TaskBatch
from ra3_lightning.data.tasks import CodingTask
from ra3_lightning.estep import LatentFormat
from ra3_lightning.eval_diagnostics import (
    CompletionStats,
    EvalDiagnostics,
    comment_start_mask,
    completion_stats,
    has_ground_truth,
    merge_sample_files,
    rank_samples_path,
    rationale_counts,
    sample_record,
    skill_phrases,
    think_logit_bias,
)
from ra3_lightning.generation import (
    GenerationBackend,
    KVSample,
    Rollout,
    SamplingBackend,
    StopStrings,
    eos_list,
    unsharded_for_generation,
)
from ra3_lightning.logprobs import selective_logprobs
from ra3_lightning.lora import AdapterOff
from ra3_lightning.metrics import PassAtK
from ra3_lightning.modules.base import CausalLMModule, reaches_logger, shard_lm
from ra3_lightning.optim import Optim
from ra3_lightning.rl.advantages import (
    BASELINES,
    SCALERS,
    group_advantages,
    zero_variance_groups,
)
from ra3_lightning.rl.batching import (
    completion_extent,
    completion_lengths,
    pad_columns,
    split_to_count,
    token_budget_slices,
)
from ra3_lightning.rl.config import PolicyLoss
from ra3_lightning.rl.kl import KL_ESTIMATORS
from ra3_lightning.rl.losses import (
    AGGREGATIONS,
    LossNormaliser,
    mask_truncated,
    policy_loss,
    truncated_is_weights,
)
from ra3_lightning.rl.registry import resolve

RewardFn = Callable[[list[str], list[CodingTask]], list[float]]
RLVR_OPTIM = Optim(lr=1e-6, max_grad_norm=1.0)  # the default optimizer group: constant LR, clipped


@dataclass(frozen=True)
class Evaluation:
    """The validation / test group of ``RLVRModule`` (``model.evaluation`` in YAML).

    Attributes:
        num_samples: Samples per task for pass@k (``n``).
        temperature: Sampling temperature of the default validation backend (``0`` = greedy).
        pass_at_k: The k values of pass@k (each ``<= num_samples``).
        think_bias: Added to the logits of rationale-opening tokens (text starting with the ``latent_format``'s
            marker, ``#`` by default, after spaces/tabs) when
            sampling for validation / test: ``-inf`` (``-.inf`` in YAML and on the command line) or a large negative
            number forbids rationales, so an RA3 model can be scored without them; ``None`` or ``0`` = off.
            Training rollouts never see it.
        samples_path: Write one JSON line per validation / test sample here: ``task_id``, ``completion``,
            ``passed``, ``truncated``, ``num_tokens``, ``num_code_tokens``, ``num_rationales`` (and ``skills`` when
            the task has them). ``{stage}`` (``val`` / ``test``) and ``{step}`` (global step) in the path are
            filled in; each evaluation rewrites its file. With several processes each rank writes its part,
            ``<stem>.rank<r><suffix>``, and at the end of the evaluation (after a barrier) rank 0 merges the parts
            into the one ``samples_path`` file — ordered by task id, then sample — and deletes them
            (:func:`~ra3_lightning.eval_diagnostics.merge_sample_files`); the ranks must share the file system
            (else the parts are kept and a warning says so). Not written during the sanity check. ``None`` = no
            file. A relative path follows ``--trainer.default_root_dir``.
    """

    num_samples: int = 4
    temperature: float = 1.0
    pass_at_k: tuple[int, ...] = (1,)
    think_bias: float | None = None
    samples_path: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "pass_at_k", tuple(self.pass_at_k))  # YAML gives a list
        if self.pass_at_k and max(self.pass_at_k) > self.num_samples:
            raise ValueError(f"evaluation.pass_at_k={self.pass_at_k} needs num_samples >= {max(self.pass_at_k)}")
        if self.think_bias is not None and math.isnan(self.think_bias):
            raise ValueError("evaluation.think_bias is NaN; give a number, -.inf to forbid comments, or null for off")


class RLVRModule(CausalLMModule):
    """GRPO / DAPO / Dr. GRPO on coding tasks with sandboxed unit-test rewards.

    Args:
        num_generations: ``G``, completions sampled per prompt (one group).
        max_completion_length: Completion budget in tokens (Dr. GRPO's constant normaliser).
        generation: Sampling backend (default :class:`~ra3_lightning.generation.KVSample` at temperature 1;
            :class:`~ra3_lightning.generation.HFGenerate` runs ``model.generate``).
        reward_fn: ``(completions, tasks) -> list[float]``; default ``SandboxReward(mode="binary")``. Override by
            ``class_path`` in YAML or by overriding :meth:`compute_rewards` in a subclass.
        format_reward: Weight of the format reward (1 when the program parses as Python) added to the reward.
        loss: The policy-loss group (:class:`~ra3_lightning.rl.config.PolicyLoss`: ``loss_type``, ``epsilon`` /
            ``epsilon_high``, ``num_iterations``, ``beta``, ``kl_estimator``, ``scale_rewards``,
            ``advantage_baseline``, ``drop_zero_variance_groups``, ``mask_truncated_completions``, ``tis_cap``).
        micro_batch_size: Sequences per forward/backward (default: the whole generation batch).
        micro_batch_tokens: A token budget per forward/backward instead: consecutive sequences while their count
            times (prompt length + their longest completion) fits (at least one sequence). Overrides
            ``micro_batch_size``; memory then follows the tokens, not the number of sequences.
        logprob_chunk_size: Completion positions per chunk of the LM head in the log-prob / entropy pass
            (:func:`~ra3_lightning.logprobs.selective_logprobs`): the full ``[b, T, V]`` fp32 logits are never built,
            each chunk is recomputed in the backward pass. ``None`` = the dense pass (models that post-process their
            logits, e.g. soft-capping, need it).
        optim: The optimizer group (:class:`~ra3_lightning.optim.Optim`, default :data:`RLVR_OPTIM`);
            ``total_steps`` defaults to ``trainer.max_steps`` (in updates).
        evaluation: The validation / test group (:class:`Evaluation`: samples per task, temperature, pass@k,
            think bias, samples file).
        latent_format: How a rationale is written (:class:`~ra3_lightning.estep.LatentFormat`, the E-step's
            ``latent_format``; default a ``# `` comment line): which tokens ``evaluation.think_bias`` biases and
            which lines the diagnostics count as rationales.
        val_generation: Validation / test backend (default :class:`~ra3_lightning.generation.KVSample` at
            ``evaluation.temperature``); e.g. ``HFGenerate`` or a vLLM backend, by ``class_path`` in YAML.
        stop_strings: Also end a completion once its text contains one of these (base-model completions of
            HumanEval-style prompts: ``["\\ndef ", "\\nclass ", "\\nif __name__", "\\nprint(", "\\n#"]``,
            :data:`~ra3_lightning.generation.HUMANEVAL_STOP`; of MBPP-style prompts, which the completion answers
            with a whole program: :data:`~ra3_lightning.generation.MBPP_STOP`). They match the decoded text, so an
            indented comment (``"\\n    #"``, a rationale) is no ``"\\n#"``. The text the sandbox scores is cut
            before the stop string. ``None`` = EOS and the budget only. Both backends get it (they must be
            ``SamplingBackend`` s). Every EOS id of the tokenizer and of the model's ``generation_config`` (e.g.
            ``<|endoftext|>`` and ``<|im_end|>``) ends a completion.
        log_samples_every_n_steps: Write sample prompts / completions as TensorBoard text this often (0 = never).
        num_logged_samples: How many samples to write each time.
        seed: Seed of the per-step rollout RNG.
        **kwargs: Model source and loading options of :class:`CausalLMModule` (``pretrained`` / ``init_from`` /
            ``tiny``, ``tokenizer``, ``dtype``, ...).
    """

    def __init__(
        self,
        num_generations: int = 8,
        max_completion_length: int = 256,
        generation: GenerationBackend | None = None,
        reward_fn: RewardFn | None = None,
        format_reward: float = 0.0,
        loss: PolicyLoss = PolicyLoss(),
        micro_batch_size: int | None = None,
        micro_batch_tokens: int | None = None,
        logprob_chunk_size: int | None = 256,
        optim: Optim = RLVR_OPTIM,
        evaluation: Evaluation = Evaluation(),
        latent_format: LatentFormat | None = None,
        val_generation: GenerationBackend | None = None,
        stop_strings: list[str] | None = None,
        log_samples_every_n_steps: int = 50,
        num_logged_samples: int = 4,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if num_generations < 2:
            raise ValueError(f"num_generations must be >= 2 for a group baseline (got {num_generations})")
        self.save_hyperparameters(ignore=["generation", "val_generation", "reward_fn", "latent_format"])
        self.automatic_optimization = False
        self.G, self.max_completion_length = num_generations, max_completion_length
        self.loss, self.evaluation = loss, evaluation  # the groups as given; estimator names resolved below
        self.stop = StopStrings(self.tokenizer, stop_strings) if stop_strings else None
        self.generation = with_stop(generation or KVSample(), self.stop)
        self.val_generation = with_stop(val_generation or KVSample(temperature=evaluation.temperature), self.stop)
        self.reward_fn = reward_fn
        self.optim = optim
        self.latent_format = latent_format or LatentFormat()
        self.format_reward = format_reward
        self.scale_rewards = resolve(loss.scale_rewards, SCALERS, "loss.scale_rewards")
        self.advantage_baseline = resolve(loss.advantage_baseline, BASELINES, "loss.advantage_baseline")
        self.loss_type = resolve(loss.loss_type, AGGREGATIONS, "loss.loss_type")
        self.kl_estimator = resolve(loss.kl_estimator, KL_ESTIMATORS, "loss.kl_estimator")
        self.micro_batch_size, self.logprob_chunk_size = micro_batch_size, logprob_chunk_size
        if micro_batch_tokens is not None and micro_batch_tokens < 1:
            raise ValueError(f"micro_batch_tokens={micro_batch_tokens} must be >= 1 (or None)")
        self.micro_batch_tokens = micro_batch_tokens
        self.pass_at_k = PassAtK(ks=evaluation.pass_at_k)
        self.eval_diagnostics = EvalDiagnostics()
        self._token_pieces: dict[int, str] = {}  # token id -> its text ("" for special tokens), filled lazily
        self._skill_phrases = skill_phrases()
        self._samples_file: str | None = None  # this rank's samples file of this evaluation (set at epoch start)
        self._merged_samples_file: str | None = None  # the file rank 0 merges the ranks' parts into (several ranks)
        self._think_bias: Tensor | None = None  # [V], built on first use
        self.ref_model: torch.nn.Module | None = None  # set in configure_model only when beta > 0
        self._executor: ThreadPoolExecutor | None = None
        self._last_pass = torch.zeros(0)

    # ----------------------------------------------------------------------------------------- building
    def configure_model(self) -> None:
        """Build the policy (and, only when ``beta > 0``, a frozen reference copy), sharded under FSDP2. With
        ``lora`` the reference is no copy: the policy's base weights with the adapter off."""
        if self.model is None:
            self.model = self.build_model()
        if self.loss.beta > 0 and self.ref_model is None:
            if self.lora is not None:
                ref = AdapterOff(self.model)
            else:
                ref = copy.deepcopy(self.model).eval().requires_grad_(False)
            object.__setattr__(self, "ref_model", ref)  # not a submodule: stays out of checkpoints and optimizer
        super().configure_model()
        if isinstance(self.ref_model, torch.nn.Module) and self._trainer is not None:
            if isinstance(self.trainer.strategy, ModelParallelStrategy):
                shard_lm(self.ref_model, self.device_mesh)

    def configure_optimizers(self) -> dict[str, Any]:
        total = self.optim.total_steps or (self.trainer.max_steps if self.trainer.max_steps > 0 else 10_000)
        return self.optim.build(self.model.named_parameters(), total)

    def setup(self, stage: str) -> None:
        """Give a :class:`~ra3_lightning.rewards.SandboxReward` left at ``workers=None`` this rank's share of the
        CPUs (:meth:`sandbox_workers`): every rank of the node starts its own sandbox, and Lightning's own launcher
        does not set ``LOCAL_WORLD_SIZE``, from which the sandbox alone would read the number of ranks."""
        from ra3_lightning.rewards import SandboxReward

        if isinstance(self.reward_fn, SandboxReward) and self.reward_fn.workers is None:
            self.reward_fn.workers = self.sandbox_workers()

    def sandbox_workers(self) -> int | None:
        """Sandbox workers of this rank: the CPUs this process may use divided by the trainer's ranks per node
        (``trainer.num_devices``); ``None`` without a trainer (the sandbox's own default then)."""
        if self._trainer is None:
            return None
        from ra3_lightning.sandbox.pool import default_workers

        return default_workers(ranks_on_node=self.trainer.num_devices)

    # ----------------------------------------------------------------------------------------- hooks
    def default_reward_fn(self) -> RewardFn:
        """Hook: the reward used when none is configured (a binary :class:`~ra3_lightning.rewards.SandboxReward`
        with :meth:`sandbox_workers` workers)."""
        from ra3_lightning.rewards import SandboxReward

        return SandboxReward(mode="binary", workers=self.sandbox_workers())

    def submit_rewards(self, completions: list[str], tasks: list[CodingTask]) -> Future[list[float]]:
        """Hook: start scoring ``completions`` and return a future (the trainer keeps working meanwhile)."""
        if self.reward_fn is None:
            self.reward_fn = self.default_reward_fn()
        if hasattr(self.reward_fn, "submit"):
            return self.reward_fn.submit(completions, tasks)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ra3-reward")
        return self._executor.submit(self.reward_fn, completions, tasks)

    def compute_format_rewards(self, completions: list[str], tasks: list[CodingTask]) -> list[float]:
        """Hook: the format reward of each completion (default: 1 when its program parses as Python)."""
        from ra3_lightning.rewards import format_reward

        return format_reward(completions, tasks)

    # ----------------------------------------------------------------------------------------- training
    def training_step(self, batch: TaskBatch, batch_idx: int) -> None:
        t0 = time.perf_counter()
        rollout = self.rollout(batch, self.generation, self.G, self.trainer.global_step)
        texts, tasks = self.decode(rollout), [t for t in batch.tasks for _ in range(self.G)]
        t_gen = time.perf_counter()
        pending = self.submit_rewards(texts, tasks)
        # While the sandbox scores: the fixed log-probs, and the forward pass (with graph) of the first micro-batch.
        with self.sharing_cpu_with_sandbox():
            old_logp, ref_logp = self.fixed_logps(rollout)
            head = self.completion_logps(self.model, rollout, next(self.micro_batches(rollout)), True)
        rewards, t_reward = self.await_rewards(pending, texts, tasks, t_gen)
        advantages, sample_mask = self.advantages(rewards)  # [B*G], [B*G]
        stats = self.update(rollout, old_logp, ref_logp, advantages, sample_mask, head)
        t_end = time.perf_counter()
        self.log("reward", rewards.mean(), prog_bar=True, logger=False, batch_size=len(batch))
        if reaches_logger(self):
            self.log_step(rollout, rewards, stats, {"gen": t_gen - t0, "reward": t_reward, "update": t_end - t_gen})
        self.log_samples(batch, texts, rewards)

    @contextmanager
    def sharing_cpu_with_sandbox(self) -> Iterator[None]:
        """On CPU, fewer intra-op threads while the sandbox scores: its workers need cores too, and torch's threads
        meeting at a barrier every op while the scheduler time-slices them against the workers is the worst of both
        (measured on 2 cores: the overlapped forward took 4x its time alone, with one thread 2x, and the whole
        scoring window shrank by ~15%). Leaves as many cores as the sandbox has workers (at least one thread)."""
        workers = getattr(self.reward_fn, "workers", None) or os.cpu_count() or 1
        threads = torch.get_num_threads()
        if self.device.type != "cpu" or threads == 1:
            yield
            return
        torch.set_num_threads(max(1, min(threads, (os.cpu_count() or 1) - workers)))
        try:
            yield
        finally:
            torch.set_num_threads(threads)

    def rollout(self, batch: TaskBatch, backend: GenerationBackend, num_samples: int, step: int) -> Rollout:
        """``num_samples`` completions per prompt, sampled with an RNG seeded from ``(seed, step, rank)``."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.hparams.seed * 1_000_003 + step * 1_009 + self.global_rank)
            return backend.generate(
                self.model,
                batch.prompt_ids,
                batch.prompt_mask,
                num_samples,
                self.max_completion_length,
                self.eos_token_ids(),
                self.tokenizer.pad_token_id,
            )

    def eos_token_ids(self) -> list[int]:
        """The tokenizer's EOS and every EOS id of the model's ``generation_config`` (one id or a list)."""
        config_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ids = [self.tokenizer.eos_token_id, *([] if config_eos is None else eos_list(config_eos))]
        return eos_list([i for i in ids if i is not None])

    def decode(self, rollout: Rollout) -> list[str]:
        ids = rollout.completion_ids.masked_fill(rollout.completion_mask == 0, self.tokenizer.pad_token_id)
        texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        return texts if self.stop is None else [self.stop.cut(t) for t in texts]

    def await_rewards(
        self, pending: Future[list[float]], texts: list[str], tasks: list[CodingTask], t_start: float
    ) -> tuple[Tensor, float]:
        """Rewards ``[B, G]`` (plus the weighted format reward) and the seconds spent waiting since ``t_start``."""
        scores = torch.tensor(pending.result(), dtype=torch.float32, device=self.device)  # [B*G]
        elapsed = time.perf_counter() - t_start
        if self.format_reward:
            fmt = torch.tensor(self.compute_format_rewards(texts, tasks), dtype=torch.float32, device=self.device)
            scores = scores + self.format_reward * fmt
        self._last_pass = scores.new_tensor([float(r.passed) for r in getattr(self.reward_fn, "last_results", [])])
        return scores.view(-1, self.G), elapsed

    def advantages(self, rewards: Tensor) -> tuple[Tensor, Tensor]:  # rewards [B, G] -> [B*G], [B*G] bool
        adv = group_advantages(rewards, scale=self.scale_rewards, baseline=self.advantage_baseline)  # [B, G]
        keep = torch.ones_like(rewards, dtype=torch.bool)  # [B, G]
        if self.loss.drop_zero_variance_groups:
            keep &= ~zero_variance_groups(rewards).unsqueeze(1)
        return adv.reshape(-1), keep.reshape(-1)

    # ----------------------------------------------------------------------------------------- log-probs
    def sequence_inputs(self, rollout: Rollout, rows: slice, length: int | None = None) -> dict[str, Tensor]:
        """Prompt + the first ``length`` completion tokens (all by default) of ``rows``, as the model takes them."""
        completion = slice(0, length)
        ids = torch.cat([rollout.prompt_ids[rows], rollout.completion_ids[rows, completion]], dim=1)  # [b, P+t]
        mask = torch.cat([rollout.prompt_mask[rows], rollout.completion_mask[rows, completion]], dim=1)  # [b, P+t]
        positions = (mask.cumsum(-1) - 1).clamp_min(0)  # [b, P+t], as generate() numbers them
        return {"input_ids": ids, "attention_mask": mask, "position_ids": positions, "use_cache": False}

    def completion_logps(
        self, model: torch.nn.Module, rollout: Rollout, rows: slice, with_entropy: bool = False
    ) -> tuple[Tensor, Tensor | None]:  # [b, T], [b, T]
        """Log-probs of the completion tokens (and the policy entropy at each position) under ``model``.

        The forward pass stops at the rows' longest completion (what follows is padding in every row: it changes
        no earlier position and scores 0), so a micro-batch of short completions costs what they are.
        """
        T = rollout.completion_ids.shape[1]
        t = completion_extent(rollout.completion_mask[rows])
        inputs, targets = self.sequence_inputs(rollout, rows, t), rollout.completion_ids[rows, :t]  # [b, t]
        if self.logprob_chunk_size is not None:
            logp, entropy = selective_logprobs(model, inputs, targets, self.logprob_chunk_size, with_entropy)
            return pad_columns(logp, T), pad_columns(entropy, T)
        # The LM head runs only where completion tokens are predicted (not over the prompt).
        logits = model(**inputs, logits_to_keep=t + 1).logits[:, :-1].float()  # [b, t, V]
        log_norm = logits.logsumexp(-1)  # [b, t]
        logp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - log_norm  # [b, t]
        entropy = None
        if with_entropy:
            with torch.no_grad():
                probs = (logits - log_norm.unsqueeze(-1)).exp()  # [b, t, V]
                entropy = log_norm - (probs * logits).sum(-1)  # [b, t]
        return pad_columns(logp, T), pad_columns(entropy, T)

    def micro_batches(self, rollout: Rollout) -> Iterator[slice]:
        """Consecutive rows per forward/backward: ``micro_batch_tokens`` (a token budget) if set, else
        ``micro_batch_size`` rows, else all of them."""
        n = rollout.num_samples
        if self.micro_batch_tokens is not None:
            lengths = completion_lengths(rollout.completion_mask).tolist()
            slices = token_budget_slices(lengths, rollout.prompt_ids.shape[1], self.micro_batch_tokens)
            yield from split_to_count(slices, self.most_across_ranks(len(slices)))
            return
        size = self.micro_batch_size or n
        for start in range(0, n, size):
            yield slice(start, min(start + size, n))

    def most_across_ranks(self, count: int) -> int:
        """The largest ``count`` of all ranks (``count`` itself outside a distributed run)."""
        if self._trainer is None or self.trainer.world_size == 1:
            return count
        return int(self.trainer.strategy.reduce(torch.tensor(count, device=self.device), reduce_op="max"))

    @torch.no_grad()
    def fixed_logps(self, rollout: Rollout) -> tuple[Tensor | None, Tensor | None]:
        """``old_logp`` (only for ``num_iterations > 1``; on-policy it equals the detached current log-prob) and
        ``ref_logp`` (only for ``beta > 0``), each ``[B*G, T]``."""
        old = None
        if self.loss.num_iterations > 1:
            old = torch.cat([self.completion_logps(self.model, rollout, r)[0] for r in self.micro_batches(rollout)])
        ref = None
        if self.ref_model is not None:
            self.ref_model.to(self.device)
            rows = self.micro_batches(rollout)
            ref = torch.cat([self.completion_logps(self.ref_model, rollout, r)[0] for r in rows])
        return old, ref

    # ----------------------------------------------------------------------------------------- update
    def loss_normaliser(self, mask: Tensor) -> LossNormaliser:
        """Denominators over the whole generation batch (token count all-reduced over ranks for ``"dapo"``)."""
        local = mask.sum().float()
        total = self.trainer.strategy.reduce(local.clone(), reduce_op="sum") if self.trainer.world_size > 1 else local
        return LossNormaliser(
            num_sequences=float((mask.sum(-1) > 0).sum() if self.loss.drop_zero_variance_groups else mask.shape[0]),
            num_tokens=float(local),
            num_tokens_global=float(total),
            world_size=self.trainer.world_size,
            max_completion_length=self.max_completion_length,
        )

    def update(
        self,
        rollout: Rollout,
        old_logp: Tensor | None,  # [B*G, T] or None (num_iterations == 1)
        ref_logp: Tensor | None,  # [B*G, T] or None (beta == 0)
        advantages: Tensor,  # [B*G]
        sample_mask: Tensor,  # [B*G] bool
        head: tuple[Tensor, Tensor | None] | None = None,  # first micro-batch's (logp, entropy), computed early
    ) -> dict[str, Tensor]:
        """``num_iterations`` optimizer steps over the generation batch; the mean diagnostics of the last pass."""
        mask = rollout.completion_mask.float() * sample_mask.unsqueeze(-1)  # [B*G, T]
        if self.loss.mask_truncated_completions:
            mask = mask_truncated(mask, rollout.truncated)
        norm = self.loss_normaliser(mask)
        opt, sched = self.optimizers(), self.lr_schedulers()
        for epoch in range(self.loss.num_iterations):
            first = head if epoch == 0 else None
            stats = self.accumulate(rollout, old_logp, ref_logp, advantages, mask, norm, epoch == 0, first)
            if epoch == 0:
                entropy = stats.pop("entropy")
            self.clip_to(opt, self.optim)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
        return {**stats, "entropy": entropy}

    def accumulate(
        self,
        rollout: Rollout,
        old_logp: Tensor | None,
        ref_logp: Tensor | None,
        advantages: Tensor,
        mask: Tensor,
        norm: LossNormaliser,
        with_entropy: bool,
        first: tuple[Tensor, Tensor | None] | None = None,
    ) -> dict[str, Tensor]:
        """Forward/backward every micro-batch (gradients accumulate); summed loss and token-weighted diagnostics.

        ``first``: the first micro-batch's ``(logp, entropy)`` when its forward pass already ran (see
        ``training_step``: it overlaps the sandbox's scoring).
        """
        totals: dict[str, Tensor] = {}
        for index, rows in enumerate(self.micro_batches(rollout)):
            if index == 0 and first is not None:
                logp, entropy = first  # [b, T]
            else:
                logp, entropy = self.completion_logps(self.model, rollout, rows, with_entropy)  # [b, T]
            old = logp.detach() if old_logp is None else old_logp[rows]
            ref = None if ref_logp is None else ref_logp[rows]
            weights = self.is_weights(rollout, old, rows)
            loss, diag = policy_loss(
                logp, old, advantages[rows], mask[rows], norm, self.loss_type, self.loss.epsilon,
                self.loss.epsilon_high, ref, self.loss.beta, self.kl_estimator, weights,
            )  # fmt: skip
            self.manual_backward(loss)
            share = float(mask[rows].sum()) / max(norm.num_tokens, 1.0)  # this micro-batch's share of the tokens
            if entropy is not None:
                real = rollout.completion_mask[rows]
                diag["entropy"] = (entropy * real).sum() / real.sum().clamp_min(1)
            totals["loss"] = totals.get("loss", 0.0) + loss.detach()  # micro-batch losses add up to the batch loss
            for k, v in diag.items():
                totals[k] = totals.get(k, 0.0) + v * (share if k != "entropy" else rows_share(rows, rollout))
        return totals

    def is_weights(self, rollout: Rollout, old_logp: Tensor, rows: slice) -> Tensor | None:  # [b, T] or None
        """The truncated importance weights of these rows when ``tis_cap`` is set."""
        if self.loss.tis_cap is None:
            return None
        if rollout.sampler_logp is None:
            raise ValueError(
                "tis_cap needs a generation backend that reports its token log-probs (Rollout.sampler_logp)"
            )
        return truncated_is_weights(old_logp, rollout.sampler_logp[rows], self.loss.tis_cap)

    # ----------------------------------------------------------------------------------------- logging
    def log_step(self, rollout: Rollout, rewards: Tensor, stats: dict[str, Tensor], timing: dict[str, float]) -> None:
        lengths = rollout.completion_mask.sum(-1).float()  # [B*G]
        step_s = sum(timing.values())
        tokens = float((rollout.prompt_mask.sum() + lengths.sum()) * self.loss.num_iterations + lengths.sum())
        metrics = {
            "train/reward_mean": rewards.mean(),
            "train/reward_std": rewards.std() if rewards.numel() > 1 else rewards.new_tensor(0.0),
            "train/pass_rate": self._last_pass.mean() if self._last_pass.numel() else (rewards >= 1).float().mean(),
            "train/frac_zero_var_groups": zero_variance_groups(rewards).float().mean(),
            "train/completion_len": lengths.mean(),
            "train/clipped_len_ratio": rollout.truncated.float().mean(),
            **{f"train/{k}": v for k, v in stats.items()},
            **{f"timing_s/{k}": v for k, v in timing.items()},
            "perf/throughput": tokens / step_s,
            "perf/sandbox_programs_per_s": rollout.num_samples / max(timing["reward"], 1e-9),
            "lr": self.lr_schedulers().get_last_lr()[0],
        }
        mfu = self.mfu(tokens, step_s)
        if mfu is not None:
            metrics["perf/mfu"] = mfu
        metrics = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in metrics.items()}
        self.log_dict(metrics, sync_dist=True, batch_size=rewards.shape[0])

    def mfu(self, tokens: float, seconds: float) -> float | None:
        """Model FLOPs utilisation (~6 N flops per trained token, 2 N per generated/scored one); GPU only."""
        if self.device.type != "cuda":
            return None
        from lightning.fabric.utilities.throughput import get_available_flops

        peak = get_available_flops(self.device, next(self.model.parameters()).dtype)
        n_params = sum(p.numel() for p in self.model.parameters())
        return None if not peak else 6 * n_params * tokens / seconds / peak

    def log_samples(self, batch: TaskBatch, texts: list[str], rewards: Tensor) -> None:
        every = self.hparams.log_samples_every_n_steps
        logger = self.logger
        if not every or logger is None or not hasattr(logger.experiment, "add_text") or not self.trainer.is_global_zero:
            return
        if (self.trainer.global_step // self.loss.num_iterations) % every:
            return
        flat = rewards.reshape(-1).tolist()
        rows = []
        for i in range(min(self.hparams.num_logged_samples, len(texts))):
            task = batch.tasks[i // self.G]
            rows.append(
                f"**{task.task_id}** reward={flat[i]:.2f}\n\n```python\n{batch.prompts[i // self.G]}{texts[i]}\n```"
            )
        logger.experiment.add_text("samples", "\n\n---\n\n".join(rows), self.trainer.global_step)

    # ----------------------------------------------------------------------------------------- validation / test
    def validation_step(self, batch: TaskBatch, batch_idx: int) -> None:
        self.pass_at_k_step(batch, batch_idx)

    def test_step(self, batch: TaskBatch, batch_idx: int) -> None:
        """``ra3 test``: the validation pass@k on the data module's test tasks, logged as ``test/pass@k``."""
        self.pass_at_k_step(batch, batch_idx)

    def pass_at_k_step(self, batch: TaskBatch, batch_idx: int) -> None:
        """Sample ``evaluation.num_samples`` completions per task, score them in the sandbox, update
        :class:`PassAtK` and the diagnostics, and append the samples to ``evaluation.samples_path``."""
        if len(batch) == 0:  # a padding batch: join the collective unshard/reshard so FSDP2 ranks stay in step
            with unsharded_for_generation(self.model):
                return
        n = self.evaluation.num_samples
        rollout = self.rollout(batch, self.eval_generation(), n, -1 - batch_idx)
        texts, tasks = self.decode(rollout), [t for t in batch.tasks for _ in range(n)]
        passed = self.eval_passed(texts, tasks)  # [B*n] bool
        correct = passed.float().view(-1, n).sum(-1)  # [B]
        self.pass_at_k.update(torch.full_like(correct, n), correct)
        marker = self.latent_format.comment_start
        stats = [completion_stats(self.token_pieces(ids), marker) for ids in completion_token_lists(rollout)]
        self.update_diagnostics(batch, texts, passed, rollout.truncated, stats)
        self.write_samples(tasks, texts, passed, rollout.truncated, stats)

    def eval_generation(self) -> GenerationBackend:
        """The validation / test backend: ``val_generation``, THINK-biased when ``evaluation.think_bias`` is set."""
        if not self.evaluation.think_bias:
            return self.val_generation
        if not isinstance(self.val_generation, SamplingBackend):
            raise TypeError(f"evaluation.think_bias needs a SamplingBackend, got {type(self.val_generation).__name__}")
        if self._think_bias is None or self._think_bias.device != self.device:
            mask = comment_start_mask(self.tokenizer, self.latent_format)  # [V]
            self._think_bias = think_logit_bias(mask, self.evaluation.think_bias).to(self.device)  # [V]
        return self.val_generation.with_logit_bias(self._think_bias)

    def eval_passed(self, texts: list[str], tasks: list[CodingTask]) -> Tensor:  # [N] bool
        """Whether each completion passes its task's tests (the sandbox's verdict, else ``reward >= 1``)."""
        rewards = self.submit_rewards(texts, tasks).result()
        passed = torch.tensor([r.passed for r in getattr(self.reward_fn, "last_results", [])], dtype=torch.bool)
        if passed.numel() != len(tasks):  # a plain reward callable without last_results: reward >= 1 is a pass
            passed = torch.tensor(rewards) >= 1.0
        return passed

    def token_pieces(self, ids: list[int]) -> list[str]:
        """The text of each token (``""`` for special tokens such as EOS), decoded once per vocabulary id."""
        for i in ids:
            if i not in self._token_pieces:
                self._token_pieces[i] = self.tokenizer.decode([i], skip_special_tokens=True)
        return [self._token_pieces[i] for i in ids]

    def update_diagnostics(
        self, batch: TaskBatch, texts: list[str], passed: Tensor, truncated: Tensor, stats: list[CompletionStats]
    ) -> None:  # passed [B*n] bool, truncated [B*n] bool
        """Token accounting of every completion; rationale accuracy and pass rate of tasks with ground truth."""
        n = self.evaluation.num_samples
        rationale, skills, pass_rates = [], [], []
        marker = self.latent_format.comment_start
        for b, task in enumerate(batch.tasks):
            if not has_ground_truth(task.meta):
                continue
            rows = range(b * n, (b + 1) * n)
            rationale += [rationale_counts(texts[i], task.prompt, task.meta, self._skill_phrases, marker) for i in rows]
            skills.append(len(task.meta["skills"]))
            pass_rates.append(float(passed[b * n : (b + 1) * n].float().mean()))
        self.eval_diagnostics.update(stats, truncated.tolist(), rationale, skills, pass_rates)

    def on_validation_epoch_start(self) -> None:
        self.start_samples_file("val")

    def on_test_epoch_start(self) -> None:
        self.start_samples_file("test")

    def start_samples_file(self, stage: str) -> None:
        """Empty this evaluation's ``samples_path`` file, or this rank's part of it (none during the sanity check)."""
        self._samples_file = self._merged_samples_file = None
        if self.evaluation.samples_path is None or self.trainer.sanity_checking:
            return
        path = Path(self.evaluation.samples_path.format(stage=stage, step=self.global_step))
        if self.trainer.world_size > 1:
            self._merged_samples_file = str(path)
            path = rank_samples_path(path, self.global_rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
        self._samples_file = str(path)

    def write_samples(
        self,
        tasks: list[CodingTask],
        texts: list[str],
        passed: Tensor,  # [N] bool
        truncated: Tensor,  # [N] bool
        stats: list[CompletionStats],
    ) -> None:
        """Append one :func:`~ra3_lightning.eval_diagnostics.sample_record` line per sample to the samples file."""
        if self._samples_file is None:
            return
        rows = zip(tasks, texts, passed.tolist(), truncated.tolist(), stats, strict=True)
        with open(self._samples_file, "a") as f:
            f.writelines(json.dumps(sample_record(*row)) + "\n" for row in rows)

    def merge_samples_files(self) -> None:
        """With several processes: once every rank has written its part (a barrier), rank 0 merges the parts into
        the one ``samples_path`` file and deletes them; parts it cannot see (no shared file system) are kept, with
        a warning."""
        merged, self._merged_samples_file = self._merged_samples_file, None
        if merged is None:
            return
        self.trainer.strategy.barrier("ra3-samples-file")
        if not self.trainer.is_global_zero:
            return
        parts = [rank_samples_path(merged, r) for r in range(self.trainer.world_size)]
        missing = [str(p) for p in parts if not p.exists()]
        if missing:
            warnings.warn(f"samples file not merged: rank 0 does not see {missing}; the parts are kept", stacklevel=1)
            return
        merge_sample_files(parts, merged)

    def on_validation_epoch_end(self) -> None:
        self.log_pass_at_k("val")
        self.log_diagnostics("val")
        self.merge_samples_files()

    def on_test_epoch_end(self) -> None:
        self.log_pass_at_k("test")
        self.log_diagnostics("test")
        self.merge_samples_files()

    def log_pass_at_k(self, prefix: str) -> None:
        results = self.pass_at_k.compute()
        self.pass_at_k.reset()
        for name, value in results.items():
            self.log(f"{prefix}/{name}", value, prog_bar=name == "pass@1")

    def log_diagnostics(self, prefix: str) -> None:
        """The evaluation's diagnostics (already summed over ranks) as ``<prefix>/<name>`` scalars."""
        results = self.eval_diagnostics.compute()
        self.eval_diagnostics.reset()
        for name, value in results.items():
            self.log(f"{prefix}/{name}", float(value))

    def on_test_end(self) -> None:
        self.on_fit_end()  # stop the sandbox workers and the reward thread

    def on_fit_end(self) -> None:
        if hasattr(self.reward_fn, "close"):  # stop sandbox workers (a SandboxReward restarts them on next use)
            self.reward_fn.close()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None


def with_stop(backend: GenerationBackend, stop: StopStrings | None) -> GenerationBackend:
    """``backend`` with the module's stop strings (a copy; unchanged when there are none)."""
    if stop is None:
        return backend
    if not isinstance(backend, SamplingBackend):
        raise TypeError(f"stop_strings need a SamplingBackend, got {type(backend).__name__}")
    backend = copy.copy(backend)
    backend.stop = stop
    return backend


def completion_token_lists(rollout: Rollout) -> list[list[int]]:
    """Each completion's token ids up to and including its EOS."""
    lengths = rollout.completion_mask.sum(-1).tolist()  # [N]
    return [row[:length] for row, length in zip(rollout.completion_ids.tolist(), lengths, strict=True)]


def rows_share(rows: slice, rollout: Rollout) -> float:
    """Fraction of the generation batch's sequences in ``rows``."""
    return (rows.stop - rows.start) / rollout.num_samples
