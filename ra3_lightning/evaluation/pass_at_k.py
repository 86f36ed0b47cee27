"""``PassAtKEvaluation``: pass@k of a causal LM on coding tasks, with diagnostics and a samples file.

One evaluation batch: ``B`` tasks -> ``num_samples`` completions each (the group's backend, THINK-biased when
``think_bias`` is set, cut at the module's stop strings) -> the reward's verdicts -> :class:`PassAtK`,
:class:`~ra3_lightning.eval_diagnostics.EvalDiagnostics` and the samples file. At the end of the evaluation it logs
``{val,test}/pass@k`` and the diagnostics through the module (``truncation_rate``, ``rationale_rate``,
``rationales_per_completion``, ``rationale_tokens``, ``completion_tokens``, ``code_tokens``; for tasks with ground
truth — the synthetic world — ``pass@1_skills{n}`` and ``tasks_skills{n}``, and, when the task's ``meta`` carries the
world's ``skill_comments``, ``rationale_matched_rate`` and ``rationale_accuracy``).

The module that runs it (any :class:`~ra3_lightning.modules.CausalLMModule`) hands it the model, tokenizer, stop
strings, sampling seed and, where the group leaves them unset, its completion budget and reward.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ra3_lightning.data.task_data import TaskBatch
from ra3_lightning.data.tasks import CodingTask
from ra3_lightning.estep import LatentFormat
from ra3_lightning.eval_diagnostics import (
    CompletionStats,
    EvalDiagnostics,
    comment_start_mask,
    completion_stats,
    has_ground_truth,
    rationale_counts,
    task_skill_phrases,
    think_logit_bias,
)
from ra3_lightning.evaluation.config import Evaluation
from ra3_lightning.evaluation.samples import SamplesFile
from ra3_lightning.generation import (
    GenerationBackend,
    KVSample,
    Rollout,
    SamplingBackend,
    StopStrings,
    unsharded_for_generation,
    with_stop,
)
from ra3_lightning.metrics import PassAtK
from ra3_lightning.rewards import RewardFn

if TYPE_CHECKING:
    from ra3_lightning.modules.base import CausalLMModule


class PassAtKEvaluation(nn.Module):
    """Samples, scores and logs one :class:`Evaluation` group for the module that calls it.

    An ``nn.Module`` only so that its metrics follow the module to its device (they hold no weights).

    Args:
        group: The evaluation group.
        tokenizer: The model's tokenizer (token texts, comment-start tokens).
        stop: The module's stop strings (``None``: EOS and the budget only).
    """

    def __init__(self, group: Evaluation, tokenizer: object, stop: StopStrings | None = None) -> None:
        super().__init__()
        self.group, self.tokenizer = group, tokenizer
        self.generation = with_stop(group.generation or KVSample(temperature=group.temperature), stop)
        self.latent_format = group.latent_format or LatentFormat()
        self.pass_at_k = PassAtK(ks=group.pass_at_k)
        self.eval_diagnostics = EvalDiagnostics()
        self.samples = SamplesFile(group.samples_path)
        self.reward_fn: RewardFn | None = group.reward_fn  # else the module's, on first use
        self._think_bias: Tensor | None = None  # [V], built on first use
        self._token_pieces: dict[int, str] = {}  # token id -> its text ("" for special tokens), filled lazily

    # ----------------------------------------------------------------------------------------- set-up
    def setup(self, module: CausalLMModule) -> None:
        """Check the budget and give a :class:`~ra3_lightning.rewards.SandboxReward` left at ``workers=None`` this
        rank's share of the CPUs (:meth:`CausalLMModule.sandbox_workers`)."""
        from ra3_lightning.rewards import SandboxReward

        self.budget(module)
        if isinstance(self.reward_fn, SandboxReward) and self.reward_fn.workers is None:
            self.reward_fn.workers = module.sandbox_workers()

    def budget(self, module: CausalLMModule) -> int:
        """``max_completion_length`` of the group, else the module's."""
        budget = self.group.max_completion_length or getattr(module, "max_completion_length", None)
        if budget is None:
            raise ValueError(
                f"{type(module).__name__} has no max_completion_length of its own: set "
                "model.evaluation.max_completion_length (the completion budget in tokens)"
            )
        return budget

    def backend(self, device: torch.device) -> GenerationBackend:
        """The sampling backend, THINK-biased when ``think_bias`` is set."""
        if not self.group.think_bias:
            return self.generation
        if not isinstance(self.generation, SamplingBackend):
            raise TypeError(f"evaluation.think_bias needs a SamplingBackend, got {type(self.generation).__name__}")
        if self._think_bias is None or self._think_bias.device != device:
            mask = comment_start_mask(self.tokenizer, self.latent_format)  # [V]
            self._think_bias = think_logit_bias(mask, self.group.think_bias).to(device)  # [V]
        return self.generation.with_logit_bias(self._think_bias)

    # ----------------------------------------------------------------------------------------- one batch
    def step(self, module: CausalLMModule, batch: TaskBatch, batch_idx: int) -> None:
        """Sample ``num_samples`` completions per task, score them, update :class:`PassAtK` and the diagnostics,
        and append the samples to the samples file."""
        if len(batch) == 0:  # a padding batch: join the collective unshard/reshard so FSDP2 ranks stay in step
            with unsharded_for_generation(module.model):
                return
        n = self.group.num_samples
        backend, budget = self.backend(module.device), self.budget(module)
        rollout = module.sample(batch.prompt_ids, batch.prompt_mask, backend, n, budget, -1 - batch_idx)
        texts, tasks = module.decode(rollout), [t for t in batch.tasks for _ in range(n)]
        passed = self.passed(module, texts, tasks)  # [B*n] bool
        correct = passed.float().view(-1, n).sum(-1)  # [B]
        self.pass_at_k.update(torch.full_like(correct, n), correct)
        marker = self.latent_format.comment_start
        stats = [completion_stats(self.token_pieces(ids), marker) for ids in completion_token_lists(rollout)]
        self.update_diagnostics(batch.tasks, texts, passed, rollout.truncated, stats)
        self.samples.write(tasks, texts, passed, rollout.truncated, stats)

    def passed(self, module: CausalLMModule, texts: list[str], tasks: list[CodingTask]) -> Tensor:  # [N] bool
        """Whether each completion passes its task's tests (the sandbox's verdict, else ``reward >= 1``)."""
        if self.reward_fn is None:
            self.reward_fn = module.evaluation_reward_fn()
        reward_fn = self.reward_fn
        rewards = reward_fn.submit(texts, tasks).result() if hasattr(reward_fn, "submit") else reward_fn(texts, tasks)
        passed = torch.tensor([r.passed for r in getattr(reward_fn, "last_results", [])], dtype=torch.bool)
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
        self, tasks: list[CodingTask], texts: list[str], passed: Tensor, truncated: Tensor, stats: list[CompletionStats]
    ) -> None:  # passed [B*n] bool, truncated [B*n] bool
        """Token accounting of every completion; pass rate (and, with the world's phrases, rationale accuracy) of
        tasks with ground truth."""
        n, marker = self.group.num_samples, self.latent_format.comment_start
        rationale, skills, pass_rates = [], [], []
        for b, task in enumerate(tasks):
            if not has_ground_truth(task.meta):
                continue
            phrases = task_skill_phrases(task.meta)
            if phrases is not None:
                rows = range(b * n, (b + 1) * n)
                rationale += [rationale_counts(texts[i], task.prompt, task.meta, phrases, marker) for i in rows]
            skills.append(len(task.meta["skills"]))
            pass_rates.append(float(passed[b * n : (b + 1) * n].float().mean()))
        self.eval_diagnostics.update(stats, truncated.tolist(), rationale, skills, pass_rates)

    # ----------------------------------------------------------------------------------------- epoch
    def start(self, module: CausalLMModule, stage: str) -> None:
        """Before an evaluation (``stage``: ``"val"`` / ``"test"``): empty its samples file."""
        self.samples.start(module.trainer, stage, module.global_step)

    def end(self, module: CausalLMModule, stage: str) -> None:
        """After an evaluation: log ``<stage>/pass@k`` and the diagnostics, merge the samples file."""
        self.log_pass_at_k(module, stage)
        self.log_diagnostics(module, stage)
        self.samples.merge(module.trainer)

    def log_pass_at_k(self, module: CausalLMModule, prefix: str) -> None:
        results = self.pass_at_k.compute()
        self.pass_at_k.reset()
        for name, value in results.items():
            module.log(f"{prefix}/{name}", value, prog_bar=name == "pass@1")

    def log_diagnostics(self, module: CausalLMModule, prefix: str) -> None:
        """The evaluation's diagnostics (already summed over ranks) as ``<prefix>/<name>`` scalars."""
        results = self.eval_diagnostics.compute()
        self.eval_diagnostics.reset()
        for name, value in results.items():
            module.log(f"{prefix}/{name}", float(value))

    def close(self) -> None:
        """Stop the reward's sandbox workers (a :class:`~ra3_lightning.rewards.SandboxReward` restarts them)."""
        if hasattr(self.reward_fn, "close"):
            self.reward_fn.close()


def completion_token_lists(rollout: Rollout) -> list[list[int]]:
    """Each completion's token ids up to and including its EOS."""
    lengths = rollout.completion_mask.sum(-1).tolist()  # [N]
    return [row[:length] for row, length in zip(rollout.completion_ids.tolist(), lengths, strict=True)]
