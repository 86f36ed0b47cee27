"""``hindsight_lines = k > 0``: ``q`` sees the next ``k`` expert lines before each decision, in a hidden group that
``π``'s layout, the annotated text and the M-step never see; the rollout and the teacher-forced pass agree."""

from __future__ import annotations

import dataclasses
import json
from contextlib import nullcontext
from types import SimpleNamespace

import lightning as L
import pytest
import torch

import ra3_lightning.estep.core as estep_core
import ra3_lightning.modules.latent_policy as latent_policy_mod
from ra3_lightning.data.texts import TextDataModule
from ra3_lightning.estep import (
    Annotation,
    EStep,
    LatentRL,
    LatentVocab,
    ThinkBias,
    annotate_batch,
    encode_trace,
    forward_logits,
    hindsight_attention_mask,
    policy_logq,
    rollout,
    score_lines,
    strip_rationales,
)
from ra3_lightning.models import TinyLMConfig, build_tiny_lm
from ra3_lightning.modules.latent_policy import LatentPolicyModule
from ra3_lightning.optim import Optim
from ra3_lightning.rl.config import LatentLoss


def _sharp_lm(tokenizer, family: str = "qwen2", attn: str = "sdpa") -> torch.nn.Module:
    """A tiny LM whose attention is sharp enough that hiding or shifting a token visibly changes its logits."""
    torch.manual_seed(0)
    cfg = TinyLMConfig(family=family, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64)
    lm = build_tiny_lm(cfg, tokenizer)
    lm.set_attn_implementation(attn)
    with torch.no_grad():
        for name, p in lm.named_parameters():
            if p.dim() == 2 and "embed" not in name:
                p.mul_(5.0)
    return lm.eval()


@pytest.fixture
def setup(tiny_tokenizer, code_snippets):
    vocab = LatentVocab.from_tokenizer(tiny_tokenizer)
    model = ThinkBias(_sharp_lm(tiny_tokenizer), vocab.think, 5.0).eval()
    traces = [encode_trace(tiny_tokenizer, t) for t in code_snippets[:4]]
    return model, vocab, traces


def _roll(model, vocab, traces, engine="kv", seed=0, **kw):
    kw = {"num_generations": 3, "max_latent_tokens": 6, "temperature": 1.3} | kw
    return rollout(model, traces, vocab, generator=torch.Generator().manual_seed(seed), engine=engine, **kw)


def _real(layout, n: int, field: str = "input_ids") -> list[int]:
    return getattr(layout, field)[n][layout.attention_mask[n].bool()].tolist()


def test_hindsight_mask_by_hand():
    # tokens: 0 BOS | 1-2 group of boundary 0 | 3 visible | 4 group of boundary 1 | 5 visible | 6 padding
    group = torch.tensor([[-1, 0, 0, -1, 1, -1, -1]])
    real = torch.tensor([[1, 1, 1, 1, 1, 1, 0]])
    # row j lists the keys token j sees: the visible real tokens <= j, its own group's tokens <= j, and itself
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0, 0],  # BOS
            [1, 1, 0, 0, 0, 0, 0],  # group 0, first token
            [1, 1, 1, 0, 0, 0, 0],  # group 0 sees its own first token
            [1, 0, 0, 1, 0, 0, 0],  # visible: group 0 is hidden from it
            [1, 0, 0, 1, 1, 0, 0],  # group 1: the visible prefix, not group 0
            [1, 0, 0, 1, 0, 1, 0],  # visible: neither group
            [1, 0, 0, 1, 0, 1, 1],  # padding sees the visible prefix and itself (never an empty row)
        ],
        dtype=torch.bool,
    )
    assert torch.equal(hindsight_attention_mask(group, real)[0], expected)


@pytest.mark.parametrize(("family", "attn"), [("qwen2", "sdpa"), ("qwen2", "eager"), ("llama", "sdpa")])
def test_rollout_logq_matches_one_teacher_forced_pass_on_q_layout(tiny_tokenizer, code_snippets, family, attn):
    vocab = LatentVocab.from_tokenizer(tiny_tokenizer)
    model = ThinkBias(_sharp_lm(tiny_tokenizer, family, attn), vocab.think, 5.0).eval()
    traces = [encode_trace(tiny_tokenizer, t) for t in code_snippets[:4]]
    roll = _roll(model, vocab, traces, hindsight_lines=2)
    assert 0.1 < roll.think[roll.line_mask].float().mean() < 0.9  # both decisions occur
    assert roll.q_layout.input_ids.shape[1] > roll.layout.input_ids.shape[1]
    with torch.no_grad():
        terms = policy_logq(model, roll.q_layout, roll.think, roll.line_mask, vocab, temperature=1.3)
        # q's visible stream is π's sequence: q's line log-likelihoods are a plain pass over roll.layout
        full = score_lines(model, roll.layout, roll.think.shape[1])
    torch.testing.assert_close(roll.logq, terms.logq, atol=1e-4, rtol=0)
    torch.testing.assert_close(roll.p_think, terms.p_think, atol=1e-4, rtol=0)
    torch.testing.assert_close(roll.line_logp, full, atol=1e-4, rtol=0)
    # the comparison can fail: letting later tokens see the groups, or numbering tokens 0..L-1, changes log q
    for wrong in (
        dataclasses.replace(roll.q_layout, hindsight_group=torch.full_like(roll.q_layout.hindsight_group, -1)),
        dataclasses.replace(roll.q_layout, position_ids=None),
    ):
        with torch.no_grad():
            off = policy_logq(model, wrong, roll.think, roll.line_mask, vocab, temperature=1.3).logq
        assert (off - roll.logq).abs().max() > 1e-3


class ConstantLM(torch.nn.Module):
    """Logits that ignore the context: what a rollout samples then depends on the seed alone, whatever it sees."""

    def __init__(self, logits: torch.Tensor) -> None:  # [V]
        super().__init__()
        self.logits = torch.nn.Parameter(logits, requires_grad=False)

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, use_cache=False):
        return SimpleNamespace(logits=self.logits.expand(*input_ids.shape, -1))


def test_pi_layout_equals_the_k0_layout_for_the_same_decisions_and_rationales(tiny_tokenizer, code_snippets):
    vocab = LatentVocab.from_tokenizer(tiny_tokenizer)
    q = ConstantLM(vocab.think.float() * 2.0)
    traces = [encode_trace(tiny_tokenizer, t) for t in code_snippets]
    plain, hind = (_roll(q, vocab, traces, hindsight_lines=k) for k in (0, 2))
    assert torch.equal(plain.think, hind.think) and plain.rationales == hind.rationales  # same draws
    assert plain.think.any() and (~plain.think & plain.line_mask).any()
    for f in dataclasses.fields(plain.layout):
        a, b = getattr(plain.layout, f.name), getattr(hind.layout, f.name)
        assert (a is None and b is None) or torch.equal(a, b), f.name
    assert plain.q_layout is plain.layout and hind.q_layout.input_ids.shape[1] > hind.layout.input_ids.shape[1]
    pi = build_tiny_lm(TinyLMConfig(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64), tiny_tokenizer)
    with torch.no_grad():
        lines = plain.think.shape[1]
        torch.testing.assert_close(score_lines(pi, hind.layout, lines), score_lines(pi, plain.layout, lines))
    for n in range(plain.think.shape[0]):
        assert hind.annotated(n, vocab) == plain.annotated(n, vocab)


def test_pi_layout_and_annotated_text_hold_no_hindsight_tokens(setup):
    model, vocab, _ = setup
    roll = _roll(*setup, hindsight_lines=2)
    for n in range(roll.think.shape[0]):
        tr = roll.trace_of(n)
        expected = [vocab.bos_id]
        for t in range(tr.num_lines):
            expected += (tr.indent[t] + roll.rationales[n][t]) if roll.think[n, t] else []
            expected += tr.indent[t] + tr.body[t]
        assert _real(roll.layout, n) == expected
        ann = roll.annotated(n, vocab)
        assert vocab.tokenizer.decode(expected[1:]) == ann.text
        assert strip_rationales(ann.text, ann.rationale_spans) == tr.text


@pytest.mark.parametrize("k", [2, 50])
def test_hindsight_groups_hold_the_next_lines_and_fewer_at_the_end(setup, k):
    roll = _roll(*setup, hindsight_lines=k)
    q = roll.q_layout
    for n in range(roll.think.shape[0]):
        tr, group = roll.trace_of(n), q.hindsight_group[n]
        for t in range(tr.num_lines):
            block = [i for j in range(t, min(t + k, tr.num_lines)) for i in tr.indent[j] + tr.body[j]]
            rationale = roll.rationales[n][t] if roll.think[n, t] else []
            idx = (group == t).nonzero().flatten()
            assert q.input_ids[n, idx].tolist() == block + tr.indent[t] + rationale
            # the decision is read at the last indentation token, after the block
            assert int(q.decision_pos[n, t]) == int(idx[0]) + len(block) + len(tr.indent[t]) - 1
            # the group continues the visible positions; the visible stream resumes where it was
            start = int((group[: idx[0]] < 0).sum())
            assert q.position_ids[n, idx].tolist() == list(range(start, start + len(idx)))
        last = tr.num_lines - 1  # the last line's block is that line alone
        assert q.input_ids[n, group == last].tolist()[: len(tr.indent[last] + tr.body[last])] == (
            tr.indent[last] + tr.body[last]
        )
        visible = (group < 0) & q.attention_mask[n].bool()
        assert q.input_ids[n, visible].tolist() == _real(roll.layout, n)
        assert q.position_ids[n, visible].tolist() == list(range(int(visible.sum())))
        assert q.kind[n, visible].eq(0).all()  # a visible rationale copy is context for q, not its sample


def test_reencode_engine_gives_the_same_hindsight_rollout(setup):
    kv, naive = _roll(*setup, "kv", hindsight_lines=2), _roll(*setup, "reencode", hindsight_lines=2)
    assert torch.equal(kv.think, naive.think) and kv.rationales == naive.rationales
    for field in ("input_ids", "position_ids", "hindsight_group", "decision_pos"):
        assert torch.equal(getattr(kv.q_layout, field), getattr(naive.q_layout, field)), field
    assert torch.equal(kv.layout.input_ids, naive.layout.input_ids)
    torch.testing.assert_close(kv.logq, naive.logq, atol=1e-4, rtol=0)
    torch.testing.assert_close(kv.line_logp, naive.line_logp, atol=1e-4, rtol=0)


def test_bad_hindsight_settings_raise(setup):
    model, vocab, traces = setup
    for k in (-1, 1.5):
        with pytest.raises(ValueError, match="hindsight_lines"):
            _roll(model, vocab, traces, hindsight_lines=k)
    roll = _roll(model, vocab, traces, hindsight_lines=1)
    with pytest.raises(ValueError, match="π's layout"):
        score_lines(model, roll.q_layout, roll.think.shape[1])
    flash = SimpleNamespace(config=SimpleNamespace(_attn_implementation="flash_attention_2"))
    with pytest.raises(ValueError, match="4-D mask"):
        forward_logits(flash, roll.q_layout)
    tiny = TinyLMConfig(
        hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, tokenizer_corpus="synthetic:pretrain?n=50"
    )
    with pytest.raises(ValueError, match="hindsight_lines=-2 must be an integer >= 0"):
        LatentPolicyModule(tiny=tiny, latent=LatentRL(hindsight_lines=-2))


def test_latent_policy_module_trains_and_annotates_with_hindsight(tmp_path, code_snippets, monkeypatch):
    corpus = tmp_path / "code.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in code_snippets * 20))
    tiny = TinyLMConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64,
                        vocab_size=400, tokenizer_corpus=str(corpus))  # fmt: skip
    L.seed_everything(0)
    module = LatentPolicyModule(tiny=tiny, num_generations=2, latent=LatentRL(hindsight_lines=2, max_latent_tokens=4,
                                temperature=2.0), loss=LatentLoss(beta=0.1), optim=Optim(lr=1e-3),
                                log_samples_every_n_steps=0)  # fmt: skip
    module.configure_model()
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    calls = []

    def spy(model, layout, *args, **kwargs):
        calls.append((model is module.model, layout.hindsight_group is not None))
        return policy_logq(model, layout, *args, **kwargs)

    monkeypatch.setattr(latent_policy_mod, "policy_logq", spy)  # q's log q
    monkeypatch.setattr(estep_core, "policy_logq", spy)  # π's reference, in the E-step's scoring pass
    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(module, TextDataModule(str(corpus), batch_size=2))
    # per step: q's log q on its layout with the hidden groups, π's reference on π's layout
    assert sorted(set(calls)) == [(False, False), (True, True)] and len(calls) == 6
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert any(not torch.equal(v, module.model.state_dict()[k]) for k, v in before.items())

    seen = []
    monkeypatch.setattr(estep_core, "rollout", lambda *a: seen.append(a[-1]) or rollout(*a))
    records = module.predict_step({"text": code_snippets[:3], "id": ["a", "b", "c"]}, 0)
    assert seen == [2]  # the module's hindsight reaches annotation
    assert [r["original"] for r in records] == code_snippets[:3]


def test_annotate_batch_with_hindsight_round_trips(setup, tiny_lm, code_snippets):
    model, vocab, _ = setup
    estep, run = EStep(LatentRL(max_latent_tokens=5, hindsight_lines=2), vocab), Annotation("best", num_generations=2)
    records = annotate_batch(model, tiny_lm, estep, code_snippets, [str(i) for i in range(6)], run,
                             torch.Generator().manual_seed(0))  # fmt: skip
    assert sum(len(r["think_lines"]) for r in records) > 0
    for r, original in zip(records, code_snippets, strict=True):
        assert strip_rationales(r["text"], r["rationale_spans"]) == original
        for start, end in r["rationale_spans"]:
            assert r["text"][start:end].lstrip(" \t").startswith("#")


def test_ra3_module_annotates_with_its_hindsight(tmp_path, monkeypatch):
    import ra3_lightning.modules.ra3 as ra3_mod

    tiny = TinyLMConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                        tokenizer_corpus="synthetic:pretrain?n=50")  # fmt: skip
    module = ra3_mod.RA3Module(tiny=tiny, latent=LatentRL(hindsight_lines=2), work_dir=str(tmp_path))
    module.model = torch.nn.Linear(1, 1)  # annotation is mocked: only unsharded_for_generation touches q
    calls = []
    monkeypatch.setattr(ra3_mod, "annotate", lambda source, ds, out, **kw: calls.append((source, kw)) or ds)
    records = SimpleNamespace(annotation_records=lambda iteration, rank, world: [{"id": "a", "text": "x = 1\n"}])
    monkeypatch.setattr(ra3_mod.RA3Module, "em_data", property(lambda self: records))
    monkeypatch.setattr(ra3_mod.RA3Module, "log_annotation", lambda self, iteration, annotated: None)
    module._trainer = SimpleNamespace(global_rank=0, world_size=1, is_global_zero=True,
                                      strategy=SimpleNamespace(barrier=lambda name: None),
                                      precision_plugin=SimpleNamespace(forward_context=nullcontext))  # fmt: skip
    q_optimizer = SimpleNamespace(optimizer=SimpleNamespace(state={"q": "moments"}))
    monkeypatch.setattr(ra3_mod.RA3Module, "optimizers", lambda self: [None, q_optimizer])
    module.annotate_iteration(0)
    # annotate(module) takes the module's own E-step (latent group whole); only the annotation group is passed
    [(source, kw)] = calls
    assert source is module and "latent" not in kw and kw["annotation"] is module.annotation
    assert q_optimizer.optimizer.state == {}  # q's AdamW moments are dropped before annotating
