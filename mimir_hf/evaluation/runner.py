"""Running the report: `evaluate_robustness` streams this process's batches through `evaluate_batch`, counts them
in a `Tally`, merges the tallies of every process and builds the `RobustnessReport`.

Each batch's attacks draw from a generator seeded by (`eval_seed`, batch index), so results do not depend on batch
order, resumption or the number of processes. Under `torchrun` / `accelerate launch` each process evaluates its own
contiguous run of whole batches (the same batches as one process would make; `processes.batch_share`) and the tallies
are merged. With a `resume_file`, finished batches are appended to it and skipped when the same evaluation runs again.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from transformers import default_data_collator

from ..progress import ReportProgress
from .batch import batch_generator, check_outputs, evaluate_batch, seconds_per_pass
from .processes import Share, batch_share, gather_tally
from .registry import Attack, attack_registry, sweep_attacks
from .report import RobustnessReport, build_report
from .resume import ResumeFile, model_identity, tensors_digest
from .settings import RobustnessSettings
from .tally import AttackCosts, Tally


def evaluate_robustness(
    model: nn.Module,
    data,
    settings: RobustnessSettings | None = None,
    progress: Callable[[str], None] | None = None,
    resume_file: str | None = None,
    num_workers: int = 0,
    show_progress: bool = False,
    resume_identity: dict | None = None,
    split_loader: bool = False,
) -> RobustnessReport:
    """Run the whole battery on `data`: a map-style dataset of {"pixel_values" in [0, 1], "labels"}, a DataLoader
    of such batches, or an `(images, labels)` pair of tensors. Returns the report (accuracies in %).

    `progress` receives the stage list with a time estimate up front, then a line per attack and batch (images per
    second) and per batch; `show_progress` adds bars: the report's, whose remaining time is its ETA, and each
    attack's, advancing step by step.

    `resume_identity` adds what else the resume file must have come from (the image processor, a label mapping).

    Under several processes a DataLoader must give each process its own images (Accelerate-prepared, or drawing
    through a `DistributedSampler`), else it is refused; `split_loader=True` vouches for one split otherwise (a
    dataset sharded by rank), whose tallies are then merged.

    The model is left exactly as it was (weights, train/eval mode, requires_grad, the global RNG); the same model,
    data and settings give the same numbers.
    """
    settings = settings or RobustnessSettings()
    say = progress or (lambda message: None)
    attacks, sweep = attack_registry(model, settings), sweep_attacks(settings)
    loader, share = _batches(data, settings, num_workers, split_loader)
    batches = iter(loader)
    first = next(batches, None)
    identity = {}
    if resume_file is not None:  # what the resume file's results must have come from
        identity = _resume_identity(model, settings, loader, share, first, resume_identity)
    resume = ResumeFile(resume_file, identity, share)
    run = _ShareRun(model, attacks + sweep, [a.name for a in attacks if a.in_worst_case], settings, share, resume, say)
    if first is not None:
        check_outputs(model, first["pixel_values"][:2].to(run.device))
        if progress is not None or show_progress:
            run.watch_progress(_images(loader), first, show_progress)
    run.evaluate(itertools.chain([first] if first is not None else [], batches))
    report = build_report(gather_tally(run.tally), run.costs, attacks, sweep, settings)
    if run.resumed:
        report.info["resumed"] = {"batches": run.resumed, "file": run.resume.path}
    return report


@dataclass
class _ShareRun:
    """This process's pass over its share of the batches: each batch evaluated (or read back from the resume file),
    counted in `tally`, its costs in `costs`."""

    model: nn.Module
    attacks: list[Attack]  # the report's and the sweep's
    worst: list[str]  # the rows of the worst case
    settings: RobustnessSettings
    share: Share
    resume: ResumeFile
    say: Callable[[str], None]
    watch: ReportProgress | None = None
    resumed: int = 0  # batches read back from the resume file
    costs: AttackCosts = field(default_factory=AttackCosts)

    def __post_init__(self):
        self.device = next(self.model.parameters()).device
        self.tally = Tally.for_rows(["natural"] + [a.name for a in self.attacks])
        self.first_image = self.share.first * self.settings.eval_batch_size

    def watch_progress(self, images: int | None, first: dict, show_bars: bool) -> None:
        """Announce the plan with its time estimate, and follow the attacks (bars when `show_bars`)."""
        if not images:
            return
        covered = {
            a.name: images if a.max_samples < 0 else max(0, min(images, a.max_samples - self.first_image))
            for a in self.attacks
        }
        count = -(-images // self.settings.eval_batch_size)
        pace = seconds_per_pass(self.model, first["pixel_values"][:8].to(self.device))
        self.watch = ReportProgress(self.attacks, covered, count, pace, self.say, disable=not show_bars)
        self.say(self.watch.plan())
        self.watch.start()

    def evaluate(self, batches: Iterable[dict]) -> None:
        start = time.time()
        for index, batch in enumerate(batches):
            self.add(index, batch)
            self.say(f"batch {index + 1}: {self.tally.images} images, {time.time() - start:.1f} s")
        if self.watch is not None:
            self.watch.close()

    def add(self, index: int, batch: dict) -> None:
        """Evaluate the share's batch `index` (or read it back) and count it."""
        if self.watch is not None:
            self.watch.batch = index
        cached = self.resume.get(index)
        if cached is None:
            seconds, cost = {}, {}
            x, y = batch["pixel_values"].to(self.device), batch["labels"].to(self.device)
            generator = batch_generator(self.device, self.settings.eval_seed, self.share.first + index)
            first_image = self.first_image + self.tally.images
            results = evaluate_batch(self.model, self.attacks, x, y, generator, first_image, seconds, cost, self.watch)
            self.resume.add(index, results, seconds, cost)
        else:
            results, seconds, cost = cached
            self.resumed += 1
        self.costs.add(seconds, cost)
        self.tally.add(results, self.worst, f"pgd{self.settings.pgd_steps[0]}")


def _images(loader) -> int | None:
    dataset = getattr(loader, "dataset", None)
    return len(dataset) if hasattr(dataset, "__len__") else None


def _resume_identity(model, settings, loader, share: Share, first: dict | None, extra: dict | None) -> dict:
    """What a resume file's results must have come from: the model, the settings and this process's data (its first
    image, number of images and first batch: the same share of the same data), and the caller's `extra` parts."""
    data = {"first image": share.first * settings.eval_batch_size, "images": _images(loader)}
    if first is not None:
        data["first batch"] = tensors_digest([first["pixel_values"], first["labels"]])
    return {**model_identity(model), "data": data, "settings": asdict(settings), **(extra or {})}


def _batches(
    data, settings: RobustnessSettings, num_workers: int, split_loader: bool = False
) -> tuple[Iterable, Share]:
    """(this process's batches of {"pixel_values", "labels"}, its share of the batches) from tensors, a Dataset or a
    DataLoader (a DataLoader is taken as it is; under several processes it must already give each its own part)."""
    if isinstance(data, DataLoader):
        share = batch_share(len(data) if hasattr(data, "__len__") else 0, split=False)
        if share.processes > 1 and not (split_loader or _split_among_processes(data)):
            raise ValueError(
                f"evaluate_robustness got a DataLoader that is not split among the {share.processes} processes (no "
                "DistributedSampler, not prepared by Accelerate): every process would evaluate every batch and the "
                f"report would count each image {share.processes} times. Pass the dataset itself (the report splits "
                "its batches among the processes) or the loader from accelerator.prepare(loader); if each process's "
                "loader already reads its own images (e.g. a dataset sharded by rank), pass split_loader=True."
            )
        return data, share
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        images, labels = data
        data = [{"pixel_values": image, "labels": label} for image, label in zip(images, labels, strict=True)]
    size = settings.eval_batch_size
    share = batch_share(-(-len(data) // size))
    shard = data if share.first == 0 and share.stop == share.count else Subset(data, _image_range(share, size, data))
    loader = DataLoader(
        shard, batch_size=size, shuffle=False, collate_fn=default_data_collator,
        num_workers=num_workers, generator=torch.Generator(),  # its own: iterating must not draw from the global RNG
    )  # fmt: skip
    return loader, share


def _split_among_processes(loader: DataLoader) -> bool:
    """Whether `loader` gives each process its own part of the data: prepared by Accelerate (a sharded batch sampler
    or dataset, or batches dispatched from the main process) or drawing through a `DistributedSampler`."""
    from accelerate.data_loader import BatchSamplerShard, DataLoaderDispatcher, IterableDatasetShard
    from torch.utils.data.distributed import DistributedSampler

    if isinstance(loader, DataLoaderDispatcher) or isinstance(loader.dataset, IterableDatasetShard):
        return True
    # samplers wrap samplers (a resumed loader's SkipBatchSampler around a BatchSamplerShard, a BatchSampler around
    # a DistributedSampler): follow them down
    pending, seen = [getattr(loader, "batch_sampler", None), getattr(loader, "sampler", None)], set()
    while pending:
        sampler = pending.pop()
        if sampler is None or id(sampler) in seen:
            continue
        if isinstance(sampler, (BatchSamplerShard, DistributedSampler)):
            return True
        seen.add(id(sampler))
        pending += [getattr(sampler, "batch_sampler", None), getattr(sampler, "sampler", None)]
    return False


def _image_range(share: Share, batch_size: int, data) -> range:
    return range(share.first * batch_size, min(share.stop * batch_size, len(data)))
