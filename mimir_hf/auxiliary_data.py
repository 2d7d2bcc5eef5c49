"""Auxiliary (synthetic) training data mixed into every batch: the paper's +1M-5M EDM images for CIFAR-10.

An `.npz` file holds `image` (uint8, N x H x W x 3, or N x H x W for grey images) and `label` (N class indices: the
generator's classes, used as hard labels). `AuxiliaryImages` feeds them through the same batch transform as the real
data (`mimir_hf.data.pixel_transform`: augmentation and image processor), and `MixedBatchSampler` builds each batch
of one process from `int(batch * aux_fraction)` auxiliary examples drawn with replacement and the rest from a
shuffled pass over the real data, as the authors' `SemiSupervisedSampler` does. The trainers take the dataset as
`aux_dataset=` and the fraction as `aux_fraction` (default 0.7).

Memory: the authors' 5M EDM images for CIFAR-10 are 15 GB of pixels. An `.npz` written by `np.savez` (members stored,
not compressed) is memory-mapped: the operating system pages in the images that batches touch and shares the pages
between the processes of a multi-GPU run and their data-loader workers. An `np.savez_compressed` file (or a
Fortran-ordered array) is not mapped; it is read into each process's memory, with a warning that says how much and
how to avoid it.

What an epoch is: as in the authors' code, ceil(real examples / (per-device batch x processes)) batches per process, so
an epoch takes as many optimizer steps as without auxiliary data (and reaches only ~30% of the real images at
fraction 0.7; the next epoch starts a new permutation). Unlike the authors' sampler, which shuffles independently in
each process, the processes share one permutation of the real data per epoch and each reads its own slice of it, so
no real image appears twice across processes within an epoch.
"""

from __future__ import annotations

import logging
import math
import os
import struct
import zipfile
from collections.abc import Callable, Iterator
from functools import partial

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from transformers.trainer_utils import seed_worker

AUX_FRACTION = 0.7  # the authors' unsup_fraction

logger = logging.getLogger(__name__)


def load_npz(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(`image` uint8 [N, H, W(, C)], `label` int64 [N]) of an auxiliary-data `.npz`, checked."""
    if not os.path.isfile(path):
        raise ValueError(f"--aux_data_file {path!r} is not a file; expected an .npz with 'image' and 'label' arrays.")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not an .npz archive (np.savez); expected one with 'image' and 'label' arrays.")
    with np.load(path) as data:
        missing = sorted({"image", "label"} - set(data.files))
        if missing:
            raise ValueError(f"{path} has no {missing} array (arrays: {data.files}); expected 'image' and 'label'.")
        images = _mapped_member(path, "image")
        if images is None:
            images = _read_member(data, path, "image")
        if not isinstance(images, np.memmap) and images.dtype == np.uint8 and images.size:  # not mappable
            logger.warning(
                "%s: 'image' is compressed (or Fortran-ordered), so it was read into memory (%.1f GB in every "
                "process); the C-ordered array of an np.savez .npz (uncompressed) is memory-mapped instead.",
                path,
                images.nbytes / 1e9,
            )
        labels = _read_member(data, path, "label")
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3)):
        raise ValueError(
            f"{path}: 'image' must be uint8 N x H x W x 3 (or N x H x W), got {images.dtype} {tuple(images.shape)}."
        )
    if labels.ndim != 1 or len(labels) != len(images) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{path}: 'label' must hold one integer class per image ({len(images)}), got {labels.dtype} "
            f"{tuple(labels.shape)}."
        )
    if len(images) == 0:
        raise ValueError(f"{path} holds no images.")
    return images, labels.astype(np.int64)


def _read_member(data, path: str, name: str) -> np.ndarray:
    """`data[name]`, an object array (pickled Python objects, never unpickled here) refused naming the file."""
    try:
        return data[name]
    except ValueError as error:
        if "allow_pickle" not in str(error):
            raise
        raise ValueError(
            f"{path}: {name!r} is an object array (pickled Python objects, which mimir_hf does not load); expected "
            + ("uint8 N x H x W x 3 (np.stack the images into one array)." if name == "image" else "integers.")
        ) from None


def _mapped_member(path: str, name: str) -> np.ndarray | None:
    """The array `name` of an `.npz`, memory-mapped read-only, if its member is stored uncompressed; else None."""
    with zipfile.ZipFile(path) as archive:
        members = {info.filename: info for info in archive.infolist()}
        info = members.get(f"{name}.npy", members.get(name))  # np.load also accepts a member without ".npy"
        if info is None or info.compress_type != zipfile.ZIP_STORED:
            return None
        with archive.open(info) as member:
            version = np.lib.format.read_magic(member)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, fortran_order, dtype = read_header(member)
            header_length = member.tell()
    if dtype.hasobject or 0 in shape or (fortran_order and len(shape) > 1):
        return None  # (a Fortran-ordered image would be scattered over the whole file: read it instead)
    # Where the member's bytes start: after its local file header (30 bytes, then the name and the extra field).
    with open(path, "rb") as file:
        file.seek(info.header_offset)
        local_header = file.read(30)
    name_length, extra_length = struct.unpack("<HH", local_header[26:30])
    offset = info.header_offset + 30 + name_length + extra_length + header_length
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


class AuxiliaryImages(Dataset):
    """Images and labels from an `.npz`, through `transform` (a batch transform over {"image", "label"} columns, e.g.
    `mimir_hf.data.pixel_transform("image", "label", image_processor, augmentation)`): examples are
    {"pixel_values", "labels"}, like the real data's."""

    def __init__(self, path: str, transform: Callable[[dict], dict], num_labels: int | None = None):
        self.path = path
        self.images, self.labels = load_npz(path)
        self.transform = transform
        if num_labels is not None and (self.labels.min() < 0 or self.labels.max() >= num_labels):
            raise ValueError(
                f"{path}: labels must be in [0, {num_labels}) (the real data's classes), got "
                f"{int(self.labels.min())}..{int(self.labels.max())}."
            )

    def __getstate__(self) -> dict:
        # A memory map is pickled (data-loader workers under spawn) as its path, not as a copy of its pages.
        state = dict(self.__dict__)
        if isinstance(self.images, np.memmap):
            state["images"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self.images is None:
            self.images = _mapped_member(self.path, "image")

    def __len__(self) -> int:
        return len(self.images)

    def __getitems__(self, indices: list[int]) -> list[dict]:
        batch = {
            "image": [Image.fromarray(_as_pil_array(np.asarray(self.images[i]))) for i in indices],
            "label": [int(self.labels[i]) for i in indices],
        }
        out = self.transform(batch)
        return [{key: values[row] for key, values in out.items()} for row in range(len(indices))]

    def __getitem__(self, index: int) -> dict:
        return self.__getitems__([index])[0]


class RealAndAuxiliary(Dataset):
    """One index space over two datasets: i < len(real) is real example i, the rest auxiliary example i - len(real).
    Fetches each part of a batch with one call, so batch transforms stay batched."""

    def __init__(self, real: Dataset, auxiliary: Dataset):
        self.real, self.auxiliary = real, auxiliary
        self.num_real = len(real)

    def __len__(self) -> int:
        return self.num_real + len(self.auxiliary)

    def __getitems__(self, indices: list[int]) -> list[dict]:
        real = [i for i in indices if i < self.num_real]
        auxiliary = [i - self.num_real for i in indices if i >= self.num_real]
        fetched_real, fetched_auxiliary = iter(_fetch(self.real, real)), iter(_fetch(self.auxiliary, auxiliary))
        batch = [next(fetched_real) if i < self.num_real else next(fetched_auxiliary) for i in indices]
        # One label type for the collator (a torch-formatted dataset gives 0-d tensors, a transform plain ints).
        return [{**example, "labels": int(example["labels"])} if "labels" in example else example for example in batch]

    def __getitem__(self, index: int) -> dict:
        return self.__getitems__([index])[0]


def _as_pil_array(image: np.ndarray) -> np.ndarray:
    return image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image


def _fetch(dataset: Dataset, indices: list[int]) -> list:
    if not indices:
        return []
    if hasattr(dataset, "__getitems__"):
        return list(dataset.__getitems__(indices))
    return [dataset[i] for i in indices]


class MixedBatchSampler(Sampler[list[int]]):
    """Batches of `RealAndAuxiliary` indices for one process: `batch_size - int(batch_size * aux_fraction)` real ones
    from this process's slice of a per-epoch permutation shared by all processes, and `int(batch_size * aux_fraction)`
    auxiliary ones drawn with replacement by this process's own generator, shuffled together.

    `len()` is ceil(num_real / (batch_size x world_size)) batches: the epoch length is set by the real data (see the
    module docstring). `set_epoch` (called by Trainer) makes each epoch draw anew; the same seed gives the same
    batches.
    """

    def __init__(
        self,
        num_real: int,
        num_auxiliary: int,
        batch_size: int,
        aux_fraction: float = AUX_FRACTION,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if not 0 <= aux_fraction < 1:
            raise ValueError(f"aux_fraction must be in [0, 1), got {aux_fraction}.")
        if num_real < world_size or num_auxiliary < 1 or batch_size < 1:
            raise ValueError(
                f"Mixed batches need real data for every process ({num_real} images, {world_size} processes), "
                f"auxiliary data ({num_auxiliary}) and a batch size >= 1 ({batch_size})."
            )
        self.num_real, self.num_auxiliary = num_real, num_auxiliary
        self.num_aux_per_batch = int(batch_size * aux_fraction)
        self.num_real_per_batch = batch_size - self.num_aux_per_batch
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.num_batches = math.ceil(num_real / (batch_size * world_size))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    def _real_indices(self) -> Iterator[int]:
        """This process's slice of one shared permutation per pass; a new pass when the slice runs out."""
        shared = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        while True:
            permutation = torch.randperm(self.num_real, generator=shared)
            yield from permutation[self.rank :: self.world_size].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        own = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 1_009 + 1 + self.rank)
        real = self._real_indices()
        for _ in range(self.num_batches):
            batch = [next(real) for _ in range(self.num_real_per_batch)]
            draws = torch.randint(self.num_auxiliary, (self.num_aux_per_batch,), generator=own)
            batch += (draws + self.num_real).tolist()
            order = torch.randperm(len(batch), generator=own).tolist()
            yield [batch[i] for i in order]


def mixed_batches_loader(train_dataset: Dataset, aux_dataset: Dataset, batch_size: int, args, collate_fn, accelerator):
    """The trainers' training loader with auxiliary data: batches of `batch_size` real + auxiliary examples from a
    `MixedBatchSampler`, loaded as `args` (a `TrainingArguments`) says (workers, pinning, prefetching, per-worker
    seeds). The sampler already gives each process its own share, so `accelerator.prepare`'s own split of the
    batches is turned off."""
    sampler = MixedBatchSampler(
        len(train_dataset), len(aux_dataset), batch_size, args.aux_fraction,
        seed=args.seed, rank=args.process_index, world_size=args.world_size,
    )  # fmt: skip
    workers = args.dataloader_num_workers
    loader = DataLoader(
        RealAndAuxiliary(train_dataset, aux_dataset),
        batch_sampler=sampler,
        collate_fn=collate_fn,
        num_workers=workers,
        pin_memory=args.dataloader_pin_memory,
        persistent_workers=args.dataloader_persistent_workers and workers > 0,
        prefetch_factor=args.dataloader_prefetch_factor if workers > 0 else None,
        worker_init_fn=partial(seed_worker, num_workers=workers, rank=args.process_index),
    )
    loader = accelerator.prepare(loader)
    shard = getattr(loader, "batch_sampler", None)
    if shard is not None and getattr(shard, "batch_sampler", None) is sampler:  # Accelerate's per-process split
        shard.num_processes, shard.process_index = 1, 0
    return loader


__all__ = [
    "AUX_FRACTION", "AuxiliaryImages", "MixedBatchSampler", "RealAndAuxiliary", "load_npz", "mixed_batches_loader",
]  # fmt: skip
