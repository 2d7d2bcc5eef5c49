"""Image-classification data through `datasets`: the Hub, an image folder, or the offline default (sklearn's digits).

Every path ends the same way: a `DatasetDict` with a `"train"` and a `"test"` split, an image column and a
`ClassLabel` label column, and a lazy transform (`with_transform`) that feeds the images through the model's image
processor (`MimirImageProcessor`): the one preprocessing path of training, evaluation and `pipeline()`. A training
split without augmentation gives the same tensors every epoch, so a run in one process without DataLoader workers
computes up to `PREPARED_MEMORY_LIMIT` bytes of them once through that transform and holds them in memory
(`prepared_in_memory`). Batches are stacked by `transformers.default_data_collator`.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import os

import numpy as np
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, load_dataset, load_dataset_builder
from datasets.data_files import DataFilesList
from PIL import Image as PILImage
from transformers import default_data_collator

from .augmentation import TrainAugmentation
from .hub import check_hub_answers
from .image_processing_mimir import MimirImageProcessor, carried_preprocessing, image_tensors, saved_image_processor

DIGITS_SEED = 0
DIGITS_TEST_FRACTION = 0.2
_IMAGE_COLUMNS = ("image", "img", "pixel_values", "picture")
_LABEL_COLUMNS = ("label", "labels", "fine_label", "class")
# imagefolder's metadata files (a `file_name` column and more, e.g. labels): kept with the images.
_METADATA_FILES = ("metadata.csv", "metadata.jsonl", "metadata.parquet")
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


def folder_images(path: str, argument: str) -> list[str]:
    """The image files of an image folder, as `datasets`' imagefolder would take them: every file with an image
    suffix below `path` (hidden files and folders left out), and imagefolder's `metadata.csv` / `.jsonl` / `.parquet`.
    Other files (`notes.txt`, `.DS_Store`, `labels.csv`) are skipped with one log line giving their count, so that
    they neither fail the run nor take the class labels away (imagefolder would read any `.csv` as metadata). A
    `ValueError` for a folder that is not one or holds no image."""
    if not os.path.isdir(path):
        raise ValueError(
            f"{argument}={path!r} is not a directory; expected a folder of images (in one sub-folder per class for "
            "classification)."
        )
    images, others = [], []
    for folder, subfolders, files in os.walk(path):
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        for name in sorted(files):
            kept = (name.lower().endswith(_IMAGE_SUFFIXES) and not name.startswith(".")) or name in _METADATA_FILES
            (images if kept else others).append(os.path.join(folder, name))
    if not images:
        raise ValueError(f"{argument}={path!r} holds no image files ({', '.join(_IMAGE_SUFFIXES)}).")
    check_metadata_files(images, argument)
    if others:
        shown = ", ".join(os.path.relpath(other, path) for other in others[:5]) + (", ..." if len(others) > 5 else "")
        logging.getLogger("mimir_hf.data").info(
            f"{argument}: skipped {len(others)} file(s) that are not images ({shown})."
        )
    return images


def _metadata_rows(path: str) -> list[dict]:
    """The rows of an imagefolder metadata file (`.csv`, `.jsonl` or `.parquet`), as dicts."""
    if path.endswith(".csv"):
        with open(path, newline="", encoding="utf-8-sig") as f:  # a spreadsheet's byte-order mark, as pandas reads
            reader = csv.DictReader(f)
            return list(reader) if reader.fieldnames else []
    if path.endswith(".jsonl"):
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    import pyarrow.parquet

    return pyarrow.parquet.read_table(path).to_pylist()


def files_as_they_are(paths: list[str]) -> DataFilesList:
    """`paths` for `load_dataset(data_files=...)` as files, not patterns. `datasets` resolves every entry of a plain
    list as a glob pattern: a name with * ? [ ] (run[1]/, img*0.png) would match other files or none, and each entry
    costs a search (an escaped name under a big tree: seconds per hundred files). A `DataFilesList` is taken as it
    is; it carries what `datasets` itself records of a local file (its modification time), so its cache is keyed
    as before."""
    paths = [os.path.abspath(path) for path in paths]
    times = []
    for path in paths:
        try:
            times.append((str(os.stat(path).st_mtime),))
        except OSError as error:
            raise ValueError(
                f"{path} cannot be read ({error.strerror}): a broken link, or a file removed while the folder was "
                "read; remove it or restore what it points to."
            ) from None
    return DataFilesList(paths, times)


def check_metadata_files(files: list[str], argument: str) -> None:
    """Refuse an imagefolder metadata file that would silently change the dataset: one that cannot be read, has no
    `file_name` column or no row, names an image that is not there, or leaves out images of its folder (imagefolder
    keeps only the images its metadata lists). Each `ValueError` names the file and what to do."""
    metadata = [path for path in files if os.path.basename(path) in _METADATA_FILES]
    folders = {os.path.dirname(path) for path in metadata}
    for path in metadata:
        folder = os.path.dirname(path)
        fix = f"list every image of {folder} in it (column file_name, paths relative to it), or remove it"
        try:
            rows = _metadata_rows(path)
        except (OSError, ValueError, UnicodeDecodeError) as error:
            raise ValueError(f"{argument}: the metadata file {path} cannot be read ({error}); {fix}.") from None
        columns = set(rows[0]) if rows and isinstance(rows[0], dict) else set()
        if "file_name" not in columns and any(c.endswith(("_file_name", "file_names")) for c in columns):
            continue  # several images per row (imagefolder's *_file_name / file_names columns): imagefolder's to read
        if "file_name" not in columns:
            found = "no row" if not rows else "no file_name column"
            raise ValueError(
                f"{argument}: the metadata file {path} has {found}; imagefolder takes the images and their labels "
                f"from it (file_name, then e.g. label): {fix}, to take the labels from the class folders."
            )
        if not all(isinstance(row, dict) and row.get("file_name") for row in rows):
            raise ValueError(f"{argument}: the metadata file {path} has a row without a file_name; {fix}.")
        names = [os.path.normpath(os.path.join(folder, str(row["file_name"]).replace("\\", "/"))) for row in rows]
        listed = set(names)
        if len(listed) < len(names):  # imagefolder makes one example per row: a repeated image, in train and test
            raise ValueError(f"{argument}: the metadata file {path} lists an image twice; {fix}.")
        images = {
            os.path.normpath(image) for image in files
            if image not in metadata and _nearest(os.path.dirname(image), folders) == folder
        }  # fmt: skip
        for names, problem in ((listed - images, "names files that are not images there"),
                               (images - listed, "leaves out images, which the dataset would lose")):  # fmt: skip
            if names:
                shown = ", ".join(os.path.relpath(name, folder) for name in sorted(names)[:5])
                more = f" and {len(names) - 5} more" if len(names) > 5 else ""
                raise ValueError(f"{argument}: the metadata file {path} {problem} ({shown}{more}); {fix}.")

    uncovered = [image for image in files if metadata and _nearest(os.path.dirname(image), folders) is None]
    if uncovered:  # imagefolder keeps only listed images once any metadata file exists
        shown = ", ".join(sorted(uncovered)[:3])
        raise ValueError(
            f"{argument}: {metadata[0]} is a metadata file, and no metadata file covers {len(uncovered)} image(s) "
            f"({shown}), which the dataset would lose; put one metadata file at the top listing every image, or "
            "remove the metadata files."
        )


def check_metadata_in_every_split(data_files: dict[str, list[str]], train_dir: str | None, validation_dir: str | None):
    """Refuse a metadata file in one split's folder and none in the other's: imagefolder then takes every split's
    images from metadata files, so the split without one would hold no image (datasets: 'Instruction "test"
    corresponds to no data!')."""
    if len(data_files) < 2:
        return
    metadata = {
        split: [p for p in paths if os.path.basename(p) in _METADATA_FILES] for split, paths in data_files.items()
    }
    if all(metadata.values()) or not any(metadata.values()):
        return
    with_it, without = ("train", "test") if metadata["train"] else ("test", "train")
    flags, folders = {"train": "--train_dir", "test": "--validation_dir"}, {"train": train_dir, "test": validation_dir}
    has, lacks, folder = flags[with_it], flags[without], folders[without]
    raise ValueError(
        f"{has} has a metadata file ({metadata[with_it][0]}) and {lacks}={folder!r} has none: imagefolder would read "
        f"both splits' images and labels from metadata files and find none for {lacks}. Give {folder} a "
        f"{os.path.basename(metadata[with_it][0])} too (column file_name, then the label), or remove the metadata "
        "file to take both splits' labels from their class folders."
    )


def _nearest(folder: str, candidates: set[str]) -> str | None:
    """The deepest of `candidates` that is `folder` or one of its parents (whose metadata file covers it), or None."""
    while True:
        if folder in candidates:
            return folder
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent


def folder_layout(path: str, argument: str) -> str | None:
    """Why an image folder gives no class labels, in words, or None when it has at least two class folders (or an
    imagefolder metadata file, whose columns may hold the labels)."""
    if any(name in _METADATA_FILES for name in os.listdir(path)):
        return None
    classes = sorted(
        name for name in os.listdir(path) if os.path.isdir(os.path.join(path, name)) and not name.startswith(".")
    )
    loose = [name for name in os.listdir(path) if name.lower().endswith(_IMAGE_SUFFIXES)]
    expected = f"expected one sub-folder per class, at least two: {argument}/<class name>/<image>"
    if loose:
        return f"{argument}={path!r} holds {len(loose)} image(s) directly, not in class folders; {expected}"
    if len(classes) < 2:
        found = f"only the class folder {classes[0]!r}" if classes else "no class folder"
        return f"{argument}={path!r} has {found}; {expected}"
    return None


_EVALUATION_SPLITS = ("test", "validation", "valid", "val")  # the first one a dataset has is evaluated


def load_image_dataset(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_dir: str | None = None,
    validation_dir: str | None = None,
    cache_dir: str | None = None,
    test_fraction: float = 0.15,
    seed: int = 0,
    require_train: bool = True,
    eval_split: str | None = None,
) -> DatasetDict:
    """A `DatasetDict` with `"train"` and `"test"`: from the Hub (or its cache), an imagefolder, or the digits default.

    A dataset without a test/validation split gets one carved out of its training split (`test_fraction`, `seed`;
    the share is logged), or none with `test_fraction=0`.
    With `require_train=False` (evaluation), a dataset with only an evaluation split (e.g. `--validation_dir` alone)
    gives a `DatasetDict` with just `"test"`. A Hub dataset made of data files (parquet, image folders: most of them)
    is downloaded only for the splits used: the evaluation split alone for an evaluation, not ImageNet's 140 GB of
    training images (`load_dataset(..., split=...)` would still fetch every split). A subset of splits is prepared
    in a cache folder of its own: a dataset once loaded whole is prepared again for an evaluation-only run. The
    evaluation split is `eval_split`, or the first of "test", "validation", "valid", "val" the dataset has
    (ImageNet-1k's "test" is unlabelled: evaluate it with `eval_split="validation"`).
    """
    if eval_split is not None and dataset_name is None:
        raise ValueError(
            f"An evaluation split name ({eval_split!r}) chooses among a Hub dataset's splits; image folders and the "
            "digits have one evaluation split (--validation_dir, or the digits' fixed test split)."
        )
    if dataset_name is not None:
        check_hub_answers(dataset_name)  # seconds, not minutes of retries, when the Hub does not answer
        dataset = _load_used_splits(dataset_name, dataset_config_name, cache_dir, require_train, eval_split)
    elif train_dir is not None or validation_dir is not None:
        data_files = {}
        if train_dir is not None:
            data_files["train"] = folder_images(train_dir, "--train_dir")
        if validation_dir is not None:
            data_files["test"] = folder_images(validation_dir, "--validation_dir")
        check_metadata_in_every_split(data_files, train_dir, validation_dir)
        data_files = {split: files_as_they_are(paths) for split, paths in data_files.items()}
        # imagefolder infers labels only when every image of every split lies at one path depth: a --validation_dir
        # elsewhere (/data/train, /data/other/val) would lose both splits' labels. Folders laid out by class keep them.
        folders = [path for path in (train_dir, validation_dir) if path is not None]
        by_class = all(
            folder_layout(path, "") is None and not set(os.listdir(path)) & set(_METADATA_FILES) for path in folders
        )
        labels = {"drop_labels": False} if by_class else {}
        dataset = load_dataset("imagefolder", data_files=data_files, cache_dir=cache_dir, **labels)
    else:
        return load_digits_dataset()

    dataset = DatasetDict(dataset)
    if eval_split is not None and eval_split not in dataset:
        raise ValueError(f"The dataset has no split {eval_split!r} to evaluate on (splits: {sorted(dataset)}).")
    evaluation_split = eval_split or next((name for name in _EVALUATION_SPLITS if name in dataset), None)
    if "train" not in dataset:
        if evaluation_split is not None and not require_train:
            return DatasetDict(test=dataset[evaluation_split])
        raise ValueError(f"The dataset has no 'train' split (splits: {sorted(dataset)}); pass --train_dir.")
    if evaluation_split is None:
        return _hold_out(dataset["train"], test_fraction, seed, require_train)
    return DatasetDict(train=dataset["train"], test=dataset[evaluation_split])


def _hold_out(train: Dataset, fraction: float, seed: int, require_train: bool) -> DatasetDict:
    """`train` split into training and evaluation images (`fraction` held out, said in one log line), or kept whole
    with `fraction` 0 (no evaluation split then)."""
    logger = logging.getLogger("mimir_hf.data")
    if fraction == 0:
        logger.info(f"The dataset has no evaluation split; all {len(train)} images are training images.")
        return DatasetDict(train=train)
    held_out = int(np.ceil(fraction * len(train)))  # what train_test_split holds out
    if not 0 < held_out < len(train):
        raise ValueError(
            f"The dataset has no evaluation split and {len(train)} image(s): holding out {fraction:.0%} of them for "
            "evaluation leaves no image to train on. Give more images, an evaluation split (--validation_dir), or "
            "--train_val_split 0 (pre-training only)."
        )
    split = train.train_test_split(test_size=fraction, seed=seed)
    logger.warning(
        f"The dataset has no evaluation split: {len(split['test'])} of its {len(train)} images ({fraction:.0%}, seed "
        f"{seed}) are held out for evaluation and {len(split['train'])} are trained on. Give an evaluation split "
        "(--validation_dir, or a dataset with one) or set --train_val_split (0: train on every image; pre-training "
        "only) to change this."
    )
    return DatasetDict(train=split["train"], test=split["test"])


def _load_used_splits(
    name: str, config_name: str | None, cache_dir: str | None, require_train: bool, eval_split: str | None
):
    """The splits `load_image_dataset` uses (train and the evaluation split; the evaluation split alone when no
    training split is needed), fetching only their files when the dataset is made of data files; every split
    otherwise (a dataset with a loading script)."""
    files = load_dataset_builder(name, config_name, cache_dir=cache_dir).config.data_files
    if not files:
        return load_dataset(name, config_name, cache_dir=cache_dir)
    if eval_split is not None and eval_split not in files:
        raise ValueError(f"{name} has no split {eval_split!r} to evaluate on (splits: {sorted(files)}).")
    evaluation = eval_split or next((split for split in _EVALUATION_SPLITS if split in files), None)
    used = [evaluation] if evaluation is not None and not require_train else ["train", evaluation]
    used = [split for split in used if split in files] or list(files)
    if set(used) == set(files):  # every split: the plain call, which keeps using a cache prepared before
        dataset = load_dataset(name, config_name, cache_dir=cache_dir)
    else:
        dataset = load_dataset(
            name, config_name, data_files={split: list(files[split]) for split in used}, cache_dir=cache_dir
        )
    return _own_class_names(DatasetDict(dataset), files)


def _own_class_names(dataset: DatasetDict, files) -> DatasetDict:
    """Each split with the `ClassLabel` names its own parquet file records. `datasets` gives every split the features
    of one file, so a test split saved with its classes in another order would carry the training names on its own
    ids: silently other classes. With its own names, `read_data` maps it onto the training classes by name."""
    import pyarrow.parquet as pq
    from datasets.utils.file_utils import xopen

    for split, part in dataset.items():
        paths = [str(path) for path in files.get(split, [])]
        if not paths or not paths[0].endswith(".parquet"):
            continue
        try:
            with xopen(paths[0], "rb") as f:
                recorded = Features.from_arrow_schema(pq.read_schema(f))
        except (OSError, ValueError, KeyError, TypeError):  # no readable schema: the split stays as loaded
            continue
        for column, feature in recorded.items():
            loaded = part.features.get(column)
            if isinstance(feature, ClassLabel) and isinstance(loaded, ClassLabel) and feature.names != loaded.names:
                features = part.features.copy()
                features[column] = ClassLabel(names=list(feature.names))
                part = part.cast(features)  # the same ids, under the names this split was saved with
        dataset[split] = part
    return dataset


def resolve_columns(
    dataset: Dataset, image_column: str | None = None, label_column: str | None = None, require_labels: bool = True
) -> tuple[str, str | None]:
    """The image and label column names, checked; a clear error naming `--image_column_name` / `--label_column_name`.
    With `require_labels=False` (pre-training), a dataset without labels (a flat folder of images) gives None."""
    columns = dataset.column_names
    if image_column is None:
        image_column = next((name for name in _IMAGE_COLUMNS if name in columns), None)
    if image_column is None or image_column not in columns:
        raise ValueError(
            f"No image column {image_column or ''!r} in the dataset (columns: {columns}); pass --image_column_name."
        )
    if label_column is None:
        label_column = next((name for name in _LABEL_COLUMNS if name in columns), None)
        if label_column is None and not require_labels:
            return image_column, None
    if label_column is None or label_column not in columns:
        raise ValueError(
            f"No label column {label_column or ''!r} in the dataset (columns: {columns}); pass --label_column_name."
        )
    if label_column == image_column:
        raise ValueError(
            f"--image_column_name and --label_column_name are both {image_column!r}; the images and the labels must be "
            f"two different columns (columns: {columns})."
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


def check_labels_fit(splits: dict[str, Dataset], label_column: str, names: list[str]) -> None:
    """Every split's labels are classes of `names` (the training classes) that the training split has examples of: a
    `ValueError` naming the split and the offending values or class names otherwise (e.g. -1 for "unlabelled", or a
    class folder that only the evaluation data has)."""
    trained = set(splits["train"][label_column]) if "train" in splits else None
    for split, dataset in splits.items():
        feature = dataset.features[label_column]
        if isinstance(feature, ClassLabel) and list(feature.names) != list(names):
            extra = sorted(set(feature.names) - set(names))
            raise ValueError(
                f"The {split} split's classes {list(feature.names)} are not the training classes {list(names)}"
                + (f" ({extra} are not in training)" if extra else "")
                + ": evaluate on the same classes, or give a mapping."
            )
        values = set(dataset[label_column])
        bad = sorted(value for value in values if not (isinstance(value, int) and 0 <= value < len(names)))
        if bad:
            raise ValueError(
                f"The {split} split has labels {bad[:10]} outside the {len(names)} classes 0..{len(names) - 1} "
                "(-1 usually marks unlabelled images, as in ImageNet-1k's test split): evaluate on a labelled split "
                "(the scripts' --eval_split_name), or drop or relabel them first."
            )
        unseen = sorted(values - trained) if trained is not None and split != "train" else []
        if unseen:
            raise ValueError(
                f"The {split} split has classes {[names[i] for i in unseen][:10]} that are not in training (the "
                "training split has no image of them): evaluate on the training classes, or add training images."
            )


def image_problem(value) -> str | None:
    """Why an image column entry (`{"path", "bytes"}`, undecoded) cannot be used, or None: missing, 0 bytes,
    unreadable or truncated, or a decompression bomb (more pixels than PIL's `Image.MAX_IMAGE_PIXELS`)."""
    import io
    import warnings

    path, data = value.get("path"), value.get("bytes")
    if data is None and (path is None or not os.path.isfile(path)):
        return "missing"
    if (data is not None and len(data) == 0) or (data is None and os.path.getsize(path) == 0):
        return "empty (0 bytes)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            with PILImage.open(io.BytesIO(data) if data is not None else path) as image:
                if image.format == "JPEG":  # decode at 1/8 scale: fast, and still reads the whole file
                    image.draft(image.mode, (max(1, image.width // 8), max(1, image.height // 8)))
                image.load()
    except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning):
        return f"more pixels than {PILImage.MAX_IMAGE_PIXELS} (decompression bomb guard)"
    except (OSError, SyntaxError, ValueError) as error:
        return f"unreadable ({error})"
    return None


def drop_unreadable_images(dataset: Dataset, image_column: str, split: str = "train") -> Dataset:
    """`dataset` without the images that cannot be read (see `image_problem`), each named in one warning line with
    the count, so that a run never dies mid-epoch on one bad file. A fast scan (JPEGs decode at 1/8 scale)."""
    if not isinstance(dataset.features.get(image_column), Image):
        return dataset
    from tqdm.auto import tqdm

    raw = dataset.cast_column(image_column, Image(decode=False))
    scan = tqdm(raw[image_column], desc=f"Checking the {split} images", unit="img", leave=False, mininterval=2)
    problems = [image_problem(value) for value in scan]
    bad = [index for index, problem in enumerate(problems) if problem]
    if not bad:
        return dataset
    logger = logging.getLogger("mimir_hf.data")
    values = raw.select(bad)[image_column]
    for index, value in zip(bad[:20], values[:20], strict=False):
        logger.warning(f"Skipping {value.get('path') or f'{split} image {index}'}: {problems[index]}.")
    logger.warning(f"Skipped {len(bad)} unreadable image(s) of {len(dataset)} in the {split} split.")
    if len(bad) == len(dataset):
        raise ValueError(f"None of the {len(dataset)} images of the {split} split can be read (see the warnings).")
    keep = sorted(set(range(len(dataset))) - set(bad))
    return dataset.select(keep)


_GREY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def preprocessing_change(
    dataset: Dataset, image_column: str, image_processor, sample: int = 8, which: str = "images"
) -> str | None:
    """What `image_processor` does to the size or channels of `dataset`'s images (called `which` in the sentence), in
    words with the numbers, or None when it keeps both. Reads only the headers of the first `sample` images and runs
    the processor on one."""
    import io

    if len(dataset) == 0 or not isinstance(dataset.features.get(image_column), Image):
        return None
    raw = dataset.cast_column(image_column, Image(decode=False)).select(range(min(sample, len(dataset))))
    shapes = []
    for value in raw[image_column]:
        try:
            with PILImage.open(io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"]) as image:
                shapes.append((image.width, image.height, 1 if image.mode in _GREY_MODES else 3))
        except (OSError, TypeError, ValueError):
            continue
    if not shapes:
        return None
    channels, height, width = image_processor(images=[dataset[0][image_column]], return_tensors="pt")[
        "pixel_values"
    ].shape[1:]
    kinds = {1: "grey", 3: "RGB"}
    first_width, first_height, first_channels = shapes[0]
    changes = []
    resized = "resized and centre-cropped" if getattr(image_processor, "do_center_crop", False) else "resized"
    if all(shape[:2] == shapes[0][:2] for shape in shapes):
        if (first_width, first_height) != (width, height):
            changes.append(f"{resized} from {first_width}x{first_height} to {width}x{height}")
    else:
        changes.append(f"of various sizes (e.g. {first_width}x{first_height}); each is {resized} to {width}x{height}")
    if first_channels != channels:
        changes.append(f"converted from {kinds.get(first_channels)} to {kinds.get(channels, channels)}")
    if not changes:
        return None
    return (
        f"The {which} are {' and '.join(changes)} by the model's image processor "
        f"({type(getattr(image_processor, 'processor', image_processor)).__name__}), "
        f"as the model takes {width}x{height} {kinds.get(channels, f'{channels}-channel')} input. To keep "
        f"{first_width}x{first_height} {kinds.get(first_channels)} images, use a model of that input: a new model "
        f"with --image_size {first_width if first_width == first_height else [first_height, first_width]} "
        f"--num_channels {first_channels} (the patch size must divide it), or a checkpoint trained at that size"
    )


def pixel_transform(
    image_column: str,
    label_column: str | None,
    image_processor: MimirImageProcessor,
    augmentation: TrainAugmentation | None = None,
    label_map: dict[int, int] | None = None,
):
    """The batch transform of `with_pixel_transform`: {image_column, label_column} -> {"pixel_values", "labels"}, with
    the training `augmentation` (if any) around the image processor and the labels through `label_map` (data class ->
    model class, when given). After an augmentation whose crop already gives the model's size, the processor only
    converts the pixels (`training_processor`). Also used for auxiliary data, so that real and synthetic images go
    through the same transform."""

    image_processor = training_processor(image_processor, augmentation)

    def transform(batch):
        images = batch[image_column]
        if augmentation is not None:
            images = [augmentation.augment_image(image) for image in images]
        pixel_values = image_tensors(images, image_processor)
        if augmentation is not None:
            pixel_values = [augmentation.augment_tensor(image) for image in pixel_values]
        out = {"pixel_values": pixel_values}
        if label_column is not None:
            labels = batch[label_column]
            out["labels"] = [label_map[label] for label in labels] if label_map is not None else labels
        return out

    return transform


def training_processor(image_processor, augmentation: TrainAugmentation | None):
    """The processor for images out of `augmentation`: `image_processor` itself, or, after a random-resized crop
    (which gives the model's size, as the authors' RandomResizedCrop -> tensor does), a copy without its resize to
    another size and its centre crop (a checkpoint's resize 256 / crop 224 would zoom the crop by 256/224 and cut its
    borders): the same channels, filter and rescaling at the model's size."""
    if augmentation is None or not augmentation.outputs_model_size:
        return image_processor
    if not isinstance(image_processor, MimirImageProcessor) or not image_processor.do_center_crop:
        return image_processor
    at_size = copy.deepcopy(image_processor)
    at_size.do_center_crop = False
    at_size.size = {"height": augmentation.height, "width": augmentation.width}
    return at_size


def with_pixel_transform(
    dataset: Dataset,
    image_column: str,
    label_column: str | None,
    image_processor: MimirImageProcessor,
    augmentation: TrainAugmentation | None = None,
    label_map: dict[int, int] | None = None,
) -> Dataset:
    """The dataset with a lazy transform yielding `pixel_values` (from `image_processor`) and `labels` (through
    `label_map`, when given); a training split may add a per-example `augmentation`
    (`mimir_hf.augmentation.AugmentationArguments.build`)."""
    return dataset.with_transform(pixel_transform(image_column, label_column, image_processor, augmentation, label_map))


# A training split without augmentation gives the same tensors every epoch; up to this many bytes of them are computed
# once and held in memory (`prepared_in_memory`) instead of decoding and resizing every image again each epoch.
PREPARED_MEMORY_LIMIT = 512 * 2**20


class PreparedImages(torch.utils.data.Dataset):
    """A transformed split computed once and held as tensors (`pixel_values` [N, C, H, W], `labels` [N] when the
    split has labels): the examples the lazy transform gives, equal bit for bit, fetched without decoding again.
    Has what the training code uses of a `datasets.Dataset`: `len`, examples by index (one or a batch) and
    `select`."""

    def __init__(self, columns: dict[str, torch.Tensor]):
        self.columns = columns

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {name: values[index] for name, values in self.columns.items()}

    def __getitems__(self, indices: list[int]) -> list[dict[str, torch.Tensor]]:
        return [self[index] for index in indices]

    def select(self, indices) -> PreparedImages:
        indices = torch.as_tensor(list(indices), dtype=torch.long)
        return PreparedImages({name: values[indices] for name, values in self.columns.items()})

    def __repr__(self) -> str:
        shapes = ", ".join(f"{name}: {tuple(values.shape)}" for name, values in self.columns.items())
        return f"PreparedImages({shapes})"


def prepared_in_memory(
    dataset: Dataset, limit_bytes: int = PREPARED_MEMORY_LIMIT, chunk_size: int = 256, announce=None
) -> PreparedImages | None:
    """`dataset` (with its pixel transform, no augmentation) computed once into a `PreparedImages`, when its
    `pixel_values` take at most `limit_bytes`; else None (the split stays lazy). The size is known from the first
    example before anything else is decoded; `announce(images, bytes)` is called then."""
    if len(dataset) == 0:
        return None
    first = dataset[:1]
    per_image = first["pixel_values"][0]
    size = len(dataset) * per_image.numel() * per_image.element_size()
    if size > limit_bytes:
        return None
    if announce is not None:
        announce(len(dataset), size)
    columns = {"pixel_values": torch.empty((len(dataset), *per_image.shape), dtype=per_image.dtype)}
    if "labels" in first:  # the dtype the collator gives the lazy split's labels (int64 for class indices)
        columns["labels"] = torch.empty(len(dataset), dtype=torch.as_tensor(first["labels"]).dtype)
    for start in range(0, len(dataset), chunk_size):
        batch = dataset[start : start + chunk_size]
        stop = start + len(batch["pixel_values"])
        columns["pixel_values"][start:stop] = torch.stack(batch["pixel_values"])
        if "labels" in columns:
            columns["labels"][start:stop] = torch.as_tensor(batch["labels"])
    return PreparedImages(columns)


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


def checkpoint_image_processor(model_name_or_path: str | None, config, **hub_kwargs) -> MimirImageProcessor:
    """The image processor of a model started from the checkpoint `model_name_or_path` (a folder or Hub id, or None
    for a new model), `config` being the model's (as loaded): what pretrain and finetune train with and save next to
    the model, and what evaluating it should feed it.

    - No checkpoint, or a checkpoint without a saved image processor: `image_processor_for(config)`.
    - The checkpoint's saved processor (a MIMIR folder's `MimirImageProcessor`, e.g. a converted ImageNet model's
      resize 256 / crop 224; a ViTMAE folder's `ViTImageProcessor`): a `MimirImageProcessor` with its resize (size,
      resample filter, centre crop), the config's channels, [0, 1] pixels and no normalisation: that is
      `config.image_mean` / `image_std`, inside the model. A processor that normalises otherwise than the config, or
      does what `MimirImageProcessor` cannot (see `carried_preprocessing`), is a `ValueError` naming the fix.
    - A model whose input size differs from the processor's output (e.g. `--image_size` changed on a checkpoint) gets
      the same filter and crop fraction at its own size, said in one log line.
    """
    if not hasattr(config, "image_size_hw"):
        raise ValueError(
            f"checkpoint_image_processor serves MIMIR models (their configs normalise inside); {type(config).__name__} "
            "is not one: use the checkpoint's own image processor."
        )
    if not model_name_or_path:
        return image_processor_for(config)
    saved = saved_image_processor(model_name_or_path, **hub_kwargs)
    if saved is None:
        return image_processor_for(config)
    carried = carried_preprocessing(saved, model_name_or_path, config.num_channels)
    inside = (config.image_mean, config.image_std)
    if carried.image_mean is not None and (
        None in inside or not np.allclose([carried.image_mean, carried.image_std], inside, rtol=0, atol=1e-7)
    ):
        raise ValueError(
            f"The image processor of {model_name_or_path} normalises with mean {carried.image_mean}, std "
            f"{carried.image_std}, but the model normalises inside with image_mean={config.image_mean}, "
            f"image_std={config.image_std}: give the model the processor's values, or save a processor that does not "
            "normalise."
        )
    if carried.output_size == config.image_size_hw:
        return MimirImageProcessor(num_channels=config.num_channels, **carried.resize)
    crop_pct = None
    if carried.resize["do_center_crop"]:
        size = carried.resize["size"]
        side = size.get("shortest_edge") or min(size.get("height", 0), size.get("width", 0))
        crop_pct = min(carried.output_size) / side if side >= min(carried.output_size) else None
    processor = image_processor_for(config, crop_pct)
    processor.resample = carried.resize["resample"]
    height, width = config.image_size_hw
    kept = f"filter and crop fraction {crop_pct:.3g}" if crop_pct else "filter"
    logging.getLogger("mimir_hf.data").warning(
        f"The image processor of {model_name_or_path} ({carried.describe_resize()}) makes "
        f"{carried.output_size[0]}x{carried.output_size[1]} images but the model takes {height}x{width}: resizing with "
        f"its {kept} to the model's size instead."
    )
    return processor


def tensors(dataset: Dataset, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The first `limit` (default: all) `pixel_values` and `labels` of a transformed dataset, stacked (for small sets:
    plots, quick checks; evaluation streams through a DataLoader instead)."""
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    batch = default_data_collator([dataset[i] for i in range(len(dataset))])
    return batch["pixel_values"], batch.get("labels")


__all__ = [
    "check_labels_fit",
    "preprocessing_change",
    "checkpoint_image_processor",
    "drop_unreadable_images",
    "image_processor_for",
    "label_names",
    "load_digits_dataset",
    "load_image_dataset",
    "pixel_transform",
    "prepared_in_memory",
    "PreparedImages",
    "resolve_columns",
    "tensors",
    "with_pixel_transform",
]
