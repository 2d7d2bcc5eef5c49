"""Published evaluation subsets: RobustBench's 5000 ImageNet validation images, selected by file name.

RobustBench evaluates ImageNet models on a fixed list of 5000 validation images (`helper_files/
imagenet_test_image_ids.txt`, unchanged since 2022; the authors' MIMIR and ARES code ship byte-identical copies).
mimir_hf ships the list as package data (`mimir_hf/data_files/`, checked against its sha256 when read) and selects
those images, in the list's order, from an ImageNet validation split: an image folder with one folder per wnid
(`--validation_dir`) or a Hub dataset whose image column keeps the original file names. Labels are the dataset's
own: for an image folder, the index of the wnid folder among all sorted folders, as RobustBench's loader does, so
the folder must hold all 1000 classes (checked).
"""

from __future__ import annotations

import hashlib
import os
from importlib import resources

import pyarrow.compute as pc
from datasets import ClassLabel, Dataset, Image

ROBUSTBENCH_IMAGENET_5000 = "robustbench-imagenet-5000"
SUBSETS = {
    # name: (package file, sha256 of its bytes, number of images)
    ROBUSTBENCH_IMAGENET_5000: (
        "imagenet_test_image_ids.txt",
        "d4121626d07722a0126c35b1563042e46a546f1a05ce705f2cdc635896d58574",
        5000,
    ),
}


def subset_ids(name: str) -> list[str]:
    """The relative paths (`<wnid>/ILSVRC2012_val_<8 digits>.JPEG`) of a published subset, in its order."""
    if name not in SUBSETS:
        raise ValueError(f"Unknown evaluation subset {name!r}; choose one of {sorted(SUBSETS)}.")
    filename, digest, count = SUBSETS[name]
    data = (resources.files("mimir_hf") / "data_files" / filename).read_bytes()
    if hashlib.sha256(data).hexdigest() != digest:
        raise ValueError(f"mimir_hf/data_files/{filename} is not the published file (sha256 differs); reinstall.")
    ids = data.decode("utf-8").split("\n")
    if len(ids) != count or len(set(ids)) != count:
        raise ValueError(f"{filename} should list {count} distinct images, got {len(ids)}.")
    return ids


def _file_names(dataset: Dataset, image_column: str) -> list[str]:
    """The base file name of every image of `dataset`, read from Arrow without decoding (or copying) any image."""
    plain = dataset.cast_column(image_column, Image(decode=False)).select_columns([image_column])
    names = []
    for batch in plain.with_format("arrow").iter(batch_size=4096):
        paths = pc.struct_field(batch.column(image_column), "path").to_pylist()
        names += [os.path.basename(path) if path else "" for path in paths]
    return names


def select_subset(dataset: Dataset, image_column: str, label_column: str, name: str) -> Dataset:
    """The images of the published subset `name` from an ImageNet validation split, in the subset's order.

    A `ValueError` names what is missing: images not in the split (by file name), a wnid folder holding an image of
    another class, or an image folder with fewer than 1000 class folders (whose label indices would not be ImageNet's).
    """
    ids = subset_ids(name)
    position = {}
    for index, file_name in enumerate(_file_names(dataset, image_column)):
        position.setdefault(file_name, index)
    missing = [i for i in ids if os.path.basename(i) not in position]
    if missing:
        raise ValueError(
            f"{len(missing)} of the {len(ids)} images of {name} are not in the evaluation split (e.g. {missing[:3]}); "
            "it must be the ImageNet validation set (an image folder with one folder per wnid, or a Hub dataset that "
            "keeps the original file names)."
        )
    indices = [position[os.path.basename(i)] for i in ids]
    feature = dataset.features[label_column]
    names = feature.names if isinstance(feature, ClassLabel) else None
    if names and all(n.startswith("n") and n[1:].isdigit() for n in names):  # wnid folders: check classes and labels
        if len(names) != 1000:
            raise ValueError(
                f"The evaluation folder has {len(names)} class folders; {name} needs all 1000 ImageNet wnid folders, "
                "so that label indices are ImageNet's (the sorted wnids), as RobustBench's loader requires."
            )
        labels = dataset.select_columns([label_column]).select(indices)[label_column]
        wrong = [i for i, label in zip(ids, labels, strict=True) if names[label] != i.split("/")[0]]
        if wrong:
            raise ValueError(f"{len(wrong)} images of {name} are filed under another wnid (e.g. {wrong[:3]}).")
    return dataset.select(indices)


__all__ = ["ROBUSTBENCH_IMAGENET_5000", "SUBSETS", "select_subset", "subset_ids"]
