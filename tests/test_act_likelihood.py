"""``act_likelihood``: the latent-conditional vs the marginal log-likelihood of an expert line (hand-derived)."""

from __future__ import annotations

import math

import pytest
import torch

from ra3_lightning.estep import (
    LatentVocab,
    ThinkBias,
    TokenLayout,
    act_log_normaliser,
    body_start_positions,
    encode_trace,
    expert_line_logp,
    forward_logits,
    log_act,
    rollout,
)

# One sequence: BOS | line 0 = indent "i" + body "x y" | rationale "# c" | line 1 = indent "i" + body "z".
#   position:  0    1   2   3   4   5   6   7
#   line_of:  -1    0   0   0  -1  -1   1   1
# Vocabulary of 3: token 0 starts a comment ("#"), tokens 1 and 2 are code.
LINE_OF = torch.tensor([[-1, 0, 0, 0, -1, -1, 1, 1]])
INDENT = torch.tensor([[1, 1]])


def test_body_start_is_first_line_token_plus_indentation():
    # line 0 starts (indent) at 1, body at 2; line 1's re-fed indent after the rationale is at 6, body at 7
    assert body_start_positions(LINE_OF, INDENT).tolist() == [[2, 7]]
    # no indentation: the body starts at the line's first token; a line absent from the sequence -> L - 1
    assert body_start_positions(LINE_OF, torch.tensor([[0, 0, 0]])).tolist() == [[1, 6, 7]]


def _layout(ids: list[int]) -> TokenLayout:
    t = torch.tensor([ids])
    return TokenLayout(t, torch.ones_like(t), LINE_OF, torch.zeros_like(t), torch.full_like(t, -1), torch.zeros(1, 2))


def test_normaliser_is_log_of_non_comment_mass_where_the_body_is_predicted():
    logits = torch.zeros(1, 8, 3)
    logits[0, 1] = torch.tensor([0.2, 0.5, 0.3]).log()  # position 1 predicts line 0's first body token (at 2)
    logits[0, 6] = torch.tensor([0.5, 0.25, 0.25]).log()  # position 6 predicts line 1's first body token (at 7)
    think = torch.tensor([True, False, False])
    out = act_log_normaliser(log_act(logits, think), _layout([9, 1, 1, 2, 0, 1, 1, 2]), INDENT, think)
    torch.testing.assert_close(out, torch.tensor([[math.log(0.8), math.log(0.5)]]))
    # a line whose own first token starts a comment (an original comment of the trace) is not renormalised
    out = act_log_normaliser(log_act(logits, think), _layout([9, 1, 0, 2, 0, 1, 1, 2]), INDENT, think)
    torch.testing.assert_close(out, torch.tensor([[0.0, math.log(0.5)]]))


@pytest.fixture
def setup(tiny_lm, tiny_tokenizer, code_snippets):
    vocab = LatentVocab.from_tokenizer(tiny_tokenizer)
    model = ThinkBias(tiny_lm, vocab.think, 3.0).eval()
    traces = [encode_trace(tiny_tokenizer, t) for t in code_snippets[:3]]
    return model, vocab, traces


def test_conditional_minus_marginal_is_minus_log_p_act_at_each_act_boundary(setup):
    # With q = π at temperature 1, the rollout's own P(THINK) at an ACT boundary is π's comment mass right where
    # the line's first body token is predicted: conditional − marginal = −log(1 − P(THINK)) there.
    model, vocab, traces = setup
    roll = rollout(model, traces, vocab, 2, 5, 1.0, torch.Generator().manual_seed(0))
    logits = forward_logits(model, roll.layout)
    marginal = expert_line_logp(logits, roll.layout, traces, 2, vocab, "marginal")
    conditional = expert_line_logp(logits, roll.layout, traces, 2, vocab, "conditional")
    act = roll.line_mask & ~roll.think
    assert act.any() and (roll.think & roll.line_mask).any()
    expected = -torch.log1p(-roll.p_think[act])
    torch.testing.assert_close(conditional[act] - marginal[act], expected, atol=1e-4, rtol=1e-4)
    assert (conditional[roll.line_mask] >= marginal[roll.line_mask] - 1e-6).all()  # a renormalisation only adds


def test_unknown_act_likelihood_is_rejected(setup):
    model, vocab, traces = setup
    roll = rollout(model, traces, vocab, 2, 5, 1.0, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="act_likelihood"):
        expert_line_logp(forward_logits(model, roll.layout), roll.layout, traces, 2, vocab, "joint")
