"""The MIMIR ViT family: MAE pre-training and the mean-pooled classifier, on transformers' ViTMAE blocks."""

from ..family import ModelFamily
from .configuration_mimir import PRESETS, MimirConfig
from .convert_vit import convert_vit_state_dict
from .modeling_mimir import MimirForImageClassification, MimirForPreTraining, MimirModel, MimirPreTrainedModel

FAMILY = ModelFamily(
    name="vit",
    base_class=MimirPreTrainedModel,
    convert=convert_vit_state_dict,
    presets=PRESETS,
)

__all__ = [
    "FAMILY",
    "PRESETS",
    "MimirConfig",
    "MimirForImageClassification",
    "MimirForPreTraining",
    "MimirModel",
    "MimirPreTrainedModel",
]
