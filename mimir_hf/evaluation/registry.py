"""The attack registry: every row of the report (`attack_registry`) and the points of the eps sweep
(`sweep_attacks`), each an `Attack` whose `run(model, images, labels, generator)` returns adversarial images."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..attacks import (
    eval_mode,
    feature_objective,
    fgsm_attack,
    mi_objective,
    misclassified,
    pgd_attack,
    projected_gradient_ascent,
)
from ..autoattack import AutoAttackRunner, plan_autoattack
from ..threat_model import AttackBudget
from .settings import RobustnessSettings, autoattack_status

FORWARD = 1 / 3  # a forward pass alone, in forward-and-backward passes (the time estimate's unit)

AttackFunction = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class Attack:
    """One row of the report: `run(model, images, labels, generator)` returns adversarial images."""

    name: str
    title: str
    run: AttackFunction
    in_worst_case: bool = True  # False for the noise baseline
    max_samples: int = -1  # attack only the first N images of the set (-1: all)
    whole_batch: bool = False  # the objective is a batch statistic (PGD-MI's HSIC): attack every image of the batch
    same_as: str | None = None  # the very same attack as another row (same budget): its result is reused
    passes: float = 1.0  # forward-and-backward passes per image, at most: the unit of the report's time estimate


def _feature_attack(budget: AttackBudget) -> AttackFunction:
    def run(model, x, y, generator):
        with torch.no_grad(), eval_mode(model):
            clean = model.features(x).float()
        objective = feature_objective(model, clean)
        return projected_gradient_ascent(
            objective, x, budget, model=model, generator=generator, stop_when=misclassified(y)
        )

    return run


def _uniform_noise(epsilon: float) -> AttackFunction:
    def run(model, x, y, generator):
        signs = torch.randint(0, 2, x.shape, generator=generator, device=x.device).to(x.dtype) * 2 - 1
        return (x + epsilon * signs).clamp(0, 1)

    return run


def attack_registry(model: nn.Module, settings: RobustnessSettings) -> list[Attack]:
    """Every attack of the report, in order: FGSM, PGD-k for each k, CW-inf, noise, the adaptive PGD-MI and
    PGD-feature (for models with `features` and `classifier`), AutoAttack (when enabled: `mimir_hf.autoattack`
    plans it, and refuses what cannot run before any attack does).

    The iterative attacks stop attacking an image at its first misclassified iterate (AutoAttack's convention: each
    image counts as broken if any iterate broke it), except PGD-MI, whose HSIC term needs the whole batch."""
    eps = settings.epsilon
    attacks = [Attack("fgsm", "FGSM", lambda m, x, y, g: fgsm_attack(m, x, y, eps), passes=1)]
    for steps in settings.pgd_steps:
        budget = settings.budget(steps)
        attacks.append(
            Attack(
                f"pgd{steps}", f"PGD-{steps}", lambda m, x, y, g, b=budget: pgd_attack(m, x, y, b, "ce", g, True),
                passes=steps,
            )
        )  # fmt: skip
    cw = settings.budget(settings.cw_steps)
    attacks.append(
        Attack(
            "cw_inf",
            "CW-inf (PGD on the margin loss)",
            lambda m, x, y, g: pgd_attack(m, x, y, cw, "margin", g, True),
            passes=settings.cw_steps,
        )
    )
    attacks.append(
        Attack("uniform_noise", "uniform ±eps noise", _uniform_noise(eps), in_worst_case=False, passes=FORWARD)
    )
    if hasattr(model, "features") and hasattr(model, "classifier"):
        attacks += _adaptive_attacks(settings)
    if not autoattack_status(settings):
        attacks.append(_autoattack(model, settings))
    return attacks


def _adaptive_attacks(settings: RobustnessSettings) -> list[Attack]:
    """PGD-MI (cross-entropy plus the HSIC term, on the whole batch) and PGD-feature (the features' L2 distance)."""
    adaptive = settings.budget(settings.adaptive_steps)
    mi = Attack(
        "pgd_mi",
        "PGD-MI (adaptive: CE + λ·HSIC)",
        lambda m, x, y, g: projected_gradient_ascent(
            mi_objective(m, y, settings.pgd_mi_weight, settings.pgd_mi_sigma), x, adaptive, model=m, generator=g
        ),
        whole_batch=True,
        passes=settings.adaptive_steps,
    )
    feature = Attack(
        "pgd_feature", "PGD-feature (adaptive: feature L2)", _feature_attack(adaptive),
        passes=settings.adaptive_steps + FORWARD,
    )  # fmt: skip
    return [mi, feature]


def _autoattack(model: nn.Module, settings: RobustnessSettings) -> Attack:
    """AutoAttack's row, as `mimir_hf.autoattack` plans it for the model's number of classes."""
    plan = plan_autoattack(
        model.config.num_labels, settings.epsilon, settings.eval_seed, settings.autoattack_implementation,
        settings.autoattack_iterations,
    )  # fmt: skip
    return Attack(
        "autoattack",
        "AutoAttack standard" if plan.standard else "AutoAttack (" + ", ".join(plan.attacks).upper() + ")",
        AutoAttackRunner(plan),
        max_samples=settings.autoattack_max_samples,
        passes=plan.passes,
    )


def sweep_attacks(settings: RobustnessSettings) -> list[Attack]:
    """PGD with the first `pgd_steps` at every eps of the sweep (step eps/4, early stopping; eps = 0 is the clean
    image). The point whose budget equals the report's own PGD row's reuses that row's result."""
    steps = settings.pgd_steps[0]
    attacks = []
    for eps in settings.eps_sweep:
        same = None
        if eps == 0:
            run = lambda m, x, y, g: x
        else:
            budget = settings.budget(steps, epsilon=eps)
            run = lambda m, x, y, g, b=budget: pgd_attack(m, x, y, b, "ce", g, True)
            same = f"pgd{steps}" if budget == settings.budget(steps) else None
        passes = 0 if eps == 0 or same else steps
        attacks.append(
            Attack(f"sweep_{eps:.6f}", f"PGD-{steps} at eps {eps * 255:g}/255", run, same_as=same, passes=passes)
        )
    return attacks
