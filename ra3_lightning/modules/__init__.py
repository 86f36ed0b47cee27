"""LightningModules: one per training stage, all deriving from :class:`CausalLMModule`."""

from ra3_lightning.modules.base import CausalLMModule

__all__ = ["CausalLMModule"]
