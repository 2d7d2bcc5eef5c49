"""The MIMIR Swin family: transformers' Swin, adjusted to compute exactly what Microsoft's Swin code (the authors')
computes, and the conversion of the authors' Swin files."""

from .configuration_mimir_swin import PRESETS, MimirSwinConfig
from .modeling_mimir_swin import MimirSwinForImageClassification, MimirSwinModel, MimirSwinPreTrainedModel

__all__ = [
    "PRESETS",
    "MimirSwinConfig",
    "MimirSwinForImageClassification",
    "MimirSwinModel",
    "MimirSwinPreTrainedModel",
]
