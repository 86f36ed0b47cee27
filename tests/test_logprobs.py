"""Chunked log-probs equal the dense ``log_softmax`` → ``gather`` (values, entropies and gradients), inside a real
Hugging Face forward pass too."""

import pytest
import torch

from ra3_lightning.logprobs import chunked_logprobs, selective_logprobs


def dense(hidden, weight, bias, targets):
    logits = torch.nn.functional.linear(hidden, weight, bias)
    logp = torch.log_softmax(logits, -1)
    return logp.gather(-1, targets[..., None]).squeeze(-1), -(logp.exp() * logp).sum(-1)


def test_hand_computed_two_token_vocabulary():
    # logits (0, log 3): p = (1/4, 3/4); log p(token 1) = log 3/4; entropy = -(1/4 log 1/4 + 3/4 log 3/4)
    hidden, weight = torch.tensor([[1.0]]), torch.tensor([[0.0], [torch.log(torch.tensor(3.0))]])
    logp, entropy = chunked_logprobs(hidden, weight, torch.tensor([1]), with_entropy=True)
    torch.testing.assert_close(logp, torch.log(torch.tensor([0.75])))
    torch.testing.assert_close(
        entropy, torch.tensor([-(0.25 * torch.log(torch.tensor(0.25)) + 0.75 * torch.log(torch.tensor(0.75)))])
    )


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_chunked_equals_dense_with_gradients(chunk):
    g = torch.Generator().manual_seed(0)
    f64 = {"dtype": torch.float64, "generator": g, "requires_grad": True}  # exact enough to compare gradients tightly
    hidden, weight, bias = torch.randn(3, 11, 16, **f64), torch.randn(50, 16, **f64), torch.randn(50, **f64)
    targets = torch.randint(0, 50, (3, 11), generator=g)
    want_lp, want_h = dense(hidden, weight, bias, targets)
    grads_want = torch.autograd.grad(want_lp.square().sum(), (hidden, weight, bias))
    logp, entropy = chunked_logprobs(hidden, weight, targets, bias, chunk_size=chunk, with_entropy=True)
    grads = torch.autograd.grad(logp.square().sum(), (hidden, weight, bias))
    torch.testing.assert_close(logp, want_lp, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(entropy, want_h, rtol=1e-12, atol=1e-12)
    assert not entropy.requires_grad
    for got, want in zip(grads, grads_want, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_rejects_an_empty_chunk():
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_logprobs(torch.zeros(1, 2), torch.zeros(3, 2), torch.zeros(1, dtype=torch.long), chunk_size=0)


def test_selective_logprobs_match_the_model_logits(tiny_lm):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, tiny_lm.config.vocab_size, (2, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # left padding
    inputs = {"input_ids": ids, "attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp_min(0)}
    K = 4
    logits = tiny_lm(**inputs).logits[:, -K - 1 : -1].float()
    want = torch.log_softmax(logits, -1).gather(-1, ids[:, -K:, None]).squeeze(-1)
    logp, entropy = selective_logprobs(tiny_lm, inputs, ids[:, -K:], chunk_size=3, with_entropy=True)
    torch.testing.assert_close(logp, want, rtol=1e-5, atol=1e-5)
    want_h = -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1)
    torch.testing.assert_close(entropy, want_h, rtol=1e-5, atol=1e-5)
    assert "forward" not in tiny_lm.get_output_embeddings().__dict__  # the head is itself again
    torch.testing.assert_close(tiny_lm(**inputs).logits[:, -K - 1 : -1].float(), logits)
