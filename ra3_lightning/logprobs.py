"""Token log-probs and entropies without the full ``[B, T, V]`` fp32 logits tensor.

At a real vocabulary the logits dominate memory: ``V = 151,646``, ``T = 768``, ``B = 8`` is 3.7 GB per fp32 tensor,
and a dense ``log_softmax`` → ``gather`` → ``entropy`` pass holds several of them (plus their copies for backward).
The trainer needs only one number per position (the target token's log-prob; the entropy for the logs), so
:func:`chunked_logprobs` computes the LM head, the log-normaliser and the entropy a chunk of positions at a time.
Under autograd each chunk is checkpointed: its ``[chunk, V]`` logits are freed after the forward pass and rebuilt
in the backward pass, so the peak is one chunk's logits, whatever ``B · T``.

:func:`selective_logprobs` runs a Hugging Face causal LM that way: inside the model's own ``forward`` (so FSDP2's
root hooks have gathered the head's weight) the LM head's ``forward`` is swapped for the chunked computation, and
the "logits" the model returns are the per-position ``(logp, entropy)`` pairs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint


def _at_least_fp32(x: Tensor) -> Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _logp_entropy(logits: Tensor, targets: Tensor, with_entropy: bool) -> Tensor:
    """``(log p(target), entropy)`` of ``n`` positions, ``[n, 2]``, from their fp32 ``logits [n, V]`` (the entropy is
    0 unless asked for, and carries no gradient)."""
    log_norm = logits.logsumexp(-1)  # [n]
    logp = logits.gather(-1, targets[:, None]).squeeze(-1) - log_norm  # [n]
    entropy = torch.zeros_like(logp)
    if with_entropy:
        with torch.no_grad():  # H = log Z - E_p[logit], one more [n, V] buffer, in place
            entropy = log_norm.detach() - torch.softmax(logits.detach(), -1).mul_(logits.detach()).sum(-1)
    return torch.stack([logp, entropy], dim=-1)


def _through_head(
    hidden: Tensor, targets: Tensor, weight: Tensor, bias: Tensor | None, stats: Any, *args: Any
) -> Tensor:
    """``stats(fp32 logits [n, V], targets [n], *args)`` of ``hidden [n, H]`` through the head ``[V, H]``."""
    return stats(_at_least_fp32(torch.nn.functional.linear(hidden, weight, bias)), targets, *args)


def chunked_rows(fn: Any, rows: Tensor, targets: Tensor, chunk_size: int, *args: Any) -> Tensor:
    """``fn(rows[i:j], targets[i:j], *args)`` (each ``[j - i, S]``) over chunks of ``chunk_size`` rows, concatenated.

    With gradients enabled each chunk is checkpointed: what ``fn`` builds from its rows (a chunk's logits and
    their softmax) is freed after the forward pass and rebuilt in the backward pass, so the peak is one chunk's.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 (got {chunk_size})")
    tensors = [rows, *(a for a in args if isinstance(a, Tensor))]
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    chunks = []
    for start in range(0, rows.shape[0], chunk_size):
        part = (rows[start : start + chunk_size], targets[start : start + chunk_size], *args)
        chunks.append(checkpoint(fn, *part, use_reentrant=False) if grad else fn(*part))
    return torch.cat(chunks)


def chunked_logprobs(
    hidden: Tensor,  # [..., H]
    weight: Tensor,  # [V, H]
    targets: Tensor,  # [...]
    bias: Tensor | None = None,  # [V]
    chunk_size: int = 256,
    with_entropy: bool = False,
) -> tuple[Tensor, Tensor | None]:  # [...], [...]
    """``log softmax(hidden @ weight.T + bias)[target]`` per position, ``chunk_size`` positions at a time.

    Equal to the dense computation (fp32 softmax over the head's logits); the entropy is a diagnostic and carries no
    gradient. With gradients enabled each chunk is recomputed in the backward pass instead of being stored.
    """
    shape = targets.shape
    flat_h, flat_t = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    stats = chunked_rows(_through_head, flat_h, flat_t, chunk_size, weight, bias, _logp_entropy, with_entropy)
    logp = stats[:, 0].reshape(shape)
    return logp, (stats[:, 1].detach().reshape(shape) if with_entropy else None)


@contextlib.contextmanager
def _head_forward(head: torch.nn.Module, forward: Any) -> Iterator[None]:
    """Swap ``head.forward`` for ``forward`` (an instance attribute; the module, its parameters and their FSDP2
    bookkeeping stay as they are)."""
    previous = head.__dict__.get("forward")  # e.g. an accelerate / PEFT hook's instance forward
    head.forward = forward
    try:
        yield
    finally:
        if previous is None:
            del head.forward
        else:
            head.forward = previous


def selective_logprobs(
    model: torch.nn.Module,
    inputs: dict[str, Any],
    targets: Tensor,  # [b, K]: the tokens predicted by the last K positions' successors
    chunk_size: int = 256,
    with_entropy: bool = False,
) -> tuple[Tensor, Tensor | None]:  # [b, K], [b, K]
    """Log-probs of ``targets`` (and the entropy) at the ``K`` positions before the last, without full logits.

    ``targets[:, k]`` is the token at position ``L - K + k`` of the input, predicted by position ``L - K - 1 + k``:
    the dense equivalent is ``log_softmax(model(**inputs).logits[:, -K-1:-1].float()).gather(targets)``. The model
    must compute its logits as ``lm_head(hidden)`` (Qwen2, Llama, Mistral, ...); models that post-process them
    (e.g. Gemma's final soft-capping) are rejected.
    """
    head = model.get_output_embeddings()
    K = targets.shape[1]
    padded = torch.nn.functional.pad(targets, (0, 1))  # [b, K+1]: the last kept position predicts nothing we score

    def forward(hidden: Tensor) -> Tensor:  # [b, K+1, H] -> [b, K+1, 2]
        logp, entropy = chunked_logprobs(hidden, head.weight, padded, head.bias, chunk_size, with_entropy)
        return torch.stack([logp, entropy if entropy is not None else torch.zeros_like(logp)], dim=-1)

    stats = run_with_head(model, forward, **inputs, logits_to_keep=K + 1)[:, :-1]  # [b, K, 2]
    return stats[..., 0], (stats[..., 1] if with_entropy else None)


def run_with_head(model: torch.nn.Module, forward: Any, **inputs: Any) -> Tensor:
    """``model(**inputs).logits`` with the LM head's ``forward`` replaced by ``forward(hidden [b, L, H])`` — which
    runs inside the model's own forward, where FSDP2's root hooks have gathered the head's weight.

    The model must compute its logits as ``lm_head(hidden)`` (Qwen2, Llama, Mistral, ...); models that post-process
    them (e.g. Gemma's final soft-capping) are rejected.
    """
    if getattr(getattr(model, "config", None), "final_logit_softcapping", None):
        raise ValueError("this model soft-caps its logits after the LM head; use dense logits (chunk size None)")
    with _head_forward(model.get_output_embeddings(), forward):
        return model(**inputs).logits
