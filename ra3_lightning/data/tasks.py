"""Coding tasks with executable tests: one :class:`CodingTask` type for HumanEval(+), MBPP(+) and LiveCodeBench.

:func:`load_tasks` reads any source :func:`ra3_lightning.data.sources.load_records` accepts (hub id, ``.jsonl``,
``.jsonl.gz``, ``.parquet``, a saved dataset, ``synthetic:eval``; a local JSON Lines file is parsed without
``datasets``, :func:`~ra3_lightning.data.sources.load_record_list`) and maps each record by schema, chosen by name
(``kind``) or detected from the columns:

* ``"humaneval"`` — ``task_id, prompt, entry_point, test[, canonical_solution]``: openai_humaneval and the
  evalplus hub export ``evalplus/humanevalplus`` (whose ``test`` holds the plus inputs in a self-contained
  ``check``), and the synthetic world's ``rlvr`` / ``eval`` splits. Tests: ``check(candidate)``.
* ``"mbpp"`` — MBPP full (``text, code, test_list, test_setup_code``), sanitized (``prompt`` instead of ``text``,
  ``test_imports``) and the evalplus hub export ``evalplus/mbppplus`` (a self-contained ``test`` script, used instead
  of ``test_list`` when present). Tests: asserts. The prompt is the human-eval-harness style docstring
  ``\"\"\"\\n<description>\\n<first assert>\\n\"\"\"\\n``; the entry point is the solution's function the asserts call.
* ``"livecodebench"`` — ``code_generation_lite`` (``question_id, question_content, starter_code,
  public_test_cases, private_test_cases, metadata``). ``testtype == "stdin"`` gives stdin/stdout tests;
  ``"functional"`` (LeetCode) gives asserts calling ``Solution().<metadata.func_name>`` on JSON-decoded arguments.
  The private cases of the official export are ``base64(zlib(pickle(json string)))``: they are decoded with an
  unpickler that refuses every global except a few builtin containers, so no pickle can run code here.

Deviations from the reference harnesses: the raw evalplus *release* files (``base_input``/``plus_input`` without a
self-contained test) are refused with an error pointing to the hub exports, rather than scored silently on the base
tests; LiveCodeBench's prompt is its question plus starter code, not its chat template.
"""

from __future__ import annotations

import ast
import base64
import builtins
import io
import json
import pickle
import re
import warnings
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ra3_lightning.data.sources import DataError, load_record_list, text_problem
from ra3_lightning.sandbox.types import TestSuite

TaskKind = Literal["auto", "humaneval", "mbpp", "livecodebench"]
CompletionMode = Literal["continue", "solution"]

# LiveCodeBench's grader prepends these imports to every program (lcb_runner/evaluation/testing_util.py).
LCB_PREAMBLE = (
    "import sys, os, re, math, heapq, bisect, string, random, itertools, functools, collections, operator\n"
    "from typing import *\nfrom collections import *\nfrom itertools import *\nfrom functools import *\n"
    "from heapq import *\nfrom bisect import *\nfrom math import *\n"
)
_LCB_FUNCTIONAL_SETUP = (
    "import json as _lcb_json\n"
    "def _lcb_args(text):\n"
    "    return [_lcb_json.loads(line) for line in text.split('\\n')]\n"
    "def _lcb_equal(out, expected_json):\n"
    "    return (list(out) if isinstance(out, tuple) else out) == _lcb_json.loads(expected_json)\n"
)
_MAX_DECOMPRESSED = 1 << 30  # a zlib bomb in a private-test blob stops here


@dataclass(frozen=True)
class CodingTask:
    """One programming problem and the tests that judge a completion.

    Args:
        task_id: unique id (samples refer to it).
        prompt: what the model is given: code to continue (HumanEval) or a problem statement.
        tests: the test suite the sandbox runs.
        entry_point: the function under test ("" for stdin/stdout tasks).
        canonical_solution: a reference completion, where the dataset has one (HumanEval: the body to append to
            ``prompt``; MBPP / LiveCodeBench: a full program).
        source: where the task was loaded from.
        completion_mode: ``"continue"`` — the completion continues ``prompt`` (HumanEval, MBPP); ``"solution"`` —
            the completion is a whole program and the prompt is prose (LiveCodeBench, stdin tasks).
        preamble: code placed before every program (LiveCodeBench's import header).
        meta: the record's other fields (HumanEval schema), e.g. the synthetic world's ground truth ``id``,
            ``skills``, ``skill_starts``, ``skill_ends``; empty for other schemas. Not part of the hash.
    """

    task_id: str
    prompt: str
    tests: TestSuite
    entry_point: str = ""
    canonical_solution: str | None = None
    source: str = ""
    completion_mode: CompletionMode = "continue"
    preamble: str = ""
    meta: dict[str, Any] = field(default_factory=dict, hash=False)

    def program(self, completion: str) -> str:
        """The text the sandbox runs for ``completion``.

        A body that continues the prompt and is then closed by a markdown fence (an instruct model given a plain
        prompt) is cut at the fence. Otherwise a fenced code block (a chat model's answer) replaces the completion,
        and then: for ``"solution"`` tasks and stdin/stdout tests the code alone; when the code defines
        ``def <entry_point>`` at top level itself, the code with the prompt's imports and helper definitions it does
        not redefine; otherwise ``prompt + code``.

        Example:
            >>> task = CodingTask("t", "import math\\ndef f(x):\\n", TestSuite("assert", asserts=("assert f(4) == 2",)),
            ...                   entry_point="f")
            >>> task.program("    return math.isqrt(x)\\n")
            'import math\\ndef f(x):\\n    return math.isqrt(x)\\n'
            >>> task.program("    return math.isqrt(x)\\n```\\nThis uses the integer square root.")
            'import math\\ndef f(x):\\n    return math.isqrt(x)\\n'
            >>> print(task.program("Here:\\n```python\\ndef f(x):\\n    return math.isqrt(x)\\n```\\n"))
            import math
            <BLANKLINE>
            def f(x):
                return math.isqrt(x)
            <BLANKLINE>
        """
        standalone = self.completion_mode == "solution" or self.tests.style == "stdio"
        body = None if standalone else body_before_fence(self.prompt, completion)
        if body is not None:
            return self.preamble + self.prompt + body
        fenced = extract_code(completion, self.entry_point)
        code = completion if fenced is None else fenced
        if standalone:
            return self.preamble + code
        if self.entry_point and defines_function(code, self.entry_point):
            return self.preamble + prompt_context(self.prompt, code) + code
        return self.preamble + self.prompt + code


_FENCE_LINE = re.compile(r"^[ \t]*```", re.M)


def body_before_fence(prompt: str, completion: str) -> str | None:
    """The text before the completion's first fence line, if it is an indented continuation that parses with the
    prompt (``"    return x\\n```\\nExplanation..."``); ``None`` otherwise (e.g. prose, then a fenced answer)."""
    fence = _FENCE_LINE.search(completion)
    if fence is None:
        return None
    before = completion[: fence.start()]
    if before.lstrip("\n")[:1] not in (" ", "\t") or not parses(prompt + before):
        return None
    return before


def parses(code: str) -> bool:
    """Whether ``code`` is syntactically valid Python (``ast.parse``; nothing runs)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)
            ast.parse(code)
    except (SyntaxError, ValueError):  # ValueError: source with null bytes
        return False
    return True


_FENCED = re.compile(r"^[ \t]*```[ \t]*([\w+.-]*)[^\n]*\n(.*?)(?:^[ \t]*```|\Z)", re.S | re.M)
_PYTHON_FENCES = {"", "python", "python3", "py"}


def extract_code(text: str, entry_point: str = "") -> str | None:
    """The Python code of a markdown-fenced answer, or ``None`` when ``text`` has no (non-empty) Python fence.

    Among several blocks the first one defining ``entry_point`` wins, else the longest. An unclosed fence (a
    generation cut at the token limit) runs to the end of the text.
    """
    blocks = [body for lang, body in _FENCED.findall(text) if lang.lower() in _PYTHON_FENCES and body.strip()]
    if not blocks:
        return None
    for body in blocks:
        if entry_point and defines_function(body, entry_point):
            return body
    return max(blocks, key=len)


_TOP_LEVEL_DEF = re.compile(r"^(?:async[ \t]+)?def[ \t]+(\w+)[ \t]*\(", re.M)


def defines_function(code: str, name: str) -> bool:
    """Whether ``code`` defines a top-level (column 0) function ``name``."""
    return name in _TOP_LEVEL_DEF.findall(code)  # one compiled pattern, not one per entry point


def prompt_context(prompt: str, code: str) -> str:
    """The prompt's top-level imports and the functions/classes ``code`` does not define itself, as source.

    A full solution (e.g. HumanEval/38 ``decode_cyclic``) may rely on the prompt's imports or helpers
    (``encode_cyclic``); they are kept, the prompt's stub of the entry point is not.
    """
    try:
        nodes = ast.parse(prompt).body
    except SyntaxError:  # keep at least the import lines
        lines = [ln for ln in prompt.splitlines() if re.match(r"(import|from)\s+\S+", ln)]
        return "\n".join(lines) + "\n\n" if lines else ""
    defined = set(re.findall(r"^(?:async[ \t]+def|def|class)[ \t]+(\w+)", code, re.M))
    kept = []
    for node in nodes:
        is_import = isinstance(node, (ast.Import, ast.ImportFrom))
        is_def = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        if is_import or (is_def and node.name not in defined):
            kept.append(ast.get_source_segment(prompt, node, padded=False) or "")
    return "\n".join(kept) + "\n\n" if kept else ""


# --------------------------------------------------------------------------------------------------- loading


def load_tasks(source: str, kind: TaskKind = "auto", split: str | None = "test") -> list[CodingTask]:
    """Load coding tasks from ``source`` (see the module docstring for schemas and accepted sources).

    Args:
        source: a hub id (optional ``@config``), a local ``.jsonl``/``.jsonl.gz``/``.parquet`` file or directory,
            or ``synthetic:<split>?...``.
        kind: the schema, or ``"auto"`` to detect it from the columns.
        split: the split of a hub dataset or saved ``DatasetDict`` (ignored for files); ``None``: all splits
            (MBPP+'s tasks come from every split of MBPP).

    Raises:
        DataError: naming the source, record index, task id and field of the first unusable record (missing or
            empty fields, a task without tests, an undecodable LiveCodeBench test blob, a repeated task id).
    """
    records = load_record_list(source, split=split)
    return tasks_from_records(records, kind=kind, source=source)


def tasks_from_records(
    records: Iterable[Mapping[str, Any]], kind: TaskKind = "auto", source: str = "<records>"
) -> list[CodingTask]:
    """Map raw records (a ``datasets.Dataset`` or a list of dicts) to :class:`CodingTask` objects."""
    records = list(records)
    if not records:
        raise DataError(f"{source}: no records")
    columns = set().union(*(r.keys() for r in records))
    kind = detect_kind(columns, source) if kind == "auto" else kind
    if kind not in _SCHEMAS:
        raise ValueError(f"unknown task kind {kind!r}; choose one of auto, {', '.join(_SCHEMAS)}")
    schema = _SCHEMAS[kind]
    missing = sorted(schema.signature - columns)
    if missing:
        raise DataError(f"{source}: {kind} records need field(s) {missing} (fields: {sorted(columns)})")
    tasks = [schema.to_task(_Record(dict(r), source, i)) for i, r in enumerate(records)]
    _check_unique_ids(tasks, source)
    return tasks


def detect_kind(columns: Iterable[str], source: str = "<records>") -> str:
    """The first schema whose signature columns are all present."""
    columns = set(columns)
    for kind, schema in _SCHEMAS.items():
        if schema.signature <= columns:
            return kind
    signatures = "; ".join(f"{k}: {sorted(s.signature)}" for k, s in _SCHEMAS.items())
    raise DataError(f"{source}: cannot tell the task schema from fields {sorted(columns)} (expected {signatures})")


def _check_unique_ids(tasks: list[CodingTask], source: str) -> None:
    seen: dict[str, int] = {}
    for index, task in enumerate(tasks):
        if task.task_id in seen:
            raise DataError(f"{source}: record {index}: task_id {task.task_id!r} repeats record {seen[task.task_id]}")
        seen[task.task_id] = index


@dataclass
class _Record:
    """One raw record with accessors that raise :class:`DataError` naming source, index, task id and field."""

    data: dict[str, Any]
    source: str
    index: int

    def error(self, field: str, problem: str) -> DataError:
        tid = self.data.get("task_id", self.data.get("question_id"))
        where = f"record {self.index}" + (f" (task_id {tid!r})" if tid not in (None, "") else "")
        return DataError(f"{self.source}: {where}: field {field!r} {problem}")

    def text(self, field: str) -> str:
        value = self.data.get(field)
        problem = text_problem(value)
        if problem:
            raise self.error(field, problem)
        return value

    def optional_text(self, field: str) -> str:
        value = self.data.get(field)
        if value is None:
            return ""
        if not isinstance(value, str):
            raise self.error(field, f"must be a string, got {type(value).__name__}")
        return value

    def text_list(self, field: str) -> list[str]:
        value = self.data.get(field)
        if value is None:
            return []
        if not isinstance(value, (list, tuple)):
            raise self.error(field, f"must be a list of strings, got {type(value).__name__}")
        for i, item in enumerate(value):
            problem = text_problem(item)
            if problem:
                raise self.error(field, f"item {i} {problem}")
        return list(value)

    def task_id(self, field: str = "task_id") -> str:
        value = self.data.get(field)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise self.error(field, "is missing (null or empty)")
        return str(value)

    def identifier(self, field: str) -> str:
        value = self.text(field).strip()
        if not value.isidentifier():
            raise self.error(field, f"must be a Python identifier, got {value!r}")
        return value


@dataclass(frozen=True)
class _Schema:
    signature: frozenset[str]  # columns that identify the schema (all required)
    to_task: Callable[[_Record], CodingTask]


def _humaneval_task(r: _Record) -> CodingTask:
    if "plus_input" in r.data:  # raw evalplus release: `test` is only the base HumanEval check
        raise r.error(
            "plus_input",
            "marks a raw evalplus release file, whose `test` holds only the base tests; use "
            "the hub export evalplus/humanevalplus (plus inputs inside a self-contained check) instead",
        )
    test, entry_point = r.text("test"), r.identifier("entry_point")
    if not re.search(r"^def[ \t]+check[ \t]*\(", test, re.M):
        raise r.error("test", "defines no top-level `def check(candidate)`")
    return CodingTask(
        task_id=r.task_id(),
        prompt=r.text("prompt"),
        tests=TestSuite("check", check_code=test, entry_point=entry_point),
        entry_point=entry_point,
        canonical_solution=r.optional_text("canonical_solution") or None,
        source=r.source,
        meta={k: v for k, v in r.data.items() if k not in _HUMANEVAL_FIELDS},
    )


_HUMANEVAL_FIELDS = frozenset({"task_id", "prompt", "entry_point", "test", "canonical_solution"})


def _mbpp_task(r: _Record) -> CodingTask:
    task_id = r.task_id()
    description = r.text("prompt") if r.data.get("prompt") is not None else r.text("text")
    asserts = r.text_list("test_list")
    plus = r.optional_text("test").strip()  # evalplus MBPP+: one self-contained script
    if not asserts and not plus:
        raise r.error("test_list", "is empty: a task without tests cannot be scored")
    code = r.optional_text("code")
    setup = "\n".join(r.text_list("test_imports") + [r.optional_text("test_setup_code")]).strip()
    example = asserts[0] if asserts else ""
    return CodingTask(
        task_id=task_id,
        prompt=f'"""\n{description.strip()}\n{example}\n"""\n',
        tests=TestSuite("assert", asserts=(plus,) if plus else tuple(asserts), setup_code=setup),
        entry_point=_mbpp_entry_point(code, asserts or [plus]),
        canonical_solution=code or None,
        source=r.source,
    )


def _mbpp_entry_point(code: str, tests: list[str]) -> str:
    """The solution's function the tests call; without a solution, the first non-builtin name the first test calls."""
    called = re.findall(r"\b([A-Za-z_]\w*)\s*\(", "\n".join(tests))
    for name in re.findall(r"^def[ \t]+(\w+)", code, re.M):
        if name in called:
            return name
    skip = set(dir(builtins)) | {"isclose", "assert"}
    return next((name for name in called if name not in skip), "")


def _livecodebench_task(r: _Record) -> CodingTask:
    cases = _lcb_cases(r, "public_test_cases") + _lcb_cases(r, "private_test_cases")
    if not cases:
        raise r.error("public_test_cases", "and private_test_cases are empty: a task without tests cannot be scored")
    types = {c["testtype"] for c in cases}
    if len(types) != 1 or not types <= {"stdin", "functional"}:
        raise r.error("public_test_cases", f"testtype must be all 'stdin' or all 'functional', got {sorted(types)}")
    starter = r.optional_text("starter_code")
    prompt = r.text("question_content").strip() + (f"\n\n```python\n{starter.rstrip()}\n```\n" if starter else "\n")
    if types == {"stdin"}:
        tests, entry_point = TestSuite("stdio", stdio_cases=tuple((c["input"], c["output"]) for c in cases)), ""
    else:
        entry_point = _lcb_func_name(r)
        asserts = tuple(
            f"assert _lcb_equal(Solution().{entry_point}(*_lcb_args({c['input']!r})), {c['output']!r})" for c in cases
        )
        tests = TestSuite("assert", asserts=asserts, setup_code=_LCB_FUNCTIONAL_SETUP)
    return CodingTask(
        task_id=r.task_id("question_id"),
        prompt=prompt,
        tests=tests,
        entry_point=entry_point,
        source=r.source,
        completion_mode="solution",
        preamble=LCB_PREAMBLE,
    )


def _lcb_cases(r: _Record, field: str) -> list[dict[str, str]]:
    raw = r.data.get(field)
    if raw is None or raw == "":
        return []
    try:
        cases = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError:
        try:
            cases = decode_lcb_blob(raw)
        except (ValueError, zlib.error, pickle.UnpicklingError, EOFError) as e:
            raise r.error(field, f"is neither JSON nor a base64/zlib/pickle blob ({e})") from None
    if not isinstance(cases, list):
        raise r.error(field, f"must decode to a list of test cases, got {type(cases).__name__}")
    for i, case in enumerate(cases):
        if not isinstance(case, dict) or not all(isinstance(case.get(k), str) for k in ("input", "output", "testtype")):
            raise r.error(field, f"case {i} needs string 'input', 'output' and 'testtype'")
    return cases


def _lcb_func_name(r: _Record) -> str:
    raw = r.data.get("metadata") or "{}"
    try:
        meta = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError as e:
        raise r.error("metadata", f"is not valid JSON ({e.msg})") from None
    name = meta.get("func_name") if isinstance(meta, dict) else None
    if not isinstance(name, str) or not name.isidentifier():
        raise r.error("metadata", "needs 'func_name' (a Python identifier) for functional tests")
    return name


class _ContainersOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain data only: every global is refused except builtin containers, so no pickle can run code."""

    _ALLOWED = {("builtins", name) for name in ("list", "dict", "tuple", "set", "frozenset", "bytearray")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return getattr(builtins, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name} from a test-case blob")


def decode_lcb_blob(blob: str) -> Any:
    """Decode LiveCodeBench's ``base64(zlib(pickle(json string)))`` private test cases without executing code."""
    inflater = zlib.decompressobj()
    data = inflater.decompress(base64.b64decode(blob.encode("ascii"), validate=True), _MAX_DECOMPRESSED)
    if inflater.unconsumed_tail:
        raise ValueError(f"decompressed test cases exceed {_MAX_DECOMPRESSED} bytes")
    value = _ContainersOnlyUnpickler(io.BytesIO(data)).load()
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8")
    return json.loads(value) if isinstance(value, str) else value


_SCHEMAS: dict[str, _Schema] = {
    "livecodebench": _Schema(frozenset({"question_content", "public_test_cases"}), _livecodebench_task),
    "humaneval": _Schema(frozenset({"task_id", "prompt", "entry_point", "test"}), _humaneval_task),
    "mbpp": _Schema(frozenset({"task_id", "test_list"}), _mbpp_task),
}
