"""Chunked cross-entropy (``lm_loss`` with a ``chunk_size``) equals the dense ``causal_lm_loss``: the loss, the token
count and every parameter's gradient, with packing, padding and a code-only loss mask; by hand on a 2-token vocabulary
for the pure pieces (``shifted_targets``, ``mean_token_nll``)."""

from __future__ import annotations

import math

import pytest
import torch
from test_ntp import DEMO, tb_scalars

from ra3_lightning.cli import main
from ra3_lightning.losses import causal_lm_loss, mean_token_nll, shifted_targets
from ra3_lightning.models import TinyLMConfig
from ra3_lightning.modules.ntp import NTPModule, lm_inputs, lm_loss
from ra3_lightning.modules.ra3 import RA3Module

LN3 = math.log(3.0)


# ----------------------------------------------------------------------------------------- pure pieces, by hand
def test_shifted_targets_drop_ignored_and_masked_labels():
    # labels [5, 6, -100, 7]: position t predicts labels[t + 1] -> [6, -100, 7]; masking label 3 (the 7) -> -100.
    labels = torch.tensor([[5, 6, -100, 7]])
    assert shifted_targets(labels).tolist() == [[6, -100, 7]]
    mask = torch.tensor([[True, True, True, False]])
    assert shifted_targets(labels, mask).tolist() == [[6, -100, -100]]
    with pytest.raises(ValueError, match="loss_mask"):
        shifted_targets(labels, torch.ones(1, 3, dtype=torch.bool))


def test_mean_token_nll_by_hand():
    # The logits of tests/test_losses.py: position 0 softmax [1/4, 3/4], position 1 [1/2, 1/2]. Targets 1 and 0:
    # log-probs ln(3/4) and ln(1/2); mean NLL = (ln(4/3) + ln 2) / 2 = ln(8/3) / 2, two tokens.
    logp = torch.tensor([[math.log(0.75), math.log(0.5)]])
    loss, n = mean_token_nll(logp, torch.tensor([[1, 0]]))
    assert n.item() == 2 and loss.item() == pytest.approx(math.log(8 / 3) / 2, abs=1e-6)
    # The second target ignored: only ln(4/3) counts, whatever log-prob stands at the ignored position.
    loss, n = mean_token_nll(torch.tensor([[math.log(0.75), -1e9]]), torch.tensor([[1, -100]]))
    assert n.item() == 1 and loss.item() == pytest.approx(math.log(4 / 3), abs=1e-6)


def test_mean_token_nll_equals_causal_lm_loss_on_the_hand_logits():
    logits = torch.tensor([[[0.0, LN3], [0.0, 0.0], [5.0, -5.0]]])  # [B=1, L=3, V=2]
    labels, mask = torch.tensor([[0, 1, 0]]), torch.tensor([[True, True, False]])
    targets = shifted_targets(labels, mask)  # [[1, -100]]
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)
    want, want_n = causal_lm_loss(logits, labels, mask)  # ln(4/3), 1 token
    loss, n = mean_token_nll(logp, targets)
    assert n.item() == want_n.item() == 1
    assert loss.item() == pytest.approx(want.item(), abs=1e-7) == pytest.approx(math.log(4 / 3), abs=1e-6)


def test_no_counted_token_gives_zero_attached_to_the_graph():
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    loss, n = mean_token_nll(logp, torch.tensor([[-100, -100]]))
    assert n.item() == 0 and loss.item() == 0.0
    loss.backward()
    assert torch.count_nonzero(logp.grad) == 0


# ----------------------------------------------------------------------------------------- through a tiny Qwen2
def _batches(vocab: int) -> dict[str, dict[str, torch.Tensor]]:
    """Packed (two documents per row, position_ids restarting), right-padded, left-padded, and code-only batches."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (2, 11), generator=g)  # [2, 11]
    packed = {"input_ids": ids, "labels": ids, "position_ids": torch.tensor([[0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4]] * 2)}
    right = torch.ones_like(ids)
    right[1, 7:] = 0  # row 1 padded on the right: labels -100 there
    left = torch.ones_like(ids)
    left[0, :3] = 0  # row 0 padded on the left: the attention mask is passed through
    rationale = torch.zeros_like(ids, dtype=torch.bool)
    rationale[0, 2:6] = True
    return {
        "packed": packed,
        "right_padding": {"input_ids": ids, "labels": ids.masked_fill(right == 0, -100), "attention_mask": right},
        "left_padding": {"input_ids": ids, "labels": ids.masked_fill(left == 0, -100), "attention_mask": left},
        "code_only": {"input_ids": ids, "labels": ids, "rationale_mask": rationale},
    }


def _loss_and_grads(model: torch.nn.Module, batch: dict, mask, chunk_size):
    model.zero_grad()
    loss, n = lm_loss(model, batch, mask, chunk_size)
    loss.backward()
    return loss.detach(), n, {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("case", ["packed", "right_padding", "left_padding", "code_only"])
@pytest.mark.parametrize("chunk_size", [1, 4, 1024])
def test_chunked_loss_and_every_gradient_equal_dense(tiny_lm, case, chunk_size):
    model = tiny_lm.train()  # fp32, as the loss is computed in training (both paths in fp32: equal to rounding)
    batch = _batches(model.config.vocab_size)[case]
    mask = ~batch["rationale_mask"] if case == "code_only" else None
    want, want_n, want_grads = _loss_and_grads(model, batch, mask, None)
    loss, n, grads = _loss_and_grads(model, batch, mask, chunk_size)
    assert n.item() == want_n.item() > 0
    torch.testing.assert_close(loss, want, rtol=1e-6, atol=1e-6)
    assert grads.keys() == want_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, want_grads[name], rtol=1e-5, atol=1e-7, msg=name)
    assert "forward" not in model.get_output_embeddings().__dict__  # the head is itself again


def test_the_model_sees_exactly_lm_inputs(tiny_lm, monkeypatch):
    """Packing depends on what reaches the model (no 2-D mask, position_ids, no cache): only logits_to_keep is added."""
    seen = []
    forward = tiny_lm.forward
    monkeypatch.setattr(tiny_lm, "forward", lambda **kw: seen.append(kw) or forward(**kw))
    for batch in _batches(tiny_lm.config.vocab_size).values():
        seen.clear()
        lm_loss(tiny_lm, batch, None, chunk_size=4)
        (kwargs,) = seen
        assert kwargs.pop("logits_to_keep") == batch["input_ids"].shape[1]  # every position: the whole sequence
        assert kwargs.keys() == lm_inputs(batch).keys()
        assert all(kwargs[k] is v for k, v in lm_inputs(batch).items() if isinstance(v, torch.Tensor))


def test_all_padding_batch_gives_zero_not_nan(tiny_lm):
    ids = torch.randint(3, tiny_lm.config.vocab_size, (1, 5))
    loss, n = lm_loss(tiny_lm, {"input_ids": ids, "labels": torch.full_like(ids, -100)}, None, chunk_size=2)
    assert n.item() == 0 and loss.item() == 0.0


# ----------------------------------------------------------------------------------------- the modules
@pytest.fixture
def tiny_cfg(code_jsonl) -> TinyLMConfig:
    return TinyLMConfig(hidden_size=32, intermediate_size=64, vocab_size=300, tokenizer_corpus=code_jsonl)


def _module_loss_and_grads(module, batch):
    module.model.zero_grad()
    loss, n = module.loss(batch)
    loss.backward()
    return loss.detach(), n, [p.grad.clone() for p in module.model.parameters()]


def test_ntp_training_loss_unchanged_vs_dense(tiny_cfg):
    torch.manual_seed(0)
    chunked = NTPModule(tiny=tiny_cfg, loss_on="code", logprob_chunk_size=5)
    chunked.configure_model()
    dense = NTPModule(tiny=tiny_cfg, loss_on="code", logprob_chunk_size=None)
    dense.model = chunked.model
    assert NTPModule(tiny=tiny_cfg).logprob_chunk_size == 1024  # the default: chunked
    batch = _batches(300)["code_only"]
    loss, n, grads = _module_loss_and_grads(chunked, batch)
    want, want_n, want_grads = _module_loss_and_grads(dense, batch)
    assert n.item() == want_n.item() == 2 * 10 - 4  # four rationale targets dropped
    torch.testing.assert_close(loss, want, rtol=1e-6, atol=1e-6)
    for grad, want_grad in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(grad, want_grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(chunked(batch), dense.model(**lm_inputs(batch)).logits)  # forward still gives logits


def test_ntp_fit_logs_the_same_training_losses_as_dense(code_jsonl, tmp_path, monkeypatch):
    """Four optimizer steps of ``ra3 fit`` on the tiny demo config, chunked (8 positions) and dense: same losses."""
    monkeypatch.chdir(tmp_path)
    losses = {}
    for chunk in ("8", "null"):
        main(["fit", "-c", str(DEMO), "--data.path", code_jsonl, "--model.tiny.tokenizer_corpus", code_jsonl,
              "--model.tiny.vocab_size", "300", "--data.max_length", "32", "--data.batch_size", "4",
              "--trainer.max_steps", "4", "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false",
              "--trainer.logger.init_args.name", f"chunk_{chunk}", "--trainer.callbacks", "[]",
              "--model.logprob_chunk_size", chunk])  # fmt: skip
        losses[chunk] = tb_scalars(tmp_path / "lightning_logs" / f"chunk_{chunk}" / "version_0")["train/loss"]
    assert len(losses["8"]) == 4
    torch.testing.assert_close(torch.tensor(losses["8"]), torch.tensor(losses["null"]), rtol=1e-5, atol=1e-6)


def test_ra3_m_step_loss_unchanged_vs_dense(tiny_cfg, monkeypatch):
    torch.manual_seed(0)
    module = RA3Module(tiny=tiny_cfg, loss_on="code", m_logprob_chunk_size=3)
    module.configure_model()
    monkeypatch.setattr(module, "log", lambda *args, **kwargs: None)
    batch = {**_batches(300)["code_only"], "attention_mask": torch.ones(2, 11, dtype=torch.long)}
    chunked = module.m_step(batch)
    module.hparams.m_logprob_chunk_size = None
    torch.testing.assert_close(chunked, module.m_step(batch), rtol=1e-6, atol=1e-6)


def test_rejects_a_chunk_below_one(tiny_cfg):
    with pytest.raises(ValueError, match="logprob_chunk_size=0"):
        NTPModule(tiny=tiny_cfg, logprob_chunk_size=0)
    with pytest.raises(ValueError, match="m_logprob_chunk_size=0"):
        RA3Module(tiny=tiny_cfg, m_logprob_chunk_size=0)
