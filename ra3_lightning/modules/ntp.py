"""``NTPModule``: next-token prediction on code traces — the RA3 M-step and the NTP baseline in one class.

The NTP baseline trains it on raw expert code; the M-step trains it on the annotated traces the E-step wrote
(``TraceDataModule(rationale_spans_field="rationale_spans")``). ``loss_on="all"`` (the paper's default) puts loss
on every token, rationales included, so the model learns to write its own; ``loss_on="code"`` keeps rationales as
context only.

Packed batches: ``transformers`` separates packed documents by the restarts in ``position_ids`` only when no 2-D
``attention_mask`` and no KV cache is given (``masking_utils.find_packed_sequence_indices``; eager, sdpa and
flash-attention alike). :func:`lm_inputs` therefore passes ``use_cache=False``, ``position_ids`` always, and
``attention_mask`` only when it matters: right padding is invisible to real tokens under causal attention, so a
batch whose padding is all on the right goes without it and each packed document attends only to itself. Any other
padding layout gets the mask (and then packed documents would see each other).

Memory: the loss (:func:`lm_loss`) never builds the ``[B, L, V]`` logits. Inside the model's forward the LM head
computes each position's target log-prob ``logprob_chunk_size`` positions at a time
(:func:`ra3_lightning.logprobs.selective_logprobs`, checkpointed under autograd), so the logits cost a few
``[chunk, V]`` fp32 tensors (one chunk's forward and backward) instead of several ``[B, L, V]`` ones
(docs/memory.md). ``forward`` still returns logits.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor
from torchmetrics import MeanMetric

from ra3_lightning.logprobs import selective_logprobs
from ra3_lightning.losses import (
    LOSS_MASKS,
    LossOn,
    causal_lm_loss,
    loss_mask_for,
    mean_token_nll,
    perplexity,
    shifted_targets,
)
from ra3_lightning.modules.base import CausalLMModule
from ra3_lightning.optim import Optim, schedule_length

NTP_OPTIM = Optim(lr=3e-4, weight_decay=0.1, warmup_steps=100, min_lr_ratio=0.1)  # the default optimizer group


def lm_inputs(batch: dict[str, Tensor]) -> dict[str, Any]:
    """Keyword arguments for the HF model from a ``TraceDataModule`` batch (see the module docstring)."""
    inputs: dict[str, Any] = {"input_ids": batch["input_ids"], "use_cache": False}  # [B, L]; a cache disables packing
    if "position_ids" in batch:
        inputs["position_ids"] = batch["position_ids"]  # [B, L], restarting at 0 per packed document
    mask = batch.get("attention_mask")  # [B, L]
    if mask is not None and not _padding_only_on_right(mask):
        inputs["attention_mask"] = mask
    return inputs


def lm_loss(
    model: torch.nn.Module,
    batch: dict[str, Tensor],
    loss_mask: Tensor | None = None,  # [B, L] bool, True = the token counts as a target
    chunk_size: int | None = 1024,
) -> tuple[Tensor, Tensor]:
    """``(mean token NLL, number of target tokens)`` of ``model`` on a batch: :func:`causal_lm_loss`'s value.

    The model runs on :func:`lm_inputs` (``logits_to_keep`` added); its LM head computes each position's target
    log-prob ``chunk_size`` positions at a time (:func:`~ra3_lightning.logprobs.selective_logprobs`), and the loss is
    :func:`~ra3_lightning.losses.mean_token_nll` of those. ``chunk_size=None``: dense logits and
    :func:`causal_lm_loss` (models that post-process their logits, e.g. soft-capping, need it).
    """
    labels = batch["labels"]  # [B, L]
    if labels.shape != batch["input_ids"].shape:
        raise ValueError(f"labels {tuple(labels.shape)} and input_ids {tuple(batch['input_ids'].shape)} disagree")
    if chunk_size is None:
        return causal_lm_loss(model(**lm_inputs(batch)).logits, labels, loss_mask)
    targets = shifted_targets(labels, loss_mask)  # [B, L-1], -100 = not counted
    logp, _ = selective_logprobs(model, lm_inputs(batch), targets.clamp(min=0), chunk_size)  # [B, L-1]
    return mean_token_nll(logp, targets)


def check_chunk_size(name: str, chunk_size: int | None) -> None:
    """Reject a chunk size below 1 at construction (``None`` = dense logits)."""
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"{name}={chunk_size}: positions per LM-head chunk must be >= 1 (or null for dense logits)")


def _padding_only_on_right(mask: Tensor) -> bool:
    """True when every row of ``mask`` ([B, L], 1 = real token) is ones followed by zeros."""
    return bool((mask[:, 1:] <= mask[:, :-1]).all())


class NTPModule(CausalLMModule):
    """Causal-LM training on code traces with AdamW and a warm-up + cosine LR schedule.

    Logs ``train/loss``, ``train/ppl``, ``lr``, ``perf/tokens_per_s`` (non-padding tokens per second between
    consecutive training batches, summed over ranks) and ``val/loss`` / ``val/ppl`` (token-weighted over the
    whole validation set).

    Args:
        loss_on: ``"all"`` tokens, or ``"code"`` only (rationale tokens masked out of the loss; needs batches with
            a ``rationale_mask``).
        optim: The optimizer group (:class:`~ra3_lightning.optim.Optim`, default :data:`NTP_OPTIM`);
            ``total_steps`` defaults to ``trainer.estimated_stepping_batches``.
        logprob_chunk_size: Positions per chunk of the LM head in the training and validation loss
            (:func:`lm_loss`): the ``[B, L, V]`` logits are never built, each chunk's ``[chunk, V]`` fp32 logits are
            recomputed in the backward pass. ``None`` = dense logits (models that post-process their logits, e.g.
            soft-capping, need it). Same loss and gradients either way.
        **kwargs: Model source and loading options of :class:`CausalLMModule` (``pretrained`` / ``init_from`` /
            ``tiny``, ``tokenizer``, ``dtype``, ...).
    """

    def __init__(
        self,
        loss_on: LossOn = "all",
        optim: Optim = NTP_OPTIM,
        logprob_chunk_size: int | None = 1024,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if loss_on not in LOSS_MASKS:
            raise ValueError(f"loss_on={loss_on!r}; choose one of {sorted(LOSS_MASKS)}")
        check_chunk_size("logprob_chunk_size", logprob_chunk_size)
        self.save_hyperparameters()
        self.loss_on, self.optim, self.logprob_chunk_size = loss_on, optim, logprob_chunk_size
        self.val_loss = MeanMetric()
        self._last_batch_end: float | None = None

    # ----------------------------------------------------------------------------------------- steps
    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """Logits ``[B, L, V]`` for a batch."""
        return self.model(**lm_inputs(batch)).logits

    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """``(mean token NLL, number of target tokens)`` of a batch under ``loss_on`` (LM head in chunks)."""
        return lm_loss(self.model, batch, loss_mask_for(self.loss_on, batch), self.logprob_chunk_size)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss, _ = self.loss(batch)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/ppl", perplexity(loss))
        self.log("lr", self.lr_schedulers().get_last_lr()[0])
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        loss, num_tokens = self.loss(batch)
        self.val_loss.update(loss, weight=num_tokens)

    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute()  # token-weighted mean over all ranks and batches
        self.val_loss.reset()
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)  # identical on all ranks; silences a warning
        self.log("val/ppl", perplexity(loss), sync_dist=True)

    # ----------------------------------------------------------------------------------------- throughput
    def on_train_batch_end(self, outputs: Any, batch: dict[str, Tensor], batch_idx: int) -> None:
        now = time.perf_counter()
        if self._last_batch_end is not None:
            tokens = _real_tokens(batch)
            self.log("perf/tokens_per_s", tokens / (now - self._last_batch_end), sync_dist=True, reduce_fx="sum")
        self._last_batch_end = now

    def on_validation_start(self) -> None:
        self._last_batch_end = None  # the interval across a validation pass is not training throughput

    def on_train_epoch_start(self) -> None:
        self._last_batch_end = None

    # ----------------------------------------------------------------------------------------- optimizer
    def configure_optimizers(self) -> dict[str, Any]:
        return self.optim.build(self.model.named_parameters(), schedule_length(self.optim.total_steps, self.trainer))


def _real_tokens(batch: dict[str, Tensor]) -> Tensor | float:
    """Non-padding tokens of a batch (all of them when it has no ``attention_mask``); a tensor, so no device sync."""
    mask = batch.get("attention_mask")
    return mask.sum() if mask is not None else float(batch["input_ids"].numel())
