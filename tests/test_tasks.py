"""Task loaders on tiny fixtures of each schema, program assembly, and bad records."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import pickle
import zlib
from pathlib import Path

import datasets
import pytest

from ra3_lightning.data.sources import DataError
from ra3_lightning.data.tasks import (
    CodingTask,
    decode_lcb_blob,
    detect_kind,
    extract_code,
    load_tasks,
    tasks_from_records,
)
from ra3_lightning.sandbox.types import TestSuite

ASSETS = Path(__file__).parent / "assets" / "tasks"
HUMANEVAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "HumanEval.jsonl.gz"


def _records(name: str) -> list[dict]:
    return [json.loads(line) for line in (ASSETS / name).read_text().splitlines()]


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("humaneval.jsonl", "humaneval"),
        ("mbpp_full.jsonl", "mbpp"),
        ("mbpp_sanitized.jsonl", "mbpp"),
        ("mbppplus.jsonl", "mbpp"),
        ("livecodebench.jsonl", "livecodebench"),
    ],
)
def test_detect_kind(name, kind):
    assert detect_kind(_records(name)[0].keys()) == kind


def test_detect_kind_unknown_names_fields():
    with pytest.raises(DataError, match=r"cannot tell the task schema from fields \['answer', 'question'\]"):
        detect_kind(["question", "answer"], "x.jsonl")


def test_humaneval_fixture():
    tasks = load_tasks(str(ASSETS / "humaneval.jsonl"))
    assert [t.task_id for t in tasks] == ["Toy/0", "Toy/1"]
    t = tasks[0]
    assert t.tests == TestSuite("check", check_code=_records("humaneval.jsonl")[0]["test"], entry_point="total")
    assert t.entry_point == "total" and t.canonical_solution == "    return sum(xs)\n"
    assert t.program(t.canonical_solution) == t.prompt + "    return sum(xs)\n"


def test_humaneval_parquet_gives_same_tasks(tmp_path):
    path = tmp_path / "he.parquet"
    datasets.Dataset.from_list(_records("humaneval.jsonl")).to_parquet(str(path))
    from_parquet = load_tasks(str(path), kind="humaneval")
    assert from_parquet[0].source == str(path)
    from_jsonl = load_tasks(str(ASSETS / "humaneval.jsonl"))
    assert [dataclasses.replace(t, source="") for t in from_parquet] == [
        dataclasses.replace(t, source="") for t in from_jsonl
    ]


@pytest.mark.skipif(not HUMANEVAL.exists(), reason=f"{HUMANEVAL} absent")
def test_real_humaneval_loads():
    tasks = load_tasks(str(HUMANEVAL))
    assert len(tasks) == 164 and tasks[0].task_id == "HumanEval/0"
    assert all(t.tests.style == "check" and t.entry_point and t.canonical_solution for t in tasks)


def test_mbpp_full():
    t11, t17 = load_tasks(str(ASSETS / "mbpp_full.jsonl"))
    assert t11.task_id == "11" and t11.entry_point == "remove_Occ"
    assert t11.prompt.startswith('"""\nWrite a python function to remove first')
    assert t11.prompt.endswith('assert remove_Occ("hello","l") == "heo"\n"""\n')
    assert t11.tests.style == "assert" and len(t11.tests.asserts) == 3 and t11.tests.setup_code == ""
    assert t17.entry_point == "square_perimeter"  # not `isclose`, the first call in its first assert
    assert t17.tests.setup_code == "import math"
    # A full-function completion is the program on its own (the docstring prompt adds nothing to keep).
    assert t11.program(t11.canonical_solution) == t11.canonical_solution


def test_mbpp_sanitized_and_plus():
    t2, t3 = load_tasks(str(ASSETS / "mbpp_sanitized.jsonl"))
    assert t2.prompt.startswith('"""\nWrite a function to find the shared elements')
    assert t3.tests.setup_code == "import math" and t3.entry_point == "is_not_prime"
    (plus,) = load_tasks(str(ASSETS / "mbppplus.jsonl"))
    assert plus.task_id == "Mbpp/3" and plus.entry_point == "is_not_prime"
    assert plus.tests.asserts == (_records("mbppplus.jsonl")[0]["test"].strip(),)  # the plus script replaces test_list


def test_livecodebench_stdin_and_functional():
    stdin_task, func_task = load_tasks(str(ASSETS / "livecodebench.jsonl"))
    assert stdin_task.task_id == "abc000_a" and stdin_task.tests.style == "stdio"
    # one public case (JSON) + two private cases (base64/zlib/pickle blob)
    assert stdin_task.tests.stdio_cases == (("3\n1 2 3\n", "6\n"), ("2\n10 -4\n", "6"), ("1\n7\n", "7\n"))
    assert func_task.entry_point == "twoSum" and func_task.tests.style == "assert"
    assert func_task.tests.asserts == (
        "assert _lcb_equal(Solution().twoSum(*_lcb_args('[1, 2, 3]\\n3')), '[0, 1]')",
        "assert _lcb_equal(Solution().twoSum(*_lcb_args('[5, 5]\\n10')), '[0, 1]')",
    )
    assert "class Solution:" in func_task.prompt
    code = "class Solution:\n    def twoSum(self, nums: List[int], target: int) -> List[int]:\n        return [0, 1]\n"
    program = func_task.program(f"Sure:\n```python\n{code}```")
    assert program.startswith("import sys") and program.endswith(code)  # preamble + the code alone


def test_lcb_blob_refuses_code_execution(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    blob = base64.b64encode(zlib.compress(pickle.dumps(Evil()))).decode()
    with pytest.raises(pickle.UnpicklingError, match="refusing to load global"):
        decode_lcb_blob(blob)
    record = _records("livecodebench.jsonl")[0] | {"private_test_cases": blob}
    with pytest.raises(DataError, match=r"record 0 \(task_id 'abc000_a'\): field 'private_test_cases'"):
        tasks_from_records([record], source="lcb.jsonl")
    assert not (tmp_path / "pwned").exists()


def test_program_variants():
    prompt = 'import math\n\n\ndef helper(x):\n    return x + 1\n\n\ndef f(x):\n    """doc"""\n'
    task = CodingTask("t", prompt, TestSuite("check", check_code="def check(c): pass", entry_point="f"), "f")
    assert task.program("    return helper(x)\n") == prompt + "    return helper(x)\n"
    full = "def f(x):\n    return helper(math.floor(x))\n"
    expected = "import math\ndef helper(x):\n    return x + 1\n\n" + full  # prompt imports + helpers, not its stub of f
    assert task.program(full) == expected
    assert task.program(f"```python\n{full}```\nThis works because...") == expected
    assert task.program(f"```py\n{full}") == expected  # unclosed fence: cut at the token limit
    # A body closed by a fence (an instruct model continuing a plain prompt) is cut there, prose and all.
    assert task.program("    return helper(x)\n```") == prompt + "    return helper(x)\n"
    assert task.program("    return helper(x)\n```\n\nThis adds one.") == prompt + "    return helper(x)\n"
    # Prose before a fenced answer is not a body: the fenced code is used.
    assert task.program(f"Solution\n```python\n{full}```") == expected
    # The completion redefines the helper: the prompt's copy is dropped.
    own_helper = "def helper(x):\n    return 0\n\ndef f(x):\n    return helper(x)\n"
    assert task.program(own_helper) == "import math\n\n" + own_helper


def test_extract_code_prefers_block_defining_entry_point():
    text = "```python\nprint(f(1))\n```\nand\n```python\ndef f(x):\n    return x\n```\n```bash\nrm -rf /\n```"
    assert extract_code(text, "f") == "def f(x):\n    return x\n"
    assert extract_code("no fences here") is None
    assert extract_code("```bash\nls\n```") is None


def _one(name: str, **changes) -> list[dict]:
    record = _records(name)[0]
    record.update(changes)
    return [record]


@pytest.mark.parametrize(
    ("name", "changes", "message"),
    [
        ("humaneval.jsonl", {"test": ""}, r"record 0 \(task_id 'Toy/0'\): field 'test' is empty"),
        ("humaneval.jsonl", {"test": "assert True"}, r"field 'test' defines no top-level `def check"),
        ("humaneval.jsonl", {"entry_point": None}, r"field 'entry_point' is missing"),
        ("humaneval.jsonl", {"entry_point": "not valid"}, r"field 'entry_point' must be a Python identifier"),
        ("humaneval.jsonl", {"prompt": 3}, r"field 'prompt' must be a string, got int"),
        ("humaneval.jsonl", {"task_id": ""}, r"record 0: field 'task_id' is missing"),
        ("humaneval.jsonl", {"plus_input": [[1]]}, r"field 'plus_input' marks a raw evalplus release"),
        ("mbpp_full.jsonl", {"test_list": []}, r"task_id 11\): field 'test_list' is empty: a task without tests"),
        ("mbpp_full.jsonl", {"test_list": ["assert x", ""]}, r"field 'test_list' item 1 is empty"),
        ("mbpp_full.jsonl", {"text": None}, r"field 'text' is missing"),
        ("livecodebench.jsonl", {"public_test_cases": "[]", "private_test_cases": ""}, r"a task without tests"),
        ("livecodebench.jsonl", {"public_test_cases": "{not json"}, r"field 'public_test_cases' is neither JSON"),
        ("livecodebench.jsonl", {"public_test_cases": '[{"input": "1"}]'}, r"case 0 needs string 'input', 'output'"),
    ],
)
def test_bad_records(name, changes, message):
    with pytest.raises(DataError, match=message):
        tasks_from_records(_one(name, **changes), source=name)


def test_bad_records_name_the_source_file_and_index(tmp_path):
    records = _records("humaneval.jsonl")
    records[1]["test"] = "   "
    path = tmp_path / "he.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records))
    with pytest.raises(DataError, match=rf"{path}: record 1 \(task_id 'Toy/1'\): field 'test' is empty"):
        load_tasks(str(path))


def test_functional_lcb_needs_func_name():
    record = _records("livecodebench.jsonl")[1] | {"metadata": "{}"}
    with pytest.raises(DataError, match=r"field 'metadata' needs 'func_name'"):
        tasks_from_records([record], source="lcb")


def test_duplicate_ids_and_missing_columns():
    records = _records("humaneval.jsonl")
    with pytest.raises(DataError, match=r"record 1: task_id 'Toy/0' repeats record 0"):
        tasks_from_records([records[0], records[0]], source="he")
    with pytest.raises(DataError, match=r"humaneval records need field\(s\) \['entry_point'\]"):
        tasks_from_records([{k: v for k, v in records[0].items() if k != "entry_point"}], kind="humaneval")
    with pytest.raises(ValueError, match="unknown task kind 'apps'"):
        tasks_from_records(records, kind="apps")
    with pytest.raises(DataError, match="no records"):
        tasks_from_records([], source="empty")


def test_humaneval_schema_keeps_extra_fields_as_meta():
    """The synthetic world's ground truth reaches the task (``meta``); HumanEval records have none; meta is not
    hashed, so a task stays hashable."""
    task = tasks_from_records(datasets.Dataset.from_list([
        {"task_id": "s/0", "prompt": "def f(x):\n", "entry_point": "f", "test": "def check(candidate):\n    pass\n",
         "canonical_solution": "    return x\n", "id": "s/0", "skills": ["a"], "skill_starts": [1], "skill_ends": [2]},
    ]))[0]  # fmt: skip
    assert task.meta == {"id": "s/0", "skills": ["a"], "skill_starts": [1], "skill_ends": [2]}
    assert hash(task) == hash(dataclasses.replace(task, meta={}))
    assert load_tasks(str(ASSETS / "humaneval.jsonl"))[0].meta == {}
    assert load_tasks(str(ASSETS / "mbpp_full.jsonl"))[0].meta == {}
