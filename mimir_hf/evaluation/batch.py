"""One batch of the report: each image's correctness, clean and under each attack (`evaluate_batch`), with the
time and the forward and backward passes each attack took; and the checks run before the first attack."""

from __future__ import annotations

import contextlib
import time

import torch
from torch import nn

from ..attacks import eval_mode, frozen_parameters, logits_of
from ..threat_model import check_pixel_range
from .registry import Attack, AttackFunction


def _predicts(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), eval_mode(model):
        return logits_of(model, images).argmax(1) == labels


def evaluate_batch(
    model: nn.Module,
    attacks: list[Attack],
    images: torch.Tensor,
    labels: torch.Tensor,
    generator: torch.Generator,
    first_index: int = 0,
    seconds: dict[str, float] | None = None,
    cost: dict[str, dict[str, int]] | None = None,
    watch=None,
) -> dict[str, torch.Tensor]:
    """Per-image correctness (bool, on the CPU) of `model` on one batch, clean ("natural") and under each attack.

    Attacks run only on the images classified correctly when clean (a `whole_batch` attack, whose objective is a
    batch statistic, runs on all of them); the others count as broken. An attack with
    `max_samples` covers only images whose index in the whole set (`first_index` + position) is below it; its result
    holds just those. `seconds`, if given, accumulates each attack's wall time, and `cost` the images it attacked and
    the images its forward passes (and backward passes) carried. `watch` (a `mimir_hf.progress.ReportProgress`) shows
    each attack's progress.
    """
    check_pixel_range(images, "images")
    with frozen_parameters(model):  # the attacks differentiate the images only
        return _evaluate_batch(model, attacks, images, labels, generator, first_index, seconds, cost, watch)


def _evaluate_batch(
    model, attacks, images, labels, generator, first_index, seconds, cost, watch
) -> dict[str, torch.Tensor]:
    natural = _predicts(model, images, labels)
    results = {"natural": natural.cpu()}
    counter = _PassCounter(model) if cost is not None else None
    for attack in attacks:
        count = len(images) if attack.max_samples < 0 else max(0, min(len(images), attack.max_samples - first_index))
        if count == 0:
            continue
        if attack.same_as in results:
            results[attack.name] = results[attack.same_as].clone()
            continue
        start = time.perf_counter()
        if counter is not None:
            counter.reset()
        correct = torch.zeros(count, dtype=torch.bool, device=images.device)
        with watch.attack(attack, count) if watch is not None and attack.passes else contextlib.nullcontext():
            if attack.whole_batch:
                adversarial = attack.run(model, images[:count], labels[:count], generator)
                correct = natural[:count] & _predicts(model, adversarial, labels[:count])
            elif (todo := natural[:count].nonzero().squeeze(1)).numel():
                adversarial = attack.run(model, images[todo], labels[todo], generator)
                correct[todo] = _predicts(model, adversarial, labels[todo])
        results[attack.name] = correct.cpu()
        if seconds is not None:
            seconds[attack.name] = seconds.get(attack.name, 0.0) + time.perf_counter() - start
        if counter is not None:
            entry = cost.setdefault(attack.name, {"images": 0, "forward": 0, "backward": 0})
            entry["images"] += count
            entry["forward"] += counter.forward
            entry["backward"] += counter.backward
    if counter is not None:
        counter.remove()
    return results


class _PassCounter:
    """Counts the images that go through the model's trunk, forward only (no grad) or forward and backward (grad
    enabled: the attacks differentiate them), to report what each attack costs per image."""

    def __init__(self, model: nn.Module):
        trunk = getattr(model, "base_model", model)
        self.handle = trunk.register_forward_pre_hook(self._count, with_kwargs=True)
        self.reset()

    def reset(self) -> None:
        self.forward = self.backward = 0

    def _count(self, module, args, kwargs) -> None:
        images = args[0] if args else kwargs.get("pixel_values")
        if isinstance(images, torch.Tensor):
            if torch.is_grad_enabled() and images.requires_grad:
                self.backward += len(images)
            self.forward += len(images)

    def remove(self) -> None:
        self.handle.remove()


def correct_under_attack(
    model: nn.Module,
    attack: AttackFunction,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 256,
    seed: int = 0,
) -> torch.Tensor:
    """Per-image correctness (bool, CPU) of `model` under one attack function, over in-memory tensors."""
    device = next(model.parameters()).device
    results = []
    for start in range(0, len(images), batch_size):
        x, y = images[start : start + batch_size].to(device), labels[start : start + batch_size].to(device)
        generator = batch_generator(device, seed, start // batch_size)
        results.append(evaluate_batch(model, [Attack("attack", "attack", attack)], x, y, generator)["attack"])
    return torch.cat(results)


def check_outputs(model: nn.Module, images: torch.Tensor) -> None:
    """Before the first attack: the model gives one logit per class of its config (AutoAttack's targets and the
    labels' range depend on it), and the images are pixels in [0, 1]."""
    check_pixel_range(images, "the evaluation images")
    num_labels = getattr(getattr(model, "config", None), "num_labels", None)
    with torch.no_grad(), eval_mode(model):
        width = logits_of(model, images).shape[-1]
    if num_labels is not None and width != num_labels:
        raise ValueError(
            f"The model gives {width} logits per image but its config says num_labels={num_labels}; fix the config "
            "(or the head) so that both say the number of classes."
        )


def seconds_per_pass(model: nn.Module, images: torch.Tensor) -> float:
    """Seconds of one image's forward and backward pass (input gradient only), timed on `images` after one warm-up:
    the unit of the report's time estimate."""
    timings = []
    with frozen_parameters(model), eval_mode(model), torch.enable_grad():
        for _ in range(2):
            start = time.perf_counter()
            x = images.detach().clone().requires_grad_(True)
            torch.autograd.grad(logits_of(model, x).sum(), x)
            if x.device.type == "cuda":
                torch.cuda.synchronize(x.device)
            timings.append(time.perf_counter() - start)
    return timings[-1] / len(images)


def batch_generator(device: torch.device, seed: int, batch_index: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + batch_index)
