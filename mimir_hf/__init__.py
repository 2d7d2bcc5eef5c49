"""mimir_hf: MIMIR (masked image modelling with a mutual-information bottleneck) for adversarially robust ViTs.

Importing the package registers every MIMIR model family with transformers' Auto classes: `model_type="mimir"` (ViT,
`mimir_hf/models/vit`), `"mimir_swin"` (Swin, `mimir_hf/models/swin`), `"mimir_cait"` (CaiT, `mimir_hf/models/cait`)
and `"mimir_convit"` (ConViT, `mimir_hf/models/convit`).
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForPreTraining,
)

from .image_processing_mimir import MimirImageProcessor
from .models.cait import MimirCaitConfig, MimirCaitForImageClassification, MimirCaitForPreTraining, MimirCaitModel
from .models.convit import (
    MimirConvitConfig,
    MimirConvitForImageClassification,
    MimirConvitForPreTraining,
    MimirConvitModel,
)
from .models.swin import MimirSwinConfig, MimirSwinForImageClassification, MimirSwinModel
from .models.vit import (
    PRESETS,
    MimirConfig,
    MimirForImageClassification,
    MimirForPreTraining,
    MimirModel,
    MimirPreTrainedModel,
)
from .threat_model import AttackBudget

__version__ = "0.2.0"

AutoConfig.register(MimirConfig.model_type, MimirConfig, exist_ok=True)
AutoModel.register(MimirConfig, MimirModel, exist_ok=True)
AutoModelForPreTraining.register(MimirConfig, MimirForPreTraining, exist_ok=True)
AutoModelForImageClassification.register(MimirConfig, MimirForImageClassification, exist_ok=True)
AutoImageProcessor.register(MimirConfig, slow_image_processor_class=MimirImageProcessor, exist_ok=True)

AutoConfig.register(MimirSwinConfig.model_type, MimirSwinConfig, exist_ok=True)
AutoModel.register(MimirSwinConfig, MimirSwinModel, exist_ok=True)
AutoModelForImageClassification.register(MimirSwinConfig, MimirSwinForImageClassification, exist_ok=True)
AutoImageProcessor.register(MimirSwinConfig, slow_image_processor_class=MimirImageProcessor, exist_ok=True)

AutoConfig.register(MimirCaitConfig.model_type, MimirCaitConfig, exist_ok=True)
AutoModel.register(MimirCaitConfig, MimirCaitModel, exist_ok=True)
AutoModelForPreTraining.register(MimirCaitConfig, MimirCaitForPreTraining, exist_ok=True)
AutoModelForImageClassification.register(MimirCaitConfig, MimirCaitForImageClassification, exist_ok=True)
AutoImageProcessor.register(MimirCaitConfig, slow_image_processor_class=MimirImageProcessor, exist_ok=True)

AutoConfig.register(MimirConvitConfig.model_type, MimirConvitConfig, exist_ok=True)
AutoModel.register(MimirConvitConfig, MimirConvitModel, exist_ok=True)
AutoModelForPreTraining.register(MimirConvitConfig, MimirConvitForPreTraining, exist_ok=True)
AutoModelForImageClassification.register(MimirConvitConfig, MimirConvitForImageClassification, exist_ok=True)
AutoImageProcessor.register(MimirConvitConfig, slow_image_processor_class=MimirImageProcessor, exist_ok=True)

__all__ = [
    "PRESETS",
    "AttackBudget",
    "MimirCaitConfig",
    "MimirCaitForImageClassification",
    "MimirCaitForPreTraining",
    "MimirCaitModel",
    "MimirConfig",
    "MimirConvitConfig",
    "MimirConvitForImageClassification",
    "MimirConvitForPreTraining",
    "MimirConvitModel",
    "MimirForImageClassification",
    "MimirForPreTraining",
    "MimirImageProcessor",
    "MimirModel",
    "MimirPreTrainedModel",
    "MimirSwinConfig",
    "MimirSwinForImageClassification",
    "MimirSwinModel",
]
