"""LatentPolicyModule: the E-step learns to write the rationale that reveals a hidden intent, at the right place.

The constructed world: ``def <name>(x):`` then a 2-line block implementing one of four intents, then
``return y``. The tiny model ``π`` is pre-trained on programs whose name is random (it carries no information)
and where half of the blocks are preceded by ``# <intent>`` (right 60% of the time, random otherwise), and a few
``return`` lines by an uninformative ``# done``. In the E-step corpus the name *is* the intent. Without a comment
``π`` cannot tell which block comes (≈ log 4 nats lost); ``q`` can learn to read the name and write ``# <name>``
before the block, which ``π`` then follows. The uninformative comments only cost ``c``.
"""

from __future__ import annotations

import json
import random

import lightning as L
import pytest
import torch

from ra3_lightning.cli import main
from ra3_lightning.data.texts import TextDataModule
from ra3_lightning.estep import (
    LatentRL,
    LatentVocab,
    encode_trace,
    expert_line_logp,
    forward_logits,
    plain_layout,
    rollout,
)
from ra3_lightning.models import TinyLMConfig, build_tiny_lm, train_bpe_tokenizer
from ra3_lightning.modules.latent_policy import LatentPolicyModule
from ra3_lightning.optim import Optim
from ra3_lightning.rl.returns import elbo_rewards

INTENTS = {
    "add": ["    y = x + 1\n", "    y = y + 2\n"],
    "mul": ["    y = x * 3\n", "    y = y * 4\n"],
    "neg": ["    y = -x\n", "    y = y - 5\n"],
    "sq": ["    y = x ** 2\n", "    y = y ** 3\n"],
}
NAMES = sorted(INTENTS)
INTENT_LINE = 1  # the boundary before the block
# Rare on purpose: writing *any* comment where π expects one with probability p gains about -log(1 - p) nats on the
# next line (π no longer spends mass on "a comment comes"), so an uninformative comment is only a net cost when
# -log(1 - p) < c. With p = 0.05 that is 0.05 < c = 0.1.
DONE_RATE = 0.05


def program(name: str, intent: str, rng: random.Random | None = None) -> str:
    lines = [f"def {name}(x):\n"]
    if rng is not None and rng.random() < 0.5:
        lines.append(f"    # {intent if rng.random() < 0.6 else rng.choice(NAMES)}\n")
    lines += INTENTS[intent]
    if rng is not None and rng.random() < DONE_RATE:
        lines.append("    # done\n")
    return "".join(lines + ["    return y\n"])


def expert_programs(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [program(name, name) for name in (rng.choice(NAMES) for _ in range(n))]


@pytest.fixture(scope="module")
def pretrained_dir(tmp_path_factory):
    """A tiny π pre-trained on the line-by-line tokens of the pre-training programs (seeded, ~10 s)."""
    rng = random.Random(0)
    texts = [program(rng.choice(NAMES), rng.choice(NAMES), rng) for _ in range(2000)]
    tok = train_bpe_tokenizer(texts, vocab_size=300)
    torch.manual_seed(0)
    model = build_tiny_lm(TinyLMConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128), tok)
    vocab, opt = LatentVocab.from_tokenizer(tok), torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(200):
        layout = plain_layout([encode_trace(tok, t) for t in rng.sample(texts, 24)], vocab)
        labels = layout.input_ids.masked_fill(layout.attention_mask == 0, -100)
        loss = model(input_ids=layout.input_ids, attention_mask=layout.attention_mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5
    out = tmp_path_factory.mktemp("pi")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@torch.no_grad()
def evaluate(module: LatentPolicyModule, texts: list[str], seed: int = 123) -> tuple[float, torch.Tensor]:
    """(ELBO gain per line over no rationales, THINK rate per boundary) of ``q`` on ``texts``, 8 samples each."""
    traces = [encode_trace(module.tokenizer, t) for t in texts]
    roll = rollout(module.model, traces, module.vocab, 8, 6, 1.0, torch.Generator().manual_seed(seed))
    mode = module.latent.act_likelihood
    logp = expert_line_logp(forward_logits(module.pi, roll.layout), roll.layout, traces, 8, module.vocab, mode)
    with_r = elbo_rewards(logp, roll.think, module.latent.think_cost)
    plain = plain_layout(traces, module.vocab)
    plain = expert_line_logp(forward_logits(module.pi, plain), plain, traces, 1, module.vocab, mode)
    plain = plain.repeat_interleave(8, 0)
    gain = ((with_r - plain) * roll.line_mask).sum() / roll.line_mask.sum()
    return gain.item(), roll.think.float().mean(0)


def _fit_estep(pretrained_dir, tmp_path, act_likelihood: str) -> tuple[LatentPolicyModule, tuple, tuple]:
    """100 E-steps on the expert corpus; ``(module, (gain, THINK rate) before, after)`` on held-out programs."""
    corpus = tmp_path / "expert.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in expert_programs(400, seed=1)))
    L.seed_everything(0)
    module = LatentPolicyModule(
        pretrained=str(pretrained_dir), num_generations=4, seed=0, optim=Optim(lr=2e-4),
        latent=LatentRL(think_cost=0.1, max_latent_tokens=6, act_likelihood=act_likelihood),
    )  # fmt: skip
    data = TextDataModule(str(corpus), batch_size=8)
    module.configure_model()
    held_out = expert_programs(32, seed=2)
    gain_before, rate_before = evaluate(module, held_out)

    trainer = L.Trainer(
        max_steps=100, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, data)
    return module, (gain_before, rate_before), evaluate(module, held_out)


def test_estep_learns_rationales_at_intent_boundaries(pretrained_dir, tmp_path):
    # The marginal likelihood: a comment where π expects one also earns -log(1 - P_π(#)), whatever it says.
    module, (gain_before, rate_before), (gain_after, rate_after) = _fit_estep(pretrained_dir, tmp_path, "marginal")

    others = torch.ones_like(rate_after, dtype=torch.bool)
    others[INTENT_LINE] = False
    print(
        f"gain/line {gain_before:.3f} -> {gain_after:.3f}; THINK rate {rate_before.tolist()} -> {rate_after.tolist()}"
    )
    # Measured (seeded): gain 0.073 -> 0.134 nats/line; THINK rate at the intent boundary 0.55 -> 0.98, elsewhere
    # <= 0.02. What q learns at this scale is *where* to think; the rationale text stays near chance on the intent
    # (see docs/estep.md, "Known limits"), so the margins assert the placement, not a content gain.
    assert gain_after > gain_before + 0.04  # the E-step reward rose (in nats per line)
    assert gain_after > 0.1  # and rationales now beat no rationale
    assert rate_after[INTENT_LINE] > 0.8  # THINK at the intent boundary...
    assert rate_after[others].max() < 0.1  # ...and (almost) nowhere else
    assert not any(p.requires_grad for p in module.pi.parameters())


def test_conditional_likelihood_does_not_pay_for_uninformative_rationales(pretrained_dir, tmp_path):
    # The same run under the latent-conditional likelihood: a THINK earns only what its text adds. q's rationales
    # are drawn from π's own prior (near chance on the intent, Jensen: no gain on average), so the E-step learns to
    # stop writing them — the placement the marginal run "learns" above is the accounting, not the content.
    # Measured (seeded): gain 0.073 -> 0.001 nats/line; THINK rate at the intent boundary 0.55 -> 0.004.
    _, (_, rate_before), (gain_after, rate_after) = _fit_estep(pretrained_dir, tmp_path, "conditional")
    assert rate_before[INTENT_LINE] > 0.4
    assert rate_after[INTENT_LINE] < 0.1
    assert abs(gain_after) < 0.02


def test_print_config_shows_the_base_model_arguments(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "-c", "configs/demo/estep_tiny.yaml", "--print_config"])
    printed = capsys.readouterr().out
    groups = ("latent:", "think_cost", "loss:", "optim:", "num_generations")
    for key in (*groups, "tiny:", "init_from", "pretrained", "TextDataModule"):
        assert key in printed


def test_fit_runs_from_the_demo_config(tmp_path, monkeypatch, code_snippets):
    corpus = tmp_path / "local.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in code_snippets))
    tok_corpus = tmp_path / "tok.jsonl"
    tok_corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in code_snippets * 20))
    monkeypatch.chdir(tmp_path)
    main(
        ["fit", "-c", str(_config()), "--trainer.max_steps", "2", "--trainer.enable_progress_bar", "false",
         "--data.path", str(corpus), "--model.tiny.tokenizer_corpus", str(tok_corpus),
         "--model.tiny.vocab_size", "400", "--model.log_samples_every_n_steps", "1"]
    )  # fmt: skip
    events = list((tmp_path / "lightning_logs" / "estep_tiny").rglob("events.out.tfevents.*"))
    assert events


def test_bad_settings_raise_at_construction():
    tiny = TinyLMConfig(
        hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, tokenizer_corpus="synthetic:pretrain?n=50"
    )
    with pytest.raises(ValueError, match="num_generations"):
        LatentPolicyModule(tiny=tiny, num_generations=1)
    with pytest.raises(ValueError, match="hindsight_lines"):
        LatentPolicyModule(tiny=tiny, latent=LatentRL(hindsight_lines=-1))


def _config():
    from pathlib import Path

    return Path(__file__).resolve().parents[1] / "configs" / "demo" / "estep_tiny.yaml"
