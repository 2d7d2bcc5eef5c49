"""Image-classification data through `datasets`: the Hub, an image folder, or the offline default (sklearn's digits).

Every path ends the same way: a `DatasetDict` with a `"train"` and a `"test"` split, an image column and a
`ClassLabel` label column, and a lazy transform (`with_transform`) that feeds the images through the model's image
processor (`MimirImageProcessor`): the one preprocessing path of training, evaluation and `pipeline()`. Batches are
stacked by `transformers.default_data_collator`.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, load_dataset
from PIL import Image as PILImage
from transformers import default_data_collator

from .augmentation import TrainAugmentation
from .image_processing_mimir import MimirImageProcessor

DIGITS_SEED = 0
DIGITS_TEST_FRACTION = 0.2
_IMAGE_COLUMNS = ("image", "img", "pixel_values", "picture")
_LABEL_COLUMNS = ("label", "labels", "fine_label", "class")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def load_digits_dataset() -> DatasetDict:
    """scikit-learn's handwritten digits (1,797 real 8x8 grey images, 10 classes) with a fixed stratified split.

    Shipped with scikit-learn, so it needs no network. Pixels (0..16) are scaled to 8-bit grey PIL images; the
    split (20% test, seed 0) is the same on every machine: 1,437 training and 360 test images.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = [PILImage.fromarray(np.round(image * (255 / 16)).astype(np.uint8), mode="L") for image in digits.images]
    features = Features({"image": Image(), "label": ClassLabel(names=[str(d) for d in range(10)])})
    dataset = Dataset.from_dict({"image": images, "label": digits.target.tolist()}, features=features)
    split = dataset.train_test_split(test_size=DIGITS_TEST_FRACTION, seed=DIGITS_SEED, stratify_by_column="label")
    return DatasetDict(train=split["train"], test=split["test"])


def _check_image_folder(path: str, argument: str) -> None:
    if not os.path.isdir(path):
        raise ValueError(f"{argument}={path!r} is not a directory; expected a folder of class sub-folders of images.")
    for _, _, files in os.walk(path):
        if any(name.lower().endswith(_IMAGE_SUFFIXES) for name in files):
            return
    raise ValueError(f"{argument}={path!r} holds no image files ({', '.join(_IMAGE_SUFFIXES)}).")


def load_image_dataset(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_dir: str | None = None,
    validation_dir: str | None = None,
    cache_dir: str | None = None,
    test_fraction: float = 0.15,
    seed: int = 0,
    evaluation_only: bool = False,
) -> DatasetDict:
    """A `DatasetDict` with `"train"` and `"test"`: from the Hub (or its cache), an imagefolder, or the digits default.

    A dataset without a test/validation split gets one carved out of its training split (`test_fraction`, `seed`).
    With `evaluation_only` (the robustness report), an evaluation split alone is enough (e.g. `--validation_dir` of
    ImageNet's validation folders): it then also stands as "train", which only supplies the class names.
    """
    if dataset_name is not None:
        dataset = load_dataset(dataset_name, dataset_config_name, cache_dir=cache_dir)
    elif train_dir is not None or validation_dir is not None:
        data_files = {}
        if train_dir is not None:
            _check_image_folder(train_dir, "--train_dir")
            data_files["train"] = os.path.join(train_dir, "**")
        if validation_dir is not None:
            _check_image_folder(validation_dir, "--validation_dir")
            data_files["test"] = os.path.join(validation_dir, "**")
        dataset = load_dataset("imagefolder", data_files=data_files, cache_dir=cache_dir)
    else:
        return load_digits_dataset()

    dataset = DatasetDict(dataset)
    if evaluation_only and "train" not in dataset:  # the evaluation split then also supplies the class names
        for name in ("test", "validation", "valid", "val"):
            if name in dataset:
                return DatasetDict(train=dataset[name], test=dataset[name])
    if "train" not in dataset:
        raise ValueError(f"The dataset has no 'train' split (splits: {sorted(dataset)}).")
    evaluation_split = next((name for name in ("test", "validation", "valid", "val") if name in dataset), None)
    if evaluation_split is None:
        split = dataset["train"].train_test_split(test_size=test_fraction, seed=seed)
        return DatasetDict(train=split["train"], test=split["test"])
    return DatasetDict(train=dataset["train"], test=dataset[evaluation_split])


def resolve_columns(
    dataset: Dataset, image_column: str | None = None, label_column: str | None = None
) -> tuple[str, str]:
    """The image and label column names, checked; a clear error naming `--image_column_name` / `--label_column_name`."""
    columns = dataset.column_names
    if image_column is None:
        image_column = next((name for name in _IMAGE_COLUMNS if name in columns), None)
    if image_column is None or image_column not in columns:
        raise ValueError(
            f"No image column {image_column or ''!r} in the dataset (columns: {columns}); pass --image_column_name."
        )
    if label_column is None:
        label_column = next((name for name in _LABEL_COLUMNS if name in columns), None)
    if label_column is None or label_column not in columns:
        raise ValueError(
            f"No label column {label_column or ''!r} in the dataset (columns: {columns}); pass --label_column_name."
        )
    return image_column, label_column


def label_names(dataset: Dataset, label_column: str) -> list[str]:
    """Class names from a `ClassLabel` column, or the sorted distinct values of a plain integer column."""
    feature = dataset.features[label_column]
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    values = sorted(set(dataset[label_column]))
    if values != list(range(len(values))):
        raise ValueError(f"Label column {label_column!r} must hold class indices 0..K-1 or be a ClassLabel.")
    return [str(value) for value in values]


def pixel_transform(
    image_column: str,
    label_column: str | None,
    image_processor: MimirImageProcessor,
    augmentation: TrainAugmentation | None = None,
):
    """The batch transform of `with_pixel_transform`: {image_column, label_column} -> {"pixel_values", "labels"}, with
    the training `augmentation` (if any) around the image processor. Also used for auxiliary data, so that real and
    synthetic images go through the same transform."""

    def transform(batch):
        images = batch[image_column]
        if augmentation is not None:
            images = [augmentation.augment_image(image) for image in images]
        pixel_values = list(image_processor(images=images, return_tensors="pt")["pixel_values"])
        if augmentation is not None:
            pixel_values = [augmentation.augment_tensor(image) for image in pixel_values]
        out = {"pixel_values": pixel_values}
        if label_column is not None:
            out["labels"] = batch[label_column]
        return out

    return transform


def with_pixel_transform(
    dataset: Dataset,
    image_column: str,
    label_column: str | None,
    image_processor: MimirImageProcessor,
    augmentation: TrainAugmentation | None = None,
) -> Dataset:
    """The dataset with a lazy transform yielding `pixel_values` (from `image_processor`) and `labels`; a training
    split may add a per-example `augmentation` (`mimir_hf.augmentation.AugmentationArguments.build`)."""
    return dataset.with_transform(pixel_transform(image_column, label_column, image_processor, augmentation))


def image_processor_for(config, crop_pct: float | None = None) -> MimirImageProcessor:
    """The image processor of a MIMIR model (any family): its size and channels, bicubic resize, [0, 1], no
    normalisation. With `crop_pct` (e.g. 0.875 for ImageNet models): resize the short side to size / crop_pct, then
    centre-crop to the model's size (224 px models: resize 256, crop 224).

    Normalisation happens inside the model (`config.image_mean`/`image_std`). Saved next to a model, it lets
    `pipeline("image-classification", model=folder)` feed the model exactly the pixels evaluation fed it.
    """
    size = config.image_size
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if crop_pct is None:
        return MimirImageProcessor(num_channels=config.num_channels, size={"height": height, "width": width})
    if not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}.")
    return MimirImageProcessor(
        num_channels=config.num_channels,
        size={"shortest_edge": int(round(min(height, width) / crop_pct))},
        do_center_crop=True,
        crop_size={"height": height, "width": width},
    )


def tensors(dataset: Dataset, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The first `limit` (default: all) `pixel_values` and `labels` of a transformed dataset, stacked (for small sets:
    plots, quick checks; evaluation streams through a DataLoader instead)."""
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    batch = default_data_collator([dataset[i] for i in range(len(dataset))])
    return batch["pixel_values"], batch.get("labels")


__all__ = [
    "image_processor_for",
    "label_names",
    "load_digits_dataset",
    "load_image_dataset",
    "pixel_transform",
    "resolve_columns",
    "tensors",
    "with_pixel_transform",
]
