"""The E-step's five numbers per position (:mod:`ra3_lightning.logit_stats`): by hand, and the chunked pass through
the LM head equal to the dense logits — values and gradients, with and without hindsight, at the real vocabulary."""

from __future__ import annotations

import math

import pytest
import torch

from ra3_lightning.estep import (
    LatentVocab,
    ThinkBias,
    encode_trace,
    expert_line_logp,
    layout_stats,
    log_act,
    p_think,
    policy_logq,
    rollout,
)
from ra3_lightning.logit_stats import LogitStats, stat_columns


def test_columns_by_hand():
    probs = torch.tensor([[0.2, 0.5, 0.3]])  # token 0 starts a comment; tokens 0 and 1 may continue one
    think, comment = torch.tensor([True, False, False]), torch.tensor([True, True, False])
    cols = stat_columns(probs.log(), torch.tensor([1]), think, comment)[0]
    expected = [math.log(0.5), 0.0, math.log(0.2), math.log(0.8), math.log(0.7)]
    torch.testing.assert_close(cols, torch.tensor(expected))
    stats = LogitStats.from_columns(cols.view(1, 1, 5), 1.0)
    torch.testing.assert_close(stats.token_logp(), torch.tensor([[math.log(0.5)]]))
    torch.testing.assert_close(stats.log_act(), log_act(probs.log(), think)[None])
    torch.testing.assert_close(stats.p_think(), p_think(probs.log(), think)[None])
    # a later rationale token is scored over the comment tokens only: 0.5 / 0.7
    torch.testing.assert_close(stats.rationale_logp(torch.tensor([[False]])), torch.tensor([[math.log(0.5 / 0.7)]]))


def _rollout(lm, tokenizer, snippets, hindsight_lines=0):
    vocab = LatentVocab.from_tokenizer(tokenizer)
    traces = [encode_trace(tokenizer, t) for t in snippets]
    sampler = ThinkBias(lm, vocab.think, 5.0).eval()  # thinks often, so rationale tokens are scored too
    roll = rollout(sampler, traces, vocab, 3, 6, 1.3, torch.Generator().manual_seed(0), "kv", hindsight_lines)
    assert roll.think[roll.line_mask].any()
    return vocab, traces, roll


@pytest.mark.parametrize("hindsight_lines", [0, 2])
def test_chunked_stats_equal_dense_logits(tiny_lm, tiny_tokenizer, code_snippets, hindsight_lines):
    vocab, _, roll = _rollout(tiny_lm, tiny_tokenizer, code_snippets[:4], hindsight_lines)
    with torch.no_grad():
        dense = layout_stats(tiny_lm, roll.q_layout, vocab, (1.0, 1.3), chunk_size=None)
        chunked = layout_stats(tiny_lm, roll.q_layout, vocab, (1.0, 1.3), chunk_size=7)  # 7 divides nothing
    for d, c in zip(dense, chunked, strict=True):
        assert d.temperature == c.temperature
        for name in ("target", "lse", "lse_think", "lse_act", "lse_comment"):
            torch.testing.assert_close(getattr(c, name), getattr(d, name), atol=1e-5, rtol=1e-5, msg=name)


def test_chunked_policy_logq_has_the_dense_values_and_gradients(tiny_lm, tiny_tokenizer, code_snippets):
    vocab, traces, roll = _rollout(tiny_lm, tiny_tokenizer, code_snippets[:4])
    results = []
    for chunk in (None, 16):
        tiny_lm.zero_grad()
        terms = policy_logq(tiny_lm, roll.q_layout, roll.think, roll.line_mask, vocab, 1.3, chunk_size=chunk)
        terms.logq.sum().backward()
        grads = {n: p.grad.clone() for n, p in tiny_lm.named_parameters() if p.grad is not None}
        results.append((terms.logq.detach(), terms.p_think.detach(), grads))
    (logq_d, pt_d, grads_d), (logq_c, pt_c, grads_c) = results
    torch.testing.assert_close(logq_c, logq_d, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pt_c, pt_d, atol=1e-6, rtol=1e-5)
    assert grads_d.keys() == grads_c.keys() and grads_d
    for name, g in grads_d.items():
        torch.testing.assert_close(grads_c[name], g, atol=1e-5, rtol=1e-4, msg=name)
    # and the expert lines under π, both likelihoods
    with torch.no_grad():
        for mode in ("marginal", "conditional"):
            dense = expert_line_logp(layout_stats(tiny_lm, roll.layout, vocab)[0], roll.layout, traces, 3, vocab, mode)
            stats = layout_stats(tiny_lm, roll.layout, vocab, chunk_size=5)[0]
            torch.testing.assert_close(expert_line_logp(stats, roll.layout, traces, 3, vocab, mode), dense)


def test_stats_at_the_wrong_temperature_are_refused(tiny_lm, tiny_tokenizer, code_snippets):
    vocab, _, roll = _rollout(tiny_lm, tiny_tokenizer, code_snippets[:2])
    stats = layout_stats(tiny_lm, roll.layout, vocab, (1.0,))[0]
    with pytest.raises(ValueError, match="temperature"):
        policy_logq(tiny_lm, roll.layout, roll.think, roll.line_mask, vocab, 1.3, stats)


def test_chunked_stats_at_the_real_vocabulary(qwen_lm, qwen_tok, code_snippets):
    vocab, _, roll = _rollout(qwen_lm, qwen_tok, code_snippets[:2])
    with torch.no_grad():
        dense = layout_stats(qwen_lm, roll.layout, vocab, chunk_size=None)[0]
        chunked = layout_stats(qwen_lm, roll.layout, vocab, chunk_size=64)[0]
    for name in ("target", "lse", "lse_think", "lse_act", "lse_comment"):
        torch.testing.assert_close(getattr(chunked, name), getattr(dense, name), atol=1e-4, rtol=1e-5, msg=name)
