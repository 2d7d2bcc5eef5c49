"""MIMIR model families, one folder each (configuration, modelling, conversion), as in transformers.

`FAMILIES` is the one list of them: the package registers each with transformers' Auto classes, `mimir-hf convert`
dispatches on it, and the scripts pick their classes from it. A new family is a folder whose `__init__.py` defines its
`FAMILY` (`family.ModelFamily`) and one line below.
"""

from __future__ import annotations

from . import cait, convit, swin, vit
from .family import ModelFamily

FAMILIES: dict[str, ModelFamily] = {
    family.name: family for family in (vit.FAMILY, swin.FAMILY, cait.FAMILY, convit.FAMILY)
}  # fmt: skip


def family_of(model_type: str | None) -> ModelFamily | None:
    """The family whose configs have this `model_type` ("mimir", "mimir_swin", ...), or None."""
    return next((family for family in FAMILIES.values() if family.model_type == model_type), None)


__all__ = ["FAMILIES", "ModelFamily", "family_of"]
