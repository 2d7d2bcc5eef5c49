"""mimir_hf: MIMIR (masked image modelling with a mutual-information bottleneck) for adversarially robust ViTs.

Importing the package registers every MIMIR model family of `mimir_hf.models.FAMILIES` with transformers' Auto
classes: `model_type="mimir"` (ViT, `mimir_hf/models/vit`), `"mimir_swin"` (Swin, `mimir_hf/models/swin`),
`"mimir_cait"` (CaiT, `mimir_hf/models/cait`) and `"mimir_convit"` (ConViT, `mimir_hf/models/convit`).
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForPreTraining,
)

from .image_processing_mimir import MimirImageProcessor
from .models import FAMILIES
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

for _family in FAMILIES.values():
    AutoConfig.register(_family.model_type, _family.config_class, exist_ok=True)
    AutoModel.register(_family.config_class, _family.model_class, exist_ok=True)
    AutoModelForImageClassification.register(_family.config_class, _family.classifier_class, exist_ok=True)
    if _family.pretraining_class is not None:
        AutoModelForPreTraining.register(_family.config_class, _family.pretraining_class, exist_ok=True)
    AutoImageProcessor.register(_family.config_class, slow_image_processor_class=MimirImageProcessor, exist_ok=True)

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
