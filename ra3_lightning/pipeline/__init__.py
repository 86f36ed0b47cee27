"""``ra3 demo``: the one-command RA3 experiment in the synthetic code world and its report (see :mod:`.stages`)."""

from ra3_lightning.pipeline.stages import PipelineConfig, main, parse_config, run_pipeline

__all__ = ["PipelineConfig", "main", "parse_config", "run_pipeline"]
