"""Model and tokenizer building: tiny models from config, BPE trained locally, checkpoint round trips."""

import pytest
import torch

from ra3_lightning.models import TinyLMConfig, build_tiny_lm, tokenizer_files, tokenizer_from_files


def test_bpe_round_trips_code(tiny_tokenizer, code_snippets):
    for text in code_snippets + ["x = 'ünïcödé'\n\tif y:\r\n  pass\n"]:
        ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tiny_tokenizer.decode(ids) == text
    assert tiny_tokenizer.eos_token == tiny_tokenizer.pad_token == "<|endoftext|>"


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_tiny_lm_forward(family, tiny_tokenizer):
    cfg = TinyLMConfig(family=family, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64)
    model = build_tiny_lm(cfg, tiny_tokenizer)
    out = model(torch.tensor([[1, 2, 3]]))
    assert out.logits.shape == (1, 3, len(tiny_tokenizer))


def test_tiny_config_rejects_bad_heads():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        TinyLMConfig(hidden_size=30, num_heads=4)


def test_tokenizer_survives_checkpoint_files(tiny_tokenizer):
    again = tokenizer_from_files(tokenizer_files(tiny_tokenizer))
    text = "def f(x):\n    return x\n"
    assert again(text)["input_ids"] == tiny_tokenizer(text)["input_ids"]


def test_whole_file_tokens_equal_line_by_line_tokens(tiny_tokenizer, code_snippets):
    # The E-step rolls out line by line; NTP tokenises whole files. They must see the same tokens.
    for text in code_snippets:
        whole = tiny_tokenizer.encode(text, add_special_tokens=False)
        by_line = [
            i for line in text.splitlines(keepends=True) for i in tiny_tokenizer.encode(line, add_special_tokens=False)
        ]
        assert whole == by_line


def test_exported_tiny_model_tokenizes_the_same_through_autotokenizer(tiny_lm, tiny_tokenizer, tmp_path):
    from transformers import AutoTokenizer

    tiny_lm.save_pretrained(tmp_path)  # config.json says qwen2: AutoTokenizer picks Qwen2Tokenizer
    tiny_tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "def f(x):\n    # add one\n    return x + 1\n\n\nclass A:\n\tpass\n"
    assert loaded.encode(text, add_special_tokens=False) == tiny_tokenizer.encode(text, add_special_tokens=False)


def test_tokenizer_cache_key_includes_the_version(monkeypatch, tmp_path):
    import ra3_lightning.models as models

    calls = []
    monkeypatch.setattr(models, "train_bpe_tokenizer", lambda texts, n: calls.append(n) or models.load_tokenizer)
    monkeypatch.setattr(models, "_save_atomically", lambda tok, path: calls.append(path))
    monkeypatch.setattr("ra3_lightning.data.sources.load_texts", lambda *a, **k: ["x = 1\n"])
    monkeypatch.setenv("RA3_CACHE", str(tmp_path))
    cfg = TinyLMConfig(tokenizer_corpus="corpus-name")
    models.tokenizer_for_tiny(cfg)
    monkeypatch.setattr(models, "TOKENIZER_VERSION", models.TOKENIZER_VERSION + 1)
    models.tokenizer_for_tiny(cfg)
    assert calls[1] != calls[3]  # a new tokenizer version trains into a new cache directory
