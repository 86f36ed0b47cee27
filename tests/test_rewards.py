"""Reward callables: binary / pass-fraction on the real sandbox, async submit, format reward, docstring examples."""

from __future__ import annotations

import doctest
import pickle
from pathlib import Path

import pytest

import ra3_lightning.data.tasks
import ra3_lightning.evaluate
import ra3_lightning.metrics
import ra3_lightning.rewards
import ra3_lightning.sandbox._judge
import ra3_lightning.sandbox._wire
from ra3_lightning.data.tasks import load_tasks
from ra3_lightning.rewards import SandboxReward, binary_reward, format_reward, pass_fraction_reward

ASSETS = Path(__file__).parent / "assets" / "tasks"


@pytest.fixture(scope="module")
def tasks():
    return load_tasks(str(ASSETS / "mbpp_full.jsonl"))  # remove_Occ (3 asserts), square_perimeter (2 asserts)


@pytest.fixture(scope="module")
def reward():
    with SandboxReward(mode="binary", workers=1) as r:
        yield r


# Hand-scored against tests/assets/tasks/mbpp_full.jsonl:
# - remove_Occ via s.replace(ch, '', 1) drops only the first occurrence: 'helo' != 'heo', 'bcda' != 'bcd',
#   'HP' != 'H' -> 0 of 3 tests.
# - square_perimeter returning 20: isclose(20, 10.0) fails, square_perimeter(5) == 20 passes -> 1 of 2.
# - sys.exit(0) before any test runs: no harness report -> a failure, 0 of 2.
FIRST_ONLY = "def remove_Occ(s, ch):\n    return s.replace(ch, '', 1)\n"
CONST_20 = "def square_perimeter(a):\n    return 20\n"
EXIT_EARLY = "import sys\nsys.exit(0)\n"


def _batch(tasks):
    t11, t17 = tasks
    return [t11.canonical_solution, FIRST_ONLY, CONST_20, EXIT_EARLY], [t11, t11, t17, t17]


def test_binary_and_fraction(tasks, reward):
    completions, batch_tasks = _batch(tasks)
    assert reward(completions, batch_tasks) == [1.0, 0.0, 0.0, 0.0]
    assert [r.status for r in reward.last_results][:3] == ["passed", "failed", "failed"]
    assert reward.last_results[3].status != "passed"  # sys.exit(0) before the tests is a failure
    with SandboxReward(mode="fraction", workers=1) as fraction:
        assert fraction(completions, batch_tasks) == [1.0, 0.0, 0.5, 0.0]


def test_submit_overlaps_and_updates_last_results(tasks, reward):
    completions, batch_tasks = _batch(tasks)
    future = reward.submit(completions[:3], batch_tasks[:3])
    assert future.result(timeout=60) == [1.0, 0.0, 0.0]
    assert len(reward.last_results) == 3
    assert reward.submit([], []).result(timeout=5) == []


def test_length_mismatch_and_bad_mode(tasks, reward):
    with pytest.raises(ValueError, match="2 completions but 1 tasks"):
        reward(["a", "b"], tasks[:1])
    with pytest.raises(ValueError, match="mode must be one of"):
        SandboxReward(mode="partial")


def test_reward_pickles_without_its_workers(tasks, reward):
    reward([tasks[0].canonical_solution], tasks[:1])
    clone = pickle.loads(pickle.dumps(reward))
    assert clone._sandbox is None and clone.mode == "binary" and clone.last_results == []
    assert clone.__name__ == "sandbox_binary_reward"


def test_module_level_rewards(tasks):
    completions, batch_tasks = _batch(tasks)
    try:
        assert binary_reward(completions[:3], batch_tasks[:3]) == [1.0, 0.0, 0.0]
        assert pass_fraction_reward(completions[:3], batch_tasks[:3]) == [1.0, 0.0, 0.5]
    finally:
        for shared in ra3_lightning.rewards._DEFAULT_REWARDS.values():
            shared.close()


def test_format_reward(tasks):
    he = load_tasks(str(ASSETS / "humaneval.jsonl"))[0]
    # A HumanEval body only parses inside its prompt; `ast.parse` alone would reject the indented line.
    assert format_reward(["    return sum(xs)\n", "    return (\n"], [he, he]) == [1.0, 0.0]
    assert format_reward(["```python\nimport os\nos.system('rm -rf /')\n```", "x = \x00"]) == [1.0, 0.0]


@pytest.mark.parametrize(
    "module",
    [ra3_lightning.rewards, ra3_lightning.metrics, ra3_lightning.data.tasks, ra3_lightning.evaluate,
     ra3_lightning.sandbox._wire, ra3_lightning.sandbox._judge],
)  # fmt: skip
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
