"""The MIMIR ViT family: MAE pre-training and the mean-pooled classifier, on transformers' ViTMAE blocks."""

from .configuration_mimir import PRESETS, MimirConfig
from .modeling_mimir import MimirForImageClassification, MimirForPreTraining, MimirModel, MimirPreTrainedModel

__all__ = [
    "PRESETS",
    "MimirConfig",
    "MimirForImageClassification",
    "MimirForPreTraining",
    "MimirModel",
    "MimirPreTrainedModel",
]
