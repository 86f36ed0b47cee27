"""What crosses between the program and its tests: the plain-data codec, the stdout comparison, the judge's view of
the program's objects (pure functions and an in-process loopback), and a property test through the real sandbox
that no legitimate value is rejected or changed on the way."""

from __future__ import annotations

import enum
import json
import math
import pickle
import random
from collections import Counter, OrderedDict, namedtuple

import numpy as np
import pytest

from ra3_lightning.data.tasks import load_tasks
from ra3_lightning.sandbox import Sandbox, TestSuite, _judge, _wire
from ra3_lightning.sandbox._wire import WireError, decode, encode, outputs_match


def _no_handles(obj):
    raise AssertionError(f"unexpected handle for {obj!r}")


def _roundtrip(value):
    wire = encode(value, _no_handles)
    return decode(_wire.loads(_wire.dumps({"v": wire})[:-1])["v"], lambda n: None)


# ------------------------------------------------------------------------------------------------ the codec


def test_encode_by_hand():
    assert encode([1, (2.5, "a"), {3: None}, {True}], _no_handles) == [
        1,
        {"t": [2.5, "a"]},
        {"d": [[3, None]]},
        {"s": [True]},
    ]
    # 2**70 is 0x4 followed by 17 hex zeros; ints beyond 63 bits travel as hex.
    assert encode(2**70, _no_handles) == {"I": "4" + "0" * 17}
    assert encode(-(2**64), _no_handles) == {"I": "-1" + "0" * 16}
    assert encode(2**63 - 1, _no_handles) == 2**63 - 1
    assert encode(b"\x00\xff", _no_handles) == {"b": "\x00\xff"}
    assert encode(1 - 2j, _no_handles) == {"c": [1.0, -2.0]}


def test_subclasses_send_the_data_their_base_type_stores():
    class Evil(int):
        def __eq__(self, other):
            return True

        __hash__ = int.__hash__

    class Loud(str):
        def __str__(self):
            return "forged"

    class Color(enum.IntEnum):
        RED = 3

    point = namedtuple("Point", "x y")
    assert encode(Evil(7), _no_handles) == 7 and type(encode(Evil(7), _no_handles)) is int
    assert encode(Loud("real"), _no_handles) == "real"
    assert encode(Color.RED, _no_handles) == 3
    assert encode(point(1, 2), _no_handles) == {"t": [1, 2]}
    assert encode(Counter("aab"), _no_handles) == {"d": [["a", 2], ["b", 1]]}
    assert encode(OrderedDict(b=1, a=2), _no_handles) == {"d": [["b", 1], ["a", 2]]}  # order kept


def test_containers_are_read_with_their_base_types_own_accessors():
    """A subclass's ``__iter__``, ``keys``, ``items``, ``__getitem__`` and ``__len__`` are never called: what crosses
    is the data the instance stores (what ``==`` in one interpreter would compare)."""

    def lying(base):
        class Lies(base):
            def __iter__(self):
                return iter(["shown"])

            def keys(self):
                return ["shown"]

            def items(self):
                return [("shown", 1)]

            def __getitem__(self, key):
                return 1

            def __len__(self):
                return 1

        return Lies

    stored = {"z": 0}
    assert encode(lying(dict)(stored), _no_handles) == {"d": [["z", 0]]}
    assert encode(lying(OrderedDict)(stored), _no_handles) == {"d": [["z", 0]]}
    assert encode(lying(Counter)(stored), _no_handles) == {"d": [["z", 0]]}
    assert encode(lying(list)([7, 8]), _no_handles) == [7, 8]
    assert encode(lying(tuple)((7, 8)), _no_handles) == {"t": [7, 8]}
    assert encode(lying(set)({7}), _no_handles) == {"s": [7]}
    assert encode(lying(frozenset)({7}), _no_handles) == {"f": [7]}
    reordered = lying(OrderedDict)(a=1, b=2)
    OrderedDict.move_to_end(reordered, "a")
    assert encode(reordered, _no_handles) == {"d": [["b", 2], ["a", 1]]}  # OrderedDict's own order, read in C

    class Decoded(bytes):
        def decode(self, *args):
            return "forged"

    assert encode(Decoded(b"ab"), _no_handles) == {"b": "ab"}


def test_numpy_scalars_become_python_numbers():
    assert [type(_roundtrip(v)) for v in (np.int64(5), np.float64(0.5), np.bool_(True))] == [int, float, bool]
    assert _roundtrip(np.array(7)) == 7  # a 0-d array is a scalar too


def test_what_is_not_plain_data_becomes_a_handle():
    handles = []

    def other(obj):
        handles.append(obj)
        return {"h": len(handles) - 1}

    gen = (i for i in range(3))
    assert encode([len, gen], other) == [{"h": 0}, {"h": 1}]
    assert handles == [len, gen]
    assert encode(np.array([1, 2]), other) == {"h": 2}  # arrays are program objects, not data


def test_a_container_that_contains_itself_is_refused():
    cyclic: list = [1]
    cyclic.append(cyclic)
    with pytest.raises(WireError, match="contains itself"):
        encode(cyclic, _no_handles)
    shared = [1]
    assert encode([shared, shared], _no_handles) == [[1], [1]]  # shared, not cyclic: fine


@pytest.mark.parametrize(
    "wire",
    [{"x": 1}, {"t": 1}, {"d": [[1]]}, {"s": [[1]]}, {"b": "\u0100"}, {"t": [], "s": []}, {"h": -1}, {"c": [1]},
     {"I": 5}, {"d": [[[1], 2]]}],
)  # fmt: skip
def test_decode_refuses_what_is_not_a_wire_value(wire):
    with pytest.raises(WireError):
        decode(wire, lambda n: None)


def test_loads_takes_exactly_one_json_object():
    assert _wire.loads(b'{"op":"x"}') == {"op": "x"}
    for bad in (b'{"op":"x"} junk', b"[1]", b"{oops", b"\xff"):
        with pytest.raises(WireError):
            _wire.loads(bad)


def test_special_floats_and_types_survive():
    values = [-0.0, math.inf, -math.inf, 5e-324, 1e308, True, 1, None, "\ud800", '\x00\n"', (), frozenset({1})]
    back = _roundtrip(values)
    assert [type(v) for v in back] == [type(v) for v in values]
    assert math.copysign(1.0, back[0]) == -1.0 and back[1:] == values[1:]
    assert math.isnan(_roundtrip(math.nan))


# ------------------------------------------------------------------------------------------------ stdout comparison


@pytest.mark.parametrize(
    ("got", "expected", "match"),
    [
        ("6\n3\n", "6\n3", True),  # trailing newline
        ("  9  \r\n2\n\n", "9\n2", True),  # spacing, \r, blank lines at the end
        ("1  2", "1 2", True),  # words, not characters
        ("0\n0", "0 0", False),  # line breaks count
        ("1.50", "1.5", True),  # equal as Decimals
        ("1e2 3", "100 3.0", True),
        ("0.30000000000000004", "0.3", False),  # LiveCodeBench compares Decimals exactly: no epsilon
        ("YES 1.0", "YES 1", False),  # a line with a word is compared word for word
        ("nan", "nan", True),  # equal words
        ("NaN", "nan", False),  # NaN equals nothing as a Decimal
        ("", "", True),
    ],
)
def test_outputs_match_like_livecodebench(got, expected, match):
    assert outputs_match(got, expected) is match


# ------------------------------------------------------------------------------------------------ the judge's view


def _judge_in_process(program: str, check_code: str, entry: str = "f") -> _judge.Outcome:
    job = {
        "program": program,
        "limits": {},
        "tests": {"style": "check", "check_code": check_code, "entry_point": entry, "asserts": [], "stdio_cases": []},
    }
    return _judge.judge(job, _judge._Loopback())


def test_referenced_names_leave_out_builtins_and_dunders():
    code = compile("def check(c):\n    assert math.isclose(c(x), abs(y)) and __name__\n", "<t>", "exec")
    assert _judge.referenced_names(code) == {"check", "math", "isclose", "x", "y"}


def test_program_objects_have_no_truth_value_and_compare_by_identity():
    program = (
        "class Box:\n    def __eq__(self, o):\n        return True\n    def __bool__(self):\n        return True\n"
    )
    program += "def f():\n    return Box()\n"
    out = _judge_in_process(program, "def check(c):\n    b = c()\n    assert b == b and b != 1 and not (b == 1)\n")
    assert out.tests == [True]  # identity: equal to itself only
    out = _judge_in_process(program, "def check(c):\n    assert c()\n")
    assert out.tests == [False] and "no truth value" in out.test_error
    out = _judge_in_process(program, "def check(c):\n    assert c().__dict__ == {}\n")
    assert out.tests == [False] and "is not visible to the tests" in out.test_error


def test_calls_attributes_iteration_and_exceptions_cross():
    program = (
        "class Solution:\n    k = 2\n    def twice(self, xs):\n        return [self.k * x for x in xs]\n"
        "def f(n):\n    yield from range(n)\n"
        "class Oops(ValueError):\n    pass\n"
        "def g():\n    raise Oops('bad', 7)\n"
    )
    check = (
        "def check(c):\n    assert list(c(3)) == [0, 1, 2]\n    assert Solution().twice((1, 2)) == [2, 4]\n"
        "    assert Solution.k == 2\n    try:\n        g()\n    except ValueError as e:\n"
        "        assert e.args == ('bad', 7)\n    else:\n        assert False\n"
    )
    out = _judge_in_process(program, check)
    assert out.tests == [True], out.test_error


def test_an_exit_during_a_test_fails_it_even_when_the_test_swallows_it():
    program = "def f():\n    raise KeyboardInterrupt\n"
    out = _judge_in_process(program, "def check(c):\n    try:\n        c()\n    except BaseException:\n        pass\n")
    assert out.tests == [False] and "KeyboardInterrupt" in out.test_error


@pytest.mark.parametrize(
    "raised",
    ["StopIteration", "StopIteration(True)", "StopAsyncIteration", "Done", "GeneratorExit", "KeyboardInterrupt"],
)
def test_a_control_flow_exception_from_the_program_fails_the_test(raised):
    """``all(map(candidate, xs))`` would stop at a StopIteration from the program and pass; it arrives as a plain
    RuntimeError (a BaseException aborts the test), whatever the test code does with it."""
    program = f"class Done(StopIteration):\n    pass\ndef f(x):\n    raise {raised}\n"
    check = "def check(c):\n    assert all(map(c, [1, 2]))\n    assert not any(map(c, [1, 2]))\n"
    out = _judge_in_process(program, check)
    assert out.tests == [False], out.test_error
    assert ("RuntimeError: the program raised" in out.test_error) == raised.startswith(("Stop", "Done"))


def test_iteration_the_tests_ask_for_still_ends_normally():
    program = "def f(n):\n    yield from range(n)\ndef g():\n    return iter([])\n"
    check = (
        "def check(c):\n    assert list(c(3)) == [0, 1, 2]\n    assert next(g(), 'empty') == 'empty'\n"
        "    assert all(x < 3 for x in c(3)) and sum(map(int, c(4))) == 6\n"
    )
    out = _judge_in_process(program, check)
    assert out.tests == [True], out.test_error


class _ForgedReplies(_judge._Loopback):
    """A candidate that answers every call with ``reply``, as a program that rewrote its end of the channel does."""

    def __init__(self, reply: dict) -> None:
        super().__init__()
        self.reply = reply

    def exchange(self, request: bytes) -> bytes | None:
        if _wire.loads(request[:-1])["op"] == "call":
            return _wire.dumps(self.reply)[:-1]
        return super().exchange(request)


@pytest.mark.parametrize(
    "reply", [{"stop": True}, {"raise": ["StopIteration", "Exception"]}, {"raise": ["StopAsyncIteration"]}]
)
def test_a_forged_end_of_iteration_fails_the_test(reply):
    job = {
        "program": "def f(x):\n    return False\n",
        "limits": {},
        "tests": {"style": "check", "check_code": "def check(c):\n    assert all(map(c, [1, 2]))\n",
                  "entry_point": "f", "asserts": [], "stdio_cases": []},
    }  # fmt: skip
    out = _judge.judge(job, _ForgedReplies(reply))
    assert out.tests == [False]


def test_tests_cannot_hand_their_own_objects_to_the_program():
    out = _judge_in_process("def f(fn):\n    return fn(2)\n", "def check(c):\n    assert c(lambda x: x) == 2\n")
    assert out.tests == [False] and "only plain data crosses" in out.test_error


# ------------------------------------------------------------------------------------------------ through the sandbox


def _random_value(rng: random.Random, depth: int = 0):
    atoms = [
        lambda: rng.randint(-(10**6), 10**6),
        lambda: rng.choice([0, -1, 2**63 - 1, -(2**63), 2**63, 2**70, -(3**90)]),
        lambda: rng.choice([0.0, -0.0, 1.5, -2.25e-7, 1e308, 5e-324, math.inf, -math.inf, math.nan]),
        lambda: rng.random() * 10 ** rng.randint(-5, 5),
        lambda: "".join(rng.choice("ab \n\"'\\\x00é漢🙂") for _ in range(rng.randint(0, 6))),
        lambda: rng.choice([True, False, None]),
        lambda: bytes(rng.randrange(256) for _ in range(rng.randint(0, 4))),
        lambda: complex(rng.randint(-3, 3), rng.random()),
    ]
    if depth >= 3 or rng.random() < 0.45:
        return rng.choice(atoms)()
    size = rng.randint(0, 4)
    hashable = [rng.randint(-5, 5), rng.choice("xyz"), rng.choice([True, False]), (1, "a"), frozenset({2})]
    kind = rng.choice(["list", "tuple", "dict", "set", "frozenset", "counts"])
    if kind == "list":
        return [_random_value(rng, depth + 1) for _ in range(size)]
    if kind == "tuple":
        return tuple(_random_value(rng, depth + 1) for _ in range(size))
    if kind == "dict":
        return {rng.choice(hashable): _random_value(rng, depth + 1) for _ in range(size)}
    if kind == "counts":  # the synthetic world's dict[str, int]
        return {rng.choice(["apple", "kiwi", "fig"]) + str(i): rng.randint(1, 4) for i in range(size)}
    pool = [rng.choice(hashable) for _ in range(size)]
    return set(pool) if kind == "set" else frozenset(pool)


SAME = """
import math, pickle
def same(a, b):
    if type(a) is not type(b):
        return False
    if type(a) is float:
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if type(a) is complex:
        return same(a.real, b.real) and same(a.imag, b.imag)
    if type(a) in (list, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if type(a) is dict:
        return len(a) == len(b) and all(same(k, j) and same(v, w) for (k, v), (j, w) in zip(a.items(), b.items()))
    return a == b
"""


def _value_job(value) -> tuple[str, TestSuite]:
    blob = pickle.dumps(value)
    program = f"import pickle\ndef make():\n    return pickle.loads({blob!r})\ndef echo(x):\n    return x\n"
    check = SAME + f"EXPECTED = pickle.loads({blob!r})\n"
    check += (
        "def check(candidate):\n    assert same(candidate(), EXPECTED)\n    assert same(echo(EXPECTED), EXPECTED)\n"
    )
    return program, TestSuite("check", check_code=check, entry_point="make")


def test_no_legitimate_value_is_rejected_or_changed():
    """300 random values of the synthetic world's types and beyond (ints of any size, floats incl. -0.0/inf/nan,
    strings, bytes, bools vs ints, None, nested lists/tuples/dicts/sets): built by the program, compared by the
    judge with exact types; and sent from the tests to the program and back."""
    rng = random.Random(13)
    values = [_random_value(rng) for _ in range(300)]
    with Sandbox(workers=2) as sb:
        results = sb.run_batch([_value_job(v) for v in values])
    wrong = [(v, r.detail) for v, r in zip(values, results, strict=True) if not r.passed]
    assert not wrong, wrong[:5]


def test_bools_and_ints_stay_apart():
    cases = {  # program's return value -> whether `is True` / `type(...) is int` tests pass
        "True": (True, False),
        "1": (False, True),
        "1.0": (False, False),
    }
    check = "def check(c):\n    assert c() == 1\n    assert c() is True\n"
    typed = "def check(c):\n    assert c() == 1\n    assert type(c()) is int\n"
    with Sandbox(workers=1) as sb:
        for value, (is_true, is_int) in cases.items():
            program = f"def f():\n    return {value}\n"
            assert sb.run(program, TestSuite("check", check_code=check, entry_point="f")).passed is is_true
            assert sb.run(program, TestSuite("check", check_code=typed, entry_point="f")).passed is is_int


def test_the_synthetic_worlds_references_pass():
    tasks = load_tasks("synthetic:rlvr?n=150&seed=0") + load_tasks("synthetic:eval?n=50&seed=1")
    with Sandbox(workers=2) as sb:
        results = sb.run_batch([(t.program(t.canonical_solution), t.tests) for t in tasks])
    assert [t.task_id for t, r in zip(tasks, results, strict=True) if not r.passed] == []
    assert len(tasks) == 200 and json.dumps(results[0].tests) == json.dumps([True])
