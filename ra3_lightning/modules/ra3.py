"""``RA3Module``: RA3 mid-training — E-phase, annotation and M-phase of the EM loop — in one LightningModule.

It *is* the E-step (:class:`LatentPolicyModule`: ``self.model`` is trained as the latent policy ``q`` against the
frozen ``self.pi``) and runs the M-step with :class:`NTPModule`'s functions (``lm_loss``, ``loss_mask_for``) on the
traces ``q`` annotated. :class:`ra3_lightning.callbacks.EMScheduler` hands it the
:class:`ra3_lightning.em_schedule.EMSchedule` (which phase each step is in) and calls its phase transitions;
:class:`ra3_lightning.data.EMDataModule` hands out the batch of every step.

One set of weights, two roles. At the start of iteration ``k``'s E-phase ``π ← model`` (the M-step result
``M_{k-1}``) and ``q = model`` starts from it; the E-phase trains ``model`` as ``q``; annotation uses ``q`` and
``π``; the M-phase first restores ``model ← π`` (``M_{k-1}``) and trains it by next-token prediction, giving
``M_k``. So after the last M-phase ``self.model`` is the mid-trained LM, which ``init_from``/``ra3 export`` read.

Optimisers (manual optimisation): one AdamW for the M-phases, kept across iterations, with warm-up + cosine over
all M-steps; one for ``q``, at a constant LR, whose state is reset whenever ``q`` restarts from ``π`` (a fresh
E-phase). Both are in the checkpoint, so a resumed run continues either phase exactly.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ra3_lightning.data.em_data import EMDataModule
from ra3_lightning.em_schedule import EMPosition, EMSchedule
from ra3_lightning.estep import Annotation, annotate
from ra3_lightning.generation import unsharded_for_generation
from ra3_lightning.lora import merge_into_base, reset_adapter
from ra3_lightning.losses import LOSS_MASKS, LossOn, loss_mask_for, perplexity
from ra3_lightning.modules.base import copy_weights
from ra3_lightning.modules.latent_policy import LATENT_OPTIM, LatentPolicyModule
from ra3_lightning.modules.ntp import check_chunk_size, lm_loss
from ra3_lightning.optim import Optim

M_OPTIM = Optim(lr=3e-4, weight_decay=0.1, warmup_steps=10, min_lr_ratio=0.1)  # the M-step's default group


class RA3Module(LatentPolicyModule):
    """RA3 EM mid-training: the E-step knobs of :class:`LatentPolicyModule` plus the M-step and annotation.

    Args:
        optim: ``q``'s optimizer group: a constant LR (``q`` restarts from ``π`` every E-phase), so a
            ``warmup_steps``, ``min_lr_ratio`` or ``total_steps`` in it is rejected, not ignored.
        m_optim: The M-step's optimizer group (:class:`~ra3_lightning.optim.Optim`, default :data:`M_OPTIM`): warm-up
            counted in M-steps, the cosine over all M-steps of the EM schedule (so ``total_steps`` must stay unset).
        loss_on: M-step loss on ``"all"`` tokens (rationales included; the paper's default) or ``"code"`` only.
        m_logprob_chunk_size: Positions per chunk of the LM head in the M-step loss and the raw validation loss
            (:func:`~ra3_lightning.modules.ntp.lm_loss`): the ``[B, L, V]`` logits are never built, each chunk is
            recomputed in the backward pass. ``None`` = dense logits. (The E-step's is ``latent.logprob_chunk_size``.)
        annotation: How each iteration's traces are annotated (:class:`~ra3_lightning.estep.Annotation`: ``choose``,
            ``num_generations``, ``batch_size``, ``shard_size``); sampling and scoring are the E-step's ``latent``
            group, unchanged.
        work_dir: Where annotated traces go (``<work_dir>/iter_<k>/rank_<r>``); default: the logger's directory.
        **kwargs: E-step knobs (``num_generations``, ``latent``, ``loss``, ...) and the model source (``pretrained`` /
            ``init_from`` / ``tiny``, ...), see :class:`LatentPolicyModule`.
    """

    def __init__(
        self,
        optim: Optim = LATENT_OPTIM,
        m_optim: Optim = M_OPTIM,
        loss_on: LossOn = "all",
        m_logprob_chunk_size: int | None = 1024,
        annotation: Annotation = Annotation(),
        work_dir: str | None = None,
        **kwargs: Any,
    ) -> None:
        _check_schedules(optim, m_optim)
        super().__init__(optim=optim, **kwargs)
        self.m_optim = m_optim
        if loss_on not in LOSS_MASKS:
            raise ValueError(f"loss_on={loss_on!r}; choose one of {sorted(LOSS_MASKS)}")
        check_chunk_size("m_logprob_chunk_size", m_logprob_chunk_size)
        self.annotation = annotation
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.em_schedule: EMSchedule | None = None  # handed over by the EMScheduler callback in its setup

    # ----------------------------------------------------------------------------------------- EM transitions
    def use_em_schedule(self, schedule: EMSchedule) -> None:
        """Take the schedule from the EMScheduler callback (before ``configure_optimizers``, which sizes with it)."""
        self.em_schedule = schedule

    @property
    def em_position(self) -> EMPosition:
        """The iteration, phase and step within the phase of the current global step."""
        if self.em_schedule is None:
            raise RuntimeError("RA3Module is driven by the EMScheduler callback: add it to `trainer.callbacks`")
        return self.em_schedule.phase_at(self.trainer.global_step)

    def begin_e_phase(self, iteration: int, fresh: bool) -> None:
        """``π ← model`` and reset ``q``'s optimizer, unless resuming inside the phase (``q`` was restored).

        With LoRA, ``π`` is the base weights (the previous M-phase was merged into them) and ``q`` starts from it by
        zeroing the adapter.
        """
        if not fresh:
            return
        if self.lora is not None:
            reset_adapter(self.model)
        else:
            copy_weights(self.model, self.pi)
        self.optimizers()[1].optimizer.state.clear()

    def annotate_iteration(self, iteration: int) -> str:
        """Annotate this iteration's traces with ``q`` (each rank a stride, resumable by shard); return the dir."""
        out = self.work_dir() / f"iter_{iteration}"
        rank, world = self.trainer.global_rank, self.trainer.world_size
        records = self.em_data.annotation_records(iteration, rank, world)
        self.optimizers()[1].optimizer.state.clear()  # q's moments: the next E-phase restarts them anyway
        # Ranks annotate different numbers of batches: unshard q and π once instead of per-forward gathers. The EM
        # scheduler calls this between steps, outside the training step's autocast: enter the trainer's precision.
        pi = unsharded_for_generation(self.pi) if isinstance(self.pi, torch.nn.Module) else nullcontext()
        with self.stopwatch("annotation", self.device), unsharded_for_generation(self.model), pi:
            with self.precision_context():
                annotated = annotate(
                    self, _as_dataset(records), out / f"rank_{rank}", id_field="id", annotation=self.annotation,
                    seed=self.seed + 7919 * iteration + rank, progress=self.trainer.is_global_zero,
                    stopwatch=self.stopwatch,
                )  # fmt: skip
        self.log_annotation(iteration, annotated)
        self.trainer.strategy.barrier("ra3-annotation")
        return str(out)

    def begin_m_phase(self, iteration: int, annotated: str, fresh: bool) -> None:
        """``model ← π`` (the previous M-step model) unless resuming inside the phase, and load this iteration's
        packed annotated traces."""
        if fresh:
            self.restore_pi()
        ranks = sorted(Path(annotated).glob("rank_*/data"))
        self.em_data.load_annotated(iteration, ranks)

    def precision_context(self) -> Any:
        """The trainer's compute precision (bf16 autocast under ``bf16-mixed``) for work done between steps."""
        return self.trainer.precision_plugin.forward_context() if self._trainer is not None else nullcontext()

    def restore_pi(self) -> None:
        """``model ← π`` (``M_{k-1}``) at the start of an M-phase. With LoRA: zero the adapter, which restarts, and
        with it the M-step optimizer's moments (its learning-rate schedule continues)."""
        if self.lora is None:
            copy_weights(self.pi, self.model)
            return
        reset_adapter(self.model)
        self.optimizers()[0].optimizer.state.clear()

    def end_m_phase(self, iteration: int) -> None:
        """Merge a LoRA M-step into the base weights (they become ``M_k`` = the next ``π``), then log the M-step
        model's loss on raw (un-annotated) validation traces — comparable with NTP's."""
        if self.lora is not None:
            merge_into_base(self.model)
        with self.precision_context(), self.stopwatch("raw_val_loss", self.device):
            loss = self.raw_val_loss()
        if loss is not None:
            self.log("mstep/raw_val_loss", loss, sync_dist=True)
            self._add_scalar("em_iteration/raw_val_loss", loss, iteration)
            self._add_scalar("em_iteration/raw_val_ppl", perplexity(loss), iteration)
        self.log_timing(iteration)

    # ----------------------------------------------------------------------------------------- steps
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        position = self.em_position
        rank, world = self.trainer.global_rank, self.trainer.world_size
        if position.phase == "E":
            with self.stopwatch("estep", self.device):
                loss = super().training_step(
                    self.em_data.e_batch(position.iteration, position.step_in_phase, rank, world), batch_idx
                )
                self._step(self.optimizers()[1], self.lr_schedulers()[1], loss, "estep/lr", self.optim)
        else:
            with self.stopwatch("mstep", self.device):
                loss = self.m_step(self.em_data.m_batch(position.iteration, position.step_in_phase, rank, world))
                self._step(self.optimizers()[0], self.lr_schedulers()[0], loss, "mstep/lr", self.m_optim)
        self.log("em/iteration", float(position.iteration))
        self.log("em/phase_is_m", float(position.phase == "M"))
        return loss

    def m_step(self, batch: dict[str, Tensor]) -> Tensor:
        """Next-token prediction on packed annotated traces (``loss_on`` decides whether rationales count)."""
        start = time.perf_counter()
        batch = {k: v.to(self.device) for k, v in batch.items()}
        mask = loss_mask_for(self.hparams.loss_on, batch)  # [B, L] or None
        loss, _ = lm_loss(self.model, batch, mask, self.hparams.m_logprob_chunk_size)
        self.log("mstep/loss", loss, prog_bar=True)
        self.log("mstep/ppl", perplexity(loss))
        self.log("mstep/rationale_token_frac", batch["rationale_mask"].float().mean())
        self.log("perf/m_tokens_per_s", float(batch["attention_mask"].sum()) / (time.perf_counter() - start))
        return loss

    def _step(self, optimizer: Any, scheduler: Any, loss: Tensor, lr_tag: str, group: Optim) -> None:
        optimizer.zero_grad()
        self.manual_backward(loss)
        self.clip_to(optimizer, group)
        optimizer.step()
        scheduler.step()
        self.log(lr_tag, scheduler.get_last_lr()[0])

    @torch.no_grad()
    def raw_val_loss(self) -> Tensor | None:
        """Token-weighted NTP loss of ``self.model`` on the raw validation traces (all ranks), or ``None``."""
        total, count = torch.zeros((), device=self.device), torch.zeros((), device=self.device)
        was_training = self.model.training
        self.model.eval()
        for batch in self.em_data.val_batches(self.trainer.global_rank, self.trainer.world_size):
            batch = {k: v.to(self.device) for k, v in batch.items()}
            loss, n = lm_loss(self.model, batch, None, self.hparams.m_logprob_chunk_size)
            total, count = total + loss * n, count + n
        self.model.train(was_training)
        total, count = (
            self.trainer.strategy.reduce(total, reduce_op="sum"),
            self.trainer.strategy.reduce(count, reduce_op="sum"),
        )
        return total / count if count > 0 else None

    # ----------------------------------------------------------------------------------------- logging
    def log_annotation(self, iteration: int, annotated: Any) -> None:
        """Per-iteration THINK rate (every record), ELBO per line and log-likelihood gain (the records ``π`` scored,
        all unless ``annotation.score_fraction < 1``), plus a sample."""
        with_, without, elbo = (annotated[k] for k in ("line_logp_with", "line_logp_without", "elbo"))  # read once
        lines = sum(len(x) for x in with_)
        thinks = sum(len(x) for x in annotated["think_lines"])
        self._add_scalar("em_iteration/think_rate", thinks / max(1, lines), iteration)
        scored = [i for i, value in enumerate(elbo) if not math.isnan(value)]
        if scored:
            scored_lines = max(1, sum(len(with_[i]) for i in scored))
            self._add_scalar("em_iteration/elbo_per_line", sum(elbo[i] for i in scored) / scored_lines, iteration)
            gain = sum(sum(with_[i]) - sum(without[i]) for i in scored)
            self._add_scalar("em_iteration/logp_gain_per_line", gain / scored_lines, iteration)
        experiment = getattr(self.logger, "experiment", None)
        if self.trainer.is_global_zero and hasattr(experiment, "add_text") and len(annotated):
            experiment.add_text("em_iteration/annotated_trace", f"```python\n{annotated[0]['text']}\n```", iteration)

    def log_timing(self, iteration: int) -> None:
        """This rank's seconds so far in each part of the EM loop, as ``timing_s/<part>`` by iteration: ``estep``
        (whole E-steps; within them ``estep/rollout``, ``estep/score``, ``estep/policy_forward`` and, on logging
        steps, ``estep/elbo_gain``), ``annotation`` (``annotation/sample``, ``annotation/score``,
        ``annotation/plain``, ``annotation/write``), ``mstep`` and ``raw_val_loss``."""
        for part, seconds in self.stopwatch.totals().items():
            self._add_scalar(f"timing_s/{part}", seconds, iteration)

    def _add_scalar(self, tag: str, value: float | Tensor, iteration: int) -> None:
        experiment = getattr(self.logger, "experiment", None)
        if self.trainer.is_global_zero and hasattr(experiment, "add_scalar"):
            experiment.add_scalar(tag, float(value), iteration)

    # ----------------------------------------------------------------------------------------- plumbing
    @property
    def em_data(self) -> EMDataModule:
        data = self.trainer.datamodule
        if not isinstance(data, EMDataModule):
            raise TypeError(f"RA3Module needs an EMDataModule (`data.class_path`), got {type(data).__name__}")
        return data

    def work_dir(self) -> Path:
        if self.hparams.work_dir:
            return Path(self.hparams.work_dir)
        log_dir = self.trainer.log_dir or self.trainer.default_root_dir
        return Path(log_dir) / "em"

    def configure_optimizers(self) -> tuple[list, list]:
        if self.em_schedule is None:
            raise RuntimeError("RA3Module is driven by the EMScheduler callback: add it to `trainer.callbacks`")
        m = self.m_optim.build(self.model.named_parameters(), total_steps=self.em_schedule.total_m_steps)
        q = self.optim.build(self.model.named_parameters(), total_steps=1)  # constant LR: q restarts from π
        return [m["optimizer"], q["optimizer"]], [m["lr_scheduler"]["scheduler"], q["lr_scheduler"]["scheduler"]]


def _as_dataset(records: list[dict[str, str]]) -> Any:
    import datasets

    return datasets.Dataset.from_list(records) if records else datasets.Dataset.from_dict({"id": [], "text": []})


def _check_schedules(q: Optim, m: Optim) -> None:
    """``q``'s LR is constant and the M-step's cosine spans the EM schedule's M-steps: reject what would not apply."""
    if q.warmup_steps != 0 or q.min_lr_ratio != 1.0 or q.total_steps is not None:
        raise ValueError(
            f"RA3Module trains q at a constant LR (it restarts from π every E-phase): optim {q} sets warmup_steps, "
            "min_lr_ratio or total_steps, which do not apply; the M-step's schedule is m_optim"
        )
    if m.total_steps is not None:
        raise ValueError(f"m_optim.total_steps={m.total_steps}: the M-step schedule spans the EM schedule's M-steps")
