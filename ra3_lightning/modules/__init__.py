"""LightningModules: one per training stage, all deriving from :class:`CausalLMModule`."""

from ra3_lightning.modules.base import CausalLMModule
from ra3_lightning.modules.latent_policy import LatentPolicyModule
from ra3_lightning.modules.ntp import NTPModule
from ra3_lightning.modules.ra3 import RA3Module
from ra3_lightning.modules.rlvr import RLVRModule

__all__ = ["CausalLMModule", "LatentPolicyModule", "NTPModule", "RA3Module", "RLVRModule"]
