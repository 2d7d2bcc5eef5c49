"""What a MIMIR model family declares about itself, in one record (`ModelFamily`): its name, its
`PreTrainedModel` base (which names its config and model classes), its converter of the authors' files, and the
shapes the scripts build new models of. `mimir_hf/models/__init__.py` lists
the families; the package's Auto registration, `mimir-hf convert` and the scripts' choice of class all read that
list, so adding a family is one folder and one line there (docs/architecture.md)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelFamily:
    """One model family (one folder of `mimir_hf/models`).

    Args:
        name: the folder's name and `mimir-hf convert --family`'s value ("vit", "swin", ...).
        base_class: the family's `PreTrainedModel` base. Its `config_class` is the family's config (whose `model_type`
            is the family's key in saved folders), and its `_auto_classes` name the family's classes, in the same
            module: the encoder (`AutoModel`), the classifier (`AutoModelForImageClassification`) and, where MIMIR
            pre-trains the family, the pre-training model (`AutoModelForPreTraining`; Swin has none: its recipes start
            from a converted GreenMIM checkpoint). `save_pretrained` writes the same names to `auto_map`.
        convert: the converter of the authors' files: `(state_dict, args, **config_overrides) -> Conversion`.
        presets: named shapes of new models (`--model_preset`), empty where the scripts build none.
    """

    name: str
    base_class: type
    convert: Callable
    presets: dict

    @property
    def config_class(self) -> type:
        return self.base_class.config_class

    @property
    def model_type(self) -> str:
        return self.config_class.model_type

    @property
    def model_class(self) -> type:
        return family_class(self.base_class, "AutoModel")

    @property
    def classifier_class(self) -> type:
        return family_class(self.base_class, "AutoModelForImageClassification")

    @property
    def pretraining_class(self) -> type | None:
        return family_class(self.base_class, "AutoModelForPreTraining")


def family_class(base_class: type, auto_class: str) -> type | None:
    """The class of `base_class`'s family that `auto_class` ("AutoModel", ...) builds, by the name its `_auto_classes`
    give it in `base_class`'s module; None where the family has none."""
    name = base_class._auto_classes.get(auto_class)
    return None if name is None else getattr(sys.modules[base_class.__module__], name)
