"""A training command given unusable data ends with one line naming file, line or record and field, and exit status 1;
``RA3_DEBUG=1`` shows the traceback instead."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ra3_lightning.cli import main
from ra3_lightning.data.sources import DataError
from ra3_lightning.errors import CheckpointError, exit_on_input_error

NTP_TINY = Path(__file__).resolve().parents[1] / "configs" / "demo" / "ntp_tiny.yaml"


def fit_args(corpus: str, tokenizer_corpus: str, root: Path) -> list[str]:
    return [
        "fit", "-c", str(NTP_TINY), "--data.path", corpus, "--trainer.default_root_dir", str(root),
        "--trainer.max_steps", "1", "--trainer.enable_progress_bar", "false", "--model.tiny.tokenizer_corpus",
        tokenizer_corpus, "--model.tiny.vocab_size", "300", "--data.max_length", "64",
    ]  # fmt: skip


def test_empty_corpus_is_one_line_and_exit_status_1(tmp_path, code_jsonl):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    root = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "ra3_lightning.cli", *fit_args(str(empty), code_jsonl, root)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "RA3_DEBUG": ""},
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert f"error: {empty}: no records" in proc.stderr
    assert "Traceback" not in proc.stderr and "Please pass" not in proc.stderr
    assert not list(root.rglob("*.ckpt"))


def test_bad_record_names_line_record_and_field(tmp_path, code_jsonl, capsys, monkeypatch):
    monkeypatch.delenv("RA3_DEBUG", raising=False)
    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    corpus = tmp_path / "corpus.jsonl"
    rows = [{"id": "a", "text": "def f():\n    return 1\n"}, {"id": "b", "text": 3}]
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(SystemExit) as exit_info:
        main(fit_args(str(corpus), code_jsonl, tmp_path / "run"))
    assert exit_info.value.code == 1
    assert f"error: {corpus}:2: record 1: field 'text' must be a string, got int" in capsys.readouterr().err


def test_ra3_debug_shows_the_traceback(tmp_path, code_jsonl, monkeypatch):
    monkeypatch.setenv("RA3_DEBUG", "1")
    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="no records"):
        main(fit_args(str(empty), code_jsonl, tmp_path / "run"))


def test_an_input_error_is_found_inside_a_wrapping_exception(capsys, monkeypatch):
    monkeypatch.delenv("RA3_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info, exit_on_input_error():
        try:
            raise CheckpointError("x.ckpt: not a readable checkpoint")
        except CheckpointError as e:  # as jsonargparse reports a module's __init__ failing
            raise TypeError("Does not validate against any of the Union subtypes") from e
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.startswith("error: x.ckpt: not a readable checkpoint\n")
    with pytest.raises(ValueError, match="a bug"), exit_on_input_error():
        raise ValueError("a bug")  # not an input error: the traceback stays
