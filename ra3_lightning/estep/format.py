"""The latent format: how a rationale is written and which tokens open, continue and end one.

:class:`LatentFormat` is a strategy object. The default writes a Python comment line (``indent + "# " + text +
newline``); a subclass changes :attr:`LatentFormat.comment_prefix` (e.g. ``"// "``) or overrides the token sets,
and is chosen from YAML by ``class_path`` (``latent_format:`` on the E-step and RA3 modules). Every part of the
E-step (rollout, scoring, annotation) and the evaluation diagnostics take their tokens from it.

``P(THINK)`` is the probability mass of tokens whose text begins with the comment marker after optional
spaces/tabs and that are valid rationale tokens (:meth:`LatentFormat.think_mask`), measured after the line's
whitespace-only leading tokens (its indentation) have been fed.
"""

from __future__ import annotations

import weakref

import torch
from transformers import PreTrainedTokenizerBase


class LatentFormat:
    """How a rationale is written and which tokens open, continue and end one: the E-step's latent format.

    The default is a Python comment line (``indent + "# " + text + newline``). Another format is a subclass that
    changes :attr:`comment_prefix` (e.g. ``"// "``: its marker must begin some token's text) or overrides the token
    sets; it is chosen from YAML with ``latent_format: {class_path: my_package.MyFormat}`` on the E-step / RA3
    module, and every part of the E-step (rollout, scoring, annotation) takes its tokens from it.

    Args:
        comment_prefix: What a rationale line starts with after its indentation (default ``"# "``, for Python).
    """

    comment_prefix: str = "# "

    def __init__(self, comment_prefix: str | None = None) -> None:
        if comment_prefix is not None:
            if not comment_prefix.strip() or "\n" in comment_prefix:
                raise ValueError(f"comment_prefix={comment_prefix!r} needs a marker (e.g. '# ') and no newline")
            self.comment_prefix = comment_prefix

    def __repr__(self) -> str:
        return f"{type(self).__name__}(comment_prefix={self.comment_prefix!r})"

    @property
    def comment_start(self) -> str:
        """The marker a THINK token must start with (``"#"``), i.e. ``comment_prefix`` without whitespace."""
        return self.comment_prefix.strip()

    def rationale_line(self, rationale: str, indent: str, newline: str = "\n") -> str:
        """``indent + comment_prefix + rationale + newline``; the rationale must be a single line."""
        if "\n" in rationale or "\r" in rationale:
            raise ValueError(f"a rationale must be one line, got {rationale!r}")
        return f"{indent}{self.comment_prefix}{rationale}{newline}"

    def continuation_mask(self, tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
        """``[V]`` bool: tokens a rationale may contain — no special token, and no newline except one at the end."""
        special = set(tokenizer.all_special_ids)
        ok = []
        for i, s in enumerate(token_texts(tokenizer)):
            body = s[:-1] if s.endswith("\n") else s
            ok.append(i not in special and "\n" not in body and "\r" not in s and "\ufffd" not in s)
        return torch.tensor(ok, dtype=torch.bool)

    def opener_mask(self, tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
        """``[V]`` bool: tokens whose text starts with the marker after optional spaces/tabs (what forbidding
        rationales at decode time must forbid, ``"#\n\n"`` included)."""
        start = self.comment_start
        return torch.tensor([s.lstrip(" \t").startswith(start) for s in token_texts(tokenizer)], dtype=torch.bool)

    def think_mask(self, tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
        """``[V]`` bool: the THINK tokens — openers that are valid rationale tokens (``P(THINK)`` is their mass)."""
        return self.opener_mask(tokenizer) & self.continuation_mask(tokenizer)

    def end_mask(self, tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
        """``[V]`` bool: rationale tokens that end it (their text ends with ``"\n"``)."""
        ends = torch.tensor([s.endswith("\n") for s in token_texts(tokenizer)], dtype=torch.bool)
        return ends & self.continuation_mask(tokenizer)


_TEXTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> (vocabulary size, texts)


def token_texts(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """The decoded text of every vocabulary id (special tokens included).

    Decoded once per tokenizer and remembered while the tokenizer lives; a tokenizer that gained tokens is decoded
    again. Building a :class:`~ra3_lightning.estep.LatentVocab` asks five times (one ``decode`` per id: 1.2 s for
    Qwen2.5's 151,646 ids here; ``batch_decode`` took 2.0–2.8 s).
    """
    size = len(tokenizer)
    cached = _TEXTS.get(tokenizer)
    if cached is None or cached[0] != size:
        cached = (size, [tokenizer.decode([i]) for i in range(size)])
        _TEXTS[tokenizer] = cached
    return list(cached[1])


def comment_token_mask(tokenizer: PreTrainedTokenizerBase, fmt: LatentFormat | None = None) -> torch.Tensor:
    """``[V]`` bool: tokens a rationale may contain (:meth:`LatentFormat.continuation_mask`)."""
    return (fmt or LatentFormat()).continuation_mask(tokenizer)


def think_token_mask(tokenizer: PreTrainedTokenizerBase, fmt: LatentFormat | None = None) -> torch.Tensor:
    """``[V]`` bool: comment tokens whose text begins with the comment marker (``#``) after optional spaces/tabs."""
    return (fmt or LatentFormat()).think_mask(tokenizer)


def newline_token_mask(tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """``[V]`` bool: tokens whose text ends with ``"\\n"``."""
    return torch.tensor([s.endswith("\n") for s in token_texts(tokenizer)], dtype=torch.bool)
