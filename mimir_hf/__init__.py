"""mimir_hf: MIMIR (masked image modelling with a mutual-information bottleneck) for adversarially robust ViTs.

Importing the package registers the MIMIR classes with transformers' Auto classes (`model_type="mimir"`).
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForPreTraining,
)

from .configuration_mimir import PRESETS, MimirConfig
from .image_processing_mimir import MimirImageProcessor
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
AutoImageProcessor.register(MimirConfig, slow_image_processor_class=MimirImageProcessor, exist_ok=True)

__all__ = [
    "PRESETS",
    "MimirConfig",
    "MimirImageProcessor",
    "MimirForImageClassification",
    "MimirForPreTraining",
    "MimirModel",
    "MimirPreTrainedModel",
]
