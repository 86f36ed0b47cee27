"""``ExportHF``: write the trained LM and its tokenizer as a Hugging Face directory when ``fit`` ends.

The directory (``config.json``, ``model.safetensors``, tokenizer files) loads with
``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained`` and with vLLM. It holds the weights at
the end of fit (not the best checkpoint; for that, run ``ra3 export BEST.ckpt OUT``). Under FSDP2 every rank takes
part in gathering the full state dict and rank 0 writes (:meth:`CausalLMModule.export_hf`).
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from typing_extensions import override

from ra3_lightning.modules.base import CausalLMModule


class ExportHF(Callback):
    """Save ``pl_module.model`` + tokenizer with ``save_pretrained`` at the end of a successful ``fit``.

    Args:
        dirpath: Output directory; defaults to ``<trainer.log_dir>/hf_model`` (next to the TensorBoard events).
    """

    def __init__(self, dirpath: str | os.PathLike | None = None) -> None:
        self.dirpath = None if dirpath is None else Path(dirpath)
        self.last_export: Path | None = None

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not isinstance(pl_module, CausalLMModule):
            raise TypeError(
                f"ExportHF needs a CausalLMModule (it exports `self.model`), got {type(pl_module).__name__}"
            )

    def export_dir(self, trainer: L.Trainer) -> Path:
        """Where the export goes: ``dirpath`` or ``<log_dir>/hf_model`` (``<default_root_dir>`` without a logger)."""
        if self.dirpath is not None:
            return self.dirpath
        return Path(trainer.log_dir or trainer.default_root_dir) / "hf_model"

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        out = self.export_dir(trainer)  # every rank: log_dir broadcasts, export_hf gathers collectively
        written = pl_module.export_hf(out)
        if written is not None:
            self.last_export = written
            rank_zero_info(f"ExportHF: wrote {written}")
