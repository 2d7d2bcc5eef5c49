"""Image-classification data through `datasets`: the Hub, an image folder, or the offline default (sklearn's digits).

Every path ends the same way: a `DatasetDict` with a `"train"` and a `"test"` split, an image column and a
`ClassLabel` label column, and a lazy transform (`with_transform`) that turns each image into a `[C, H, W]` float
tensor in [0, 1] at the model's size. No torchvision: PIL does the resizing.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, load_dataset
from PIL import Image as PILImage

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
    split = dataset.train_test_split(
        test_size=DIGITS_TEST_FRACTION, seed=DIGITS_SEED, stratify_by_column="label"
    )
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
) -> DatasetDict:
    """A `DatasetDict` with `"train"` and `"test"`: from the Hub (or its cache), an imagefolder, or the digits default.

    A dataset without a test/validation split gets one carved out of its training split (`test_fraction`, `seed`).
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
    if "train" not in dataset:
        raise ValueError(f"The dataset has no 'train' split (splits: {sorted(dataset)}).")
    evaluation_split = next((name for name in ("test", "validation", "valid", "val") if name in dataset), None)
    if evaluation_split is None:
        split = dataset["train"].train_test_split(test_size=test_fraction, seed=seed)
        return DatasetDict(train=split["train"], test=split["test"])
    return DatasetDict(train=dataset["train"], test=dataset[evaluation_split])


def resolve_columns(dataset: Dataset, image_column: str | None = None, label_column: str | None = None) -> tuple[str, str]:
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


def to_pixel_values(image, image_size: tuple[int, int], num_channels: int) -> torch.Tensor:
    """A PIL image (or array) -> `[C, H, W]` float tensor in [0, 1], resized bicubically to `image_size` (H, W)."""
    if not isinstance(image, PILImage.Image):
        image = PILImage.fromarray(np.asarray(image))
    image = image.convert("L" if num_channels == 1 else "RGB")
    height, width = image_size
    if image.size != (width, height):
        image = image.resize((width, height), PILImage.Resampling.BICUBIC)
    array = np.asarray(image, dtype=np.float32) / 255.0
    tensor = torch.from_numpy(array)
    return tensor[None] if tensor.dim() == 2 else tensor.permute(2, 0, 1).contiguous()


def with_pixel_transform(
    dataset: Dataset, image_column: str, label_column: str | None, image_size: tuple[int, int], num_channels: int
) -> Dataset:
    """The dataset with a lazy transform yielding `pixel_values` (and `labels`)."""

    def transform(batch):
        out = {"pixel_values": [to_pixel_values(image, image_size, num_channels) for image in batch[image_column]]}
        if label_column is not None:
            out["labels"] = batch[label_column]
        return out

    return dataset.with_transform(transform)


def image_processor_for(config) -> MimirImageProcessor:
    """The image processor of a MIMIR model: its size and channels, bicubic resize, [0, 1], no normalisation.

    Normalisation happens inside the model (`config.image_mean`/`image_std`). Saved next to a model, it lets
    `pipeline("image-classification", model=folder)` feed the model exactly the pixels training fed it.
    """
    height, width = config.image_size_hw
    return MimirImageProcessor(num_channels=config.num_channels, size={"height": height, "width": width})


def collate_fn(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Stack `pixel_values` (and `labels`, when present) into a batch."""
    batch = {"pixel_values": torch.stack([example["pixel_values"] for example in examples])}
    if "labels" in examples[0]:
        batch["labels"] = torch.tensor([int(example["labels"]) for example in examples])
    return batch


def tensors(dataset: Dataset, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """All (or the first `limit`) `pixel_values` and `labels` of a transformed dataset, stacked."""
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    batch = collate_fn([dataset[i] for i in range(len(dataset))])
    return batch["pixel_values"], batch["labels"]


__all__ = [
    "collate_fn",
    "image_processor_for",
    "label_names",
    "load_digits_dataset",
    "load_image_dataset",
    "resolve_columns",
    "tensors",
    "to_pixel_values",
    "with_pixel_transform",
]
