"""``causal_lm_loss`` against numbers derived by hand on a 2-token vocabulary."""

import math

import pytest
import torch

from ra3_lightning.losses import causal_lm_loss, loss_mask_for, perplexity

LN3 = math.log(3.0)


def _logits() -> torch.Tensor:
    # One sequence of 3 positions over a vocabulary {0, 1}.
    # position 0: logits [0, ln 3] -> softmax [1/4, 3/4]
    # position 1: logits [0, 0]    -> softmax [1/2, 1/2]
    # position 2: predicts past the end; never a target after the shift.
    return torch.tensor([[[0.0, LN3], [0.0, 0.0], [5.0, -5.0]]])  # [B=1, L=3, V=2]


def test_shifted_mean_over_tokens():
    # labels[0] is never a target. Targets: position 0 -> labels[1] = 1: -ln(3/4) = ln(4/3);
    # position 1 -> labels[2] = 0: -ln(1/2) = ln 2.  Mean = (ln(4/3) + ln 2) / 2 = ln(8/3) / 2.
    loss, n = causal_lm_loss(_logits(), torch.tensor([[0, 1, 0]]))
    assert n.item() == 2
    assert loss.item() == pytest.approx(math.log(8 / 3) / 2, abs=1e-6)


def test_ignore_index_drops_padding():
    # labels[2] = -100 (padding): only position 0 -> token 1 counts: ln(4/3).
    loss, n = causal_lm_loss(_logits(), torch.tensor([[0, 1, -100]]))
    assert n.item() == 1
    assert loss.item() == pytest.approx(math.log(4 / 3), abs=1e-6)


def test_loss_mask_marks_targets():
    # loss_mask is aligned with labels: masking token 1 removes the target of position 0, leaving ln 2.
    loss, n = causal_lm_loss(_logits(), torch.tensor([[0, 1, 0]]), torch.tensor([[True, False, True]]))
    assert n.item() == 1
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)


def test_token_level_mean_across_sequences():
    # Row 0 contributes ln(4/3) and ln 2; row 1 (all zero logits) contributes ln 2 once (its last label is padding).
    # Token-level mean = (ln(4/3) + 2 ln 2) / 3 = ln(16/3) / 3, not the mean of per-row means.
    logits = torch.cat([_logits(), torch.zeros(1, 3, 2)])  # [2, 3, 2]
    labels = torch.tensor([[0, 1, 0], [1, 1, -100]])
    loss, n = causal_lm_loss(logits, labels)
    assert n.item() == 3
    assert loss.item() == pytest.approx(math.log(16 / 3) / 3, abs=1e-6)


def test_no_target_gives_zero_not_nan():
    logits = _logits().requires_grad_()
    loss, n = causal_lm_loss(logits, torch.tensor([[0, -100, -100]]))
    assert n.item() == 0 and loss.item() == 0.0
    loss.backward()  # still part of the graph
    assert torch.count_nonzero(logits.grad) == 0


def test_gradient_is_softmax_minus_onehot_over_n():
    # d loss / d logits[pos] = (softmax - onehot(target)) / n: position 0 -> ([1/4, 3/4] - [0, 1]) / 2.
    logits = _logits().requires_grad_()
    loss, _ = causal_lm_loss(logits, torch.tensor([[0, 1, 0]]))
    loss.backward()
    torch.testing.assert_close(logits.grad[0, 0], torch.tensor([0.125, -0.125]))
    torch.testing.assert_close(logits.grad[0, 2], torch.zeros(2))


def test_matches_hf_loss(tiny_lm):
    torch.manual_seed(0)
    ids = torch.randint(0, tiny_lm.config.vocab_size, (2, 7))
    labels = ids.clone()
    labels[1, 5:] = -100
    out = tiny_lm(input_ids=ids, labels=labels)
    loss, n = causal_lm_loss(out.logits, labels)
    assert n.item() == 6 + 4
    torch.testing.assert_close(loss, out.loss)


def test_loss_on_code_masks_rationales():
    batch = {"rationale_mask": torch.tensor([[False, True, True, False]])}
    assert loss_mask_for("all", batch) is None
    assert loss_mask_for("code", batch).tolist() == [[True, False, False, True]]
    with pytest.raises(KeyError, match="rationale_mask"):
        loss_mask_for("code", {})
    with pytest.raises(ValueError, match="choose one of"):
        loss_mask_for("prose", batch)


def test_shape_errors_and_perplexity():
    with pytest.raises(ValueError, match="disagree"):
        causal_lm_loss(torch.zeros(1, 3, 2), torch.zeros(1, 4, dtype=torch.long))
    assert perplexity(torch.tensor(math.log(5.0))).item() == pytest.approx(5.0)
