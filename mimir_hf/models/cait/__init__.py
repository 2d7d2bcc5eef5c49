"""The MIMIR CaiT family: class-attention image transformers, the classifier the authors released and the masked
autoencoder they pre-trained it as, and the conversion of their timm-layout files."""

from ..family import ModelFamily
from .configuration_mimir_cait import PRESETS, MimirCaitConfig
from .convert_cait import convert_cait_checkpoint
from .modeling_mimir_cait import (
    MimirCaitForImageClassification,
    MimirCaitForPreTraining,
    MimirCaitModel,
    MimirCaitPreTrainedModel,
)

FAMILY = ModelFamily(
    name="cait",
    base_class=MimirCaitPreTrainedModel,
    convert=convert_cait_checkpoint,
    presets=PRESETS,
)

__all__ = [
    "FAMILY",
    "PRESETS",
    "MimirCaitConfig",
    "MimirCaitForImageClassification",
    "MimirCaitForPreTraining",
    "MimirCaitModel",
    "MimirCaitPreTrainedModel",
]
