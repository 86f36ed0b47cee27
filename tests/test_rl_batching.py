"""Token-budget micro-batches and completion extents, by hand."""

import pytest
import torch

from ra3_lightning.rl.batching import (
    completion_extent,
    completion_lengths,
    pad_columns,
    split_to_count,
    token_budget_slices,
)


def test_token_budget_slices_by_hand():
    # prompt 4, budget 20: rows 0-1 cost 2·(4+5) = 18; adding row 2 would cost 3·9 = 27; row 3 (8 tokens) pairs with
    # nothing (2·12 = 24 > 20); row 4 is what is left
    assert token_budget_slices([3, 5, 1, 8, 2], 4, 20) == [slice(0, 2), slice(2, 3), slice(3, 4), slice(4, 5)]
    assert token_budget_slices([3, 5, 1, 8, 2], 4, 100) == [slice(0, 5)]
    assert token_budget_slices([50], 4, 10) == [slice(0, 1)]  # a row alone over budget is its own micro-batch
    assert token_budget_slices([], 4, 10) == []
    # every row exactly once, in order
    lengths = [7, 0, 3, 12, 5, 5, 1, 9]
    slices = token_budget_slices(lengths, 6, 40)
    assert [i for s in slices for i in range(s.start, s.stop)] == list(range(len(lengths)))
    assert all((s.stop - s.start) * (6 + max(1, *lengths[s])) <= 40 or s.stop - s.start == 1 for s in slices)


def test_completion_lengths_and_extent():
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [1, 0, 1, 0]])
    assert completion_lengths(mask).tolist() == [2, 1, 0, 3]  # one past the last real token
    assert completion_extent(mask) == 3
    assert completion_extent(torch.zeros(2, 4)) == 1  # a forward pass always predicts one position
    assert pad_columns(torch.ones(2, 3), 5).tolist() == [[1, 1, 1, 0, 0]] * 2
    assert pad_columns(None, 5) is None


def test_split_to_count_halves_the_largest_until_every_rank_has_as_many():
    assert split_to_count([slice(0, 5), slice(5, 6)], 2) == [slice(0, 5), slice(5, 6)]
    assert split_to_count([slice(0, 5), slice(5, 6)], 3) == [slice(0, 3), slice(3, 5), slice(5, 6)]
    assert split_to_count([slice(0, 2)], 2) == [slice(0, 1), slice(1, 2)]
    with pytest.raises(ValueError, match="non-empty"):
        split_to_count([slice(0, 2)], 3)
