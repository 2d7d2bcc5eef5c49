"""mimir_hf: MIMIR (masked image modelling with a mutual-information bottleneck) for adversarially robust ViTs.

Importing the package registers the MIMIR classes with transformers' Auto classes (`model_type="mimir"`).
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForPreTraining,
)

from .configuration_mimir import PRESETS, MimirConfig
from .modeling_mimir import (
    MimirForImageClassification,
    MimirForPreTraining,
    MimirModel,
    MimirPreTrainedModel,
)

__version__ = "0.1.0"

AutoConfig.register(MimirConfig.model_type, MimirConfig, exist_ok=True)
AutoModel.register(MimirConfig, MimirModel, exist_ok=True)
AutoModelForPreTraining.register(MimirConfig, MimirForPreTraining, exist_ok=True)
AutoModelForImageClassification.register(MimirConfig, MimirForImageClassification, exist_ok=True)

__all__ = [
    "PRESETS",
    "MimirConfig",
    "MimirForImageClassification",
    "MimirForPreTraining",
    "MimirModel",
    "MimirPreTrainedModel",
]
