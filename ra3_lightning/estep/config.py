"""The E-step's knob groups: :class:`LatentRL` (how ``q`` writes rationales and ``π`` scores them) and
:class:`Annotation` (how a trace corpus is annotated with them). Training ``q`` (``model.latent``) and annotation
(``model.annotation``, :func:`~ra3_lightning.estep.annotate`) take the same ``LatentRL`` value whole.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Literal, get_args

from ra3_lightning.estep.engines import resolve_engine
from ra3_lightning.estep.scoring import ActLikelihood

Choose = Literal["sample", "best"]


@dataclass(frozen=True)
class LatentRL:
    """How ``q`` writes rationales and how ``π`` scores them: one value that the E-step's training (``model.latent``
    of ``LatentPolicyModule`` / ``RA3Module``) and annotation share, through :class:`~ra3_lightning.estep.EStep`.

    Attributes:
        think_cost: ``c`` in ``r_t = log π(a_t|…) − c·1[THINK]`` (paper: 0.05; ablations 0.01, 0.2).
        max_latent_tokens: Most tokens in a rationale, its newline included (>= 2).
        temperature: Sampling temperature of ``q`` (decisions and rationale tokens).
        act_likelihood: How an expert line's ``log π(a_t | …)`` is scored. ``"conditional"``: given the latent, the
            line is code, so its first token is renormalised over the tokens that do not start a comment (a THINK
            pays off only if its text makes the code more likely). ``"marginal"``: the plain token likelihood, in
            which not commenting costs ``log(1 − P_π(#))`` wherever ``π`` expects a comment (THINKs pay off there
            whatever they say). The paper does not say which it uses.
        hindsight_lines: ``k``: before deciding THINK/ACT at line ``t`` and writing its rationale, ``q`` sees the
            next ``k`` expert lines ``t..t+k-1`` (fewer at the end of a trace) in a context that ``π``'s scoring,
            the annotated text and the M-step never see. 0 (default): the rationale is a plan written from the
            prefix alone, as the model must at inference time. Needs SDPA or eager attention for ``k > 0``, and the line
            engine (``engine="auto"`` picks it; ``"wave"`` with ``k > 0`` raises).
        engine: How the rollout feeds ``q``: ``"wave"`` (one forward call over the rest of every trace per THINK;
            ``hindsight_lines = 0`` only, naming it with ``k > 0`` raises), ``"kv"`` (one KV cache, one call per line),
            ``"reencode"`` (naive; for benchmarks) or ``"auto"`` (default: ``"wave"``, ``"kv"`` with hindsight). All
            sample the same rollouts from the same generator state; ``bench/estep_rollout.py`` times them.
        logprob_chunk_size: Positions per chunk of the LM head in ``π``'s scoring pass and ``q``'s ``log q`` pass:
            only five numbers per position are kept (:class:`ra3_lightning.logit_stats.LogitStats`), never the fp32
            ``[N, L, V]`` logits; ``None``: dense logits (models whose logits are not ``lm_head(hidden)``).
    """

    think_cost: float = 0.05
    max_latent_tokens: int = 16
    temperature: float = 1.0
    act_likelihood: ActLikelihood = "conditional"
    hindsight_lines: int = 0
    engine: Literal["auto", "wave", "kv", "reencode"] = "auto"
    logprob_chunk_size: int | None = 256

    def __post_init__(self) -> None:
        if self.max_latent_tokens < 2:
            raise ValueError(f"latent.max_latent_tokens={self.max_latent_tokens} must be >= 2 (a marker and a newline)")
        if self.temperature <= 0:
            raise ValueError(f"latent.temperature={self.temperature} must be > 0")
        k = self.hindsight_lines
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(
                f"latent.hindsight_lines={k!r} must be an integer >= 0: the number of next expert lines q sees "
                "before it writes a rationale (0: none)"
            )
        resolve_engine(self.engine, k)


@dataclass(frozen=True)
class Annotation:
    """How a trace corpus is annotated for the M-step: ``num_generations`` rollouts per trace with the E-step's
    :class:`LatentRL`, one kept (``model.annotation`` of ``RA3Module``; the ``annotation`` of :func:`annotate`).

    Attributes:
        choose: ``"sample"`` (the first rollout: one plain draw from ``q`` per trace) or ``"best"`` (the highest
            total return of the ``num_generations``; needs ``num_generations >= 2``).
        num_generations: ``G`` rollouts per trace (the E-step's own name for it).
        batch_size: Traces rolled out together (``batch_size · num_generations`` sequences).
        shard_size: Records per shard, the unit a killed run resumes from. Shard ``i`` samples from its own seed, so
            the shard size is part of what is sampled.
        score_fraction: The share of batches whose annotations ``π`` scores (line log-likelihoods with and without
            the rationales, the ELBO). With ``choose="sample"`` the scores only feed diagnostics (the logged ELBO per
            line and log-likelihood gain), so scoring every ``1/score_fraction``-th batch estimates them at a
            fraction of the cost: the two scoring passes are two of annotation's three forward passes. Unscored
            records hold NaN scores. ``"best"`` needs every score (1.0, the default).
        num_samples: The old name of ``num_generations``: still read, with a warning that names the new key (setting
            both to different values raises).
    """

    choose: Choose = "sample"
    num_generations: int = 1
    batch_size: int = 8
    shard_size: int = 64
    score_fraction: float = 1.0
    num_samples: int | None = None

    def __post_init__(self) -> None:
        if self.num_samples is not None:
            if self.num_generations not in (1, self.num_samples):
                raise ValueError(
                    f"annotation.num_samples={self.num_samples} and annotation.num_generations={self.num_generations}:"
                    " num_samples is the old name of num_generations, set only annotation.num_generations"
                )
            warnings.warn(
                "annotation.num_samples is now annotation.num_generations (G rollouts per trace); rename the key",
                FutureWarning,
                stacklevel=3,
            )
            object.__setattr__(self, "num_generations", self.num_samples)
            object.__setattr__(self, "num_samples", None)
        if self.choose not in get_args(Choose):
            raise ValueError(f"annotation.choose={self.choose!r}; choose one of {list(get_args(Choose))}")
        if self.choose == "best" and self.num_generations < 2:
            raise ValueError("annotation.choose='best' needs annotation.num_generations >= 2")
        if not 0.0 <= self.score_fraction <= 1.0:
            raise ValueError(f"annotation.score_fraction={self.score_fraction} must lie in [0, 1]")
        if self.choose == "best" and self.score_fraction < 1.0:
            raise ValueError("annotation.choose='best' ranks rollouts by their scores: it needs score_fraction=1.0")
        if min(self.num_generations, self.batch_size, self.shard_size) < 1:
            raise ValueError(f"annotation: num_generations, batch_size and shard_size must be >= 1 ({self})")


def scores_batch(index: int, fraction: float) -> bool:
    """Whether annotation batch ``index`` (counted from 0 over the whole corpus) is scored at ``score_fraction``:
    batches where ``floor((index + 1) * fraction)`` steps up, so ``fraction`` of them, evenly spread (every batch at
    1.0, the 10th, 20th, ... at 0.1, none at 0)."""
    return math.floor((index + 1) * fraction) > math.floor(index * fraction)
