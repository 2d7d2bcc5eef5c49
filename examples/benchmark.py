#!/usr/bin/env python
"""How far MIMIR's training steps sit above their floors, measured in one process, interleaved, after warm-up.

    python examples/benchmark.py                                            # CPU-sized default (digits shape, patch 2)
    python examples/benchmark.py --preset vit-small-patch2-32 --batch_size 256 --output bench.json   # on a GPU
    python examples/benchmark.py --evaluation_memory --eval_images 64 640    # the report's peak memory vs images

Cases, each a full optimizer step (forward, backward, AdamW):
  a) transformers' own `ViTMAEForPreTraining` with the same shapes (the MAE floor);
  b) a MIMIR pre-training step (`MimirPreTrainingTrainer.compute_loss`: k-step attack + reconstruction + MI);
  c) a clean classifier step;
  d) a PGD-k adversarial-training step (`MimirAdversarialTrainer.compute_loss`).
A k-step attack costs k forward/backward passes, so b/a and d/c cannot be below k + 1. The MI term's share is timed
on its own (HSIC forward + backward on tensors of the step's shapes). On CUDA, steps run under bf16 autocast and peak
memory is `torch.cuda.max_memory_allocated`; on a CPU it is the peak of live tensor bytes (weights, gradients,
optimizer state, activations, temporaries) in one extra, untimed step, counted by `LiveTensorBytes` below.

`--evaluation_memory` measures instead the robustness report (`evaluate_robustness`, every attack but AutoAttack) over
N and 10N images streamed from a lazily transformed `datasets.Dataset`: its peak memory (the same counter on a CPU,
`torch.cuda.max_memory_allocated` on CUDA) should not grow with the number of images.

`--end_to_end` measures from files to gradients instead: for each recipe of `--cases` it writes image files in a
temporary folder (JPEGs at `--source_size` for the ImageNet recipes, 32x32 PNGs for the CIFAR ones, plus an `.npz`
of auxiliary images where the recipe mixes them in), loads them with the package's own data path (`load_data`,
`load_aux_data`: decoding, the recipe's augmentation, the image processor) and runs the recipe's real trainer for
`--warmup` + `--steps` steps with each `--workers` count of data-loader workers. Per case it reports images/s end to
end, images/s of the model step alone (one batch from memory, repeated), the data path's images/s in one process
(decode + augmentation + collate: what one worker delivers) and which of the two bounds the run; with `--feed_rate`
the workers one GPU needs at each rate. `--tabulate file.json` prints the tables of docs/benchmarks.md.

    python examples/benchmark.py --end_to_end --tiny --workers 0 1 2 --output e2e.json      # CPU, tiny models
    python examples/benchmark.py --end_to_end --workers 0 4 8 --feed_rate 4019 1681 --output e2e.json   # a GPU
    python examples/benchmark.py --tabulate e2e.json
"""

from __future__ import annotations

import argparse
import json
import logging as logging_module
import math
import multiprocessing
import os
import statistics
import tempfile
import time
import weakref
from concurrent.futures import ProcessPoolExecutor

import datasets
import numpy as np
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from transformers import PrinterCallback, TrainerCallback, ViTMAEConfig, ViTMAEForPreTraining
from transformers.utils import logging

from mimir_hf import (
    PRESETS,
    MimirConfig,
    MimirForImageClassification,
    MimirForPreTraining,
    MimirSwinConfig,
    MimirSwinForImageClassification,
)
from mimir_hf.augmentation import AugmentationArguments
from mimir_hf.commands import finetune as finetune_command
from mimir_hf.commands import pretrain as pretrain_command
from mimir_hf.commands.common import (
    DEMO_SHAPE,
    DataArguments,
    FineTuningModelArguments,
    ModelArguments,
    RunArguments,
    config_overrides,
    load_aux_data,
    load_data,
    load_recipe,
    parse,
    resolve_recipe,
)
from mimir_hf.data import image_processor_for, with_pixel_transform
from mimir_hf.evaluation import RobustnessSettings, evaluate_robustness
from mimir_hf.mutual_information import hsic
from mimir_hf.threat_model import PRETRAINING_ATTACK
from mimir_hf.trainer import (
    MimirAdversarialTrainer,
    MimirAdversarialTrainingArguments,
    MimirPreTrainingArguments,
    MimirPreTrainingTrainer,
)

# The digits shape of the example scripts at patch 2 (64 patches): big enough that a step is compute-bound, as at the
# paper's shapes (the demo's patch 4 leaves 16 tokens, where per-operation overhead would dominate the ratios).
DEFAULT_SHAPE = {**DEMO_SHAPE, "patch_size": 2}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), help="A paper shape; default: digits, patch 2.")
    parser.add_argument(
        "--batch_size", type=int, help="Images per step (default 64; --end_to_end: the recipe's per-device batch)."
    )
    parser.add_argument(
        "--attack_steps", type=int, default=PRETRAINING_ATTACK.steps, help="k of the MIMIR pre-training attack."
    )
    parser.add_argument("--pgd_steps", type=int, default=3, help="k of the PGD adversarial-training step.")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--step_cases", nargs="+", choices=sorted(STEP_CASES), default=sorted(STEP_CASES), help="Step cases to run."
    )
    parser.add_argument(
        "--dtype", choices=("auto", "bf16", "fp32"), default="auto",
        help="bf16 autocast or fp32; auto: bf16 on CUDA, fp32 on a CPU.",
    )  # fmt: skip
    parser.add_argument(
        "--attn_implementation", choices=("sdpa", "eager"), help="Attention of the step cases (default: sdpa)."
    )
    parser.add_argument(
        "--compile", action="store_true",
        help="torch.compile each step case's model (--end_to_end: torch_compile in the trainer).",
    )  # fmt: skip
    parser.add_argument("--compile_backend", default="inductor", help="torch.compile's backend (eager: tracing only).")
    parser.add_argument("--output", help="Write the results as JSON here.")
    parser.add_argument("--tables", metavar="FILE.md", help="Also write the printed markdown tables here.")
    parser.add_argument(
        "--report_model",
        help="Also measure the robustness report's cost per attack on this saved classifier (e.g. "
        "outputs/demo/finetune, after make demo): images, seconds, forward and backward passes per image.",
    )
    parser.add_argument("--report_images", type=int, default=64, help="Test digits the report cost runs on.")
    parser.add_argument("--evaluation_memory", action="store_true", help="Measure the report's peak memory instead.")
    parser.add_argument("--eval_images", type=int, nargs="+", default=[64, 640], help="Image counts to compare.")
    end_to_end = parser.add_argument_group("--end_to_end: from files to gradients")
    end_to_end.add_argument("--end_to_end", action="store_true", help="Run the recipes' trainers from image files.")
    end_to_end.add_argument("--cases", nargs="+", default=list(END_TO_END_CASES), help="Recipes to run.")
    end_to_end.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="dataloader_num_workers.")
    end_to_end.add_argument("--feed_rate", type=float, nargs="+", default=list(FEED_RATES), help="GPU images/s.")
    end_to_end.add_argument(
        "--tiny", action="store_true", help="Tiny models at the recipes' (step cases: the shape's) input sizes."
    )
    end_to_end.add_argument("--threads", type=int, help="torch threads of the main process (default: torch's).")
    end_to_end.add_argument("--source_size", type=int, nargs=2, default=[500, 375], metavar=("W", "H"))
    end_to_end.add_argument("--steps", type=int, default=6, help="Timed steps after --warmup.")
    end_to_end.add_argument("--tabulate", metavar="FILE.json", help="Print the tables of an --end_to_end JSON.")
    return parser.parse_args(argv)


def report_cost(model_path: str, num_images: int, device: str) -> dict:
    """The robustness report (default settings, AutoAttack on every image) on the first `num_images` test digits:
    per attack, the seconds, forward passes and backward passes per image. Passes per image do not depend on the
    hardware: with a measured per-image pass time they predict the report's time on another device."""
    from transformers import AutoModelForImageClassification

    from mimir_hf.data import image_processor_for, load_digits_dataset, tensors, with_pixel_transform
    from mimir_hf.evaluation import RobustnessSettings, evaluate_robustness

    model = AutoModelForImageClassification.from_pretrained(model_path).to(device).eval()
    test = load_digits_dataset()["test"].select(range(num_images))
    images, labels = tensors(with_pixel_transform(test, "image", "label", image_processor_for(model.config)))
    report = evaluate_robustness(model, (images, labels), RobustnessSettings(autoattack_max_samples=-1))
    lines = [
        f"report cost on {num_images} test digits ({model_path}, {device}); natural {report.natural_accuracy}%",
        "| attack | seconds / image | forward passes / image | backward passes / image |",
        "| --- | --- | --- | --- |",
    ]
    for name, cost in report.cost.items():
        lines.append(
            f"| {report.titles.get(name, name)} | {cost['seconds_per_image']:.4f} | "
            f"{cost['forward_passes_per_image']:.1f} | {cost['backward_passes_per_image']:.1f} |"
        )
    total = sum(report.seconds.values())
    lines.append(f"total {total:.1f} s = {total / num_images:.3f} s per image")
    print("\n".join(lines))
    return {"images": num_images, "seconds": report.seconds, "cost": report.cost, "natural": report.natural_accuracy}


class LiveTensorBytes(TorchDispatchMode):
    """Counts the bytes of distinct tensor storages alive inside the block (those given at the start plus every one
    an operation creates, released when freed) and keeps the peak: a CPU stand-in for CUDA's max_memory_allocated."""

    def __init__(self, held=()):
        super().__init__()
        self.current = self.peak = 0
        self._alive: dict[tuple, int] = {}
        for tensor in held:
            self._track(tensor)

    def _track(self, tensor):
        storage = tensor.untyped_storage()
        key = (str(storage.device), storage.data_ptr())
        if storage.nbytes() == 0 or key in self._alive:  # views and in-place results share a storage
            return
        self._alive[key] = storage.nbytes()
        self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._release, key)

    def _release(self, key):
        self.current -= self._alive.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor):
                self._track(value)
        return out


def uses_bf16(args) -> bool:
    """Whether steps run under bf16 autocast: `--dtype bf16`, or `auto` on CUDA."""
    return args.dtype == "bf16" or (args.dtype == "auto" and args.device.startswith("cuda"))


class Case:
    """One kind of training step: `step()` runs it once, the times and peak memory accumulate. `bf16`: under bf16
    autocast; `compile_backend`: the loss function gets `torch.compile(model)` (the optimizer the model's weights)."""

    def __init__(self, name, model, loss_fn, device, bf16=None, compile_backend=None):
        self.name, self.model, self.loss_fn, self.device = name, model.to(device).train(), loss_fn, device
        self.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        self.times, self.peak = [], 0
        self.bf16 = device.startswith("cuda") if bf16 is None else bf16
        self.runs = torch.compile(self.model, backend=compile_backend) if compile_backend else self.model

    def step(self, images, labels, record=True):
        cuda = self.device.startswith("cuda")
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        with torch.autocast(device_type="cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=self.bf16):
            loss = self.loss_fn(self.runs, images, labels)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
            self.peak = max(self.peak, torch.cuda.max_memory_allocated())
        if record:
            self.times.append(time.perf_counter() - start)

    def cpu_peak(self, images, labels):
        """Peak bytes of live tensors during one untimed step: weights, buffers, optimizer state and inputs held
        before it, plus every tensor the step creates, for as long as it lives."""
        held = [*self.model.parameters(), *self.model.buffers(), images, labels]
        held += [t for state in self.optimizer.state.values() for t in state.values() if torch.is_tensor(t)]
        with LiveTensorBytes(held) as counter:
            self.step(images, labels, record=False)
        self.peak = counter.peak

    @property
    def median(self):
        return statistics.median(self.times)


def streamed_images(model, processor, count: int, image_size: int, seed: int = 0):
    """`count` random 8-bit RGB images as a `datasets.Dataset` (decoded and converted one batch at a time when read
    through `with_pixel_transform`, the way evaluation data arrives), labelled with `model`'s own clean predictions:
    every image is classified correctly, so every attack runs on whole batches (the largest working set)."""
    from datasets import ClassLabel, Dataset, Features, Image

    rng = np.random.RandomState(seed)
    images = [rng.randint(0, 256, (image_size, image_size, 3), dtype=np.uint8) for _ in range(count)]
    labels = []
    with torch.no_grad():
        for start in range(0, count, 256):
            pixels = processor(images=images[start : start + 256], return_tensors="pt")["pixel_values"]
            labels += model(pixel_values=pixels.to(next(model.parameters()).device)).logits.argmax(1).tolist()
    features = Features({"image": Image(), "label": ClassLabel(num_classes=10)})
    return Dataset.from_dict({"image": images, "label": labels}, features=features)


def evaluation_memory(images=(64, 640), batch_size=64, shape=None, settings=None, device="cpu") -> dict:
    """Peak memory and time of `evaluate_robustness` over each count of `images` (the digits-recipe model with random
    weights, or `shape`; images it classifies correctly; every attack but AutoAttack, which is slow on a CPU). Peak
    memory on a CPU: the live tensor bytes (`LiveTensorBytes`), the model's weights included; on CUDA:
    `torch.cuda.max_memory_allocated`."""
    torch.manual_seed(0)
    config = MimirConfig(**(shape or DEFAULT_SHAPE), num_labels=10)
    model = MimirForImageClassification(config).to(device).eval()
    settings = settings or RobustnessSettings(autoattack=False, eval_batch_size=batch_size)
    processor = image_processor_for(config)
    source = streamed_images(model, processor, max(images), config.image_size_hw[0])
    peaks, seconds = [], []
    for count in images:
        data = with_pixel_transform(source.select(range(count)), "image", "label", processor)
        start = time.perf_counter()
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
            evaluate_robustness(model, data, settings)
            peaks.append(torch.cuda.max_memory_allocated())
        else:
            with LiveTensorBytes([*model.parameters(), *model.buffers()]) as counter:
                evaluate_robustness(model, data, settings)
            peaks.append(counter.peak)
        seconds.append(time.perf_counter() - start)
    return {
        "images": list(images),
        "batch_size": settings.eval_batch_size,
        "peak_mib": [round(peak / 2**20, 2) for peak in peaks],
        "peak_bytes": peaks,
        "ratio_last_over_first": round(peaks[-1] / peaks[0], 4),
        "seconds": [round(s, 1) for s in seconds],
        "measure": "torch.cuda.max_memory_allocated" if device.startswith("cuda") else "live tensor bytes",
    }


# ----------------------------------------------------------------------------------------------------------------
# The step cases: a) MAE, b) MIMIR, c) clean, d) PGD-AT, on tensors in memory
# ----------------------------------------------------------------------------------------------------------------

STEP_CASES = {"a": "ViTMAE step (transformers)", "b": "MIMIR pre-training step", "c": "clean classifier step",
              "d": "AT step"}  # fmt: skip


def step_shape(args) -> dict:
    """The model shape of the step cases: `--preset` (default: digits, patch 2), tiny widths with `--tiny`."""
    shape = dict(PRESETS[args.preset]) if args.preset else dict(DEFAULT_SHAPE)
    return {**shape, **TINY_VIT} if args.tiny else shape


def step_cases(args, config) -> list[Case]:
    """The `--step_cases` of `config`'s shape, each a `Case` with the run's precision and compilation."""
    scratch, cpu = tempfile.mkdtemp(), not args.device.startswith("cuda")
    extra = {"attn_implementation": args.attn_implementation} if args.attn_implementation else {}
    vit_mae_fields = {k: v for k, v in config.to_dict().items() if k in ViTMAEConfig().to_dict()}
    settings = dict(device=args.device, bf16=uses_bf16(args), compile_backend=args.compile_backend if args.compile
                    else None)  # fmt: skip
    cases = []
    for letter in args.step_cases:
        if letter == "a":
            model, loss = ViTMAEForPreTraining(ViTMAEConfig(**vit_mae_fields, **extra)), _mae_loss
        elif letter == "b":
            trainer = MimirPreTrainingTrainer(
                model=MimirForPreTraining(config),
                args=MimirPreTrainingArguments(output_dir=scratch, report_to=[], use_cpu=cpu),
            )
            model, loss = trainer.model, _trainer_loss(trainer, labelled=False)
        elif letter == "c":
            model, loss = MimirForImageClassification(config), _clean_loss
        else:
            arguments = MimirAdversarialTrainingArguments(
                output_dir=scratch, report_to=[], adversarial_steps=args.pgd_steps, use_cpu=cpu
            )
            trainer = MimirAdversarialTrainer(model=MimirForImageClassification(config), args=arguments)
            model, loss = trainer.model, _trainer_loss(trainer, labelled=True)
        cases.append(Case(step_case_name(letter, args), model, loss, **settings))
    return cases


def step_case_name(letter: str, args) -> str:
    """E.g. "b) MIMIR pre-training step (k=1)", "d) PGD-3 AT step"."""
    if letter == "b":
        return f"b) {STEP_CASES['b']} (k={args.attack_steps})"
    if letter == "d":
        return f"d) PGD-{args.pgd_steps} {STEP_CASES['d']}"
    return f"{letter}) {STEP_CASES[letter]}"


def _mae_loss(model, images, labels):
    return model(pixel_values=images).loss


def _clean_loss(model, images, labels):
    return F.cross_entropy(model(pixel_values=images).logits.float(), labels)


def _trainer_loss(trainer, labelled: bool):
    """The trainer's `compute_loss` on a batch of images (and labels, when `labelled`)."""

    def loss(model, images, labels):
        inputs = {"pixel_values": images, **({"labels": labels} if labelled else {})}
        return trainer.compute_loss(model, inputs)

    return loss


def mi_seconds(args, config, images) -> float:
    """Median seconds of the MI term alone: HSIC(Z, X') forward + backward at the MIMIR step's shapes."""
    kept = 1 + int(config.num_patches * (1 - config.mask_ratio))
    latent = torch.randn(len(images), kept, config.hidden_size, device=args.device, requires_grad=True)
    cuda, times = args.device.startswith("cuda"), []
    for index in range(args.warmup + args.repeats):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        hsic(latent, images, sigma=config.mi_sigma).backward()
        if cuda:
            torch.cuda.synchronize()
        if index >= args.warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_steps(args, cases, images, labels) -> None:
    """Warm-up, then `--repeats` rounds, interleaved so that drifts (clocks, other load) hit every case alike; on a
    CPU one more, untimed step per case for its peak memory."""
    for _ in range(args.warmup):
        for case in cases:
            case.step(images, labels, record=False)
    for _ in range(args.repeats):
        for case in cases:
            case.step(images, labels)
    if not args.device.startswith("cuda"):
        for case in cases:
            case.cpu_peak(images, labels)


def step_benchmark(args) -> dict:
    """The step cases on one random batch: prints their table and writes `args.output`."""
    torch.manual_seed(0)
    shape = step_shape(args)
    extra = {"attn_implementation": args.attn_implementation} if args.attn_implementation else {}
    config = MimirConfig(**shape, attack_steps=args.attack_steps, num_labels=10, **extra)
    cases = step_cases(args, config)
    images = torch.rand(args.batch_size, config.num_channels, *config.image_size_hw, device=args.device)
    labels = torch.randint(0, 10, (args.batch_size,), device=args.device)
    run_steps(args, cases, images, labels)
    result = step_result(args, shape, cases, mi_seconds(args, config, images))
    tables = step_tables(result)
    if args.report_model:
        print(tables)
        result["report_cost"] = report_cost(args.report_model, args.report_images, args.device)
    return write_outputs(args, result, tables, printed=bool(args.report_model))


def write_outputs(args, result: dict, tables: str, printed: bool = False) -> dict:
    """Prints `tables` (unless `printed`), writes `result` to `--output` and `tables` to `--tables`."""
    if not printed:
        print(tables)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2)
    if args.tables:
        with open(args.tables, "w") as f:
            f.write(tables + "\n")
    return result


def step_result(args, shape: dict, cases: list[Case], mi: float) -> dict:
    """The step cases' numbers; a ratio (b/a, d/c, MI share, memory b/a) where both its cases ran, else None."""
    cuda = args.device.startswith("cuda")
    by_letter = {case.name[0]: case for case in cases}

    def ratio(top, bottom, of=lambda case: case.median):
        both = top in by_letter and bottom in by_letter
        return round(of(by_letter[top]) / of(by_letter[bottom]), 3) if both else None

    return {
        "mode": "steps", "device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
        "precision": "bf16 autocast" if uses_bf16(args) else "fp32", "shape": shape,
        "shape_name": (args.preset or "digits, patch 2") + (", tiny widths" if args.tiny else ""),
        "attn_implementation": args.attn_implementation or "sdpa",
        "compile": args.compile_backend if args.compile else None, "batch_size": args.batch_size,
        "attack_steps": args.attack_steps, "pgd_steps": args.pgd_steps, "repeats": args.repeats,
        "median_seconds": {case.name: round(case.median, 5) for case in cases},
        "images_per_second": {case.name: round(args.batch_size / case.median, 1) for case in cases},
        "peak_memory_mib": {case.name: round(case.peak / 2**20, 1) for case in cases},
        "peak_memory_measure": "torch.cuda.max_memory_allocated" if cuda else "live tensor bytes (LiveTensorBytes)",
        "ratio_b_over_a": ratio("b", "a"), "floor_b": args.attack_steps + 1,
        "target_b": round(2.10 * (args.attack_steps + 1) / 2, 2),
        "ratio_d_over_c": ratio("d", "c"), "floor_d": args.pgd_steps + 1,
        "target_d": round(1.05 * (args.pgd_steps + 1), 2),
        "mi_seconds": round(mi, 5),
        "mi_share_of_b": round(mi / by_letter["b"].median, 4) if "b" in by_letter else None,
        "memory_b_over_a": ratio("b", "a", of=lambda case: case.peak),
    }  # fmt: skip


def step_tables(result: dict) -> str:
    """The step cases' table of docs/benchmarks.md and the lines under it (the ratios of the cases that ran)."""
    compiled = f", torch.compile ({result['compile']})" if result.get("compile") else ""
    lines = [
        f"device {result['device']} ({result['precision']}, {result.get('attn_implementation', 'sdpa')} attention"
        f"{compiled}), batch {result['batch_size']}, shape {result.get('shape_name', result['shape'])}",
        "",
        "| case | median step (ms) | images/s | peak memory (MiB) |",
        "| --- | --- | --- | --- |",
    ]
    for name, seconds in result["median_seconds"].items():
        lines.append(
            f"| {name} | {1000 * seconds:.1f} | {result['images_per_second'][name]:.0f} | "
            f"{result['peak_memory_mib'][name]:.1f} |"
        )
    lines.append("")
    if result["ratio_b_over_a"] is not None:
        lines.append(
            f"b/a = {result['ratio_b_over_a']:.2f} (floor {result['floor_b']}, target <= {result['target_b']})"
        )
    if result["ratio_d_over_c"] is not None:
        lines.append(
            f"d/c = {result['ratio_d_over_c']:.2f} (floor {result['floor_d']}, target <= {result['target_d']})"
        )
    if result["mi_share_of_b"] is not None:
        lines.append(
            f"MI term: {1000 * result['mi_seconds']:.2f} ms = {100 * result['mi_share_of_b']:.1f}% of a MIMIR step "
            "(target <= 5% at batch 256)"
        )
    if result["memory_b_over_a"] is not None:
        lines.append(f"peak memory b/a = {result['memory_b_over_a']:.2f} (target <= 1.3)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# --end_to_end: from files to gradients
# ----------------------------------------------------------------------------------------------------------------

# One recipe per data path: CIFAR-10 crop-flip, + auxiliary data, + the PGD-AT step; ImageNet MAE's random-resized
# crop (pre-training and PGD-AT fine-tuning) and ARES's RandAugment + erasing + mixup / cutmix (Swin).
END_TO_END_CASES = (
    "cifar10/pretrain_vit_small",
    "cifar10/pretrain_vit_small_edm",
    "cifar10/finetune_vit_small",
    "imagenet/pretrain_vit_base",
    "imagenet/finetune_vit_base_eps4",
    "imagenet/finetune_swin_base",
)
FEED_RATES = (4019, 1681)  # a MIMIR step's images/s on the H100 (docs/benchmarks.md): ViT-S/2 32 px, ViT-B/16 224 px
CLASSES = 10
AUX_IMAGES = 512
TINY_VIT = dict(
    hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, decoder_hidden_size=16,
    decoder_num_hidden_layers=1, decoder_num_attention_heads=2, decoder_intermediate_size=32,
)  # fmt: skip
TINY_SWIN = dict(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1])
SWIN_LARGE = dict(embed_dim=192, num_heads=[6, 12, 24, 48])
# Dropped from a recipe: its data source, precision and checkpoint (the benchmark brings its own files and model).
_RECIPE_SOURCES = ("dataset_name", "dataset_config_name", "image_column_name", "label_column_name",
                   "model_name_or_path", "aux_data_file", "fp16", "bf16")  # fmt: skip


def write_image_folder(root: str, count: int, size: tuple[int, int], suffix: str, seed: int = 0) -> str:
    """`count` images of `size` (width, height) in `CLASSES` class folders under `root`: smooth random colour fields
    with pixel noise, saved at JPEG quality 90: about 95 KB a 500x375 JPEG, near an ImageNet photograph's size and
    decoding cost (pure noise would cost far more, a flat field far less). Each image has its own random seed, so
    several processes (one per core, for more than 256 images) write the same files as one would."""
    for index in range(CLASSES):
        os.makedirs(os.path.join(root, f"class_{index}"), exist_ok=True)
    jobs = [(root, index, size, suffix, seed) for index in range(count)]
    if count <= 256:
        for job in jobs:
            _write_image(*job)
        return root
    context = multiprocessing.get_context("fork")  # the workers need only numpy and PIL, nothing to import anew
    with ProcessPoolExecutor(os.cpu_count(), mp_context=context) as pool:
        list(pool.map(_write_image, *zip(*jobs, strict=True), chunksize=64))
    return root


def _write_image(root: str, index: int, size: tuple[int, int], suffix: str, seed: int) -> None:
    rng = np.random.RandomState([seed, index])
    coarse = Image.fromarray(rng.randint(0, 256, (6, 8, 3), dtype=np.uint8)).resize(size, Image.Resampling.BICUBIC)
    pixels = np.asarray(coarse, dtype=np.int16) + rng.randint(-32, 33, (size[1], size[0], 3))
    path = os.path.join(root, f"class_{index % CLASSES}", f"{index:05d}{suffix}")
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=90)


def write_aux_file(path: str, count: int = AUX_IMAGES, seed: int = 1) -> str:
    """An auxiliary-data `.npz` (uint8 32x32 RGB `image`, `label`), stored uncompressed as the EDM files are."""
    rng = np.random.RandomState(seed)
    np.savez(path, image=rng.randint(0, 256, (count, 32, 32, 3), dtype=np.uint8), label=rng.randint(0, CLASSES, count))
    return path


def _cifar(recipe: str) -> bool:
    return recipe.startswith("cifar10/")


def case_files(recipe: str, values: dict, args, scratch: str, count: int) -> dict:
    """The data arguments of one recipe: training and validation folders (written once per shape and count) and,
    where the recipe mixes in auxiliary images, an `.npz` of them."""
    size, suffix = ((32, 32), ".png") if _cifar(recipe) else (tuple(args.source_size), ".jpg")
    root = os.path.join(scratch, f"images_{size[0]}x{size[1]}_{count}")
    if not os.path.isdir(root):
        write_image_folder(os.path.join(root, "train"), count, size, suffix)
        write_image_folder(os.path.join(root, "val"), CLASSES, size, suffix, seed=1)
    files = {"train_dir": os.path.join(root, "train"), "validation_dir": os.path.join(root, "val")}
    if values.get("aux_data_file"):
        aux = os.path.join(scratch, "aux.npz")
        files["aux_data_file"] = aux if os.path.isfile(aux) else write_aux_file(aux)
    return files


def _model_fields(recipe: str, values: dict, tiny: bool) -> dict:
    """The model of a recipe, new: a pre-training recipe's preset; a fine-tuning recipe's from the pre-training recipe
    it starts from (none for Swin, built in `build_case_model`); tiny widths and depths with `tiny`."""
    preset = values.get("model_preset")
    if preset is None and "/finetune_vit" in recipe:
        source = recipe.replace("/finetune_", "/pretrain_").removesuffix("_eps4")
        preset = load_recipe(resolve_recipe(source))["model_preset"]
    fields = {"model_preset": preset} if preset else {}
    return {**fields, **TINY_VIT} if tiny and preset else fields


def case_arguments(recipe: str, args, workers: int, scratch: str) -> list[str]:
    """A recipe file for one run: the shipped recipe's settings, with the benchmark's files, model, batch, steps and
    precision, and nothing saved, logged or evaluated; returned as the argv `parse` reads, with the workers."""
    values = load_recipe(resolve_recipe(recipe))
    batch = args.batch_size or values["per_device_train_batch_size"]
    files = case_files(recipe, values, args, scratch, batch * (args.warmup + args.steps))
    values = {key: value for key, value in values.items() if key not in _RECIPE_SOURCES}
    cuda = args.device.startswith("cuda")
    values.update(
        files, **_model_fields(recipe, values, args.tiny), output_dir=os.path.join(scratch, "out"),
        per_device_train_batch_size=batch, reference_effective_batch=0, max_steps=args.warmup + args.steps,
        save_strategy="no", logging_strategy="no", report_to="none",
        disable_tqdm=True, scan_images=False, torch_compile=args.compile,
        torch_compile_backend=args.compile_backend if args.compile else None, bf16=uses_bf16(args), use_cpu=not cuda,
        seed=0,
    )  # fmt: skip
    if "adversarial_step_size_ramp_epochs" in values:  # epoch 0 of a ramp attacks with step 0: time the full attack
        values["adversarial_step_size_ramp_epochs"] = 0
    path = os.path.join(scratch, "recipe.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(values, f)
    return [path, "--dataloader_num_workers", str(workers)]  # on the command line: never capped to the CPUs


def build_case_model(recipe: str, model_args, tiny: bool):
    """The recipe's model, new: MIMIR pre-training, or a classifier of `CLASSES` classes (Swin-B / Swin-L shapes for
    the Swin recipes, which start from converted checkpoints)."""
    if "/pretrain_" in recipe:
        return pretrain_command.build_model(model_args, 3)
    names = [f"class_{index}" for index in range(CLASSES)]
    if model_args.model_preset:
        return finetune_command.build_classifier(model_args, 3, names)
    shape = TINY_SWIN if tiny else SWIN_LARGE if "large" in recipe else {}
    overrides = {k: v for k, v in config_overrides(model_args).items() if k in finetune_command.SWIN_OVERRIDES}
    return MimirSwinForImageClassification(MimirSwinConfig(**shape, **overrides, num_labels=CLASSES))


class StepClock(TrainerCallback):
    """The time at the end of every optimizer step (after the device finishes it)."""

    def __init__(self):
        self.times = []

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())


def case_trainer(recipe: str, argv: list[str], tiny: bool):
    """(trainer, clock, description of the data path) of one recipe, built as `mimir-hf pretrain` / `finetune`
    build theirs: the recipe's arguments, its model, `load_data` and `load_aux_data` with its augmentation."""
    pretraining = "/pretrain_" in recipe
    classes = (
        ModelArguments if pretraining else FineTuningModelArguments, DataArguments,
        MimirPreTrainingArguments if pretraining else MimirAdversarialTrainingArguments, RunArguments,
        AugmentationArguments,
    )  # fmt: skip
    model_args, data_args, training_args, _, augmentation = parse(classes, argv)
    model = build_case_model(recipe, model_args, tiny)
    config, labels = model.config, None if pretraining else CLASSES
    processor = image_processor_for(config)
    train, _, _ = load_data(data_args, config, 0, augmentation, need_labels=not pretraining, image_processor=processor)
    aux = load_aux_data(data_args, config, augmentation, num_labels=labels, image_processor=processor)
    trainer_class = MimirPreTrainingTrainer if pretraining else MimirAdversarialTrainer
    clock = StepClock()
    trainer = trainer_class(model=model, args=training_args, train_dataset=train, aux_dataset=aux, callbacks=[clock])
    trainer.remove_callback(PrinterCallback)  # the end-of-training metrics line
    return trainer, clock, describe_data(data_args, training_args, augmentation, config)


def describe_data(data_args, training_args, augmentation, config) -> str:
    """E.g. "500x375 .jpg -> 224x224; random-resized crop ...; aux 0.7; mixup 0.8 / cutmix 1"."""
    first = next(os.scandir(os.path.join(data_args.train_dir, "class_0"))).path
    with Image.open(first) as image:
        source = f"{image.width}x{image.height} {os.path.splitext(first)[1]}"
    height, width = config.image_size_hw
    parts = [f"{source} -> {width}x{height}", augmentation.describe()]
    if data_args.aux_data_file:
        parts.append(f"aux {training_args.aux_fraction:g}")
    if getattr(training_args, "mixes_batches", False):
        parts.append(f"mixup {training_args.mixup_alpha:g} / cutmix {training_args.cutmix_alpha:g}")
    return "; ".join(parts)


def end_to_end_rate(clock: StepClock, batch_size: int, warmup: int) -> float:
    """Images/s over the steps after `warmup` (data waits included)."""
    timed = clock.times[max(warmup, 1) - 1 :]
    return batch_size * (len(timed) - 1) / (timed[-1] - timed[0])


def _loader(trainer, workers: int):
    trainer.args.dataloader_num_workers = workers
    return trainer.get_train_dataloader()


def augmentation_rate(trainer) -> float:
    """Images/s of the data path alone in this process, with one torch thread as a data-loader worker has: reading,
    decoding, augmenting, processing and collating every training batch (what one worker delivers)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start, count = time.perf_counter(), 0
        for batch in _loader(trainer, 0):
            count += len(batch["pixel_values"])
        return count / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)


def model_step_rate(trainer, args) -> float:
    """Images/s of the trainer's step (its `compute_loss`, backward, AdamW) on one batch held in memory."""
    batch = next(iter(_loader(trainer, 0)))
    inputs = {key: value.to(args.device) for key, value in batch.items() if torch.is_tensor(value)}
    backend = args.compile_backend if args.compile else None
    loss = lambda m, x, y: trainer.compute_loss(m, inputs)
    case = Case("model step", trainer.model, loss, args.device, uses_bf16(args), backend)
    for index in range(args.warmup + args.steps):
        case.step(None, None, record=index >= args.warmup)
    return len(inputs["pixel_values"]) * len(case.times) / sum(case.times)


def bound_by(model_rate: float, data_rate: float, workers: int) -> str:
    """What bounds a run: the data path when its workers (the main process itself at 0 workers, taking turns with
    the step) deliver fewer images/s than the step takes; the model step otherwise."""
    return "data" if data_rate * max(workers, 1) < model_rate else "model step"


def ideal_rate(model_rate: float, data_rate: float, workers: int) -> float:
    """The end-to-end images/s with nothing shared: in turns at 0 workers, the slower of the two otherwise."""
    if workers == 0:
        return 1 / (1 / model_rate + 1 / data_rate)
    return min(model_rate, workers * data_rate)


def run_case(recipe: str, args, scratch: str) -> tuple[list[dict], dict]:
    """The rows of one recipe (one per worker count) and its workers needed per feed rate."""
    rows, model_rate, data_rate = [], None, None
    for workers in args.workers:
        trainer, clock, data = case_trainer(recipe, case_arguments(recipe, args, workers, scratch), args.tiny)
        trainer.train()
        batch = trainer.args.per_device_train_batch_size
        if model_rate is None:
            model_rate, data_rate = model_step_rate(trainer, args), augmentation_rate(trainer)
        rows.append({
            "recipe": recipe, "data": data, "batch_size": batch, "workers": workers,
            "end_to_end": round(end_to_end_rate(clock, batch, args.warmup), 1),
            "model_step": round(model_rate, 1), "augmentation_per_worker": round(data_rate, 1),
            "ideal": round(ideal_rate(model_rate, data_rate, workers), 1),
            "bound": bound_by(model_rate, data_rate, workers),
        })  # fmt: skip
        print(f"{recipe}, {workers} workers: {rows[-1]}", flush=True)
    needed = {f"{rate:g}": math.ceil(rate / data_rate) for rate in args.feed_rate}
    return rows, {"augmentation_per_worker": round(data_rate, 1), "workers_needed": needed}


def end_to_end(args) -> dict:
    """Every recipe of `args.cases` at every worker count; prints the tables and writes `args.output`."""
    if args.threads:
        torch.set_num_threads(args.threads)
    datasets.disable_progress_bars()
    # the notes on how the image processor and the augmentation size the benchmark's synthetic files
    # (restored afterwards: a caller in the same process, e.g. a test, keeps its logging)
    commands_logger = logging_module.getLogger("mimir_hf.commands")
    level = commands_logger.level
    commands_logger.setLevel(logging_module.ERROR)
    rows, recipes = [], {}
    try:
        with tempfile.TemporaryDirectory() as scratch:
            for recipe in args.cases:
                recipe_rows, recipes[recipe] = run_case(recipe, args, scratch)
                rows += recipe_rows
    finally:
        commands_logger.setLevel(level)
    cuda = args.device.startswith("cuda")
    result = {
        "mode": "end_to_end", "device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
        "precision": "bf16 mixed" if uses_bf16(args) else "fp32", "tiny": args.tiny, "threads": torch.get_num_threads(),
        "source_size": args.source_size, "warmup": args.warmup, "steps": args.steps, "compile": args.compile,
        "feed_rates": args.feed_rate, "cases": rows, "recipes": recipes,
    }  # fmt: skip
    return write_outputs(args, result, end_to_end_tables(result))


def end_to_end_tables(result: dict) -> str:
    """The two markdown tables of docs/benchmarks.md: per recipe and worker count, then workers needed per rate."""
    lines = [
        f"device {result['device']} ({result['precision']}), {result['threads']} threads, "
        f"{'tiny models' if result['tiny'] else 'recipe models'}, {result['steps']} steps after {result['warmup']}"
        f"{', torch.compile' if result['compile'] else ''}",
        "",
        "| recipe | data | batch | workers | end to end (img/s) | model step alone (img/s) | data path per worker "
        "(img/s) | ideal (img/s) | bound by |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in result["cases"]:
        lines.append(
            f"| {row['recipe']} | {row['data']} | {row['batch_size']} | {row['workers']} | {row['end_to_end']:.0f} | "
            f"{row['model_step']:.0f} | {row['augmentation_per_worker']:.0f} | {row['ideal']:.0f} | {row['bound']} |"
        )
    rates = [f"{rate:g}" for rate in result["feed_rates"]]
    lines += [
        "",
        "| recipe | data path per worker (img/s) | " + " | ".join(f"workers for {r} img/s" for r in rates) + " |",
        "| --- | --- | " + " | ".join("---" for _ in rates) + " |",
    ]
    for recipe, entry in result["recipes"].items():
        needed = " | ".join(str(entry["workers_needed"][r]) for r in rates)
        lines.append(f"| {recipe} | {entry['augmentation_per_worker']:.0f} | {needed} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.set_verbosity_error()
    if args.tabulate:
        with open(args.tabulate) as f:
            result = json.load(f)
        print(end_to_end_tables(result) if result.get("mode") == "end_to_end" else step_tables(result))
        return result
    if args.end_to_end:
        return end_to_end(args)
    args.batch_size = args.batch_size or 64
    if args.evaluation_memory:
        result = evaluation_memory(args.eval_images, batch_size=args.batch_size, device=args.device)
        lines = ["| images | peak memory (MiB) | seconds |", "| --- | --- | --- |"]
        lines += [
            f"| {n} | {peak} | {s} |"
            for n, peak, s in zip(result["images"], result["peak_mib"], result["seconds"], strict=True)
        ]
        lines.append(
            f"peak memory {result['images'][-1]} / {result['images'][0]} images = {result['ratio_last_over_first']}"
        )
        print("\n".join(lines))
        if args.output:
            with open(args.output, "w") as f:
                json.dump(result, f, indent=2)
        return result
    return step_benchmark(args)


if __name__ == "__main__":
    main()
