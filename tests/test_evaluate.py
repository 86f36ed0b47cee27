"""The scoring command: HumanEval canonical solutions score 1.0, ``return None`` 0.0; every schema end to end."""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import random
import re
import runpy
import subprocess
import sys
import warnings
from pathlib import Path

import datasets
import pytest

from ra3_lightning.data import sources
from ra3_lightning.data.sources import DataError
from ra3_lightning.data.tasks import load_tasks, tasks_from_records
from ra3_lightning.evaluate import (
    as_base_samples,
    evaluate_functional_correctness,
    evaluate_samples,
    main,
    mean_pass_at_k,
    read_samples,
    results_path,
)

ASSETS = Path(__file__).parent / "assets" / "tasks"
HUMANEVAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "HumanEval.jsonl.gz"


def _write_samples(path: Path, samples: list[dict]) -> Path:
    path.write_text("".join(json.dumps(s) + "\n" for s in samples))
    return path


@pytest.mark.skipif(not HUMANEVAL.exists(), reason=f"{HUMANEVAL} absent")
def test_humaneval_canonical_is_one_and_return_none_is_zero(tmp_path, capsys):
    tasks = load_tasks(str(HUMANEVAL))
    canonical = _write_samples(
        tmp_path / "canonical.jsonl", [{"task_id": t.task_id, "completion": t.canonical_solution} for t in tasks]
    )
    main(["--tasks", str(HUMANEVAL), "--samples", str(canonical), "--no-progress", "--write-results"])
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last_line) == {"pass@1": 1.0}  # 10 and 100 are undefined with one sample per task
    rows = [json.loads(line) for line in results_path(canonical).read_text().splitlines()]
    assert len(rows) == 164 and all(r["passed"] and r["status"] == "passed" for r in rows)

    nones = _write_samples(
        tmp_path / "none.jsonl", [{"task_id": t.task_id, "completion": "    return None\n"} for t in tasks]
    )
    assert evaluate_functional_correctness(nones, tasks, k=(1,), progress=False) == {"pass@1": 0.0}


@pytest.mark.skipif(not HUMANEVAL.exists(), reason=f"{HUMANEVAL} absent")
def test_humaneval_chat_style_full_solutions_without_imports_pass(tmp_path):
    # A chat model answers with a fenced, complete program and often drops the prompt's imports
    # (`from typing import List`): CodingTask.program puts them (and unredefined helpers) back.
    tasks = load_tasks(str(HUMANEVAL))

    def chat_answer(task):
        code = re.sub(r"^(import|from) .*\n", "", task.prompt + task.canonical_solution, flags=re.M)
        return f"Here is the solution:\n```python\n{code}```\nIt works because ..."

    samples = _write_samples(
        tmp_path / "chat.jsonl", [{"task_id": t.task_id, "completion": chat_answer(t)} for t in tasks]
    )
    assert evaluate_functional_correctness(samples, tasks, k=(1,), progress=False) == {"pass@1": 1.0}


def test_synthetic_eval_tasks_score_canonical_one(tmp_path):
    tasks = load_tasks("synthetic:eval?n=20&seed=0")
    right = _write_samples(
        tmp_path / "r.jsonl", [{"task_id": t.task_id, "completion": t.canonical_solution} for t in tasks]
    )
    wrong = _write_samples(
        tmp_path / "w.jsonl", [{"task_id": t.task_id, "completion": "    return None\n"} for t in tasks]
    )
    assert evaluate_functional_correctness(right, tasks, k=(1,), workers=1, progress=False) == {"pass@1": 1.0}
    assert evaluate_functional_correctness(wrong, tasks, k=(1,), workers=1, progress=False) == {"pass@1": 0.0}


def test_pass_at_k_over_several_samples_and_results_file(tmp_path):
    right, wrong = "    return sum(xs)\n", "    return 0\n"
    samples = [{"task_id": "Toy/0", "completion": c} for c in (right, wrong, right)]
    samples += [{"task_id": "Toy/1", "completion": "    return True\n", "extra": i} for i in range(3)]
    path = _write_samples(tmp_path / "s.jsonl", samples)
    out = evaluate_functional_correctness(path, str(ASSETS / "humaneval.jsonl"), k=(1, 2, 10), write_results=True)
    # Toy/0: n=3, c=2 -> pass@1 = 2/3, pass@2 = 1 - C(1,2)/C(3,2) = 1.  Toy/1 (`return True` fails 'ab'): 0, 0.
    # Means over the two tasks: pass@1 = 1/3, pass@2 = 1/2; pass@10 undefined (n = 3) and left out.
    assert out == pytest.approx({"pass@1": 1 / 3, "pass@2": 0.5})
    rows = [json.loads(line) for line in (tmp_path / "s_results.jsonl").read_text().splitlines()]
    assert [r["passed"] for r in rows] == [True, False, True, False, False, False]
    assert rows[1]["status"] == "failed" and rows[3]["extra"] == 0 and rows[0]["completion"] == right


def _reference(kind_file: str) -> list[tuple[str, str, str]]:
    """(task_id, right completion, wrong completion) for every fixture task."""
    lcb_stdin = "n = int(input())\nprint(sum(map(int, input().split())))\n"
    lcb_func = (
        "```python\nclass Solution:\n    def twoSum(self, nums: List[int], target: int) -> List[int]:\n"
        "        seen = {}\n        for j, x in enumerate(nums):\n            if target - x in seen:\n"
        "                return (seen[target - x], j)\n            seen[x] = j\n```"
    )  # returns a tuple: LiveCodeBench compares it as a list
    if kind_file == "livecodebench.jsonl":
        return [
            ("abc000_a", lcb_stdin, "print(6)\n"),
            ("9001", lcb_func, lcb_func.replace("(seen[target - x], j)", "[j]")),
        ]
    return [
        (t.task_id, t.canonical_solution, "def nothing():\n    pass\n") for t in load_tasks(str(ASSETS / kind_file))
    ]


@pytest.mark.parametrize(
    "kind_file",
    ["humaneval.jsonl", "humanevalplus.jsonl", "mbpp_full.jsonl", "mbpp_sanitized.jsonl", "mbppplus.jsonl",
     "livecodebench.jsonl"],
)  # fmt: skip
def test_every_schema_scores_reference_one_and_wrong_zero(tmp_path, kind_file):
    refs = _reference(kind_file)
    right = _write_samples(tmp_path / "right.jsonl", [{"task_id": i, "completion": r} for i, r, _ in refs])
    wrong = _write_samples(tmp_path / "wrong.jsonl", [{"task_id": i, "completion": w} for i, _, w in refs])
    source = str(ASSETS / kind_file)
    assert evaluate_functional_correctness(right, source, k=(1,), workers=1, progress=False) == {"pass@1": 1.0}
    assert evaluate_functional_correctness(wrong, source, k=(1,), workers=1, progress=False) == {"pass@1": 0.0}


def test_evalplus_solution_field_is_scored_as_the_whole_program(tmp_path):
    task = load_tasks(str(ASSETS / "humaneval.jsonl"))[0]
    right, wrong = task.prompt + task.canonical_solution, task.prompt + "    return None\n"
    path = _write_samples(tmp_path / "s.jsonl", [{"task_id": task.task_id, "solution": s} for s in (right, wrong)])
    samples = read_samples(path)
    assert [s.completion for s in samples] == [right, wrong]
    report = evaluate_samples([task], samples, ks=(1,), workers=1, progress=False)
    assert [r.passed for r in report.results] == [True, False]


def test_unknown_task_id_names_the_line(tmp_path):
    path = _write_samples(
        tmp_path / "s.jsonl", [{"task_id": "Toy/0", "completion": "x"}, {"task_id": "Nope/9", "completion": "x"}]
    )
    with pytest.raises(DataError, match=rf"{path}:2: unknown task_id 'Nope/9'"):
        evaluate_functional_correctness(path, str(ASSETS / "humaneval.jsonl"), progress=False)


@pytest.mark.parametrize(
    ("line", "message"),
    [("{oops", r":2: invalid JSON"), ('{"completion": "x"}', r":2: field 'task_id' is missing"),
     ('{"task_id": "Toy/0", "completion": 3}', r":2: field 'completion' \(or evalplus's 'solution'\) .* got int"),
     ('{"task_id": "Toy/0"}', r":2: field 'completion' \(or evalplus's 'solution'\) must be a string, missing")],
)  # fmt: skip
def test_bad_sample_lines(tmp_path, line, message):
    path = tmp_path / "s.jsonl"
    path.write_text('{"task_id": "Toy/0", "completion": "x"}\n' + line + "\n")
    with pytest.raises(DataError, match=message):
        read_samples(path)


def test_results_path():
    assert results_path("/a/b/samples.jsonl") == Path("/a/b/samples_results.jsonl")
    assert results_path("s.jsonl.gz") == Path("s_results.jsonl")


def _run_module(argv: list[str], monkeypatch) -> None:
    """``python -m ra3_lightning.evaluate ARGV``, in this process (runpy is what ``-m`` uses; no interpreter start)."""
    monkeypatch.setattr(sys, "argv", ["ra3_lightning.evaluate", *argv])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "found in sys.modules": it is, we imported it above
        runpy.run_module("ra3_lightning.evaluate", run_name="__main__")


def test_module_entry_point_prints_json_last(tmp_path, monkeypatch, capsys):
    samples = [
        {"task_id": "Toy/0", "completion": "    return sum(xs)\n"},
        {"task_id": "Toy/1", "completion": "  x = ("},
    ]
    path = _write_samples(tmp_path / "s.jsonl", samples)
    tasks = ["--tasks", str(ASSETS / "humaneval.jsonl")]
    _run_module([*tasks, "--samples", str(path), "--k", "1,10", "--workers", "1"], monkeypatch)
    out, err = capsys.readouterr()
    assert json.loads(out.strip().splitlines()[-1]) == {"pass@1": 0.5}
    assert "pass@1: 0.5000" in out and "undefined" in err and "[10]" in err

    bad = _write_samples(tmp_path / "bad.jsonl", [{"task_id": "HumanEval/0", "completion": ""}])
    with pytest.raises(SystemExit) as exit_info:
        _run_module([*tasks, "--samples", str(bad)], monkeypatch)
    assert exit_info.value.code == 1
    assert f"error: {bad}:1: unknown task_id 'HumanEval/0'" in capsys.readouterr().err


# ---------------------------------------------------------------------- unusable inputs: one line, exit status 1


def _gzip_truncated(path: Path, lines: int = 2000) -> Path:
    """A samples .jsonl.gz cut in the middle of its compressed stream (a broken download); random completions, so
    that the cut falls after many lines."""
    rng = random.Random(0)
    rows = [{"task_id": "Toy/0", "completion": f"    return {rng.random()}"} for _ in range(lines)]
    text = "".join(json.dumps(row) + "\n" for row in rows)
    data = gzip.compress(text.encode())
    path.write_bytes(data[: len(data) // 2])
    return path


def _scorer(*argv: str, **env: str) -> subprocess.CompletedProcess:
    """``python -m ra3_lightning.evaluate ARGV`` as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "ra3_lightning.evaluate", "--no-progress", "--workers", "1", *argv],
        capture_output=True, text=True, env={**os.environ, **env}, timeout=120,
    )  # fmt: skip


@pytest.mark.parametrize("case", ["non_utf8_samples", "truncated_gz_samples", "no_test", "no_entry_point"])
def test_scorer_names_file_line_and_field_of_a_bad_input_and_exits_1(tmp_path, case):
    tasks, samples = ASSETS / "humaneval.jsonl", tmp_path / "s.jsonl"
    _write_samples(samples, [{"task_id": "Toy/0", "completion": "    return sum(xs)\n"}])
    if case == "non_utf8_samples":
        samples.write_bytes(samples.read_bytes() + b'{"task_id": "Toy/0", "completion": "caf\xe9"}\n')
        expected = rf"{samples}:2: line is not valid UTF-8"
    elif case == "truncated_gz_samples":
        samples = _gzip_truncated(tmp_path / "s.jsonl.gz")
        expected = rf"{samples}:\d+: the compressed data is truncated or corrupt here"
    else:
        field = case.removeprefix("no_")
        records = [json.loads(line) for line in tasks.read_text().splitlines()]
        del records[1][field]
        tasks = _write_samples(tmp_path / "tasks.jsonl", records)
        expected = rf"{tasks}:2: record 1 \(task_id '{records[1]['task_id']}'\): field '{field}' is missing"
    proc = _scorer("--tasks", str(tasks), "--samples", str(samples), "--write-results")
    assert proc.returncode == 1, proc.stderr
    assert re.search(rf"^error: {expected}", proc.stderr, flags=re.M), proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert not results_path(samples).exists()  # nothing written


def test_scorer_shows_the_traceback_with_ra3_debug(tmp_path):
    samples = tmp_path / "s.jsonl"
    samples.write_bytes(b'{"task_id": "Toy/0", "completion": "\xff"}\n')
    proc = _scorer("--tasks", str(ASSETS / "humaneval.jsonl"), "--samples", str(samples), RA3_DEBUG="1")
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "DataError" in proc.stderr


def test_truncated_gz_names_the_line_it_breaks_at(tmp_path):
    path = _gzip_truncated(tmp_path / "s.jsonl.gz")
    with pytest.raises(DataError, match=r"s\.jsonl\.gz:(\d+): the compressed data is truncated") as info:
        read_samples(path)
    assert int(re.search(r":(\d+):", str(info.value)).group(1)) > 100  # the lines before the cut were read


@pytest.mark.parametrize("read", [sources.load_records, sources.load_record_list])  # arrow, and plain for tasks
def test_jsonl_source_errors_name_the_record(tmp_path, read):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match=r"empty\.jsonl: no records \(the file is empty"):
        read(str(tmp_path / "empty.jsonl"))
    with pytest.raises(DataError, match=r"nope\.jsonl: no such file"):
        read(str(tmp_path / "nope.jsonl"))
    rows = _write_samples(tmp_path / "rows.jsonl", [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}, {"id": "c"}])
    with pytest.raises(DataError, match=rf"{rows}:3: record 2 \(id 'c'\): field 'text' is missing \(record 0, line 1"):
        read(str(rows))


def test_scoring_local_files_imports_no_torch_lightning_datasets_or_pandas(tmp_path):
    """The scorer starts without the training stack and without ``datasets``: a fresh interpreter imports it and
    scores a local ``.jsonl.gz`` task file, as a user runs it, and then holds none of the heavy packages."""
    tasks = tmp_path / "tasks.jsonl.gz"
    tasks.write_bytes(gzip.compress((ASSETS / "humaneval.jsonl").read_bytes()))
    refs = _reference("humaneval.jsonl")
    samples = _write_samples(tmp_path / "s.jsonl", [{"task_id": i, "completion": r} for i, r, _ in refs])
    heavy = ("torch", "lightning", "torchmetrics", "datasets", "pandas", "pyarrow")
    code = (
        "import json, sys\n"
        "from ra3_lightning.evaluate import main\n"
        f"main(['--tasks', {str(tasks)!r}, '--samples', {str(samples)!r}, '--k', '1', '--workers', '1', "
        "'--no-progress'])\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r})))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    *_, scores, loaded = proc.stdout.strip().splitlines()
    assert json.loads(scores) == {"pass@1": 1.0}  # it did score
    assert json.loads(loaded) == []


def test_local_jsonl_tasks_read_without_datasets_equal_the_datasets_reading():
    """The plain reader of local JSON Lines gives the tasks the arrow path gives, for every schema."""
    for path in sorted(ASSETS.glob("*.jsonl")):
        plain = load_tasks(str(path))
        via_arrow = tasks_from_records(sources.load_records(str(path)), source=str(path))
        assert plain == via_arrow and plain, path.name
    assert isinstance(sources.load_record_list(str(ASSETS / "humaneval.jsonl")), list)


def test_data_modules_still_load_from_the_package_on_first_use():
    import ra3_lightning.data as data
    from ra3_lightning.data.task_data import TaskDataModule

    assert data.TaskDataModule is TaskDataModule and "TraceDataModule" in dir(data)
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        data.Nope  # noqa: B018


def test_mean_pass_at_k_by_hand_and_as_the_metric_computes_it():
    # (n, c) = (5, 2): pass@1 = 2/5; pass@2 = 1 - C(3,2)/C(5,2) = 1 - 3/10 = 0.7; pass@5 = 1.
    # (5, 0): 0 everywhere. Means: pass@1 = 0.2, pass@2 = 0.35, pass@5 = 0.5; pass@6 is undefined (n = 5).
    assert mean_pass_at_k([(5, 2), (5, 0)], ks=(1, 2, 5, 6)) == pytest.approx(
        {"pass@1": 0.2, "pass@2": 0.35, "pass@5": 0.5}
    )
    assert mean_pass_at_k([], ks=(1,)) == {}
    from ra3_lightning.metrics import PassAtK

    rng = random.Random(0)
    counts = [(n, rng.randint(0, n)) for n in (rng.randint(3, 40) for _ in range(50))]
    metric = PassAtK(ks=(1, 3, 10))
    metric.update([n for n, _ in counts], [c for _, c in counts])
    expected = {name: float(value) for name, value in metric.compute().items()}
    assert mean_pass_at_k(counts, ks=(1, 3, 10)) == pytest.approx(expected, abs=1e-12)


def test_humaneval_plus_reports_base_and_plus(tmp_path):
    """evalplus's two numbers: ``base_pass@k`` on the original tests, ``pass@k`` needing plus and base."""
    plus_records = [json.loads(line) for line in (ASSETS / "humanevalplus.jsonl").read_text().splitlines()]
    base_records = [dict(r) for r in plus_records]
    base_records[0]["test"] = "\n\ndef check(candidate):\n    assert candidate([1.0, 2.0, 3.0], 0.5) == False\n"
    base_file = tmp_path / "base.jsonl"
    base_file.write_text("".join(json.dumps(r) + "\n" for r in base_records))
    canonical = {r["task_id"]: r["canonical_solution"] for r in plus_records}
    samples = [
        {"task_id": "HumanEval/0", "completion": canonical["HumanEval/0"]},  # passes both
        {"task_id": "HumanEval/0", "completion": "    return False\n"},  # passes the weak base test only
        {"task_id": "HumanEval/4", "completion": canonical["HumanEval/4"]},  # passes both
        {"task_id": "HumanEval/4", "completion": "    return 0.0\n"},  # fails both
    ]
    path = _write_samples(tmp_path / "s.jsonl", samples)
    out = evaluate_functional_correctness(
        path, str(ASSETS / "humanevalplus.jsonl"), k=(1,), workers=1, progress=False, write_results=True,
        base_tasks=str(base_file),
    )  # fmt: skip
    # plus (and base): HumanEval/0 1 of 2, HumanEval/4 1 of 2 -> 0.5; base: 2 of 2 and 1 of 2 -> 0.75
    assert out == pytest.approx({"pass@1": 0.5, "base_pass@1": 0.75})
    rows = [json.loads(line) for line in (tmp_path / "s_results.jsonl").read_text().splitlines()]
    assert [(r["passed"], r["base_passed"]) for r in rows] == [
        (True, True),
        (False, True),
        (True, True),
        (False, False),
    ]


def test_mbpp_plus_finds_its_base_task_by_the_id_after_the_slash(tmp_path):
    plus = load_tasks(str(ASSETS / "mbppplus.jsonl"))
    path = _write_samples(
        tmp_path / "s.jsonl", [{"task_id": t.task_id, "completion": t.canonical_solution} for t in plus]
    )
    out = evaluate_functional_correctness(
        path, plus, k=(1,), workers=1, progress=False, base_tasks=str(ASSETS / "mbpp_sanitized.jsonl")
    )
    assert [t.task_id for t in plus] == ["Mbpp/3"] and out == {"pass@1": 1.0, "base_pass@1": 1.0}
    orphan = dataclasses.replace(plus[0], task_id="Mbpp/999")  # a plus task that MBPP does not have
    missing = _write_samples(tmp_path / "m.jsonl", [{"task_id": "Mbpp/999", "completion": "x"}])
    base = str(ASSETS / "mbpp_sanitized.jsonl")
    with pytest.raises(DataError, match=r"1 task id\(s\) .* no base task .*: 'Mbpp/999' \(.*m\.jsonl:1\)"):
        evaluate_functional_correctness(missing, [orphan], k=(1,), workers=1, progress=False, base_tasks=base)


def mbpp_in_four_splits() -> datasets.DatasetDict:
    """Sanitized MBPP shaped as on the hub: ids 2 (``prompt``), 3 (``test``), 11 (``train``), 17 (``validation``)."""
    sanitized = [json.loads(line) for line in (ASSETS / "mbpp_sanitized.jsonl").read_text().splitlines()]
    full = [json.loads(line) for line in (ASSETS / "mbpp_full.jsonl").read_text().splitlines()]
    for r in full:  # the full schema's records as sanitized ones ("import math" is 17's setup code)
        setup, _ = r.pop("test_setup_code"), r.pop("challenge_test_list")
        r.update(prompt=r.pop("text"), source_file="x", test_imports=[setup] if setup else [])
    features = datasets.Dataset.from_list(sanitized + full).features
    splits = {"prompt": sanitized[:1], "test": sanitized[1:], "train": full[:1], "validation": full[1:]}
    return datasets.DatasetDict({k: datasets.Dataset.from_list(v, features=features) for k, v in splits.items()})


def test_mbpp_plus_base_tasks_come_from_every_split_of_mbpp(tmp_path, monkeypatch):
    """evalplus/mbppplus ids span MBPP's four splits: the base tasks are read from all of them, not from one."""
    mbpp = mbpp_in_four_splits()
    plus_records = [
        {**r, "task_id": f"Mbpp/{r['task_id']}", "test": "\n".join([*r["test_imports"], *r["test_list"]])}
        for split in mbpp.values() for r in split
    ]  # fmt: skip
    plus = tasks_from_records(plus_records, source="mbppplus")
    calls = []

    def load_dataset(name, config, split):  # the hub, offline: the four splits, or one of them
        calls.append((name, config, split))
        return mbpp if split is None else mbpp[split]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)  # sources imports datasets where a source needs it
    samples = [{"task_id": t.task_id, "completion": t.canonical_solution} for t in plus]
    path = _write_samples(tmp_path / "s.jsonl", samples)
    hub = "google-research-datasets/mbpp@sanitized"
    out = evaluate_functional_correctness(path, plus, k=(1,), workers=1, progress=False, base_tasks=hub)
    assert calls == [("google-research-datasets/mbpp", "sanitized", None)]  # every split, not --split's "test"
    assert out == {"pass@1": 1.0, "base_pass@1": 1.0}  # all four tasks found their base task
    mbpp.save_to_disk(str(tmp_path / "mbpp"))  # a saved DatasetDict reads the same way
    assert [t.task_id for t in load_tasks(str(tmp_path / "mbpp"), split=None)] == ["2", "3", "11", "17"]
    # ids without a base task are all named, each with its first sample's file:line, before anything runs
    extra = [dict(samples[0], task_id=f"Mbpp/{i}") for i in (998, 999, 998)]  # lines 5, 6, 7
    orphans = read_samples(_write_samples(tmp_path / "o.jsonl", [*samples, *extra]))
    named = (
        r"2 task id\(s\) .* among the 4 tasks of .*mbpp.*: 'Mbpp/998' \(.*o\.jsonl:5\), 'Mbpp/999' \(.*o\.jsonl:6\)$"
    )
    with pytest.raises(DataError, match=named):
        as_base_samples(orphans, load_tasks(str(tmp_path / "mbpp"), split=None))
