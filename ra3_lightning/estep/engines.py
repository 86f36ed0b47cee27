"""Engines that feed token chunks to a causal LM for ``N`` sequences at once.

:class:`KVCacheEngine` keeps ONE batched KV cache. Sequences of different lengths share it: a sequence with nothing
to feed at a step gets a padding slot that the attention mask hides; ``position_ids`` count only real tokens, so
every sequence sees exactly what a plain forward pass over its own tokens sees, and :meth:`KVCacheEngine.hide`
masks slots (a hindsight group) from every later token. :class:`ReencodeEngine` is the naive alternative that
re-encodes the whole prefix at every step (same results; ``bench/estep_rollout.py`` times both). :class:`WaveEngine`
is the KV cache of the wave walk (:func:`ra3_lightning.estep.sampler.rollout` with ``engine="wave"``): it feeds the
rest of every trace at once, takes back the tokens after a THINK (:meth:`KVCacheEngine.hide` on the tail) and
:meth:`WaveEngine.compact` drops the slots no sequence attends to any more.

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
    """Feeds token chunks to ``model`` for ``n`` sequences at once, keeping one batched ``DynamicCache``.

    Attributes:
        waves: Whether the rollout walks this engine in waves (one pass per THINK) instead of line by line.
        live: The sequences in the batch, in batch order (all ``n`` here; :meth:`WaveEngine.retire` drops some).
    """

    waves = False

    def __init__(self, model: torch.nn.Module, n: int, pad_id: int) -> None:
        self.model, self.pad_id = model, pad_id
        self.device = next(model.parameters()).device
        self.cache = DynamicCache(config=getattr(model, "config", None))
        self.cache_arg = cache_argument(model)
        self.live = list(range(n))
        self.mask = torch.zeros(n, 0, dtype=torch.long, device=self.device)  # [N, S] over all cache slots
        self.pos = torch.zeros(n, dtype=torch.long, device=self.device)  # [N] real tokens fed so far

    def _pack(self, chunks: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor, Tensor]:
        if any(chunks[n] for n in set(range(len(chunks))) - set(self.live)):
            raise ValueError("a retired sequence cannot be fed")
        chunks = [chunks[n] for n in self.live]
        width = max(len(c) for c in chunks)
        ids = torch.tensor([list(c) + [self.pad_id] * (width - len(c)) for c in chunks], device=self.device)
        valid = torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in chunks], device=self.device)
        positions = self.pos[:, None] + torch.arange(width, device=self.device)[None]  # [N, C]
        self.pos += valid.sum(1)
        self.mask = torch.cat([self.mask, valid], dim=1)
        return ids, valid, positions

    def feed(self, chunks: Sequence[Sequence[int]]) -> Tensor:
        """Append ``chunks[n]`` to sequence ``n``; returns the logits at the new slots of the :attr:`live` sequences,
        ``[len(live), C, V]`` in that order (``C`` = longest chunk)."""
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
        slots = [slots[n] for n in self.live]
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


class WaveEngine(KVCacheEngine):
    """The KV cache of the wave walk: the rollout feeds the rest of every trace in one call, then hides the tail after
    each sequence's first THINK. :meth:`compact` gives hidden slots back and :meth:`retire` drops finished sequences
    from the batch, so later waves compute only the sequences still walking."""

    waves = True

    max_logits = 2**28
    """The most logits (batch × chunk × vocabulary) one wave computes: it feeds the rest of every trace in windows of
    at most ``max_logits // (live sequences × V)`` tokens (the whole trace for small vocabularies)."""

    def window(self, vocab_size: int) -> int:
        """Tokens per sequence the next wave may feed."""
        return max(1, self.max_logits // (len(self.live) * vocab_size))

    def retire(self, rows: Sequence[int]) -> None:
        """Drop sequences ``rows`` (never fed again) from the batch."""
        gone = set(rows)
        keep = [i for i, n in enumerate(self.live) if n not in gone]
        if len(keep) == len(self.live):
            return
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        self.cache.batch_select_indices(index)
        self.mask, self.pos, self.live = self.mask[index], self.pos[index], [self.live[i] for i in keep]

    def compact(self) -> None:
        """Drop every cache slot that no later token sees: each sequence's live slots move, in order, to the front.

        Results do not change (positions are explicit; a slot is attended to iff its mask is 1). Caches whose layers
        do not all hold one key per slot (sliding-window layers) are left as they are.
        """
        live = self.mask.bool()  # [N, S]
        width = int(live.sum(1).max()) if live.numel() else 0
        layers = _cache_layers(self.cache)
        if width == live.shape[1] or any(k is None or k.shape[-2] != live.shape[1] for k, _ in layers):
            return
        order = torch.sort((~live).int(), dim=1, stable=True).indices[:, :width]  # [N, S'] live slots first

        def gather(x: Tensor) -> Tensor:  # [N, H, S, D] -> [N, H, S', D]
            return x.gather(2, order[:, None, :, None].expand(-1, x.shape[1], -1, x.shape[3]))

        _set_cache_layers(self.cache, [(gather(k), gather(v)) for k, v in layers])
        self.mask = live.gather(1, order).long()


def _cache_layers(cache: DynamicCache) -> list[tuple[Tensor, Tensor]]:
    """``(keys, values)`` ``[N, H, S, D]`` of every layer (transformers >= 4.56 ``layers``, else ``key_cache``)."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache, strict=True))


def _set_cache_layers(cache: DynamicCache, tensors: list[tuple[Tensor, Tensor]]) -> None:
    if hasattr(cache, "layers"):
        for layer, (keys, values) in zip(cache.layers, tensors, strict=True):
            layer.keys, layer.values = keys, values
    else:
        cache.key_cache, cache.value_cache = [k for k, _ in tensors], [v for _, v in tensors]


ENGINES: dict[str, type[KVCacheEngine]] = {"wave": WaveEngine, "kv": KVCacheEngine, "reencode": ReencodeEngine}


def resolve_engine(engine: str, hindsight_lines: int) -> str:
    """The engine a rollout runs: ``"auto"`` is ``"wave"`` without hindsight and ``"kv"`` with it (the wave walk has no
    hindsight groups); naming a wave engine with ``hindsight_lines > 0`` raises."""
    if engine == "auto":
        return "kv" if hindsight_lines else "wave"
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r}; choose 'auto' or one of {sorted(ENGINES)}")
    if ENGINES[engine].waves and hindsight_lines:
        raise ValueError(
            f"engine={engine!r} walks in waves and has no hindsight, but hindsight_lines={hindsight_lines}; use "
            "engine='kv' (or 'auto', which picks it) with hindsight, or hindsight_lines=0"
        )
    return engine
