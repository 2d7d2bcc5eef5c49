"""The threat model: images are pixels in [0, 1], attacks are L-inf balls around them with a typed budget.

`AttackBudget` is one small value, validated once, used by every attack, trainer and report. Budgets are in [0, 1]
pixel units (8/255 is 8 grey levels). The paper's three budgets are defined here and nowhere else: the configs,
training arguments and robustness settings take their defaults from these constants. `check_pixel_range` is the one
check that a batch really holds [0, 1] pixels; it runs where images enter (the image processor, the attacks' entry
points), not inside the models' `forward`, so a training step does not wait on the device for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

PIXEL_TOLERANCE = 1e-3  # rounding slack around [0, 1]
GREY_LEVEL = 1 / 255  # one level of an 8-bit image, in pixel units: what image processors rescale by

CIFAR_EPSILON = 8 / 255  # the paper's CIFAR-10 L-inf radius (ImageNet uses 2/255 and 4/255)


@dataclass(frozen=True)
class AttackBudget:
    """An L-inf projected-gradient budget.

    Args:
        epsilon: radius of the L-inf ball, in [0, 1].
        step_size: size of each signed-gradient step, > 0.
        steps: number of steps, an integer >= 1.
        random_start: start from a uniform point of the eps-ball instead of the clean image.
    """

    epsilon: float
    step_size: float
    steps: int
    random_start: bool = True

    def __post_init__(self):
        check_budget(self.epsilon, self.step_size, self.steps)

    def with_steps(self, steps: int) -> AttackBudget:
        """The same budget with another number of steps (e.g. PGD-100 next to PGD-20)."""
        return AttackBudget(self.epsilon, self.step_size, steps, self.random_start)

    def describe(self) -> str:
        """E.g. `"eps 8/255, step 2/255, 10 steps, random start"`."""
        start = ", random start" if self.random_start else ""
        steps = f"{self.steps} step{'s' if self.steps != 1 else ''}"
        return f"eps {self.epsilon * 255:g}/255, step {self.step_size * 255:.3g}/255, {steps}{start}"


def check_budget(epsilon: float, step_size: float, steps: int, prefix: str = "") -> None:
    """Raise a `ValueError` naming the argument (`prefix` + name) when an L-inf budget is not usable."""
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not 0 <= epsilon <= 1:
        raise ValueError(f"{prefix}epsilon must be in [0, 1] (pixel units, e.g. 8/255 = 0.0314), got {epsilon!r}.")
    if isinstance(step_size, bool) or not isinstance(step_size, (int, float)) or not step_size > 0:
        raise ValueError(f"{prefix}step_size must be > 0 (pixel units, e.g. 2/255), got {step_size!r}.")
    if isinstance(steps, bool) or not isinstance(steps, (int, float)) or int(steps) != steps or steps < 1:
        raise ValueError(f"{prefix}steps must be an integer >= 1, got {steps!r}.")


def check_pixel_range(pixel_values: torch.Tensor, name: str = "pixel_values") -> torch.Tensor:
    """`pixel_values`, checked to be a finite float tensor in [0, 1] (up to 1e-3); a `ValueError` saying what was
    found and what is expected otherwise. One host-device synchronisation."""
    if not isinstance(pixel_values, torch.Tensor) or not pixel_values.is_floating_point():
        kind = (
            f"a {pixel_values.dtype} tensor" if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__
        )
        raise ValueError(
            f"{name} must be a float tensor of pixels in [0, 1], got {kind}. Convert 8-bit images with "
            "`images.float() / 255` (or use the model's image processor)."
        )
    if pixel_values.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(pixel_values.shape)}); expected at least one image.")
    low, high = (float(v) for v in torch.aminmax(pixel_values.detach().float()))
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"{name} hold NaN or infinite values; expected finite pixels in [0, 1].")
    if low < -PIXEL_TOLERANCE or high > 1 + PIXEL_TOLERANCE:
        raise ValueError(
            f"{name} must be in [0, 1], got values in [{low:.4g}, {high:.4g}]. Feed un-normalised pixels: any "
            "normalisation belongs inside the model (config.image_mean / image_std), and 8-bit images are divided "
            "by 255 (the image processor does both)."
        )
    return pixel_values


# MIMIR pre-training: PGD on the MAE loss, 1 step of 10/255 in the 8/255 ball (CIFAR-10 and ImageNet scripts alike).
PRETRAINING_ATTACK = AttackBudget(epsilon=CIFAR_EPSILON, step_size=10 / 255, steps=1)
# Adversarial fine-tuning, the paper's CIFAR-10 PGD-AT: 10 steps of 2/255.
ADVERSARIAL_TRAINING_ATTACK = AttackBudget(epsilon=CIFAR_EPSILON, step_size=2 / 255, steps=10)
# Evaluation: PGD-20 (and PGD-100) with step 2/255 and random start.
EVALUATION_ATTACK = AttackBudget(epsilon=CIFAR_EPSILON, step_size=2 / 255, steps=20)

__all__ = [
    "ADVERSARIAL_TRAINING_ATTACK",
    "GREY_LEVEL",
    "CIFAR_EPSILON",
    "EVALUATION_ATTACK",
    "PRETRAINING_ATTACK",
    "AttackBudget",
    "check_budget",
    "check_pixel_range",
]
