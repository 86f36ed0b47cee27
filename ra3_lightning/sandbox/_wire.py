"""Plain data on the wire between the sandbox's judge and the program it judges, and the stdout comparison.

The judge (the process that runs a task's tests) and the candidate (the process that runs the untrusted program)
exchange values as JSON. Only *plain data* crosses: ``None``, ``bool``, ``int``, ``float``, ``complex``, ``str``,
``bytes``, ``bytearray``, ``list``, ``tuple``, ``dict``, ``set``, ``frozenset``, nested freely. Everything else is
a *handle* — a number naming an object that stays in the candidate's process (a function, a ``Solution``
instance, a generator). :func:`decode` rebuilds values of exactly these built-in types in the judge, so a test
compares data with the interpreter's own ``==``, never an object whose comparison the program wrote.

Wire forms (JSON): ``null``/``true``/``false``/numbers/strings as themselves (``NaN`` and ``Infinity`` as Python's
``json`` writes them), a list as a JSON array, and every other value as a one-key object: ``{"t": [...]}`` tuple,
``{"d": [[k, v], ...]}`` dict, ``{"s": [...]}`` set, ``{"f": [...]}`` frozenset, ``{"b": latin-1 text}`` bytes,
``{"B": ...}`` bytearray, ``{"c": [re, im]}`` complex, ``{"I": hex}`` an int of more than 63 bits, ``{"h": n}``
handle ``n``.

Encoding an instance of a *subclass* of a plain type (an ``IntEnum``, a ``namedtuple``, a ``Counter``, or an
``int`` subclass whose ``__eq__`` always answers ``True``) sends the data the base type stores, read with the base
type's own C-level accessor (``int.__int__``, ``str.__str__``, ``list.__iter__``, ``dict.items``, ...), so nothing
the subclass overrides (``__eq__``, ``__iter__``, ``keys``, ``__getitem__``, ...) is called or reaches the judge.
Containers are always read this way, exact types too. NumPy scalars become the Python number ``item()`` gives. A
container that contains itself cannot be encoded (:class:`WireError`).

Standard library only: the sandbox harness loads this file inside the sandbox.
"""

from __future__ import annotations

import json
import json.encoder
import json.scanner
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

INT_BITS = 63  # larger ints travel as hex: JSON readers limit how many decimal digits they convert
_ATOMS = (str, float, bool, type(None))
_SMALL = 1 << INT_BITS


class WireError(ValueError):
    """A value that cannot cross the sandbox boundary, or a message that is not a valid wire value."""


# ------------------------------------------------------------------------------------------------------- encoding


def encode(value: Any, other: Callable[[Any], Any]) -> Any:
    """``value`` as a JSON-ready wire value; ``other(obj)`` encodes what is not plain data (a handle, or raises).

    Raises:
        WireError: ``value`` contains itself, or is nested too deeply to encode.

    Example:
        >>> encode([1, (2.5, "a"), {3: None}], other=lambda obj: {"h": 0})
        [1, {'t': [2.5, 'a']}, {'d': [[3, None]]}]
    """
    if _native(value, 0):
        return value  # the common case (numbers, strings, lists of them) is its own wire form
    try:
        return _Encoder(other).encode(value)
    except RecursionError:
        raise WireError("the value is nested too deeply to pass between the program and the tests") from None


def _native(v: Any, depth: int) -> bool:
    """Whether ``v`` is a JSON-native tree (atoms, small ints, lists of them) and thus its own wire form."""
    t = type(v)
    if t in _ATOMS or (t is int and -_SMALL < v < _SMALL):
        return True
    return t is list and depth < 32 and all(_native(x, depth + 1) for x in v)


class _Encoder:
    def __init__(self, other: Callable[[Any], Any]) -> None:
        self.other = other
        self.active: set[int] = set()  # ids of the containers being encoded: a cycle would revisit one

    def encode(self, v: Any) -> Any:
        t = type(v)
        if t in _ATOMS:
            return v
        if t is int:
            return v if -_SMALL < v < _SMALL else {"I": format(v, "x")}
        container = _CONTAINERS.get(t)
        if container is not None:
            return self._container(v, *container)
        base = _plain_base(t)
        if base in _CONTAINERS:
            return self._container(v, *_CONTAINERS[base])
        if base is not None:
            return self.encode(_AS_BASE[base](v))
        if t.__module__ == "numpy" and hasattr(v, "item") and getattr(v, "ndim", None) == 0:
            return self.encode(v.item())
        return self.other(v)

    def _container(self, v: Any, tag: str | None, items: Callable[[_Encoder, Any], Any]) -> Any:
        key = id(v)
        if key in self.active:
            raise WireError(f"a {type(v).__name__} that contains itself cannot be passed between program and tests")
        self.active.add(key)
        try:
            body = items(self, v)
        finally:
            self.active.discard(key)
        return body if tag is None else {tag: body}


def _items(iterate: Callable[[Any], Any]) -> Callable[[_Encoder, Any], list]:
    return lambda enc, v: [enc.encode(x) for x in iterate(v)]


def _pairs(items: Callable[[Any], Any]) -> Callable[[_Encoder, Any], list]:
    return lambda enc, v: [[enc.encode(k), enc.encode(x)] for k, x in items(v)]


# Each reader uses the base type's own C-level accessor: its iterator walks the data the instance stores (the list's
# array, the dict's table, OrderedDict's own order) and calls no method a subclass may override.
_CONTAINERS: dict[type, tuple[str | None, Callable[[_Encoder, Any], Any]]] = {
    list: (None, _items(list.__iter__)),
    tuple: ("t", _items(tuple.__iter__)),
    dict: ("d", _pairs(dict.items)),
    OrderedDict: ("d", _pairs(OrderedDict.items)),
    set: ("s", _items(set.__iter__)),
    frozenset: ("f", _items(frozenset.__iter__)),
    bytes: ("b", lambda enc, v: bytes.decode(v, "latin-1")),
    bytearray: ("B", lambda enc, v: bytearray.decode(v, "latin-1")),
    complex: ("c", lambda enc, v: [complex.real.__get__(v), complex.imag.__get__(v)]),
}
# The base type's own C method returns a value of exactly the base type with the data the instance stores.
_AS_BASE: dict[type, Callable[[Any], Any]] = {int: int.__int__, float: float.__float__, str: str.__str__}


def _plain_base(t: type) -> type | None:
    """The plain type ``t`` derives from (by its real MRO, not an instance's ``__class__``), if any; the first one
    in MRO order (an ``OrderedDict`` subclass is read as an ``OrderedDict``, not as a ``dict``)."""
    for base in t.__mro__[1:]:
        if base in _AS_BASE or base in _CONTAINERS:
            return base
    return None


# ------------------------------------------------------------------------------------------------------- decoding


def decode(wire: Any, handle: Callable[[int], Any]) -> Any:
    """Rebuild a value from its wire form with built-in types only; ``handle(n)`` stands in for handle ``n``.

    Raises:
        WireError: ``wire`` is not a valid wire value (an unknown tag, a malformed body, an unhashable key).

    Example:
        >>> decode([1, {"t": [2.5, "a"]}, {"d": [[3, None]]}, {"I": "1" + "0" * 20}], handle=lambda n: None)
        [1, (2.5, 'a'), {3: None}, 1208925819614629174706176]
    """
    try:
        return _decode(wire, handle)
    except WireError:
        raise
    except (TypeError, ValueError, KeyError, RecursionError) as exc:
        raise WireError(f"not a valid wire value ({type(exc).__name__}: {exc})") from None


def _decode(w: Any, handle: Callable[[int], Any]) -> Any:
    t = type(w)
    if t is list:
        return [x if type(x) in _ATOMS or type(x) is int else _decode(x, handle) for x in w]
    if t is dict:
        if len(w) != 1:
            raise WireError(f"a tagged wire value has exactly one key, got {sorted(w)[:3]}")
        ((tag, body),) = w.items()
        return _TAGS[tag](body, handle)
    return w  # json.loads yields only str, int, float, bool and None besides lists and dicts


def _seq(body: Any, handle: Callable[[int], Any]) -> list:
    if type(body) is not list:
        raise WireError(f"expected a list body, got {type(body).__name__}")
    return _decode(body, handle)


def _dict(body: Any, handle: Callable[[int], Any]) -> dict:
    pairs = _seq(body, handle)
    if not all(type(p) is list and len(p) == 2 for p in pairs):
        raise WireError("a dict body is a list of [key, value] pairs")
    return dict(pairs)  # type: ignore[arg-type]


def _latin1(body: Any) -> bytes:
    if type(body) is not str:
        raise WireError(f"expected text, got {type(body).__name__}")
    return body.encode("latin-1")


def _number(x: Any) -> float:
    if type(x) not in (int, float):
        raise WireError(f"expected a number, got {type(x).__name__}")
    return x


def _complex(body: Any) -> complex:
    if type(body) is not list or len(body) != 2:
        raise WireError("a complex is [real, imag]")
    return complex(_number(body[0]), _number(body[1]))


def _big_int(body: Any) -> int:
    if type(body) is not str or len(body) > 1 << 22:
        raise WireError("a big int is a hex string")
    return int(body, 16)


def _handle(body: Any, handle: Callable[[int], Any]) -> Any:
    if type(body) is not int or body < 0:
        raise WireError("a handle is a non-negative int")
    return handle(body)


_TAGS: dict[str, Callable[[Any, Callable[[int], Any]], Any]] = {
    "t": lambda body, h: tuple(_seq(body, h)),
    "d": _dict,
    "s": lambda body, h: set(_seq(body, h)),
    "f": lambda body, h: frozenset(_seq(body, h)),
    "b": lambda body, h: _latin1(body),
    "B": lambda body, h: bytearray(_latin1(body)),
    "c": lambda body, h: _complex(body),
    "I": lambda body, h: _big_int(body),
    "h": _handle,
}


def _unserializable(obj: Any) -> Any:
    raise TypeError(f"{type(obj).__name__} is not a JSON value")


# The C encoder and scanner themselves, built once: json.dumps / json.loads rebuild or wrap them on every call.
_ENCODE = json.encoder.c_make_encoder(
    None, _unserializable, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, True
)
_SCAN = json.scanner.make_scanner(json.JSONDecoder())


def dumps(message: dict) -> bytes:
    """One protocol message as a JSON line."""
    return ("".join(_ENCODE(message, 0)) + "\n").encode()


def loads(line: bytes) -> dict:
    """Parse one protocol message (one JSON object, nothing after it).

    Raises:
        WireError: ``line`` is not a JSON object.
    """
    try:
        text = line.decode()
        message, end = _SCAN(text, 0)
    except (ValueError, StopIteration, RecursionError) as exc:
        raise WireError(f"not a JSON message ({type(exc).__name__})") from None
    if type(message) is not dict or end != len(text):
        raise WireError("a message is one JSON object")
    return message


# ------------------------------------------------------------------------------------------- stdin/stdout output


def output_lines(text: str) -> list[list[str]]:
    """A program's output as lines of words: blank lines at either end dropped, spacing and ``\\r`` ignored.

    Example:
        >>> output_lines("  9  \\r\\n2 3\\n\\n")
        [['9'], ['2', '3']]
    """
    return [line.split() for line in text.strip().splitlines()]


def outputs_match(got: str, expected: str) -> bool:
    """Whether a program's stdout ``got`` answers ``expected``, as LiveCodeBench's grader decides it.

    Same number of lines; each line equal word for word, or else every word of both lines a number and the two
    lists equal as ``Decimal``s (LiveCodeBench's ``grade_stdio``): ``1.50`` answers ``1.5`` and ``1e2`` answers
    ``100``, but ``0.30000000000000004`` does not answer ``0.3`` and ``YES 1.0`` does not answer ``YES 1``.

    Example:
        >>> outputs_match("3.0\\n1 2", "3\\n1  2\\n"), outputs_match("0.1", "0.10000001")
        (True, False)
    """
    lines, want = output_lines(got), output_lines(expected)
    if len(lines) != len(want):
        return False
    return all(a == b or _decimals_equal(a, b) for a, b in zip(lines, want, strict=True))


def _decimals_equal(a: list[str], b: list[str]) -> bool:
    from decimal import Decimal, InvalidOperation  # only on the rare mismatching line: keeps forks cheap

    try:
        return [Decimal(x) for x in a] == [Decimal(x) for x in b]
    except (InvalidOperation, ValueError):
        return False
