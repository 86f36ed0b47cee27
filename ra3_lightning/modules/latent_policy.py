"""The RA3 E-step: a latent policy ``q`` learns where to insert rationales, and what they say, by RL.

``q`` (``self.model``, trainable) starts as a copy of the frozen current model ``π`` (``self.pi``, made in
:meth:`LatentPolicyModule.configure_model`). One training step reads

    rollout (q, G samples per trace) → score (π, one teacher-forced pass) → rewards/returns → group advantages
    → REINFORCE loss over the THINK/ACT decisions and rationale tokens (log q re-computed with grad)

with ``r_t = log π(a_t | s_t, z_{≤t}) − c·1[THINK]``. Batches come from
:class:`ra3_lightning.data.texts.TextDataModule` (``{"id": [...], "text": [...]}``); ``ra3 predict`` returns
annotated-trace records (:func:`ra3_lightning.estep.annotate_batch`), :func:`ra3_lightning.estep.annotate`
writes them to disk resumably.

**Hindsight** (``hindsight_lines = k > 0``): ``q`` becomes a posterior ``q(z_t | s_t, a_{t:t+k})``. At boundary ``t``
its stream gets a hidden group: the raw tokens of expert lines ``t..t+k-1`` (fewer when the trace ends sooner), line
``t``'s indentation, then the decision and the rationale. The group is masked from every later token and its
positions are given back, and the indentation and rationale are fed again in the visible stream, so after boundary
``t`` ``q`` sees exactly ``π``'s sequence. ``π``'s scoring, the annotated texts and the M-step never see the groups;
the loss recomputes ``log q`` on ``Rollout.q_layout`` (groups included, a 4-D attention mask: SDPA or eager
attention), and the KL reference is ``π`` on its own layout (the prior ``p(z_t | s_t)``). See docs/estep.md.

Deviations from the paper / known limits: the KL of ``q`` to its initial policy (= ``π``) is a loss term, not a
reward. ``π`` takes memory of its own only without ``lora``: it is then a full frozen copy of ``q`` made before
sharding, and under FSDP2 it is sharded like ``q`` (each rank holds 1/world of its bytes; both are unsharded once
while annotating). With ``lora`` (:mod:`ra3_lightning.lora`) ``π`` is no copy: it is ``q``'s frozen base weights
with the adapter switched off (:class:`~ra3_lightning.lora.AdapterOff`), and only the adapter trains.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import Tensor

from ra3_lightning.estep import (
    Annotation,
    EStep,
    LatentFormat,
    LatentRL,
    LatentVocab,
    PolicyTerms,
    Rollout,
    annotate_batch,
    encode_trace,
    policy_logq,
)
from ra3_lightning.generation import unsharded_for_generation
from ra3_lightning.lora import AdapterOff
from ra3_lightning.modules.base import CausalLMModule, reaches_logger, shard_lm
from ra3_lightning.optim import Optim, schedule_length
from ra3_lightning.rl.advantages import (
    BASELINES,
    SCALERS,
    group_advantages,
    masked_mean,
)
from ra3_lightning.rl.config import LatentLoss
from ra3_lightning.rl.kl import KL_ESTIMATORS, kl_penalty
from ra3_lightning.rl.registry import resolve
from ra3_lightning.rl.returns import discounted_returns, latent_pg_loss, normalize_line_logp
from ra3_lightning.stopwatch import Stopwatch

LATENT_OPTIM = Optim(lr=1e-5)  # q's default optimizer group: a constant LR


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``model`` in eval mode with ``requires_grad=False`` everywhere."""
    pi = copy.deepcopy(model).eval()
    pi.requires_grad_(False)
    return pi


def binary_entropy(p: Tensor) -> Tensor:
    """``−p log p − (1−p) log(1−p)`` in nats (0 at p ∈ {0, 1})."""
    return -(torch.special.xlogy(p, p) + torch.special.xlogy(1 - p, 1 - p))


class LatentPolicyModule(CausalLMModule):
    """RA3 E-step: RL of the latent policy ``q`` against the frozen model ``π``.

    Args:
        num_generations: ``G`` latent rollouts per trace (the group of the baseline).
        latent: How ``q`` writes rationales and ``π`` scores them (:class:`~ra3_lightning.estep.LatentRL`:
            ``think_cost``, ``max_latent_tokens``, ``temperature``, ``act_likelihood``, ``hindsight_lines``,
            ``engine``, ``logprob_chunk_size``); annotation uses the same value.
        loss: The latent policy gradient (:class:`~ra3_lightning.rl.config.LatentLoss`: ``gamma``, ``reward_norm``,
            ``beta``, ``kl_estimator``, ``scale_rewards``, ``advantage_baseline``).
        optim: ``q``'s optimizer group (:class:`~ra3_lightning.optim.Optim`, default :data:`LATENT_OPTIM`);
            ``total_steps`` defaults to ``trainer.estimated_stepping_batches``.
        latent_format: How a rationale is written and which tokens open / continue / end it
            (:class:`~ra3_lightning.estep.LatentFormat`; default: a ``# `` comment line). Another format by
            ``class_path`` (or ``init_args: {comment_prefix: "// "}``); its marker must begin some token's text.
        log_samples_every_n_steps: Log an annotated trace as TensorBoard text every this many steps (0 = never).
        **kwargs: Of :class:`CausalLMModule`: the model source and loading options (``pretrained`` / ``init_from`` /
            ``tiny``, ``tokenizer``, ``dtype``, ...) and ``seed`` (of the rollout sampler).
    """

    def __init__(
        self,
        num_generations: int = 4,
        latent: LatentRL = LatentRL(),
        loss: LatentLoss = LatentLoss(),
        optim: Optim = LATENT_OPTIM,
        latent_format: LatentFormat | None = None,
        log_samples_every_n_steps: int = 50,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if num_generations < 2:
            raise ValueError(f"num_generations={num_generations}: the group baseline needs >= 2 rollouts per trace")
        self.save_hyperparameters()  # objects chosen by class_path appear here as their config: use the attributes
        self.num_generations, self.latent, self.loss = num_generations, latent, loss
        self.scale_rewards = resolve(loss.scale_rewards, SCALERS, "loss.scale_rewards")
        self.advantage_baseline = resolve(loss.advantage_baseline, BASELINES, "loss.advantage_baseline")
        self.kl_estimator = resolve(loss.kl_estimator, KL_ESTIMATORS, "loss.kl_estimator")
        self._latent_format = latent_format or LatentFormat()
        self.optim = optim
        self.pi: torch.nn.Module | None = None
        self.generator = torch.Generator().manual_seed(self.seed)
        self._estep: EStep | None = None
        self.stopwatch = Stopwatch()  # seconds per part of the E-step (and of RA3's EM loop), see timing_s/*

    # ----------------------------------------------------------------------------------------- hooks
    def latent_format(self) -> LatentFormat:
        """The latent format of rationales: the ``latent_format`` argument, or a ``# `` comment line."""
        return self._latent_format

    @property
    def estep(self) -> EStep:
        """Rollout → scoring → rewards with this module's ``latent`` group (training, the logged gain, annotation)."""
        if self._estep is None:
            self._estep = EStep(self.latent, LatentVocab.from_tokenizer(self.tokenizer, self.latent_format()))
        return self._estep

    @property
    def vocab(self) -> LatentVocab:
        return self.estep.vocab

    def configure_model(self) -> None:
        """Build ``q`` and the frozen ``π``, then shard both under FSDP2.

        ``π`` is a frozen copy made before any sharding — or, with ``lora``, no copy at all: ``q``'s base weights
        with the adapter off (:class:`~ra3_lightning.lora.AdapterOff`).
        """
        if self.model is None:
            self.model = self.build_model()
        if self.pi is None:
            self.pi = AdapterOff(self.model) if self.lora is not None else frozen_copy(self.model)
        super().configure_model()
        if isinstance(self.pi, torch.nn.Module) and self._trainer is not None:
            if isinstance(self.trainer.strategy, ModelParallelStrategy):
                shard_lm(self.pi, self.device_mesh)  # per rank 1/world of π's bytes; unsharded while annotating

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["ra3_rollout_rng"] = self.generator.get_state()  # a resumed run samples what it would have

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if "ra3_rollout_rng" in checkpoint:
            self.generator.set_state(checkpoint["ra3_rollout_rng"])

    # ----------------------------------------------------------------------------------------- steps
    def sample_latents(self, texts: list[str]) -> Rollout:
        """``G`` latent rollouts of each text with ``q`` (no grad)."""
        traces = [encode_trace(self.tokenizer, t) for t in texts]
        # Under FSDP2, ranks roll out different numbers of steps: unshard q once instead of per-forward gathers.
        with unsharded_for_generation(self.model), self.stopwatch("estep/rollout", self.device):
            return self.estep.sample(self.model, traces, self.num_generations, self.generator)

    def advantages(self, roll: Rollout, line_logp: Tensor) -> tuple[Tensor, Tensor]:
        """Rewards ``[N, T]`` and group advantages of the returns ``[N, T]``."""
        mask = roll.line_mask.to(line_logp.device)
        logp = normalize_line_logp(line_logp, roll.num_tokens.to(line_logp.device), self.loss.reward_norm)
        rewards = self.estep.rewards(logp, roll)
        returns = discounted_returns(rewards, self.loss.gamma, mask)
        groups = (-1, self.num_generations, returns.shape[-1])
        adv = group_advantages(
            returns.view(groups), self.scale_rewards, mask.view(groups), baseline=self.advantage_baseline
        ).view_as(returns)
        return rewards, adv

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        roll = self.sample_latents(batch["text"])
        with self.stopwatch("estep/score", self.device):
            scores = self.estep.score(self.pi, roll, reference=True)
        line_logp, ref = scores.line_logp, scores.reference
        rewards, adv = self.advantages(roll, line_logp)
        with self.stopwatch("estep/policy_forward", self.device):
            terms = policy_logq(
                self.model, roll.q_layout, roll.think, roll.line_mask, self.vocab, self.latent.temperature,
                chunk_size=self.latent.logprob_chunk_size,
            )  # fmt: skip
        kl = kl_penalty(terms.logq, ref.logq, self.kl_estimator)  # [N, T]
        loss, stats = latent_pg_loss(terms.logq, adv, roll.line_mask.to(adv.device), kl, self.loss.beta)
        self.log_estep(roll, line_logp, rewards, terms, stats)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        """Annotated-trace records for a batch (one sample per trace; see :func:`ra3_lightning.estep.annotate`)."""
        return annotate_batch(self.model, self.pi, self.estep, batch["text"], batch["id"], Annotation(), self.generator)

    # ----------------------------------------------------------------------------------------- logging
    def log_estep(
        self, roll: Rollout, line_logp: Tensor, rewards: Tensor, terms: PolicyTerms, stats: dict[str, Tensor]
    ) -> None:
        """Log ELBO per line, reward, THINK rate, comment length, KL, THINK entropy, rollout lines/s, gain."""
        mask = roll.line_mask.to(rewards.device)
        think = roll.think.to(rewards.device) & mask
        lines = mask.sum().clamp(min=1)
        elbo = self.estep.rewards(line_logp, roll)  # [N, T] log π(a_t | …) − c·1[THINK]
        comment_len = [
            len(c)
            for row, flags in zip(roll.rationales, roll.think, strict=True)
            for c, f in zip(row, flags, strict=True)
            if f
        ]
        metrics = {
            "estep/elbo_per_line": elbo.sum() / lines,
            "estep/reward": rewards.sum(-1).mean(),
            "estep/think_rate": think.sum() / lines,
            "estep/comment_len": torch.tensor(float(sum(comment_len)) / max(1, len(comment_len))),
            "estep/kl": stats["kl"],
            "estep/think_entropy": masked_mean(binary_entropy(terms.p_think.detach()), mask),
            "perf/rollout_lines_per_s": torch.tensor(float(roll.line_mask.sum()) / max(roll.seconds, 1e-9)),
        }
        if reaches_logger(self):  # the gain needs a forward pass of π without rationales: only when it is logged
            with self.stopwatch("estep/elbo_gain", self.device):
                plain = self.estep.plain_logp(self.pi, roll.traces, roll.layout.input_ids.device)  # [B, T]
            metrics["estep/elbo_gain_per_line"] = (elbo.sum() - plain.sum() * roll.num_generations) / lines
        think_rate = metrics.pop("estep/think_rate")
        self.log_dict(metrics, batch_size=len(roll.traces))
        self.log("estep/think_rate", think_rate, prog_bar=True, batch_size=len(roll.traces))
        self._log_samples(roll)

    def _log_samples(self, roll: Rollout) -> None:
        every = self.hparams.log_samples_every_n_steps
        experiment = getattr(self.logger, "experiment", None) if self._trainer is not None else None
        if not every or self.global_step % every or not hasattr(experiment, "add_text"):
            return
        texts = [roll.annotated(n * roll.num_generations, self.vocab).text for n in range(min(2, len(roll.traces)))]
        body = "\n\n".join(f"```python\n{t}\n```" for t in texts)
        experiment.add_text("estep/annotated_traces", body, global_step=self.global_step)

    # ----------------------------------------------------------------------------------------- optimizer
    def configure_optimizers(self) -> dict[str, Any]:
        return self.optim.build(self.model.named_parameters(), schedule_length(self.optim.total_steps, self.trainer))
