"""The interleaved KV-cache rollout: same log-likelihoods as one plain forward pass, same samples as re-encoding."""

from __future__ import annotations

import pytest
import torch

from ra3_lightning.estep import (
    LatentVocab,
    ThinkBias,
    encode_trace,
    plain_layout,
    policy_logq,
    rollout,
    score_lines,
    strip_rationales,
)


@pytest.fixture
def setup(tiny_lm, tiny_tokenizer, code_snippets):
    vocab = LatentVocab.from_tokenizer(tiny_tokenizer)
    model = ThinkBias(tiny_lm, vocab.think, 5.0).eval()
    traces = [encode_trace(tiny_tokenizer, t) for t in code_snippets[:4]]
    return model, vocab, traces


def _roll(setup, engine="kv", seed=0, **kw):
    model, vocab, traces = setup
    kw = {"num_generations": 3, "max_latent_tokens": 6, "temperature": 1.3} | kw
    return rollout(model, traces, vocab, generator=torch.Generator().manual_seed(seed), engine=engine, **kw)


def test_kv_cache_rollout_matches_full_forward_pass(setup):
    model, vocab, _ = setup
    roll = _roll(setup)
    assert 0.1 < roll.think[roll.line_mask].float().mean() < 0.9  # both decisions occur
    lines = roll.think.shape[1]
    full = score_lines(model, roll.layout, lines)  # one teacher-forced pass over the annotated tokens
    torch.testing.assert_close(roll.line_logp, full.detach(), atol=1e-4, rtol=0)
    terms = policy_logq(model, roll.layout, roll.think, roll.line_mask, vocab, temperature=1.3)
    torch.testing.assert_close(roll.logq, terms.logq.detach(), atol=1e-4, rtol=0)
    torch.testing.assert_close(roll.p_think, terms.p_think.detach(), atol=1e-4, rtol=0)
    assert (roll.logq[roll.line_mask] < 0).all()


def test_reencode_engine_gives_the_same_rollout(setup):
    kv, naive = _roll(setup, "kv"), _roll(setup, "reencode")
    assert torch.equal(kv.think, naive.think)
    assert torch.equal(kv.layout.input_ids, naive.layout.input_ids)
    torch.testing.assert_close(kv.line_logp, naive.line_logp, atol=1e-4, rtol=0)


def test_annotated_tokens_decode_to_annotated_text_and_strip_to_original(setup):
    _, vocab, _ = setup
    roll = _roll(setup)
    for n in range(roll.think.shape[0]):
        ann = roll.annotated(n, vocab)
        ids = roll.layout.input_ids[n, 1 : int(roll.layout.attention_mask[n].sum())]
        assert vocab.tokenizer.decode(ids) == ann.text
        assert strip_rationales(ann.text, ann.rationale_spans) == roll.trace_of(n).text
        assert ann.think_lines == roll.think[n].nonzero().flatten().tolist()


def test_rationales_respect_the_cap_and_end_with_a_newline(setup):
    _, vocab, _ = setup
    roll = _roll(setup, max_latent_tokens=3)
    thinks = [c for row, f in zip(roll.rationales, roll.think, strict=True) for c, t in zip(row, f, strict=True) if t]
    assert thinks
    for ids in thinks:
        assert 1 <= len(ids) <= 3
        assert vocab.tokenizer.decode(ids).endswith("\n")
        assert vocab.tokenizer.decode(ids).lstrip(" \t").startswith("#")


def test_plain_layout_scores_the_trace_without_rationales(tiny_lm, tiny_tokenizer, code_snippets):
    vocab = LatentVocab.from_tokenizer(tiny_tokenizer)
    traces = [encode_trace(tiny_tokenizer, t) for t in code_snippets[:2]]
    layout = plain_layout(traces, vocab)
    scores = score_lines(tiny_lm, layout, max(t.num_lines for t in traces))
    # the sum over lines is the log-likelihood of all tokens after BOS of the line-by-line tokenization
    ids = layout.input_ids[0, : int(layout.attention_mask[0].sum())]
    logp = torch.log_softmax(tiny_lm(ids[None]).logits[0, :-1], -1).gather(-1, ids[1:, None]).sum()
    torch.testing.assert_close(scores[0].sum(), logp.detach(), atol=1e-4, rtol=0)


def test_bad_settings_raise(setup):
    with pytest.raises(ValueError, match="max_latent_tokens"):
        _roll(setup, max_latent_tokens=1)
    with pytest.raises(ValueError, match="engine"):
        _roll(setup, engine="vllm")
