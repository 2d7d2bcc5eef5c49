"""One projected-gradient L-inf attack engine, and the objectives it maximises (MAE loss, CE, CW margin, KL, ...).

Every attack in mimir_hf -- MIMIR's pre-training perturbation, PGD and FGSM for adversarial training and evaluation,
CW-inf, the TRADES inner maximum, the adaptive PGD-MI and PGD-feature -- is `projected_gradient_ascent` with a
different objective. Images are pixels in [0, 1] and every budget is in those units. During an attack the model is in eval mode (restored afterwards, module by
module), only the input gradient is computed (no parameter `.grad` is touched), and it runs under autocast (bf16 or
fp16): the objectives are computed in float32 and summed over the batch, so each sample's gradient keeps its own scale,
and a non-finite gradient entry never reaches the images.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_mimir import check_attack_budget
from .modeling_mimir import check_pixel_range, pixel_range_checked
from .mutual_information import hsic

Objective = Callable[[torch.Tensor], torch.Tensor]
"""Maps adversarial images `[B, C, H, W]` to a scalar to maximise (a sum over the batch, so each sample ascends its
own loss)."""


@contextmanager
def eval_mode(model: nn.Module | None) -> Iterator[None]:
    """Put `model` in eval mode, and give every submodule back its own train/eval flag on exit."""
    if model is None:
        yield
        return
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training


def project(images: torch.Tensor, clean: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Nearest point of the L-inf eps-ball around `clean` intersected with [0, 1]."""
    return torch.min(torch.max(images, clean - epsilon), clean + epsilon).clamp_(0.0, 1.0)


def projected_gradient_ascent(
    objective: Objective,
    images: torch.Tensor,
    *,
    epsilon: float,
    step_size: float,
    steps: int,
    random_start: bool = True,
    model: nn.Module | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """PGD in the L-inf ball: x' <- clip_[0,1](x + clip_[-eps,eps](x' + step_size * sign(grad objective(x')) - x)).

    Args:
        objective: adversarial images -> scalar to maximise.
        images: clean images in [0, 1], `[B, C, H, W]`.
        epsilon, step_size, steps: the L-inf budget, in pixel units.
        random_start: start from a uniform point of the eps-ball (clipped to [0, 1]) instead of `images`.
        model: the model the objective calls; put in eval mode during the attack and restored afterwards.
        generator: random generator of the start point (for reproducible attacks).

    Returns: detached adversarial images, within `epsilon` of `images` and in [0, 1].
    """
    check_attack_budget(epsilon, step_size, steps)
    clean = check_pixel_range(images.detach())
    if epsilon == 0:  # the eps-ball is the clean image itself
        return clean.clone()
    if random_start:
        noise = torch.rand(clean.shape, generator=generator, device=clean.device, dtype=clean.dtype)
        adversarial = (clean + (2 * noise - 1) * epsilon).clamp_(0.0, 1.0)
    else:
        adversarial = clean.clone()
    with eval_mode(model), torch.enable_grad(), pixel_range_checked():  # checked above; projection keeps [0, 1]
        for _ in range(steps):
            adversarial.requires_grad_(True)
            (gradient,) = torch.autograd.grad(objective(adversarial), adversarial)
            # torch's sign() maps a NaN gradient entry (e.g. an fp16 overflow inside the model) to 0 and +-inf to
            # +-1, so a non-finite gradient costs that pixel one step, never the image (tested).
            adversarial = project(adversarial.detach() + step_size * gradient.sign(), clean, epsilon)
    return adversarial.detach()


# ----------------------------------------------------------------------------------------------------------------
# Objectives
# ----------------------------------------------------------------------------------------------------------------


def logits_of(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Float32 logits of a transformers classifier (`.logits`) or of a plain module returning a tensor."""
    outputs = model(pixel_values=images) if hasattr(model, "config") else model(images)
    return (outputs.logits if hasattr(outputs, "logits") else outputs).float()


def cross_entropy_objective(model: nn.Module, labels: torch.Tensor) -> Objective:
    """Summed cross-entropy of the true labels: the PGD / FGSM objective."""
    return lambda images: F.cross_entropy(logits_of(model, images), labels, reduction="sum")


def margin_objective(model: nn.Module, labels: torch.Tensor) -> Objective:
    """Summed Carlini-Wagner margin max_{j != y} z_j - z_y: PGD on it is the CW-inf attack."""

    def objective(images: torch.Tensor) -> torch.Tensor:
        logits = logits_of(model, images)
        true = logits.gather(1, labels[:, None]).squeeze(1)
        other = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf")).amax(dim=1)
        return (other - true).sum()

    return objective


def trades_objective(model: nn.Module, clean_probabilities: torch.Tensor) -> Objective:
    """Summed KL(p(x) || p(x')): TRADES' inner maximisation, with p(x) fixed."""
    return lambda images: F.kl_div(
        F.log_softmax(logits_of(model, images), dim=1), clean_probabilities, reduction="sum"
    )


def mi_objective(model: nn.Module, labels: torch.Tensor, weight: float = 1e-5, sigma: float = 5.0) -> Objective:
    """Adaptive PGD-MI: cross-entropy plus `weight` * HSIC(features(x'), x'), the defence's own MI term.

    Needs a classifier with `features` and `classifier` (e.g. `MimirForImageClassification`).
    """

    def objective(images: torch.Tensor) -> torch.Tensor:
        features = model.features(images)
        logits = model.classifier(features).float()
        return F.cross_entropy(logits, labels, reduction="sum") + weight * hsic(features, images, sigma=sigma)

    return objective


def feature_objective(model: nn.Module, clean_features: torch.Tensor) -> Objective:
    """Adaptive PGD-feature: summed L2 distance between the encoder features of x' and of the clean x."""
    return lambda images: (model.features(images).float() - clean_features).norm(dim=1).sum()


def mae_objective(model: nn.Module) -> Objective:
    """MIMIR's pre-training objective: the MAE loss of x' reconstructing itself, under a fresh random mask."""
    return lambda images: model(pixel_values=images, compute_mi_loss=False).reconstruction_loss * images.shape[0]


# ----------------------------------------------------------------------------------------------------------------
# Named attacks
# ----------------------------------------------------------------------------------------------------------------


def pgd_attack(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    epsilon: float = 8 / 255,
    step_size: float = 2 / 255,
    steps: int = 10,
    random_start: bool = True,
    loss: str = "ce",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """L-inf PGD on cross-entropy (`loss="ce"`) or on the CW margin (`loss="margin"`, i.e. CW-inf)."""
    objectives = {"ce": cross_entropy_objective, "margin": margin_objective}
    if loss not in objectives:
        raise ValueError(f"Unknown PGD loss {loss!r}; expected one of {sorted(objectives)}.")
    return projected_gradient_ascent(
        objectives[loss](model, labels),
        images,
        epsilon=epsilon,
        step_size=step_size,
        steps=steps,
        random_start=random_start,
        model=model,
        generator=generator,
    )


def fgsm_attack(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, epsilon: float = 8 / 255) -> torch.Tensor:
    """FGSM: one signed-gradient step of size eps from the clean image."""
    return pgd_attack(model, images, labels, epsilon=epsilon, step_size=max(epsilon, 1e-12), steps=1, random_start=False)


def trades_attack(
    model: nn.Module,
    images: torch.Tensor,
    epsilon: float = 8 / 255,
    step_size: float = 2 / 255,
    steps: int = 10,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """TRADES' adversarial example: maximise KL(p(x) || p(x')) with p(x) from the model in eval mode."""
    with eval_mode(model), torch.no_grad():
        clean_probabilities = F.softmax(logits_of(model, images), dim=1)
    return projected_gradient_ascent(
        trades_objective(model, clean_probabilities),
        images,
        epsilon=epsilon,
        step_size=step_size,
        steps=steps,
        model=model,
        generator=generator,
    )


def mae_attack(
    model: nn.Module,
    images: torch.Tensor,
    epsilon: float | None = None,
    step_size: float | None = None,
    steps: int | None = None,
    random_start: bool | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """MIMIR's pre-training attack on a `MimirForPreTraining`; unset budgets come from `model.config` (8/255, 10/255, 1)."""
    config = model.config
    return projected_gradient_ascent(
        mae_objective(model),
        images,
        epsilon=config.attack_epsilon if epsilon is None else epsilon,
        step_size=config.attack_step_size if step_size is None else step_size,
        steps=config.attack_steps if steps is None else steps,
        random_start=config.attack_random_start if random_start is None else random_start,
        model=model,
        generator=generator,
    )


__all__ = [
    "cross_entropy_objective",
    "eval_mode",
    "feature_objective",
    "fgsm_attack",
    "mae_attack",
    "mae_objective",
    "margin_objective",
    "mi_objective",
    "pgd_attack",
    "project",
    "projected_gradient_ascent",
    "trades_attack",
    "trades_objective",
]
