"""Reading records from wherever a user keeps them, with errors that name the record.

A *source* is one string, so it fits a YAML key:

* a local ``.jsonl`` / ``.jsonl.gz`` / ``.json`` file, a ``.parquet`` file, or a directory written by
  ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk`` (arrow);
* a directory of ``.jsonl``/``.jsonl.gz``/``.parquet`` shards (read in sorted order);
* a Hugging Face hub id (``datasets.load_dataset``), with an optional ``@config`` suffix
  (e.g. ``google-research-datasets/mbpp@sanitized``);
* ``synthetic:<split>[?key=value&...]`` — the built-in synthetic code world (:mod:`ra3_lightning.data.synthetic`).

JSON Lines are parsed here, line by line, rather than by ``datasets``' JSON builder, so that a broken line,
a non-UTF-8 byte, a truncated ``.gz``, a record lacking a field the others have or an empty file is reported as
``file:line`` (or ``file: no records``) instead of an arrow error. :func:`load_records` puts the records in an
arrow-backed, memory-mapped ``datasets.Dataset`` (``Dataset.from_generator`` caches them), which scales to millions
of snippets; :func:`load_record_list` returns a local JSON Lines file as a plain list instead (the same checks, the
same messages), for small sources read once in full, such as a benchmark's coding tasks.

``datasets`` (and with it pandas and pyarrow, about a second) is imported only where a source needs it, so that
reading local JSON Lines with :func:`load_record_list` or :func:`jsonl_objects` — all the scorer
``python -m ra3_lightning.evaluate`` does with local files — never imports it.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from ra3_lightning.errors import InputError

if TYPE_CHECKING:
    import datasets

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".ndjson")


class DataError(InputError):
    """A record of a data source is unusable; the message names the source, the record and the field."""


def load_records(
    source: str, split: str | None = "train", columns: Sequence[str] | None = None, text_columns: Sequence[str] = ()
) -> datasets.Dataset:
    """Load ``source`` as a ``datasets.Dataset`` (see the module docstring for the accepted forms).

    Args:
        source: Where the records are.
        split: Split of a hub dataset or a saved ``DatasetDict``; ``None``: all of its splits, concatenated in the
            dataset's order (e.g. MBPP's ``train``, ``test``, ``validation``, ``prompt``).
        columns: For JSON Lines: keep only these fields (a missing one becomes ``None``), so records with extra or
            differently typed fields elsewhere do not break the arrow schema.
        text_columns: For JSON Lines: fields validated as text while reading, so the error names ``file:line``.
    """
    import datasets

    if source.startswith("synthetic:"):
        return _load_synthetic(source)
    path = Path(source).expanduser()
    if path.is_dir() and any((path / f).exists() for f in ("dataset_info.json", "dataset_dict.json")):
        return _pick_split(datasets.load_from_disk(str(path)), split)
    if path.is_dir():
        return _concat([_load_file(f, columns, text_columns) for f in _data_files(path)])
    if path.exists():
        return _load_file(path, columns, text_columns)
    if _looks_local(source):
        raise DataError(f"{source}: no such file or directory")
    name, _, config = source.partition("@")
    return _pick_split(datasets.load_dataset(name, config or None, split=split), split)


def load_record_list(source: str, split: str | None = "train") -> list[dict[str, Any]] | datasets.Dataset:
    """``source``'s records for a reader that takes them once and in full (coding tasks: hundreds to thousands).

    A local JSON Lines file (``.jsonl``, ``.jsonl.gz``, ``.json``, ``.json.gz``, ``.ndjson``) becomes a list of dicts,
    parsed here without importing ``datasets`` (:func:`read_jsonl`); any other source is :func:`load_records`'s
    ``datasets.Dataset``, which iterates as dicts too.

    Args:
        source: Where the records are (see the module docstring).
        split: Split of a hub dataset or a saved ``DatasetDict``, as in :func:`load_records`.
    """
    path = Path(source).expanduser()
    if path.is_file() and path.name.endswith(JSONL_SUFFIXES):
        return read_jsonl(str(path))
    return load_records(source, split=split)


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """The objects of a (gzipped) JSON Lines file, as a list, held to the rules :func:`load_records` applies.

    Raises:
        DataError: what :func:`jsonl_objects` raises; ``file:line`` and the record for one that lacks a field the
            first record has; ``file: no records`` for a file with none.
    """
    rows = list(jsonl_objects(path))
    problem = _unstorable_records(path, rows)
    if problem is not None:
        raise problem
    return [record for _, record in rows]


def _pick_split(loaded: datasets.Dataset | datasets.DatasetDict, split: str | None) -> datasets.Dataset:
    """``loaded``'s ``split``, or (``split=None``) all of its splits in one dataset."""
    import datasets

    if not isinstance(loaded, datasets.DatasetDict):
        return loaded
    if split is not None:
        return loaded[split]
    return _concat(list(loaded.values()))


def _looks_local(source: str) -> bool:
    return source.startswith((".", "/", "~")) or source.endswith(JSONL_SUFFIXES + (".parquet", ".arrow"))


def _data_files(directory: Path) -> list[Path]:
    files = sorted(p for p in directory.iterdir() if p.name.endswith(JSONL_SUFFIXES + (".parquet",)))
    if not files:
        raise DataError(f"{directory}: no .jsonl/.jsonl.gz/.parquet files and no saved dataset in this directory")
    return files


def _concat(parts: list[datasets.Dataset]) -> datasets.Dataset:
    import datasets

    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def _load_file(path: Path, columns: Sequence[str] | None, text_columns: Sequence[str]) -> datasets.Dataset:
    import datasets

    if path.name.endswith(".parquet"):
        return datasets.Dataset.from_parquet(str(path))
    if path.name.endswith(JSONL_SUFFIXES):
        stat = path.stat()
        # tuples, not lists: datasets would treat list-valued gen_kwargs as shards
        kwargs = {"path": str(path), "columns": tuple(columns or ()), "text_columns": tuple(text_columns)}
        kwargs["_fingerprint"] = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
        try:
            return datasets.Dataset.from_generator(iter_jsonl, gen_kwargs=kwargs)
        except datasets.exceptions.DatasetGenerationError as e:
            if isinstance(e.__cause__, DataError):
                raise e.__cause__ from None
            # projected records all have the same fields
            found = _unstorable_records(str(path), jsonl_objects(str(path)), same_fields=not columns)
            if found is not None:
                raise found from None
            raise DataError(f"{path}: could not build a dataset: {e.__cause__ or e}") from e
    raise DataError(f"{path}: unsupported file type (expected .jsonl, .jsonl.gz, .json, .parquet or a dataset dir)")


def iter_jsonl(
    path: str, columns: Sequence[str] = (), text_columns: Sequence[str] = (), _fingerprint: str = ""
) -> Iterator[dict]:
    """Yield the JSON objects of a (gzipped) JSON Lines file; blank lines are skipped.

    With ``columns``, each record is projected onto them; ``text_columns`` are validated with :func:`text_problem`.

    Raises:
        DataError: naming ``file:line`` (and the record index) for bytes that are not UTF-8, invalid JSON, a line
            that is not an object, or an unusable text field.
    """
    for index, (lineno, record) in enumerate(jsonl_objects(path)):
        if columns:
            record = {c: record.get(c) for c in columns}
        for field in text_columns:
            problem = text_problem(record.get(field))
            if problem:
                raise DataError(f"{path}:{lineno}: record {index}: field {field!r} {problem}")
        yield record


def jsonl_objects(path: str) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` for each non-blank line of a (gzipped) JSON Lines file.

    Raises:
        DataError: naming ``file:line`` for bytes that are not UTF-8, invalid JSON, a line that is not an object, or
            the line where a ``.gz`` file turns out truncated or corrupt; a missing file names the path.
    """
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    opener = gzip.open if path.endswith(".gz") else open
    lineno = 0
    try:
        with opener(path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                record = _parse_line(raw, f"{path}:{lineno}")
                if record is not None:
                    yield lineno, record
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(
            f"{path}:{lineno + 1}: the compressed data is truncated or corrupt here ({e}); "
            "copy or download the file again (`gzip -t` checks it)"
        ) from None


def _parse_line(raw: bytes, where: str) -> dict | None:
    """The JSON object of one line; ``None`` for a blank line."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{where}: line is not valid UTF-8 ({e.reason} at byte {e.start})") from None
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: invalid JSON ({e.msg}, column {e.colno})") from None
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    return record


def _unstorable_records(path: str, rows: Iterable[tuple[int, dict]], same_fields: bool = True) -> DataError | None:
    """Why the ``(line number, record)`` rows of a JSON Lines file that parses are not one table: there are none, or
    (``same_fields``) a record lacks a field that the first record has (``datasets`` fails on that with a bare
    ``KeyError``). ``None`` if neither."""
    first: tuple[int, dict] | None = None
    for index, (lineno, record) in enumerate(rows):
        if first is None:
            first = lineno, record
        elif same_fields:
            missing = [field for field in first[1] if field not in record]
            if missing:
                return DataError(
                    f"{path}:{lineno}: {_record_name(index, record)}: field {missing[0]!r} is missing (record 0, line "
                    f"{first[0]}, has it; every record needs the same fields, null where there is no value)"
                )
    if first is None:
        return DataError(f"{path}: no records (the file is empty or holds only blank lines)")
    return None


def _record_name(index: int, record: dict) -> str:
    """``record 3`` or, when it has one, ``record 3 (task_id 'HumanEval/3')``."""
    key = next((k for k in ("task_id", "id") if isinstance(record.get(k), (str, int))), None)
    return f"record {index}" + (f" ({key} {record[key]!r})" if key else "")


def _load_synthetic(source: str) -> datasets.Dataset:
    from ra3_lightning.data import synthetic

    spec = urlsplit(source)
    params = {k: _parse_scalar(v) for k, v in parse_qsl(spec.query)}
    return synthetic.load_split(spec.path, **params)


def _parse_scalar(value: str) -> int | float | str:
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def check_text_field(ds: datasets.Dataset, field: str, source: str) -> None:
    """Raise :class:`DataError` for the first record whose ``field`` is missing, not a string, empty or undecodable.

    "Undecodable" covers strings that cannot be encoded as UTF-8, e.g. lone surrogates from a ``"\\udc80"`` escape.
    """
    if field not in ds.column_names:
        raise DataError(f"{source}: records have no field {field!r} (fields: {', '.join(ds.column_names)})")
    for index, value in enumerate(ds[field]):
        problem = text_problem(value)
        if problem:
            raise DataError(f"{source}: record {index}: field {field!r} {problem}")


def text_problem(value: object) -> str | None:
    """Why ``value`` is not usable text, or ``None`` when it is."""
    if value is None:
        return "is missing (null)"
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    if not value.strip():
        return "is empty"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"is not valid Unicode text ({e.reason} at position {e.start})"
    return None


def load_texts(source: str, field: str = "text", limit: int | None = None) -> list[str]:
    """The validated ``field`` of the first ``limit`` records of ``source``."""
    ds = load_records(source)
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    check_text_field(ds, field, source)
    return list(ds[field])


def source_fingerprint(source: str) -> str:
    """A cheap string that changes when a local source changes (size and mtime); the spec itself otherwise."""
    path = Path(source).expanduser()
    if not path.exists():
        return source
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return ";".join(f"{p}:{os.path.getsize(p)}:{p.stat().st_mtime_ns}" for p in files)
