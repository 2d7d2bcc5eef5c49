"""The MIMIR ConViT family: vision transformers with gated positional self-attention, the classifier the authors
released and the masked autoencoder they pre-trained it as, and the conversion of their timm-layout files."""

from ..family import ModelFamily
from .configuration_mimir_convit import PRESETS, MimirConvitConfig
from .convert_convit import convert_convit_checkpoint
from .modeling_mimir_convit import (
    MimirConvitForImageClassification,
    MimirConvitForPreTraining,
    MimirConvitModel,
    MimirConvitPreTrainedModel,
)

FAMILY = ModelFamily(
    name="convit",
    base_class=MimirConvitPreTrainedModel,
    convert=convert_convit_checkpoint,
    presets=PRESETS,
)

__all__ = [
    "FAMILY",
    "PRESETS",
    "MimirConvitConfig",
    "MimirConvitForImageClassification",
    "MimirConvitForPreTraining",
    "MimirConvitModel",
    "MimirConvitPreTrainedModel",
]
