"""Running the report: `evaluate_robustness` streams the evaluation data batch by batch through `evaluate_batch`,
adds each batch to the counts, and turns them into a `RobustnessReport`.

Each batch's attacks draw from a generator seeded by (`eval_seed`, batch index), so results do not depend on batch
order, resumption or the number of processes. Under `torchrun` / `accelerate launch` each process evaluates its own
contiguous shard of whole batches (the same batches as one process would make) and the counts are summed. With a
`resume_file`, finished batches are appended to it and skipped when the same evaluation runs again.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from transformers import default_data_collator

from ..progress import ReportProgress
from .batch import batch_generator, check_outputs, evaluate_batch, seconds_per_pass
from .registry import attack_registry, sweep_attacks
from .report import RobustnessReport, SweepPoint
from .resume import ResumeFile, model_identity, tensors_digest
from .sanity import sanity_checks
from .settings import RobustnessSettings, autoattack_status
from .tally import percent, worst_case


def _sum_over_processes(values: list[int]) -> list[int]:
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return values
    backend = torch.distributed.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    tensor = torch.tensor(values, dtype=torch.int64, device=device)
    torch.distributed.all_reduce(tensor)
    return tensor.tolist()


def _shard(dataset: Dataset, batch_size: int) -> tuple[Dataset, int]:
    """This process's contiguous share of `dataset` (no padding, no duplicates) and its first global batch index.

    Shards are made of whole batches of the unsharded evaluation (the batches are split among the processes), so every
    batch holds the same images, and draws from the same generator, whatever the number of processes."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return dataset, 0
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    batches = -(-len(dataset) // batch_size)
    first, last = rank * batches // world, (rank + 1) * batches // world
    return Subset(dataset, range(first * batch_size, min(last * batch_size, len(dataset)))), first


def _batches(data, settings: RobustnessSettings, num_workers: int) -> tuple[Iterable, int]:
    """(batches of {"pixel_values", "labels"}, global index of the first batch) from tensors, a Dataset or a
    DataLoader (a DataLoader is taken as it is: no sharding)."""
    if isinstance(data, DataLoader):
        return data, 0
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        images, labels = data
        data = [{"pixel_values": image, "labels": label} for image, label in zip(images, labels, strict=True)]
    dataset, offset = _shard(data, settings.eval_batch_size)
    loader = DataLoader(
        dataset, batch_size=settings.eval_batch_size, shuffle=False, collate_fn=default_data_collator,
        num_workers=num_workers, generator=torch.Generator(),  # its own: iterating must not draw from the global RNG
    )  # fmt: skip
    return loader, offset


def evaluate_robustness(
    model: nn.Module,
    data,
    settings: RobustnessSettings | None = None,
    progress: Callable[[str], None] | None = None,
    resume_file: str | None = None,
    num_workers: int = 0,
    show_progress: bool = False,
    resume_identity: dict | None = None,
) -> RobustnessReport:
    """Run the whole battery on `data`: a map-style dataset of {"pixel_values" in [0, 1], "labels"}, a DataLoader
    of such batches, or an `(images, labels)` pair of tensors. Returns the report (accuracies in %).

    `progress` receives the stage list with a time estimate up front, then a line per attack and batch (images per
    second) and per batch; `show_progress` adds bars: the report's, whose remaining time is its ETA, and each
    attack's, advancing step by step.

    `resume_identity` adds what else the resume file must have come from (the image processor, a label mapping).

    The model is left exactly as it was (weights, train/eval mode, requires_grad, the global RNG); the same model,
    data and settings give the same numbers.
    """
    settings = settings or RobustnessSettings()
    say = progress or (lambda message: None)
    device = next(model.parameters()).device
    attacks = attack_registry(model, settings)
    sweep = sweep_attacks(settings)
    loader, first_batch = _batches(data, settings, num_workers)
    first_image = first_batch * settings.eval_batch_size
    # A resumed evaluation must see the same shard: same settings, first batch and number of images.
    shard = getattr(loader, "dataset", None)
    shard_size = len(shard) if hasattr(shard, "__len__") else None
    batches = iter(loader)
    first = next(batches, None)
    identity = {}
    if resume_file is not None:  # what the resume file's results must have come from
        data_identity = {"first image": first_image, "images": shard_size}
        if first is not None:
            data_identity["first batch"] = tensors_digest([first["pixel_values"], first["labels"]])
        identity = {**model_identity(model), "data": data_identity, "settings": asdict(settings)}
        identity.update(resume_identity or {})  # the caller's parts: e.g. the image processor and the label mapping
    resume = ResumeFile(resume_file, identity)

    names = ["natural"] + [a.name for a in attacks] + [a.name for a in sweep]
    correct_counts, totals = dict.fromkeys(names, 0), dict.fromkeys(names, 0)
    worst_names = [a.name for a in attacks if a.in_worst_case]
    robust = num_samples = 0
    aa_reference = 0  # short PGD's correct count on the images AutoAttack ran on
    seconds: dict[str, float] = {}
    cost: dict[str, dict[str, int]] = {}
    short = f"pgd{settings.pgd_steps[0]}"
    resumed_batches = 0  # batches whose results came from the resume file
    if first is not None:
        check_outputs(model, first["pixel_values"][:2].to(device))
    watch = None
    if (progress is not None or show_progress) and first is not None and shard_size:
        covered = {
            a.name: shard_size if a.max_samples < 0 else max(0, min(shard_size, a.max_samples - first_image))
            for a in attacks + sweep
        }
        count = -(-shard_size // settings.eval_batch_size)
        pace = seconds_per_pass(model, first["pixel_values"][:8].to(device))
        watch = ReportProgress(attacks + sweep, covered, count, pace, say, disable=not show_progress)
        say(watch.plan())
        watch.start()
    start_time = time.time()
    for index, batch in enumerate(itertools.chain([first] if first is not None else [], batches)):
        if watch is not None:
            watch.batch = index
        x = batch["pixel_values"].to(device)
        y = batch["labels"].to(device)
        cached = resume.get(index)
        if cached is None:
            batch_seconds: dict[str, float] = {}
            batch_cost: dict[str, dict[str, int]] = {}
            generator = batch_generator(device, settings.eval_seed, first_batch + index)
            results = evaluate_batch(
                model, attacks + sweep, x, y, generator, first_image + num_samples, batch_seconds, batch_cost, watch
            )
            resume.add(index, results, batch_seconds, batch_cost)
        else:
            results, batch_seconds, batch_cost = cached
            resumed_batches += 1
        for name, value in batch_seconds.items():
            seconds[name] = seconds.get(name, 0.0) + value
        for name, counts in batch_cost.items():
            total = cost.setdefault(name, dict.fromkeys(counts, 0))
            for key, value in counts.items():
                total[key] += value
        for name, bits in results.items():
            correct_counts[name] += int(bits.sum())
            totals[name] += len(bits)
        robust += int(worst_case(results, worst_names).sum())
        if "autoattack" in results:
            aa_reference += int(results[short][: len(results["autoattack"])].sum())
        num_samples += len(x)
        say(f"batch {index + 1}: {num_samples} images, {time.time() - start_time:.1f} s")
    if watch is not None:
        watch.close()

    # Sum over processes (one process: unchanged); costs and seconds stay this process's (per image they compare).
    flat = _sum_over_processes(
        [correct_counts[n] for n in names] + [totals[n] for n in names] + [robust, num_samples, aa_reference]
    )
    k = len(names)
    correct_counts = dict(zip(names, flat[:k], strict=True))
    totals = dict(zip(names, flat[k : 2 * k], strict=True))
    robust, num_samples, aa_reference = flat[2 * k :]

    ran = [n for n in names if totals[n] > 0]
    accuracy = {n: percent(correct_counts[n], totals[n]) for n in ran if not n.startswith("sweep_")}
    titles = {"natural": "natural (no attack)", **{a.name: a.title for a in attacks + sweep}}
    sweep_points = [
        SweepPoint(eps, round(eps * 255, 2), percent(correct_counts[a.name], totals[a.name]))
        for eps, a in zip(settings.eps_sweep, sweep, strict=True)
    ]
    status = autoattack_status(settings)
    reference = None
    if "autoattack" in accuracy:
        status = next(a.run.description for a in attacks if a.name == "autoattack")
        reference = percent(aa_reference, totals["autoattack"])
        if totals["autoattack"] < num_samples:
            status += (
                f", on the first {totals['autoattack']} of {num_samples} images "
                f"(PGD-{settings.pgd_steps[0]} there: {reference}%)"
            )
    return RobustnessReport(
        num_samples=num_samples,
        natural_accuracy=accuracy["natural"],
        robust_accuracy=percent(robust, num_samples),
        robust_accuracy_attacks=[n for n in worst_names if n in accuracy],
        accuracy=accuracy,
        attack_samples={n: totals[n] for n in accuracy},
        titles={n: titles[n] for n in ran},
        autoattack=status,
        eps_sweep=sweep_points,
        sanity_checks=sanity_checks(accuracy, sweep_points, settings.tolerance, reference),
        settings={
            **asdict(settings),
            "epsilon_255": round(settings.epsilon * 255, 2),
            "step_size_255": round(settings.step_size * 255, 2),
        },
        seconds={name: round(value, 2) for name, value in seconds.items()},
        info={"resumed": {"batches": resumed_batches, "file": resume.path}} if resumed_batches else {},
        cost={
            name: {
                "seconds_per_image": round(seconds.get(name, 0.0) / max(c["images"], 1), 5),
                "forward_passes_per_image": round(c["forward"] / max(c["images"], 1), 2),
                "backward_passes_per_image": round(c["backward"] / max(c["images"], 1), 2),
            }
            for name, c in cost.items()
        },
    )
