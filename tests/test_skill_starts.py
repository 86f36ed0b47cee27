"""``experiments/skill_starts.py``: the teacher-forced scores line up with the right tokens."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def skill_starts():
    spec = importlib.util.spec_from_file_location("skill_starts", ROOT / "experiments" / "skill_starts.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Oracle(torch.nn.Module):
    """Logits that put (almost) all mass on the true next token: needs the positions to line up exactly."""

    def __init__(self, vocab: int, sharp: bool = True) -> None:
        super().__init__()
        self.vocab, self.sharp = vocab, sharp

    def forward(self, input_ids: torch.Tensor) -> SimpleNamespace:
        logits = torch.zeros(*input_ids.shape, self.vocab)
        if self.sharp:
            logits[0, :-1].scatter_(-1, input_ids[0, 1:, None], 50.0)
        return SimpleNamespace(logits=logits)


RECORD = {
    "prompt": 'def solve(xs):\n    """Sum, then double."""\n',
    "canonical_solution": "    acc = 0\n    for x in xs:\n        acc += x\n    return acc * 2\n",
    "skill_starts": [2, 5],  # program lines: 0 def, 1 docstring, 2 acc = 0, ..., 5 return
}


def test_line_of_chars_counts_newlines_from_the_offset(skill_starts):
    assert skill_starts.line_of_chars("ab\nc\n", 4) == [4, 4, 4, 5, 5]


def test_a_model_that_knows_every_token_scores_perfectly(skill_starts, tiny_tokenizer):
    scores = skill_starts.score_task(Oracle(len(tiny_tokenizer)), tiny_tokenizer, RECORD)
    assert scores["start_acc"] == 1.0
    assert max(scores["start_nll"], scores["other_nll"], scores["code_nll"]) < 1e-6


def test_a_uniform_model_pays_log_v_per_token(skill_starts, tiny_tokenizer):
    v = len(tiny_tokenizer)
    scores = skill_starts.score_task(Oracle(v, sharp=False), tiny_tokenizer, RECORD)
    for metric in ("start_nll", "other_nll", "code_nll"):
        assert scores[metric] == pytest.approx(math.log(v), abs=1e-5)


def test_start_tokens_are_the_first_visible_token_of_each_skill_start_line(skill_starts, tiny_tokenizer):
    """Only the first content token of lines 2 and 5 is scored for accuracy: a model right on exactly those two
    tokens and wrong everywhere else has start_acc 1."""
    solution = RECORD["canonical_solution"]
    enc = tiny_tokenizer(solution, add_special_tokens=False, return_offsets_mapping=True)
    firsts = [solution.index("acc"), solution.index("return")]
    start_tokens = [next(k for k, (b, e) in enumerate(enc["offset_mapping"]) if b <= f < e) for f in firsts]
    prompt_len = len(tiny_tokenizer(RECORD["prompt"], add_special_tokens=False)["input_ids"])

    class OnlyStarts(Oracle):
        def forward(self, input_ids):
            logits = torch.zeros(*input_ids.shape, self.vocab)
            logits[..., 0] = 1.0  # wrong (token 0 is not in this text) unless overridden below
            for k in start_tokens:
                logits[0, prompt_len + k - 1, input_ids[0, prompt_len + k]] = 5.0
            return SimpleNamespace(logits=logits)

    assert 0 not in enc["input_ids"]
    assert skill_starts.score_task(OnlyStarts(len(tiny_tokenizer)), tiny_tokenizer, RECORD)["start_acc"] == 1.0
