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
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import weakref

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from transformers import ViTMAEConfig, ViTMAEForPreTraining
from transformers.utils import logging

from mimir_hf import PRESETS, MimirConfig, MimirForImageClassification, MimirForPreTraining
from mimir_hf.commands.common import DEMO_SHAPE
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
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument(
        "--attack_steps", type=int, default=PRETRAINING_ATTACK.steps, help="k of the MIMIR pre-training attack."
    )
    parser.add_argument("--pgd_steps", type=int, default=3, help="k of the PGD adversarial-training step.")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", help="Write the results as JSON here.")
    parser.add_argument(
        "--report_model",
        help="Also measure the robustness report's cost per attack on this saved classifier (e.g. "
        "outputs/demo/finetune, after make demo): images, seconds, forward and backward passes per image.",
    )
    parser.add_argument("--report_images", type=int, default=64, help="Test digits the report cost runs on.")
    parser.add_argument("--evaluation_memory", action="store_true", help="Measure the report's peak memory instead.")
    parser.add_argument("--eval_images", type=int, nargs="+", default=[64, 640], help="Image counts to compare.")
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


class Case:
    """One kind of training step: `step()` runs it once, the times and peak memory accumulate."""

    def __init__(self, name, model, loss_fn, device):
        self.name, self.model, self.loss_fn, self.device = name, model.to(device).train(), loss_fn, device
        self.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        self.times, self.peak = [], 0

    def step(self, images, labels, record=True):
        cuda = self.device.startswith("cuda")
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        with torch.autocast(device_type="cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=cuda):
            loss = self.loss_fn(self.model, images, labels)
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


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.set_verbosity_error()
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
    torch.manual_seed(0)
    shape = dict(PRESETS[args.preset]) if args.preset else dict(DEFAULT_SHAPE)
    config = MimirConfig(**shape, attack_steps=args.attack_steps, num_labels=10)
    vit_mae_fields = {k: v for k, v in config.to_dict().items() if k in ViTMAEConfig().to_dict()}
    device = args.device

    scratch = tempfile.mkdtemp()
    use_cpu = not device.startswith("cuda")
    pretraining = MimirPreTrainingArguments(output_dir=scratch, report_to=[], use_cpu=use_cpu)
    adversarial = MimirAdversarialTrainingArguments(
        output_dir=scratch, report_to=[], adversarial_steps=args.pgd_steps, use_cpu=use_cpu
    )
    pretrainer = MimirPreTrainingTrainer(model=MimirForPreTraining(config), args=pretraining)
    adversarial_trainer = MimirAdversarialTrainer(model=MimirForImageClassification(config), args=adversarial)

    cases = [
        Case(
            "a) ViTMAE step (transformers)",
            ViTMAEForPreTraining(ViTMAEConfig(**vit_mae_fields)),
            lambda m, x, y: m(pixel_values=x).loss,
            device,
        ),
        Case(
            f"b) MIMIR pre-training step (k={args.attack_steps})",
            pretrainer.model,
            lambda m, x, y: pretrainer.compute_loss(m, {"pixel_values": x}),
            device,
        ),
        Case(
            "c) clean classifier step",
            MimirForImageClassification(config),
            lambda m, x, y: F.cross_entropy(m(pixel_values=x).logits.float(), y),
            device,
        ),
        Case(
            f"d) PGD-{args.pgd_steps} AT step",
            adversarial_trainer.model,
            lambda m, x, y: adversarial_trainer.compute_loss(m, {"pixel_values": x, "labels": y}),
            device,
        ),
    ]
    images = torch.rand(args.batch_size, config.num_channels, *config.image_size_hw, device=device)
    labels = torch.randint(0, 10, (args.batch_size,), device=device)
    for _ in range(args.warmup):
        for case in cases:
            case.step(images, labels, record=False)
    for _ in range(args.repeats):  # interleaved, so drifts (clocks, other load) hit every case alike
        for case in cases:
            case.step(images, labels)

    if not device.startswith("cuda"):
        for case in cases:
            case.cpu_peak(images, labels)

    # The MI term alone: HSIC(Z, X') forward + backward at the step's shapes.
    kept = 1 + int(config.num_patches * (1 - config.mask_ratio))
    latent = torch.randn(args.batch_size, kept, config.hidden_size, device=device, requires_grad=True)
    mi_times = []
    for i in range(args.warmup + args.repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        hsic(latent, images, sigma=config.mi_sigma).backward()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i >= args.warmup:
            mi_times.append(time.perf_counter() - start)

    a, b, c, d = (case.median for case in cases)
    mi = statistics.median(mi_times)
    result = {
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "precision": "bf16 autocast" if device.startswith("cuda") else "fp32",
        "shape": shape,
        "batch_size": args.batch_size,
        "attack_steps": args.attack_steps,
        "pgd_steps": args.pgd_steps,
        "repeats": args.repeats,
        "median_seconds": {case.name: round(case.median, 5) for case in cases},
        "images_per_second": {case.name: round(args.batch_size / case.median, 1) for case in cases},
        "peak_memory_mib": {case.name: round(case.peak / 2**20, 1) for case in cases},
        "peak_memory_measure": "torch.cuda.max_memory_allocated"
        if device.startswith("cuda")
        else "live tensor bytes (LiveTensorBytes)",
        "ratio_b_over_a": round(b / a, 3),
        "floor_b": args.attack_steps + 1,
        "target_b": round(2.10 * (args.attack_steps + 1) / 2, 2),
        "ratio_d_over_c": round(d / c, 3),
        "floor_d": args.pgd_steps + 1,
        "target_d": round(1.05 * (args.pgd_steps + 1), 2),
        "mi_seconds": round(mi, 5),
        "mi_share_of_b": round(mi / b, 4),
    }
    lines = [
        f"device {result['device']} ({result['precision']}), batch {args.batch_size}, "
        f"shape {args.preset or 'digits, patch 2'}",
        "| case | median step (ms) | images/s | peak memory (MiB) |",
        "| --- | --- | --- | --- |",
    ]
    for case in cases:
        throughput = args.batch_size / case.median
        lines.append(f"| {case.name} | {1000 * case.median:.1f} | {throughput:.0f} | {case.peak / 2**20:.1f} |")
    lines += [
        "",
        f"b/a = {result['ratio_b_over_a']:.2f} (floor {result['floor_b']}, target <= {result['target_b']})",
        f"d/c = {result['ratio_d_over_c']:.2f} (floor {result['floor_d']}, target <= {result['target_d']})",
        f"MI term: {1000 * mi:.2f} ms = {100 * result['mi_share_of_b']:.1f}% of a MIMIR step "
        "(target <= 5% at batch 256)",
    ]
    lines.append(f"peak memory b/a = {cases[1].peak / cases[0].peak:.2f} (target <= 1.3)")
    result["memory_b_over_a"] = round(cases[1].peak / cases[0].peak, 3)
    print("\n".join(lines))
    if args.report_model:
        result["report_cost"] = report_cost(args.report_model, args.report_images, device)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
