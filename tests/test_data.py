"""The offline default dataset, image folders, column checks and the pixel transform."""

import glob

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, load_dataset
from datasets import Image as HFImage
from PIL import Image

from mimir_hf.data import (
    check_labels_fit,
    image_processor_for,
    label_names,
    load_digits_dataset,
    load_image_dataset,
    resolve_columns,
    tensors,
    with_pixel_transform,
)

from .conftest import tiny_config


def test_digits_default_is_real_fixed_and_stratified():
    first, second = load_digits_dataset(), load_digits_dataset()
    assert (len(first["train"]), len(first["test"])) == (1437, 360)
    assert first["test"]["label"] == second["test"]["label"]
    assert label_names(first["train"], "label") == [str(d) for d in range(10)]
    counts = np.bincount(first["test"]["label"], minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified: ~36 of each digit
    image = first["train"][0]["image"]
    assert image.size == (8, 8) and image.mode == "L"
    assert load_image_dataset()["test"]["label"] == first["test"]["label"]  # no argument -> the default


def test_transform_gives_unit_range_tensors_at_the_model_size():
    dataset = load_digits_dataset()["test"].select(range(4))
    processor = image_processor_for(tiny_config(num_channels=1))
    pixel_values, labels = tensors(with_pixel_transform(dataset, "image", "label", processor))
    assert pixel_values.shape == (4, 1, 16, 16) and labels.dtype == torch.long
    assert pixel_values.min() >= 0 and pixel_values.max() <= 1
    assert pixel_values.max() > 0.9  # strokes are bright: pixels were scaled, not left at 0..16
    rgb_processor = image_processor_for(tiny_config(image_size=[12, 20]))
    rgb = rgb_processor(images=Image.new("L", (8, 8), 128), return_tensors="pt")["pixel_values"][0]
    assert rgb.shape == (3, 12, 20) and torch.allclose(rgb, torch.full_like(rgb, 128 / 255))


def test_image_folder_and_its_errors(tmp_path):
    for split in ("train", "val"):
        for label in ("cat", "dog"):
            folder = tmp_path / split / label
            folder.mkdir(parents=True)
            for i in range(3):
                Image.fromarray(np.full((10, 10, 3), 40 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    dataset = load_image_dataset(train_dir=str(tmp_path / "train"), validation_dir=str(tmp_path / "val"))
    assert len(dataset["train"]) == 6 and len(dataset["test"]) == 6
    assert resolve_columns(dataset["train"]) == ("image", "label")
    assert label_names(dataset["train"], "label") == ["cat", "dog"]
    empty = tmp_path / "empty" / "cat"
    empty.mkdir(parents=True)
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="--train_dir=.*holds no image files"):
        load_image_dataset(train_dir=str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="is not a directory"):
        load_image_dataset(train_dir=str(tmp_path / "missing"))


def hub_style_dataset(folder, splits: dict[str, list[int]], broken: tuple[str, ...] = ()) -> str:
    """A dataset laid out as on the Hub (data/<split>-00000-of-00001.parquet); the `broken` splits' files are not
    parquet at all, so reading them fails."""
    (folder / "data").mkdir(parents=True)
    features = Features({"image": HFImage(), "label": ClassLabel(names=["a", "b", "c"])})
    for split, labels in splits.items():
        path = folder / "data" / f"{split}-00000-of-00001.parquet"
        if split in broken:
            path.write_bytes(b"not parquet: reading this split fails")
            continue
        images = [Image.fromarray(np.full((8, 8, 3), 30 * i, dtype=np.uint8)) for i in range(len(labels))]
        Dataset.from_dict({"image": images, "label": labels}, features=features).to_parquet(str(path))
    return str(folder)


def test_evaluation_reads_only_the_evaluation_split_of_a_hub_dataset(tmp_path):
    """ImageNet's 140 GB of training images must not be fetched to evaluate on its validation split: only the split
    used is read (`load_dataset(..., split=...)` would read every split, and fail on the broken training file here)."""
    name = hub_style_dataset(tmp_path / "hub", {"train": [], "validation": [0, 1, 2, 1]}, broken=("train",))
    dataset = load_image_dataset(name, cache_dir=str(tmp_path / "cache"), require_train=False)
    assert list(dataset) == ["test"] and dataset["test"]["label"] == [0, 1, 2, 1]
    assert dataset["test"].features["label"].names == ["a", "b", "c"]
    with pytest.raises(Exception, match="[Pp]arquet"):  # training does read the training split
        load_image_dataset(name, cache_dir=str(tmp_path / "cache2"))


def test_a_dataset_loaded_whole_keeps_its_cache(tmp_path):
    """When every split is used, the plain `load_dataset` call runs: a cache prepared before is used, not redone."""
    name = hub_style_dataset(tmp_path / "hub", {"train": [0, 1, 2], "test": [2, 1, 0]})
    cache = tmp_path / "cache"
    load_dataset(name, cache_dir=str(cache))
    prepared = sorted(str(path) for path in cache.rglob("*.arrow"))
    dataset = load_image_dataset(name, cache_dir=str(cache))
    assert dataset["test"]["label"] == [2, 1, 0] and sorted(str(path) for path in cache.rglob("*.arrow")) == prepared


def test_the_evaluation_split_can_be_named(tmp_path):
    """ImageNet-1k's "test" split is unlabelled (-1): the default pick refuses it by name, --eval_split_name chooses."""
    name = hub_style_dataset(tmp_path / "hub", {"train": [0, 1, 2], "validation": [2, 1, 0], "test": [0, 0, 0]})
    default = load_image_dataset(name, cache_dir=str(tmp_path / "cache"))
    assert default["test"]["label"] == [0, 0, 0]  # "test" comes first
    chosen = load_image_dataset(name, cache_dir=str(tmp_path / "cache"), eval_split="validation")
    assert chosen["test"]["label"] == [2, 1, 0] and chosen["train"]["label"] == [0, 1, 2]
    with pytest.raises(ValueError, match=r"has no split 'val' to evaluate on \(splits: \['test', 'train', 'valid"):
        load_image_dataset(name, cache_dir=str(tmp_path / "cache"), eval_split="val")
    with pytest.raises(ValueError, match="chooses among a Hub dataset's splits"):
        load_image_dataset(eval_split="validation")  # the digits have one test split
    with pytest.raises(ValueError, match="-1 usually marks unlabelled images.*--eval_split_name"):
        check_labels_fit(
            {"train": Dataset.from_dict({"label": [0, 1, 2]}), "test": Dataset.from_dict({"label": [-1, -1]})},
            "label",
            ["a", "b", "c"],
        )


def test_missing_columns_are_named():
    dataset = Dataset.from_dict({"picture_bytes": [1, 2], "target": [0, 1]})
    with pytest.raises(ValueError, match="No image column.*--image_column_name"):
        resolve_columns(dataset)
    dataset = Dataset.from_dict({"image": [1, 2], "target": [0, 1]})
    with pytest.raises(ValueError, match="No label column.*--label_column_name"):
        resolve_columns(dataset)
    assert resolve_columns(dataset, label_column="target") == ("image", "target")


def test_a_parquet_test_split_saved_with_its_classes_in_another_order_is_mapped_by_name(tmp_path, caplog):
    """`datasets` reads every split with one file's ClassLabel: the test split's own names (c, a, b) must come back
    from its file, and its labels be mapped onto the training classes by name, not read as a, b, c."""
    import logging

    from datasets import Dataset

    from mimir_hf.commands.common import DataArguments, read_data

    name = hub_style_dataset(tmp_path / "hub", {"train": [0, 1, 2], "test": []})
    images = [Image.fromarray(np.full((8, 8, 3), 30 * i, dtype=np.uint8)) for i in range(3)]
    features = Features({"image": HFImage(), "label": ClassLabel(names=["c", "a", "b"])})
    Dataset.from_dict({"image": images, "label": [0, 1, 2]}, features=features).to_parquet(
        str(tmp_path / "hub" / "data" / "test-00000-of-00001.parquet")
    )  # c, a, b
    caplog.set_level(logging.INFO)
    data = read_data(DataArguments(dataset_name=name, cache_dir=str(tmp_path / "cache")))
    assert data.names == ["a", "b", "c"] and data.test["label"] == [2, 0, 1]
    assert "mapped onto the training classes by name" in caplog.text


def test_folders_at_other_depths_keep_their_labels(tmp_path):
    from mimir_hf.commands.common import DataArguments, read_data

    for folder in (tmp_path / "train", tmp_path / "other" / "val"):
        for index, name in enumerate(("cat", "dog")):
            (folder / name).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((8, 8, 3), 60 * index + i, dtype=np.uint8)).save(folder / name / f"{i}.png")
    data = read_data(DataArguments(train_dir=str(tmp_path / "train"), validation_dir=str(tmp_path / "other" / "val")))
    assert data.names == ["cat", "dog"] and sorted(data.test["label"]) == [0, 0, 1, 1]


def class_folders(root, classes=("cat", "dog"), per_class=3):
    for index, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((8, 8, 3), 60 * index + i, dtype=np.uint8)).save(root / name / f"{i}.png")


@pytest.mark.parametrize(
    "metadata, refusal",
    [
        ("", "has no row"),
        ("file_name,label\n", "has no row"),
        ("name,label\ncat/0.png,0\n", "has no file_name column"),
        ("file_name,label\ncat/0.png,0\n", r"leaves out images, which the dataset would lose \(cat/1.png, cat/2.png, "),
        ("file_name,label\n" + "".join(f"{c}/{i}.png,{c}\n" for c in ("cat", "dog") for i in range(3)) + "x.png,cat\n",
         r"names files that are not images there \(x.png\)"),
        ("file_name,label\n"+"".join(f"{c}/{i}.png,{c}\n" for c in ("cat", "dog") for i in range(3)) + "cat/0.png,a\n",
         "lists an image twice"),
    ],
)  # fmt: skip
def test_a_metadata_file_that_would_change_the_dataset_is_refused_by_name(tmp_path, metadata, refusal):
    """imagefolder keeps only the images a metadata file lists, and failed on an empty one deep inside pandas or with
    an IndexError: each case is refused at once, naming the file and the fix."""
    class_folders(tmp_path)
    (tmp_path / "metadata.csv").write_text(metadata)
    with pytest.raises(ValueError, match=rf"--train_dir: the metadata file .*metadata.csv {refusal}.*or remove it"):
        load_image_dataset(train_dir=str(tmp_path))


def test_a_complete_metadata_file_gives_its_labels(tmp_path):
    class_folders(tmp_path)
    rows = "".join(f"{c}/{i}.png,{'pet' if c == 'cat' else 'wild'}\n" for c in ("cat", "dog") for i in range(3))
    (tmp_path / "metadata.csv").write_text("\ufefffile_name,kind\n" + rows)  # a spreadsheet's byte-order mark
    dataset = load_image_dataset(train_dir=str(tmp_path), test_fraction=0.5)
    assert sorted([*dataset["train"]["kind"], *dataset["test"]["kind"]]) == ["pet"] * 3 + ["wild"] * 3


def test_a_metadata_file_in_one_split_only_is_refused_and_in_both_splits_gives_their_labels(tmp_path):
    """With metadata in --train_dir only, imagefolder found no image for the validation split (datasets:
    'Instruction "test" corresponds to no data!')."""
    for split in ("train", "val"):
        class_folders(tmp_path / split)
    rows = "".join(f"{c}/{i}.png,{k}\n" for k, c in enumerate(("cat", "dog")) for i in range(3))
    (tmp_path / "train" / "metadata.csv").write_text("file_name,kind\n" + rows)
    with pytest.raises(ValueError, match=r"--train_dir has a metadata file \(.*metadata.csv\) and --validation_dir="
                       r".* has none: .* Give .*val a metadata.csv too"):  # fmt: skip
        load_image_dataset(train_dir=str(tmp_path / "train"), validation_dir=str(tmp_path / "val"))
    with pytest.raises(ValueError, match="--validation_dir has a metadata file .* and --train_dir="):
        load_image_dataset(train_dir=str(tmp_path / "val"), validation_dir=str(tmp_path / "train"))
    (tmp_path / "val" / "metadata.csv").write_text("file_name,kind\n" + rows)
    dataset = load_image_dataset(train_dir=str(tmp_path / "train"), validation_dir=str(tmp_path / "val"))
    assert sorted(dataset["test"]["kind"]) == [0, 0, 0, 1, 1, 1] and len(dataset["train"]) == 6


def test_class_names_as_labels_become_classes_shared_by_every_split(tmp_path, caplog):
    """A metadata file's labels written as names ("cat", "dog") were refused ("must hold class indices")."""
    from mimir_hf.commands.common import DataArguments, read_data

    for split, classes in (("train", ("cat", "dog", "emu")), ("val", ("dog", "emu"))):
        class_folders(tmp_path / split, classes=classes)
        rows = "".join(f"{c}/{i}.png,{c}\n" for c in classes for i in range(3))
        (tmp_path / split / "metadata.csv").write_text("file_name,label\n" + rows)
    arguments = DataArguments(train_dir=str(tmp_path / "train"), validation_dir=str(tmp_path / "val"))
    with caplog.at_level("INFO", logger="mimir_hf.commands"):
        data = read_data(arguments)
    assert data.names == ["cat", "dog", "emu"] and "read as 3 classes in sorted order (cat, dog, emu)" in caplog.text
    assert sorted(data.test["label"]) == [1, 1, 1, 2, 2, 2]  # the validation split encoded with the training names
    assert sorted(data.train["label"]) == [0, 0, 0, 1, 1, 1, 2, 2, 2]

    (tmp_path / "val" / "metadata.csv").write_text("file_name,label\n" + "".join(
        f"{c}/{i}.png,{'owl' if c == 'emu' else c}\n" for c in ("dog", "emu") for i in range(3)))  # fmt: skip
    with pytest.raises(ValueError, match=r"The test split's labels \['owl'\] are not among the train split's classes"):
        read_data(arguments)


def test_too_few_images_to_hold_out_an_evaluation_split_is_said_in_words(tmp_path):
    class_folders(tmp_path, per_class=1)
    assert len(load_image_dataset(train_dir=str(tmp_path), test_fraction=0.5)["train"]) == 1
    with pytest.raises(ValueError, match=r"2 image\(s\): holding out 60% .* leaves no image to train on"):
        load_image_dataset(train_dir=str(tmp_path), test_fraction=0.6)


def test_folders_and_files_with_glob_characters_in_their_names_load(tmp_path):
    """datasets reads data files as glob patterns: `run[1]` or `img*0.png` matched nothing ("no data")."""
    root = tmp_path / "run[1]"
    for index, name in enumerate(("cat", "dog?")):
        (root / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((8, 8, 3), 60 * index + i, dtype=np.uint8)).save(root / name / f"img*{i}.png")
    dataset = load_image_dataset(train_dir=str(root), validation_dir=str(root))
    assert len(dataset["train"]) == 4 and label_names(dataset["train"], "label") == ["cat", "dog?"]


def test_image_folder_files_go_to_datasets_as_files_not_patterns(tmp_path, monkeypatch):
    """Every path given as a pattern cost a search (quadratic for an escaped name under a big tree): the files go in
    resolved, with the same paths and modification times as datasets' own resolution (so its cache key is kept)."""
    import datasets.data_files
    from datasets.data_files import DataFilesList

    from mimir_hf.data import files_as_they_are, folder_images

    class_folders(tmp_path / "run[1]")
    paths = folder_images(str(tmp_path / "run[1]"), "--train_dir")
    files = files_as_they_are(paths)
    resolved = DataFilesList.from_patterns([glob.escape(path) for path in paths])
    assert list(files) == list(resolved) and files.origin_metadata == resolved.origin_metadata

    def no_search(pattern, *args, **kwargs):
        raise AssertionError(f"datasets searched for {pattern}")

    monkeypatch.setattr(datasets.data_files, "resolve_pattern", no_search)
    dataset = load_image_dataset(train_dir=str(tmp_path / "run[1]"), test_fraction=0.5)
    assert len(dataset["train"]) + len(dataset["test"]) == len(paths)
    (tmp_path / "run[1]" / "cat" / "gone.png").symlink_to(tmp_path / "nowhere.png")  # a broken link is named
    with pytest.raises(ValueError, match=r"gone.png cannot be read \(No such file or directory\): a broken link"):
        load_image_dataset(train_dir=str(tmp_path / "run[1]"), test_fraction=0.5)


def test_a_training_split_without_augmentation_is_prepared_once_and_gives_the_lazy_batches(caplog):
    from torch.utils.data import DataLoader
    from transformers import default_data_collator

    from mimir_hf.augmentation import AugmentationArguments
    from mimir_hf.commands.common import DataArguments, load_data, read_data
    from mimir_hf.data import PreparedImages, prepared_in_memory

    config = tiny_config(num_channels=1)
    with caplog.at_level("INFO", logger="mimir_hf.commands"):
        train, test, _ = load_data(DataArguments(), config, prepare_train=True)
    assert isinstance(train, PreparedImages) and len(train) == 1437
    assert "1437 training images are decoded and processed once" in caplog.text
    assert isinstance(test, Dataset)  # the evaluation split streams (the report's memory stays flat)
    lazy = with_pixel_transform(read_data(DataArguments(), 0).train, "image", "label", image_processor_for(config))

    def epoch(dataset):
        generator = torch.Generator().manual_seed(3)
        return list(DataLoader(dataset, batch_size=64, shuffle=True, generator=generator,
                               collate_fn=default_data_collator))  # fmt: skip

    for prepared_batch, lazy_batch in zip(epoch(train), epoch(lazy), strict=True):
        for name in ("pixel_values", "labels"):
            assert prepared_batch[name].dtype == lazy_batch[name].dtype
            assert torch.equal(prepared_batch[name], lazy_batch[name])
    pixel_values, labels = tensors(train, limit=5)
    lazy_pixel_values, lazy_labels = tensors(lazy, limit=5)
    assert torch.equal(pixel_values, lazy_pixel_values) and torch.equal(labels, lazy_labels)

    assert prepared_in_memory(lazy, limit_bytes=1437 * 16 * 16 * 4 - 1) is None  # over the limit: stays lazy
    augmentation = AugmentationArguments(augmentation="crop-flip")
    augmented, _, _ = load_data(DataArguments(), config, augmentation=augmentation, prepare_train=True)
    assert isinstance(augmented, Dataset)  # augmentation draws anew every epoch: never prepared
    assert isinstance(load_data(DataArguments(), config)[0], Dataset)  # not asked: lazy

    # A run prepares in one process without DataLoader workers only (workers decode beside the step and would get the
    # tensors through shared memory; every process of a group would decode the whole split and hold a copy).
    from types import SimpleNamespace

    from mimir_hf.commands.common import prepares_in_memory

    assert prepares_in_memory(SimpleNamespace(dataloader_num_workers=0, world_size=1))
    assert not prepares_in_memory(SimpleNamespace(dataloader_num_workers=2, world_size=1))
    assert not prepares_in_memory(SimpleNamespace(dataloader_num_workers=0, world_size=2))
