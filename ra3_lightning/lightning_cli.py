"""``RA3CLI``: Lightning's ``LightningCLI`` as every ``ra3`` stage runs it — ``ra3 fit`` and each stage of ``ra3 demo``.

Model and data are chosen by ``class_path`` (subclass mode), so a user's own subclass of any module or DataModule
plugs in from YAML, and ``--trainer.default_root_dir DIR`` moves every relative output path of the config (logs,
checkpoints, annotated traces) under ``DIR`` (:mod:`ra3_lightning.config_paths`).

Two changes to Lightning's CLI concern checkpoints. A ``--ckpt_path`` file is checked before anything is built: an
unreadable file, or a checkpoint written by another module class than the config's (Lightning would silently switch
the model class to the checkpoint's), is a :class:`~ra3_lightning.errors.CheckpointError` that names both and what to
do. And every trainer whose strategy uses Lightning's default checkpoint IO gets
:class:`~ra3_lightning.checkpoint_io.AtomicCheckpointIO`, so that a killed save never leaves a broken checkpoint.

A key that moved (:data:`MOVED_KEYS`, e.g. RLVR's ``val_generation``, now ``model.evaluation.generation``) still fails
as an unknown option, and the error names where it went (:func:`moved_key_hints`).
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any, NoReturn

import lightning as L
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from typing_extensions import override

from ra3_lightning.checkpoint_io import AtomicCheckpointIO, read_checkpoint
from ra3_lightning.config_paths import rebase_output_paths
from ra3_lightning.errors import CheckpointError

# model init_args that moved into the evaluation group: the old key -> where it is now
MOVED_KEYS = {
    "val_generation": "model.evaluation.generation (RLVR's validation / test backend)",
    "latent_format": "model.evaluation.latent_format (what evaluation counts as a rationale; the E-step modules keep "
    "model.latent_format)",
    "max_completion_length": "model.evaluation.max_completion_length (a module without a completion budget of its "
    "own, e.g. CausalLMModule in configs/eval_humaneval.yaml)",
    "reward_fn": "model.evaluation.reward_fn (how a module without a reward of its own scores its evaluation)",
}
_REJECTED = re.compile(r"Option '(\w+)[.']|unrecognized arguments:.*?--(?:model\.)?(?:init_args\.)?(\w+)")


def moved_key_hints(message: str) -> str:
    """``message`` plus, for each rejected option of :data:`MOVED_KEYS` it names, where that key is now.

    Example:
        >>> moved_key_hints("Option 'val_generation.class_path' is not accepted").splitlines()[-1]
        "  'val_generation' moved: use model.evaluation.generation (RLVR's validation / test backend)"
    """
    keys = {a or b for a, b in _REJECTED.findall(message)}
    hints = [f"  {key!r} moved: use {MOVED_KEYS[key]}" for key in sorted(keys) if key in MOVED_KEYS]
    return "\n".join([message, *(h for h in hints if h.strip() not in message)])  # nested parsers: hint once


class RA3ArgumentParser(LightningArgumentParser):
    """Lightning's parser, whose errors say where a moved key went (:func:`moved_key_hints`)."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        super().error(moved_key_hints(message), ex)


class RA3CLI(LightningCLI):
    """``LightningCLI`` with subclass mode for model and data, output paths under ``trainer.default_root_dir``, a
    checked ``--ckpt_path`` and atomic checkpoint saves."""

    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        super().__init__(
            L.LightningModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            parser_class=RA3ArgumentParser,
            args=args,
            run=run,
        )

    def before_instantiate_classes(self) -> None:
        """Relative output paths of the config are relative to ``trainer.default_root_dir`` (when it is given)."""
        rebase_output_paths(self.config[self.subcommand] if self.subcommand else self.config)

    @override
    def _parse_ckpt_path(self) -> None:
        """Lightning's (a checkpoint file's hyper-parameters become the model's config), after checking that the
        file is a readable checkpoint of the config's model class."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and Path(ckpt_path).is_file():
            hparams = read_checkpoint(ckpt_path).get("hyper_parameters") or {}
            model = self.config[subcommand].get("model")
            check_checkpoint_module(ckpt_path, hparams.get("_class_path"), getattr(model, "class_path", None))
        super()._parse_ckpt_path()

    @override
    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # Lightning's default, not a user's plugin
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer


def check_checkpoint_module(ckpt_path: str, written_by: str | None, configured: str | None) -> None:
    """Raise :class:`~ra3_lightning.errors.CheckpointError` when the checkpoint at ``ckpt_path`` was written by another
    module class than the config's (class paths; either unknown: no check)."""
    if not written_by or not configured or _import(written_by) == _import(configured):
        return
    raise CheckpointError(
        f"{ckpt_path}: written by {written_by}, but the config trains {configured}. --ckpt_path resumes a run of the "
        f"same module; to start this stage from that checkpoint's weights, give --model.init_from {ckpt_path} "
        "instead (and no --ckpt_path)"
    )


def _import(class_path: str) -> object:
    """The class at ``class_path``, or the string itself when it does not import."""
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return class_path
