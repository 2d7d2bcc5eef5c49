"""RobustBench's ImageNet 5000-image subset: the shipped list, and its selection from a validation split."""

import hashlib
import io
import os

import pytest
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage

import mimir_hf
from mimir_hf.robustbench import ROBUSTBENCH_IMAGENET_5000, select_subset, subset_ids

IDS_SHA256 = "d4121626d07722a0126c35b1563042e46a546f1a05ce705f2cdc635896d58574"


def test_the_shipped_list_is_robustbench_s():
    path = os.path.join(os.path.dirname(mimir_hf.__file__), "data_files", "imagenet_test_image_ids.txt")
    data = open(path, "rb").read()
    assert hashlib.sha256(data).hexdigest() == IDS_SHA256 and data.count(b"\n") == 4999  # no trailing newline
    ids = subset_ids(ROBUSTBENCH_IMAGENET_5000)
    assert len(ids) == len(set(ids)) == 5000 and ids[0] == "n09468604/ILSVRC2012_val_00015253.JPEG"
    assert len({i.split("/")[0] for i in ids}) == 997
    with pytest.raises(ValueError, match="Unknown evaluation subset"):
        subset_ids("cifar10-1000")


def validation_split(ids, wnids, drop=(), relabel=None):
    """A stand-in ImageNet validation split: the listed images in reverse order plus 5 others, each a 1x1 PNG whose
    stored path is `<root>/<wnid>/<file>` and whose label is its wnid's index among `wnids`."""
    buffer = io.BytesIO()
    PILImage.new("RGB", (1, 1)).save(buffer, format="PNG")
    png = buffer.getvalue()
    others = [f"{wnids[0]}/ILSVRC2012_val_9999999{i}.JPEG" for i in range(5)]
    rows = [i for i in reversed(ids) if i not in drop] + others
    images = [{"path": f"/data/imagenet/val/{row}", "bytes": png} for row in rows]
    labels = [wnids.index(relabel.get(row, row.split("/")[0]) if relabel else row.split("/")[0]) for row in rows]
    features = Features({"image": Image(), "label": ClassLabel(names=wnids)})
    return Dataset.from_dict({"image": images, "label": labels}, features=features)


@pytest.fixture(scope="module")
def ids():
    return subset_ids(ROBUSTBENCH_IMAGENET_5000)


@pytest.fixture(scope="module")
def wnids(ids):
    listed = sorted({i.split("/")[0] for i in ids})
    return sorted(listed + ["n00000001", "n00000002", "n00000003"])  # 1000 classes, 3 of them not in the list


def test_selection_takes_the_listed_images_in_the_list_order(ids, wnids):
    subset = select_subset(validation_split(ids, wnids), "image", "label", ROBUSTBENCH_IMAGENET_5000)
    assert len(subset) == 5000
    names = subset.features["label"].names
    picked = subset.cast_column("image", Image(decode=False))
    assert [os.path.basename(p["path"]) for p in picked["image"][:3]] == [os.path.basename(i) for i in ids[:3]]
    assert [names[label] for label in subset["label"]] == [i.split("/")[0] for i in ids]


def test_selection_names_what_is_missing_or_wrong(ids, wnids):
    with pytest.raises(ValueError, match="2 of the 5000 images .* are not in the evaluation split"):
        select_subset(validation_split(ids, wnids, drop=ids[:2]), "image", "label", ROBUSTBENCH_IMAGENET_5000)
    wrong = {ids[7]: wnids[0] if ids[7].split("/")[0] != wnids[0] else wnids[1]}
    with pytest.raises(ValueError, match="1 images .* are filed under another wnid"):
        select_subset(validation_split(ids, wnids, relabel=wrong), "image", "label", ROBUSTBENCH_IMAGENET_5000)
    few = sorted({i.split("/")[0] for i in ids})  # 997 folders: label indices would not be ImageNet's
    with pytest.raises(ValueError, match="has 997 class folders; .* needs all 1000"):
        select_subset(validation_split(ids, few), "image", "label", ROBUSTBENCH_IMAGENET_5000)
