"""HFGenerate: grouping, EOS masks, truncation, and the model left as it was found."""

from __future__ import annotations

import pytest
import torch

from ra3_lightning.generation import HFGenerate, completion_mask_from_eos, unsharded_for_generation

EOS = 9


def test_completion_mask_from_eos_by_hand():
    ids = torch.tensor([[5, 9, 9, 9], [5, 6, 7, 8], [9, 9, 9, 9]])
    mask, truncated = completion_mask_from_eos(ids, EOS)
    # row 0: EOS at 1 -> tokens 0..1; row 1: no EOS -> all 4, truncated; row 2: EOS first -> only that token
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert truncated.tolist() == [False, True, False]


def _prompts(tokenizer):
    tokenizer.padding_side = "left"
    enc = tokenizer(["def add(a, b):\n", "def f():\n    return 1"], return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


def test_groups_are_contiguous_and_masks_consistent(tiny_lm, tiny_tokenizer):
    ids, mask = _prompts(tiny_tokenizer)
    torch.manual_seed(0)
    rollout = HFGenerate().generate(tiny_lm, ids, mask, 3, 7, tiny_tokenizer.eos_token_id, tiny_tokenizer.pad_token_id)
    assert rollout.num_samples == 6
    assert torch.equal(rollout.prompt_ids[:3], ids[:1].expand(3, -1))  # samples 0..2 belong to prompt 0
    assert torch.equal(rollout.prompt_ids[3:], ids[1:].expand(3, -1))
    assert rollout.completion_ids.shape[1] <= 7
    lengths = rollout.completion_mask.sum(-1)
    has_eos = (rollout.completion_ids == tiny_tokenizer.eos_token_id).any(-1)
    assert torch.equal(rollout.truncated, ~has_eos)
    assert bool((lengths[rollout.truncated] == rollout.completion_ids.shape[1]).all())


def test_matches_a_kv_cache_free_reference(tiny_lm, tiny_tokenizer):
    """Greedy-equivalent check: at temperature -> 0 sampling picks the argmax, which a plain re-prefill loop
    without any cache reproduces token for token."""
    ids, mask = _prompts(tiny_tokenizer)
    ids, mask = ids[:1], mask[:1]
    rollout = HFGenerate(temperature=1e-4).generate(tiny_lm, ids, mask, 1, 5, -1, tiny_tokenizer.pad_token_id)
    seq = ids[0, mask[0].bool()].tolist()
    with torch.no_grad():
        for _ in range(5):
            seq.append(int(tiny_lm(torch.tensor([seq])).logits[0, -1].argmax()))
    assert rollout.completion_ids[0].tolist() == seq[-5:]


def test_model_state_is_restored(tiny_lm):
    tiny_lm.train()
    tiny_lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    with unsharded_for_generation(tiny_lm):
        assert not tiny_lm.training
        assert not tiny_lm.model.gradient_checkpointing
    assert tiny_lm.training and tiny_lm.model.gradient_checkpointing


def test_bad_temperature():
    with pytest.raises(ValueError, match="temperature"):
        HFGenerate(temperature=0.0)
