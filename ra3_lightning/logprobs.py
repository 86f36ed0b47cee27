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


def _chunk_stats(hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, with_entropy: bool) -> Tensor:
    """``(log p(target), entropy)`` of ``n`` positions, ``[n, 2]``: ``hidden [n, H]`` through the head ``[V, H]``,
    one ``[n, V]`` logits buffer for both (the entropy is 0 unless asked for, and carries no gradient)."""
    logits = _at_least_fp32(torch.nn.functional.linear(hidden, weight, bias))  # [n, V]
    log_norm = logits.logsumexp(-1)  # [n]
    logp = logits.gather(-1, targets[:, None]).squeeze(-1) - log_norm  # [n]
    entropy = torch.zeros_like(logp)
    if with_entropy:
        with torch.no_grad():  # H = log Z - E_p[logit], one more [n, V] buffer, in place
            entropy = log_norm.detach() - torch.softmax(logits.detach(), -1).mul_(logits.detach()).sum(-1)
    return torch.stack([logp, entropy], dim=-1)


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
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 (got {chunk_size})")
    shape = targets.shape
    flat_h, flat_t = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    chunks = []
    for start in range(0, flat_t.numel(), chunk_size):
        args = (flat_h[start : start + chunk_size], weight, bias, flat_t[start : start + chunk_size], with_entropy)
        chunks.append(checkpoint(_chunk_stats, *args, use_reentrant=False) if grad else _chunk_stats(*args))
    stats = torch.cat(chunks)  # [N, 2]
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
    config = getattr(model, "config", None)
    if getattr(config, "final_logit_softcapping", None):
        raise ValueError("selective_logprobs: this model soft-caps its logits after the LM head; use dense logits")
    head = model.get_output_embeddings()
    K = targets.shape[1]
    padded = torch.nn.functional.pad(targets, (0, 1))  # [b, K+1]: the last kept position predicts nothing we score

    def forward(hidden: Tensor) -> Tensor:  # [b, K+1, H] -> [b, K+1, 2]
        logp, entropy = chunked_logprobs(hidden, head.weight, padded, head.bias, chunk_size, with_entropy)
        return torch.stack([logp, entropy if entropy is not None else torch.zeros_like(logp)], dim=-1)

    with _head_forward(head, forward):
        out = model(**inputs, logits_to_keep=K + 1)
    stats = out.logits[:, :-1]  # [b, K, 2]
    return stats[..., 0], (stats[..., 1] if with_entropy else None)
