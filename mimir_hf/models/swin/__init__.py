"""The MIMIR Swin family: transformers' Swin, adjusted to compute exactly what Microsoft's Swin code (the authors')
computes, and the conversion of the authors' Swin files."""

from ..family import ModelFamily
from .configuration_mimir_swin import PRESETS, MimirSwinConfig
from .convert_swin import convert_swin_checkpoint
from .modeling_mimir_swin import MimirSwinForImageClassification, MimirSwinModel, MimirSwinPreTrainedModel

FAMILY = ModelFamily(
    name="swin",
    base_class=MimirSwinPreTrainedModel,
    convert=convert_swin_checkpoint,
    presets={},
)

__all__ = [
    "FAMILY",
    "PRESETS",
    "MimirSwinConfig",
    "MimirSwinForImageClassification",
    "MimirSwinModel",
    "MimirSwinPreTrainedModel",
]
