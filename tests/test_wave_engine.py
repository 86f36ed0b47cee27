"""The wave engine (``engine="wave"``): one forward call per THINK instead of one per line, and exactly the line
engine's rollout — decisions, rationales, layouts, ``log q``, ``P(THINK)`` — from the same generator state."""

from __future__ import annotations

import copy

import pytest
import torch

from ra3_lightning.estep import (
    Draws,
    LatentRL,
    LatentVocab,
    ThinkBias,
    WaveEngine,
    encode_trace,
    inverse_cdf,
    resolve_engine,
    rollout,
)
from ra3_lightning.estep import sampler as sampler_module
from ra3_lightning.lora import LoRASpec, apply_lora, lora_layers

LAYOUT_FIELDS = ("input_ids", "attention_mask", "line_of", "kind", "owner", "decision_pos")


def _roll(model, vocab, traces, engine, **kw):
    kw = {"num_generations": 3, "max_latent_tokens": 4, "temperature": 1.3} | kw
    return rollout(model, traces, vocab, generator=torch.Generator().manual_seed(0), engine=engine, **kw)


def assert_same_rollout(wave, line) -> None:
    """Ints and bools exactly; floats to float32 rounding (the two engines batch the same tokens differently)."""
    assert torch.equal(wave.think, line.think)
    assert torch.equal(wave.line_mask, line.line_mask)
    assert wave.rationales == line.rationales
    for field in LAYOUT_FIELDS:
        assert torch.equal(getattr(wave.layout, field), getattr(line.layout, field)), field
        assert torch.equal(getattr(wave.q_layout, field), getattr(line.q_layout, field)), field
    for field in ("logq", "p_think", "line_logp"):
        torch.testing.assert_close(getattr(wave, field), getattr(line, field), atol=2e-5, rtol=1e-5)


def test_inverse_cdf_by_hand():
    # probs 1/4, 0, 1/2, 1/4 -> cdf 1/4, 1/4, 3/4, 1 (exact in float32); token i iff cdf[i-1] <= u < cdf[i]
    probs = torch.tensor([[0.25, 0.0, 0.5, 0.25]]).expand(6, 4)
    u = torch.tensor([0.0, 0.1, 0.25, 0.74, 0.75, 0.999])
    assert inverse_cdf(probs, u).tolist() == [0, 0, 2, 2, 3, 3]  # u = 1/4 skips the empty token 1
    # no mass at either end: u = 0 gives the first token with mass, u = 1 (rounding) the last one with mass
    probs = torch.tensor([[0.0, 0.5, 0.5, 0.0]]).expand(3, 4)
    assert inverse_cdf(probs, torch.tensor([0.0, 0.5, 1.0])).tolist() == [1, 2, 2]


def test_draws_are_the_generator_in_a_fixed_order():
    draws = Draws.sample(3, 5, 4, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    assert torch.equal(draws.decide, torch.rand(3, 5, generator=g))  # decisions first, then the rationale tokens
    assert torch.equal(draws.tokens, torch.rand(3, 5, 4, generator=g))


def tiny_setup(lm, tokenizer, snippets):
    return lm, LatentVocab.from_tokenizer(tokenizer), [encode_trace(tokenizer, t) for t in snippets]


def with_lora(lm):
    """A LoRA-wrapped copy whose adapters are not the identity (``B != 0``)."""
    model = apply_lora(copy.deepcopy(lm), LoRASpec(r=2, alpha=6.0))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in lora_layers(model):
            b = layer.lora_B["default"].weight
            b.copy_(torch.randn(b.shape, generator=g) * 0.1)
    return model.eval()


def equal_rollouts_at_biases(lm, vocab, traces, biases):
    """For each THINK bias, the wave and the line engine give the same rollout; the THINK rates, the last rollout."""
    rates = []
    for bias in biases:
        model = ThinkBias(lm, vocab.think, bias).eval()
        line, wave = _roll(model, vocab, traces, "kv"), _roll(model, vocab, traces, "wave")
        assert_same_rollout(wave, line)
        rates.append(float(line.think[line.line_mask].float().mean()))
    return rates, line


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_wave_equals_line_engine_at_low_mid_high_think_rates(tiny_lm, tiny_tokenizer, code_snippets, lora):
    lm, vocab, traces = tiny_setup(tiny_lm, tiny_tokenizer, code_snippets)  # 6 traces of 2..6 lines
    lm = with_lora(lm) if lora else lm
    rates, line = equal_rollouts_at_biases(lm, vocab, traces, (0.0, 3.0, 6.0))
    assert 0 < rates[0] < rates[1] < rates[2] and rates[2] > 0.3, rates  # measured 0.014, 0.069, 0.35 (full)
    assert any(len(r) == 4 for row in line.rationales for r in row)  # some rationale hit the cap (forced newline)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_wave_equals_line_engine_on_the_real_vocabulary(qwen_lm, qwen_tok, code_snippets, lora):
    blank_lines = "import math\n\n\ndef f(x):\n    y = x + 1\n\n    return math.sqrt(y)\n"
    lm, vocab, traces = tiny_setup(qwen_lm, qwen_tok, [blank_lines, *code_snippets[:3]])
    lm = with_lora(lm) if lora else lm
    rates, _ = equal_rollouts_at_biases(lm, vocab, traces, (5.0, 7.0, 9.0))
    assert 0 < rates[0] < rates[1] < rates[2] and rates[2] > 0.3, rates  # measured 0.067, 0.17, 0.47 (full)


def test_windows_and_lookahead_change_nothing(tiny_lm, tiny_tokenizer, code_snippets, monkeypatch):
    """One line per wave (a 1-token window: every wave of an unindented line starts at its body) and no lookahead
    limit: the same rollout."""
    lm, vocab, traces = tiny_setup(tiny_lm, tiny_tokenizer, code_snippets)
    model = ThinkBias(lm, vocab.think, 4.0).eval()
    line = _roll(model, vocab, traces, "kv")
    monkeypatch.setattr(WaveEngine, "max_logits", 1)
    assert_same_rollout(_roll(model, vocab, traces, "wave"), line)
    monkeypatch.undo()
    monkeypatch.setattr(sampler_module, "_LOOKAHEAD", 1e9)
    assert_same_rollout(_roll(model, vocab, traces, "wave"), line)


def count_calls(model) -> list[int]:
    calls = [0]
    model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_a_rollout_without_thinks_is_one_forward_call(tiny_lm, tiny_tokenizer, code_snippets):
    lm, vocab, traces = tiny_setup(tiny_lm, tiny_tokenizer, code_snippets)
    model = ThinkBias(lm, vocab.think, -1e4).eval()  # P(THINK) = 0
    calls = count_calls(model)
    wave = _roll(model, vocab, traces, "wave")
    assert not wave.think.any() and calls[0] == 1  # all traces, all samples, every line: one call
    calls[0] = 0
    _roll(model, vocab, traces, "kv")
    assert calls[0] == max(t.num_lines for t in traces) + 1 == 7  # a call per line boundary, and the last line


def test_compact_keeps_the_logits_and_drops_dead_slots(tiny_lm):
    engines = [WaveEngine(tiny_lm, 2, 0) for _ in range(2)]
    for engine in engines:
        engine.feed([[5, 6, 7, 8], [9, 10]])
        engine.hide([range(2, 4), []])  # sequence 0 takes back its last two tokens
    engines[0].compact()
    assert (engines[0].num_slots, engines[1].num_slots) == (2, 4)  # both rows keep 2 live slots
    assert engines[0].mask.tolist() == [[1, 1], [1, 1]]
    compacted, plain = (e.feed([[11, 12], [13]]) for e in engines)
    torch.testing.assert_close(compacted[0], plain[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(compacted[1, :1], plain[1, :1], atol=1e-5, rtol=0)


def test_retired_sequences_leave_the_batch(tiny_lm):
    engine = WaveEngine(tiny_lm, 3, 0)
    engine.feed([[5, 6], [7], [8, 9]])
    engine.retire([1])
    assert engine.live == [0, 2] and engine.mask.shape == (2, 2)
    assert engine.feed([[10], [], [11]]).shape[0] == 2  # logits of the live sequences only
    with pytest.raises(ValueError, match="retired"):
        engine.feed([[1], [2], [3]])


def test_wave_has_no_hindsight_and_auto_picks_the_engine(tiny_lm, tiny_tokenizer, code_snippets):
    lm, vocab, traces = tiny_setup(tiny_lm, tiny_tokenizer, code_snippets[:2])
    assert resolve_engine("auto", 0) == "wave" and resolve_engine("auto", 2) == "kv"
    with pytest.raises(ValueError, match="engine='wave' walks in waves and has no hindsight"):
        _roll(lm, vocab, traces, "wave", hindsight_lines=1)
    with pytest.raises(ValueError, match="hindsight_lines=2"):
        LatentRL(engine="wave", hindsight_lines=2)
    assert LatentRL(hindsight_lines=2).engine == "auto"  # the default works with hindsight (as "kv")
    auto, kv = _roll(lm, vocab, traces, "auto", hindsight_lines=1), _roll(lm, vocab, traces, "kv", hindsight_lines=1)
    assert torch.equal(auto.q_layout.input_ids, kv.q_layout.input_ids)
