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

Validation (and ``ra3 test``) is the evaluation component every module has
(:class:`~ra3_lightning.evaluation.PassAtKEvaluation`, the ``evaluation`` group of :class:`CausalLMModule`): pass@k
and the diagnostics of :mod:`ra3_lightning.eval_diagnostics`, a samples file, the THINK bias. RLVR validates with it
on the data module's validation tasks (``Evaluation()`` when no group is given) and hands it its
``max_completion_length`` and ``reward_fn`` where the group leaves them unset.

Each rank's sandbox gets its share of the node's CPUs (:meth:`RLVRModule.setup`): ``trainer.devices`` ranks per
node each start ``usable CPUs // devices`` workers unless ``reward_fn.workers`` is given.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import Tensor

from ra3_lightning.data.task_data import TaskBatch
from ra3_lightning.data.tasks import CodingTask
from ra3_lightning.evaluation import Evaluation, completion_token_lists
from ra3_lightning.generation import GenerationBackend, KVSample, Rollout, with_stop
from ra3_lightning.logprobs import selective_logprobs
from ra3_lightning.lora import AdapterOff
from ra3_lightning.modules.base import CausalLMModule, reaches_logger, shard_lm
from ra3_lightning.optim import Optim
from ra3_lightning.rewards import RewardFn
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

# Evaluation, RewardFn, with_stop and completion_token_lists are imported here by older code: they stay importable.
__all__ = ["RLVR_OPTIM", "Evaluation", "RLVRModule", "RewardFn", "completion_token_lists", "rows_share", "with_stop"]

RLVR_OPTIM = Optim(lr=1e-6, max_grad_norm=1.0)  # the default optimizer group: constant LR, clipped


class RLVRModule(CausalLMModule):
    """GRPO / DAPO / Dr. GRPO on coding tasks with sandboxed unit-test rewards.

    Args:
        num_generations: ``G``, completions sampled per prompt (one group).
        max_completion_length: Completion budget in tokens (Dr. GRPO's constant normaliser); also the evaluation's
            unless ``evaluation.max_completion_length`` is set.
        generation: Sampling backend (default :class:`~ra3_lightning.generation.KVSample` at temperature 1;
            :class:`~ra3_lightning.generation.HFGenerate` runs ``model.generate``). It gets the module's
            ``stop_strings`` (it must then be a ``SamplingBackend``).
        reward_fn: ``(completions, tasks) -> list[float]``; default ``SandboxReward(mode="binary")``. Override by
            ``class_path`` in YAML or by overriding :meth:`compute_rewards` in a subclass. Evaluation scores with it
            too unless ``evaluation.reward_fn`` is set.
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
        log_samples_every_n_steps: Write sample prompts / completions as TensorBoard text this often (0 = never).
        num_logged_samples: How many samples to write each time.
        **kwargs: Of :class:`CausalLMModule`: the model source and loading options (``pretrained`` / ``init_from``
            / ``tiny``, ``tokenizer``, ``dtype``, ...), ``evaluation`` (the validation / test group; default
            ``Evaluation()``), ``stop_strings`` (training rollouts and evaluation) and ``seed`` (of the per-step
            rollout RNG).
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
        log_samples_every_n_steps: int = 50,
        num_logged_samples: int = 4,
        **kwargs: Any,
    ) -> None:
        kwargs["evaluation"] = kwargs.get("evaluation") or Evaluation()  # RLVR always validates
        super().__init__(**kwargs)
        if num_generations < 2:
            raise ValueError(f"num_generations must be >= 2 for a group baseline (got {num_generations})")
        self.save_hyperparameters(ignore=["generation", "reward_fn"])
        self.automatic_optimization = False
        self.G, self.max_completion_length = num_generations, max_completion_length
        self.loss = loss  # the group as given; estimator names resolved below
        self.generation = with_stop(generation or KVSample(), self.stop)
        self.reward_fn = reward_fn
        self.optim = optim
        self.format_reward = format_reward
        self.scale_rewards = resolve(loss.scale_rewards, SCALERS, "loss.scale_rewards")
        self.advantage_baseline = resolve(loss.advantage_baseline, BASELINES, "loss.advantage_baseline")
        self.loss_type = resolve(loss.loss_type, AGGREGATIONS, "loss.loss_type")
        self.kl_estimator = resolve(loss.kl_estimator, KL_ESTIMATORS, "loss.kl_estimator")
        self.micro_batch_size, self.logprob_chunk_size = micro_batch_size, logprob_chunk_size
        if micro_batch_tokens is not None and micro_batch_tokens < 1:
            raise ValueError(f"micro_batch_tokens={micro_batch_tokens} must be >= 1 (or None)")
        self.micro_batch_tokens = micro_batch_tokens
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

        super().setup(stage)
        if isinstance(self.reward_fn, SandboxReward) and self.reward_fn.workers is None:
            self.reward_fn.workers = self.sandbox_workers()

    # ----------------------------------------------------------------------------------------- hooks
    def default_reward_fn(self) -> RewardFn:
        """Hook: the reward used when none is configured (a binary :class:`~ra3_lightning.rewards.SandboxReward`
        with :meth:`sandbox_workers` workers)."""
        from ra3_lightning.rewards import SandboxReward

        return SandboxReward(mode="binary", workers=self.sandbox_workers())

    def evaluation_reward_fn(self) -> RewardFn:
        """Evaluation scores with the training reward (one sandbox) unless ``evaluation.reward_fn`` is set."""
        if self.reward_fn is None:
            self.reward_fn = self.default_reward_fn()
        return self.reward_fn

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
        """``num_samples`` completions per prompt within ``max_completion_length``, seeded from ``(seed, step,
        rank)`` (:meth:`CausalLMModule.sample`)."""
        return self.sample(batch.prompt_ids, batch.prompt_mask, backend, num_samples, self.max_completion_length, step)

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
        """pass@k and the diagnostics on the validation tasks (the evaluation component), logged as ``val/...``."""
        self.evaluator.step(self, batch, batch_idx)

    def on_validation_epoch_start(self) -> None:
        self.evaluator.start(self, "val")

    def on_validation_epoch_end(self) -> None:
        self.evaluator.end(self, "val")

    def on_test_end(self) -> None:
        super().on_test_end()
        self.on_fit_end()  # stop the sandbox workers and the reward thread

    def on_fit_end(self) -> None:
        if hasattr(self.reward_fn, "close"):  # stop sandbox workers (a SandboxReward restarts them on next use)
            self.reward_fn.close()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None


def rows_share(rows: slice, rollout: Rollout) -> float:
    """Fraction of the generation batch's sequences in ``rows``."""
    return (rows.stop - rows.start) / rollout.num_samples
