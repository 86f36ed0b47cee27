"""Every ``ra3 fit|validate|test`` command line quoted in a config header, a README or ``docs/`` parses through the
real CLI (``--print_config``), and the stage config it names keeps its own settings.

An overlay that names ``model.class_path`` again resets that class's ``init_args`` to the defaults (jsonargparse
starts a class over when its path is given), and a list-valued key in a later file replaces the whole list: either
would silently train something else than the stage YAML says. So for every stage config (a file with
``model.class_path``) on a command line, the printed config must hold its model and data classes and every
``init_args`` leaf it sets — unless the command itself changes that key (a later ``-c`` file or a flag naming it).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from ra3_lightning.cli import main

ROOT = Path(__file__).resolve().parents[1]
SUBCOMMANDS = ("fit", "validate", "test")
SOURCES = [
    ROOT / "README.md", ROOT / "experiments" / "README.md", *sorted((ROOT / "docs").rglob("*.md")),
    *sorted((ROOT / "configs").rglob("*.yaml")),
]  # fmt: skip


def logical_lines(text: str, yaml_header: bool) -> list[str]:
    """Lines with ``\\``-continuations joined (in a YAML file: its leading comment block, ``#`` prefixes stripped)."""
    lines = text.splitlines()
    if yaml_header:
        header = []
        for line in lines:
            if not line.startswith("#"):
                break
            header.append(line[1:])
        lines = header
    joined, current = [], ""
    for line in lines:
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        joined.append(current + line)
        current = ""
    return joined


def commands_in(path: Path) -> list[str]:
    """The ``ra3 <sub> ...`` commands of a file: from ``ra3`` to the end of its line, inline code span or comment."""
    found = []
    for line in logical_lines(path.read_text(), yaml_header=path.suffix == ".yaml"):
        for match in re.finditer(rf"ra3 (?:{'|'.join(SUBCOMMANDS)}) [^`#\n]*", line):
            found.append(match.group(0).strip())
    return found


def documented_commands() -> list[tuple[str, str]]:
    """``(where, command)`` for every command line that names at least one real config file."""
    out = []
    for path in SOURCES:
        for command in commands_in(path):
            words = shlex.split(command)
            configs = [words[i + 1] for i, w in enumerate(words[:-1]) if w in ("-c", "--config")]
            if configs and all((ROOT / c).suffix == ".yaml" and "<" not in c for c in configs):
                out.append((str(path.relative_to(ROOT)), command))
    return out


COMMANDS = documented_commands()


def cli_args(command: str) -> list[str]:
    """The command's arguments, runnable: placeholders filled, ``...`` dropped, config paths made absolute."""
    words = [w for w in shlex.split(re.sub(r"<[^>]*>", "placeholder", command))[1:] if w != "..."]
    return [str(ROOT / w) if w.endswith(".yaml") and (ROOT / w).exists() else w for w in words]


def leaves(tree: Any, prefix: str = "", folder: Path = ROOT) -> dict[str, Any]:
    """``{"a.b.c": value}`` for every leaf of nested dicts (a list is one leaf; a fragment file named as a value,
    such as ``tiny: tiny_lm.yaml``, is read from ``folder`` and expanded)."""
    if isinstance(tree, str) and tree.endswith(".yaml") and (folder / tree).exists():
        tree = yaml.safe_load((folder / tree).read_text())
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(leaves(value, f"{prefix}.{key}" if prefix else str(key), folder))
    return out


def changed_by(words: list[str], stage: Path, configs: list[Path]) -> set[str]:
    """Dotted keys the command sets after ``stage``: flags (``--model.x`` = ``--model.init_args.x``) and later files."""
    keys = set()
    for word in words:
        if word.startswith("--"):
            key = word[2:].split("=")[0]
            keys |= {key, re.sub(r"^(model|data)\.(?!init_args\.)", r"\1.init_args.", key)}
    for later in configs[configs.index(stage) + 1 :]:
        keys |= set(leaves(yaml.safe_load(later.read_text()) or {}))
    return keys


def overridden(key: str, changed: set[str]) -> bool:
    return any(key == c or key.startswith(c + ".") or c.startswith(key + ".") for c in changed)


def print_config(args: list[str], capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setattr("sys.argv", ["ra3"])  # LightningCLI warns when pytest's own argv is there too
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--print_config"])
    printed = capsys.readouterr().out
    assert exit_info.value.code in (None, 0), printed[-2000:]
    return yaml.safe_load(printed)


def test_the_docs_quote_commands_for_every_stage_config():
    quoted = {Path(w).name for _, c in COMMANDS for w in shlex.split(c) if w.endswith(".yaml")}
    stages = {p.name for p in (ROOT / "configs").glob("*.yaml") if "class_path" in p.read_text()}
    assert stages <= quoted, f"stage configs no command quotes: {stages - quoted}"
    assert {"fsdp2.yaml", "fsdp2_multinode.yaml", "lora.yaml"} <= quoted


@pytest.mark.parametrize("where,command", COMMANDS, ids=[f"{w}:{c[:70]}" for w, c in COMMANDS])
def test_a_documented_command_keeps_the_stage_settings(where, command, capsys, monkeypatch):
    args = cli_args(command)
    printed = print_config(args, capsys, monkeypatch)
    configs = [Path(args[i + 1]) for i, w in enumerate(args[:-1]) if w in ("-c", "--config")]
    for stage in configs:
        own = yaml.safe_load(stage.read_text()) or {}
        changed = changed_by(args[args.index(str(stage)) + 1 :], stage, configs)
        for group in ("model", "data"):
            if "class_path" not in own.get(group, {}):
                continue
            if not overridden(f"{group}.class_path", changed):
                assert printed[group]["class_path"] == own[group]["class_path"], f"{where}: {group} class lost"
            for key, value in leaves(own[group].get("init_args", {}), f"{group}.init_args", stage.parent).items():
                if overridden(key, changed):
                    continue
                got = printed
                for part in key.split("."):
                    got = got[part]
                assert got == value, f"{where}: `{command}` loses {stage.name}'s {key}={value!r} (got {got!r})"
