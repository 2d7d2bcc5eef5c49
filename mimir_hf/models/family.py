"""What a MIMIR model family declares about itself, in one record (`ModelFamily`): its config and model classes, its
converter of the authors' files, and whether the scripts build new models of it. `mimir_hf/models/__init__.py` lists
the families; the package's Auto registration, `mimir-hf convert` and the scripts' choice of class all read that
list, so adding a family is one folder and one line there (docs/architecture.md)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelFamily:
    """One model family (one folder of `mimir_hf/models`).

    Args:
        name: the folder's name and `mimir-hf convert --family`'s value ("vit", "swin", ...).
        config_class: its `PretrainedConfig` (its `model_type` is the family's key in saved folders).
        model_class: the encoder (`AutoModel`).
        classifier_class: the classifier (`AutoModelForImageClassification`).
        pretraining_class: the MIMIR pre-training model (`AutoModelForPreTraining`), or None where MIMIR
            pre-training is not implemented (Swin: its recipes start from a converted GreenMIM checkpoint).
        convert: the converter of the authors' files: `(state_dict, args, **config_overrides) -> Conversion`.
        presets: named shapes of new models (`--model_preset`), empty where the scripts build none.
    """

    name: str
    config_class: type
    model_class: type
    classifier_class: type
    pretraining_class: type | None
    convert: Callable
    presets: dict

    @property
    def model_type(self) -> str:
        return self.config_class.model_type
