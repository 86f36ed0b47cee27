"""``RA3CLI``: Lightning's ``LightningCLI`` as every ``ra3`` stage runs it — ``ra3 fit`` and each stage of ``ra3 demo``.

Model and data are chosen by ``class_path`` (subclass mode), so a user's own subclass of any module or DataModule
plugs in from YAML, and ``--trainer.default_root_dir DIR`` moves every relative output path of the config (logs,
checkpoints, annotated traces) under ``DIR`` (:mod:`ra3_lightning.config_paths`).
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.cli import LightningCLI

from ra3_lightning.config_paths import rebase_output_paths


class RA3CLI(LightningCLI):
    """``LightningCLI`` with subclass mode for model and data and output paths under ``trainer.default_root_dir``."""

    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        super().__init__(
            L.LightningModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
        )

    def before_instantiate_classes(self) -> None:
        """Relative output paths of the config are relative to ``trainer.default_root_dir`` (when it is given)."""
        rebase_output_paths(self.config[self.subcommand] if self.subcommand else self.config)
