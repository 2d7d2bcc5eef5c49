"""The MIMIR CaiT family: class-attention image transformers, the classifier the authors released and the masked
autoencoder they pre-trained it as, and the conversion of their timm-layout files."""

from .configuration_mimir_cait import PRESETS, MimirCaitConfig
from .modeling_mimir_cait import (
    MimirCaitForImageClassification,
    MimirCaitForPreTraining,
    MimirCaitModel,
    MimirCaitPreTrainedModel,
)

__all__ = [
    "PRESETS",
    "MimirCaitConfig",
    "MimirCaitForImageClassification",
    "MimirCaitForPreTraining",
    "MimirCaitModel",
    "MimirCaitPreTrainedModel",
]
