"""Class names for a classifier's `id2label`: a standard set (CIFAR-10, ImageNet-1k), a JSON file, or a list.

ImageNet-1k's 1000 names ship as package data (`mimir_hf/data_files/imagenet_classes.txt`, checked against its sha256
when read): one line per class, `wnid<TAB>WordNet lemmas`, in the standard index order (the sorted wnids, as
torchvision's and RobustBench's ImageNet folders number them), taken from the data files of timm
(`timm/data/_info/imagenet_synsets.txt` and `imagenet_synset_to_lemma.txt`). Two classes share the lemma "crane"
(n02012849 the bird, n03126707 the machine); `label2id` needs distinct names, so those two carry their wnid in
brackets.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from importlib import resources

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGENET_CLASSES_FILE = "imagenet_classes.txt"
IMAGENET_CLASSES_SHA256 = "c98cf8e050b2f67f824762ebdb5bcf683adc7955382b9ff8b1c0f49548bb449b"
STANDARD_SETS = ("cifar10", "imagenet")
_FORMS = (
    "cifar10, imagenet, a .json file (a list of names, or an {index: name} mapping) or a comma-separated list of names"
)


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class names in index order (see the module docstring)."""
    data = (resources.files("mimir_hf") / "data_files" / IMAGENET_CLASSES_FILE).read_bytes()
    if hashlib.sha256(data).hexdigest() != IMAGENET_CLASSES_SHA256:
        raise ValueError(f"mimir_hf/data_files/{IMAGENET_CLASSES_FILE} is not the file mimir_hf shipped; reinstall.")
    wnids, names = zip(*(line.split("\t") for line in data.decode("utf-8").splitlines()), strict=True)
    if len(wnids) != 1000 or list(wnids) != sorted(set(wnids)):
        raise ValueError(f"{IMAGENET_CLASSES_FILE} should list the 1000 ImageNet wnids in sorted order.")
    shared = {name for name, count in Counter(names).items() if count > 1}
    return [f"{name} ({wnid})" if name in shared else name for wnid, name in zip(wnids, names, strict=True)]


def resolve_class_names(spec) -> list[str]:
    """Class names in index order from `spec`: "cifar10" or "imagenet", the path of a JSON file holding a list of
    names or an {index: name} mapping, a comma-separated string, or such a list or mapping itself. The names must be
    distinct and non-empty; anything else is a `ValueError` saying what was wrong."""
    if isinstance(spec, str):
        if spec.lower() in STANDARD_SETS:
            return list(CIFAR10_CLASSES) if spec.lower() == "cifar10" else imagenet_classes()
        if spec.endswith(".json") or os.path.isfile(spec):
            return resolve_class_names(_read_json(spec))
        if "," not in spec:
            raise ValueError(f"Label names {spec!r}: expected {_FORMS}.")
        spec = [name.strip() for name in spec.split(",")]
    if isinstance(spec, dict):
        spec = _from_mapping(spec)
    if not isinstance(spec, (list, tuple)) or not all(isinstance(name, str) and name.strip() for name in spec):
        raise ValueError(f"Label names must be non-empty strings, got {str(spec)[:200]}; give {_FORMS}.")
    repeated = sorted(name for name, count in Counter(spec).items() if count > 1)
    if repeated:
        raise ValueError(f"Label names must be distinct (label2id maps each to one class); repeated: {repeated[:5]}.")
    return list(spec)


def _read_json(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ValueError(f"No label-names file {path}; give {_FORMS}.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not a JSON file of label names ({error}); give {_FORMS}.") from None


def _from_mapping(mapping: dict) -> list[str]:
    """{index: name} (indices as ints or digit strings, e.g. a config's id2label) as a list covering 0..K-1."""
    try:
        indexed = {int(index): name for index, name in mapping.items()}
    except (TypeError, ValueError):
        raise ValueError(
            f"An {{index: name}} mapping of label names needs integer indices, got {list(mapping)[:5]}."
        ) from None
    missing = sorted(set(range(len(indexed))) - set(indexed))
    if missing:
        raise ValueError(
            f"The {{index: name}} mapping of label names must cover the indices 0..{len(indexed) - 1}; it lacks "
            f"{missing[:5]}."
        )
    return [indexed[index] for index in range(len(indexed))]


def label_config_fields(names: list[str]) -> dict:
    """`id2label` and `label2id` of a config for the class `names` (in index order)."""
    return dict(id2label=dict(enumerate(names)), label2id={name: index for index, name in enumerate(names)})


__all__ = [
    "CIFAR10_CLASSES",
    "STANDARD_SETS",
    "imagenet_classes",
    "label_config_fields",
    "resolve_class_names",
]
