"""The E-step core: roll out with ``q``, score with the frozen ``π``, form the rewards and the ELBO.

Training ``q`` (:class:`~ra3_lightning.modules.latent_policy.LatentPolicyModule`), its logged ELBO gain and annotation
(:func:`~ra3_lightning.estep.annotate_batch`) all run this one sequence through :class:`EStep`, built from the
:class:`~ra3_lightning.estep.LatentRL` group whole::

    roll = estep.sample(q, traces, G, generator)       # q walks the line boundaries: THINK/ACT, rationales
    scores = estep.score(pi, roll)                     # log π(a_t | s_t, z_≤t): one teacher-forced pass of π
    rewards = estep.rewards(scores.line_logp, roll)    # r_t = log π(a_t | …) − c·1[THINK]; summed, the ELBO

with ``estep.plain_logp(pi, traces)`` the baseline without rationales (the ELBO gain).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ra3_lightning.estep.config import LatentRL
from ra3_lightning.estep.layout import plain_layout
from ra3_lightning.estep.sampler import Rollout, rollout
from ra3_lightning.estep.scoring import PolicyTerms, expert_line_logp, layout_stats, policy_logq
from ra3_lightning.estep.vocab import EncodedTrace, LatentVocab
from ra3_lightning.rl.returns import elbo_rewards


@dataclass(frozen=True)
class Scores:
    """What ``π``'s scoring pass over a rollout gives.

    Attributes:
        line_logp: ``[N, T]`` ``log π(a_t | prefix with rationales)`` of every expert line (not masked).
        reference: ``π``'s own ``log q``-terms of the sampled decisions and rationales (the KL reference of the
            training loss), from the same pass; ``None`` unless asked for.
    """

    line_logp: Tensor
    reference: PolicyTerms | None = None


@dataclass(frozen=True)
class EStep:
    """Rollout → scoring → rewards of the E-step with one :class:`LatentRL` value.

    Args:
        latent: How ``q`` writes rationales and ``π`` scores them, taken whole.
        vocab: The token facts of the shared tokenizer and latent format.
    """

    latent: LatentRL
    vocab: LatentVocab

    @torch.no_grad()
    def sample(
        self,
        q: torch.nn.Module,
        traces: Sequence[EncodedTrace],
        num_generations: int,
        generator: torch.Generator | None = None,
    ) -> Rollout:
        """``num_generations`` latent rollouts of every trace with ``q`` (sequence ``n``: trace ``n // G``)."""
        lt = self.latent
        return rollout(
            q, traces, self.vocab, num_generations, lt.max_latent_tokens, lt.temperature, generator, lt.engine,
            lt.hindsight_lines,
        )  # fmt: skip

    @torch.no_grad()
    def score(self, pi: torch.nn.Module, roll: Rollout, reference: bool = False) -> Scores:
        """``log π(a_t | …)`` ``[N, T]`` of ``roll`` in one teacher-forced pass of ``π``; with ``reference``, also
        ``π``'s ``log q``-terms at ``q``'s sampling temperature from the same pass."""
        lt = self.latent
        temperatures = (1.0,) if not reference or lt.temperature == 1.0 else (1.0, lt.temperature)
        stats = layout_stats(pi, roll.layout, self.vocab, temperatures, lt.logprob_chunk_size)  # one pass
        line_logp = expert_line_logp(
            stats[0], roll.layout, roll.traces, roll.num_generations, self.vocab, lt.act_likelihood
        )
        if not reference:
            return Scores(line_logp)
        ref = policy_logq(pi, roll.layout, roll.think, roll.line_mask, self.vocab, lt.temperature, stats[-1])
        return Scores(line_logp, ref)

    @torch.no_grad()
    def plain_logp(self, pi: torch.nn.Module, traces: Sequence[EncodedTrace], device: torch.device) -> Tensor:
        """``log π(a_t | s_t)`` of every expert line without rationales, ``[B, T]`` (the ELBO gain's baseline)."""
        layout = plain_layout(traces, self.vocab, device)
        stats = layout_stats(pi, layout, self.vocab, chunk_size=self.latent.logprob_chunk_size)[0]
        return expert_line_logp(stats, layout, traces, 1, self.vocab, self.latent.act_likelihood)

    def rewards(self, line_logp: Tensor, roll: Rollout) -> Tensor:  # [N, T]
        """``r_t = line_logp_t − c·1[z_t = THINK]`` on a trace's lines, 0 past its end: the ELBO per line when
        ``line_logp`` is :attr:`Scores.line_logp` (training may pass it normalised per token first)."""
        mask = roll.line_mask.to(line_logp.device)
        return elbo_rewards(line_logp, roll.think.to(line_logp.device), self.latent.think_cost) * mask
