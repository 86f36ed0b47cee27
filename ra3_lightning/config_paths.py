"""Where configs are found and where a run writes.

* ``-c configs/...`` falls back to the configs installed with the package (:data:`PACKAGED_CONFIGS`) when the path
  does not exist relative to the working directory (:func:`resolve_config_paths`).
* One knob decides where a run writes: every *relative* output path in a config (:data:`OUTPUT_PATHS`: the logger's
  ``save_dir``, a callback's ``dirpath``, the module's ``work_dir`` and ``samples_path``) is relative to
  ``trainer.default_root_dir`` (default: the working directory), so ``--trainer.default_root_dir /runs/a`` moves
  logs, checkpoints and annotated traces together (:func:`rebase_output_paths`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any


def _packaged_configs() -> Path:
    """``ra3_lightning/configs`` of an installed wheel, or the checkout's ``configs/`` in an editable install."""
    spec = importlib.util.find_spec("ra3_lightning.configs")
    locations = list(spec.submodule_search_locations or []) if spec else []
    return Path(locations[0]) if locations else Path(__file__).resolve().parents[1] / "configs"


PACKAGED_CONFIGS = _packaged_configs()

# (section, field) of every output path a config may hold; sections hold one class_path/init_args node or a list
OUTPUT_PATHS = (
    ("logger", "save_dir"),
    ("callbacks", "dirpath"),
    ("model", "work_dir"),
    ("model", "evaluation.samples_path"),
)


def resolve_config_paths(argv: list[str]) -> list[str]:
    """Rewrite ``-c/--config PATH`` to the packaged copy when ``PATH`` does not exist but ``configs/PATH`` does."""
    out = list(argv)
    for i, arg in enumerate(out[:-1]):
        if arg in ("-c", "--config") and not Path(out[i + 1]).exists():
            rel = Path(out[i + 1])
            rel = rel.relative_to("configs") if rel.parts[:1] == ("configs",) else rel
            if (PACKAGED_CONFIGS / rel).exists():
                out[i + 1] = str(PACKAGED_CONFIGS / rel)
    return out


def rebase_output_paths(config: Any) -> None:
    """Prefix the relative output paths of a parsed LightningCLI ``config`` with ``trainer.default_root_dir``.

    Absolute paths and an unset root are left alone. ``config`` is the jsonargparse namespace of one subcommand.
    """
    root = config.trainer.get("default_root_dir")
    if not root:
        return
    sections = {"logger": config.trainer.get("logger"), "callbacks": config.trainer.get("callbacks"),
                "model": config.get("model")}  # fmt: skip
    for section, field in OUTPUT_PATHS:
        for node in _nodes(sections[section]):
            args = node.get("init_args")
            value = args.get(field) if args is not None else None
            if isinstance(value, str) and value and not Path(value).is_absolute():
                args[field] = str(Path(root) / value)


def _nodes(section: Any) -> list[Any]:
    """The class_path/init_args nodes of a config section (one node, a list of them, or none)."""
    items = section if isinstance(section, list) else [section]
    return [item for item in items if hasattr(item, "get") and item.get("class_path")]
