"""The ``ra3`` command: Lightning's ``LightningCLI`` (fit / validate / test / predict) plus ``ra3 export``.

Model and data are chosen by ``class_path`` (subclass mode, :class:`~ra3_lightning.lightning_cli.RA3CLI`), so a
user's own subclass of any module or DataModule plugs in from YAML. ``-c configs/...`` falls back to the configs
installed with the package when the path does not exist relative to the working directory, and
``--trainer.default_root_dir DIR`` moves every relative output path of the config (logs, checkpoints, annotated
traces) under ``DIR`` (:mod:`ra3_lightning.config_paths`).

``ra3 export CKPT OUT_DIR`` writes a checkpoint's LM and tokenizer as a Hugging Face directory; ``ra3 demo`` runs the
whole synthetic-world pipeline (:mod:`ra3_lightning.pipeline`).

An unusable input — a data record, an empty corpus, an unreadable checkpoint, a ``--ckpt_path`` of another stage, an
``init_from`` that is no model — ends every subcommand with one line, ``error: <message>`` naming the file, the line
or record, the field and what to do, and exit status 1 (:mod:`ra3_lightning.errors`). ``RA3_DEBUG=1 ra3 ...`` shows
the traceback instead.
"""

from __future__ import annotations

import argparse
import sys

from ra3_lightning.config_paths import PACKAGED_CONFIGS, resolve_config_paths
from ra3_lightning.errors import exit_on_input_error
from ra3_lightning.lightning_cli import RA3CLI

__all__ = ["PACKAGED_CONFIGS", "RA3CLI", "main", "resolve_config_paths"]


def export_main(argv: list[str]) -> None:
    """``ra3 export CKPT OUT_DIR``: save a checkpoint's LM + tokenizer with ``save_pretrained``."""
    parser = argparse.ArgumentParser(prog="ra3 export", description=export_main.__doc__)
    parser.add_argument("ckpt", help="a .ckpt written by any ra3 stage (or a Hugging Face directory)")
    parser.add_argument("out_dir", help="directory to write config.json, weights and tokenizer files to")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    args = parser.parse_args(argv)
    from ra3_lightning.modules.base import load_lm_source

    model, tokenizer = load_lm_source(args.ckpt, dtype=args.dtype)
    model.save_pretrained(args.out_dir)
    tokenizer.save_pretrained(args.out_dir)
    print(f"exported {args.ckpt} -> {args.out_dir}")


def demo_main(argv: list[str]) -> None:
    """``ra3 demo [-c configs/demo/pipeline.yaml] [--seed N | --seeds A B C] [--out DIR]``: the whole pipeline and
    its report (``--seeds``: one run per seed into ``DIR/seed{S}``, then mean ± std over seeds in ``DIR``)."""
    from ra3_lightning.pipeline import main as pipeline_main

    pipeline_main(resolve_config_paths(argv))


SUBCOMMANDS = {"export": export_main, "demo": demo_main}


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``ra3``; ``argv`` defaults to the command line. An input error exits with its message alone."""
    with exit_on_input_error():
        run(argv)


def run(argv: list[str] | None = None) -> None:
    """Run the subcommand of ``argv`` (the command line by default); errors propagate."""
    if argv is None:
        if sys.argv[1:2] and sys.argv[1] in SUBCOMMANDS:
            SUBCOMMANDS[sys.argv[1]](sys.argv[2:])
            return
        sys.argv[1:] = resolve_config_paths(sys.argv[1:])
        RA3CLI()
        return
    if argv[:1] and argv[0] in SUBCOMMANDS:
        SUBCOMMANDS[argv[0]](argv[1:])
        return
    RA3CLI(args=resolve_config_paths(argv))


if __name__ == "__main__":
    main()
