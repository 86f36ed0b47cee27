"""Engines that feed token chunks to a causal LM for ``N`` sequences at once.

:class:`KVCacheEngine` keeps ONE batched KV cache. Sequences of different lengths share it: a sequence with nothing
to feed at a step gets a padding slot that the attention mask hides; ``position_ids`` count only real tokens, so
every sequence sees exactly what a plain forward pass over its own tokens sees, and :meth:`KVCacheEngine.hide`
masks slots (a hindsight group) from every later token. :class:`ReencodeEngine` is the naive alternative that
re-encodes the whole prefix at every step (same results; ``bench/estep_rollout.py`` times both).

Models are used through the Hugging Face causal-LM call ``model(input_ids, attention_mask, position_ids,
past_key_values, use_cache) -> .logits`` only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from transformers import DynamicCache

from ra3_lightning.models import cache_argument


class KVCacheEngine:
    """Feeds token chunks to ``model`` for ``n`` sequences at once, keeping one batched ``DynamicCache``."""

    def __init__(self, model: torch.nn.Module, n: int, pad_id: int) -> None:
        self.model, self.pad_id = model, pad_id
        self.device = next(model.parameters()).device
        self.cache = DynamicCache(config=getattr(model, "config", None))
        self.cache_arg = cache_argument(model)
        self.mask = torch.zeros(n, 0, dtype=torch.long, device=self.device)  # [N, S] over all cache slots
        self.pos = torch.zeros(n, dtype=torch.long, device=self.device)  # [N] real tokens fed so far

    def _pack(self, chunks: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor, Tensor]:
        width = max(len(c) for c in chunks)
        ids = torch.tensor([list(c) + [self.pad_id] * (width - len(c)) for c in chunks], device=self.device)
        valid = torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in chunks], device=self.device)
        positions = self.pos[:, None] + torch.arange(width, device=self.device)[None]  # [N, C]
        self.pos += valid.sum(1)
        self.mask = torch.cat([self.mask, valid], dim=1)
        return ids, valid, positions

    def feed(self, chunks: Sequence[Sequence[int]]) -> Tensor:
        """Append ``chunks[n]`` to sequence ``n``; returns the logits ``[N, C, V]`` at the new slots (C = longest)."""
        ids, _, positions = self._pack(chunks)
        cache_kwarg = {self.cache_arg: self.cache}
        out = self.model(input_ids=ids, attention_mask=self.mask, position_ids=positions, use_cache=True, **cache_kwarg)
        return out.logits.float()  # the DynamicCache was updated in place

    @property
    def num_slots(self) -> int:
        """Cache slots so far (the next ``feed`` writes its chunk from this slot on)."""
        return self.mask.shape[1]

    def hide(self, slots: Sequence[Sequence[int]]) -> None:
        """Mask cache ``slots[n]`` of sequence ``n`` from every later token and give their positions back.

        The slots stay in the cache; later tokens get the positions they would have had without them.
        """
        rows = torch.tensor([n for n, s in enumerate(slots) for _ in s], dtype=torch.long, device=self.device)
        cols = torch.tensor([c for s in slots for c in s], dtype=torch.long, device=self.device)
        self.mask[rows, cols] = 0
        self.pos -= torch.tensor([len(s) for s in slots], dtype=torch.long, device=self.device)


class ReencodeEngine(KVCacheEngine):
    """The naive engine: no cache, the whole (padded) history is re-encoded at every call."""

    def __init__(self, model: torch.nn.Module, n: int, pad_id: int) -> None:
        super().__init__(model, n, pad_id)
        self.history = torch.zeros(n, 0, dtype=torch.long, device=self.device)  # [N, S]
        self.positions = torch.zeros(n, 0, dtype=torch.long, device=self.device)  # [N, S]

    def feed(self, chunks: Sequence[Sequence[int]]) -> Tensor:
        ids, _, positions = self._pack(chunks)
        self.history = torch.cat([self.history, ids], dim=1)
        self.positions = torch.cat([self.positions, positions], dim=1)
        out = self.model(input_ids=self.history, attention_mask=self.mask, position_ids=self.positions, use_cache=False)
        return out.logits[:, -ids.shape[1] :].float()


ENGINES: dict[str, type[KVCacheEngine]] = {"kv": KVCacheEngine, "reencode": ReencodeEngine}
