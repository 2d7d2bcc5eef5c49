"""The MIMIR ConViT family: vision transformers with gated positional self-attention, the classifier the authors
released and the masked autoencoder they pre-trained it as, and the conversion of their timm-layout files."""

from .configuration_mimir_convit import PRESETS, MimirConvitConfig
from .modeling_mimir_convit import (
    MimirConvitForImageClassification,
    MimirConvitForPreTraining,
    MimirConvitModel,
    MimirConvitPreTrainedModel,
)

__all__ = [
    "PRESETS",
    "MimirConvitConfig",
    "MimirConvitForImageClassification",
    "MimirConvitForPreTraining",
    "MimirConvitModel",
    "MimirConvitPreTrainedModel",
]
