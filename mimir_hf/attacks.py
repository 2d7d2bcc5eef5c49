"""One projected-gradient L-inf attack engine, and the objectives it maximises (MAE loss, CE, soft-target CE, CW
margin, KL, ...).

Every attack in mimir_hf -- MIMIR's pre-training perturbation, PGD and FGSM for adversarial training and evaluation,
CW-inf, the TRADES inner maximum, the adaptive PGD-MI and PGD-feature -- is `projected_gradient_ascent` with a
different objective and an `AttackBudget`. Images are pixels in [0, 1] (checked once, at the entry) and every budget is
in those units. During an attack the model is in eval mode (restored afterwards, module by module), only the input
gradient is computed (no parameter `.grad` is touched), and it runs under the caller's autocast (bf16 or fp16): the
objectives are computed in float32 and summed over the batch, so each sample's gradient keeps its own scale, and a
non-finite gradient entry never reaches the images.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import nn

from .mutual_information import DEFAULT_MI_SIGMA, DEFAULT_MI_WEIGHT, hsic
from .threat_model import AttackBudget, check_pixel_range

Objective = Callable[[torch.Tensor], torch.Tensor]
"""Maps adversarial images `[B, C, H, W]` to a scalar to maximise (a sum over the batch, so each sample ascends its
own loss)."""


@contextmanager
def eval_mode(model: nn.Module | None) -> Iterator[None]:
    """Put `model` in eval mode, and give every submodule back its own train/eval flag on exit."""
    if model is None:
        yield
        return
    modules = list(model.modules())
    flags = [module.training for module in modules]
    if any(type(module).train is not nn.Module.train for module in modules):
        model.eval()  # a module with its own train(): let it run
    else:
        _set_training(modules, [False] * len(modules))  # what model.eval() does, without its recursion
    try:
        yield
    finally:
        _set_training(modules, flags)


def _set_training(modules: list[nn.Module], flags: list[bool]) -> None:
    """`module.training = flag` for each pair, written straight to the instance: `nn.Module.__setattr__` only looks
    for a parameter, buffer or submodule of that name first (none is called `training`), which costs more than the
    attack's own bookkeeping at small shapes (~1 ms for a 80-module model)."""
    for module, flag in zip(modules, flags, strict=True):
        if module.training != flag:
            object.__setattr__(module, "training", flag)


@contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """No parameter of `model` requires a gradient inside the block (an evaluation's attacks differentiate the
    input only, and autograd then keeps no activation for weight gradients); each gets its flag back on exit."""
    flags = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    try:
        for parameter, _ in flags:
            parameter.requires_grad_(False)
        yield
    finally:
        for parameter, requires_grad in flags:
            parameter.requires_grad_(requires_grad)


_progress_listener: ContextVar[Callable[[float], None] | None] = ContextVar("attack_progress", default=None)


@contextmanager
def reporting_progress(listener: Callable[[float], None]) -> Iterator[None]:
    """Inside the block, every `projected_gradient_ascent` calls `listener(done)` after each step, `done` being the
    share of its work finished (images that left early count as finished): the report's progress bars."""
    token = _progress_listener.set(listener)
    try:
        yield
    finally:
        _progress_listener.reset(token)


def project(images: torch.Tensor, clean: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Nearest point of the L-inf eps-ball around `clean` intersected with [0, 1]."""
    return torch.min(torch.max(images, clean - epsilon), clean + epsilon).clamp_(0.0, 1.0)


def random_start(images: torch.Tensor, epsilon: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A uniform point of the L-inf eps-ball around `images`, clipped to [0, 1]: where PGD starts."""
    noise = torch.rand(images.shape, generator=generator, device=images.device, dtype=images.dtype)
    return (images.detach() + (2 * noise - 1) * epsilon).clamp_(0.0, 1.0)


def projected_gradient_ascent(
    objective: Objective,
    images: torch.Tensor,
    budget: AttackBudget,
    *,
    model: nn.Module | None = None,
    generator: torch.Generator | None = None,
    stop_when: Callable[[Objective, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """PGD in the L-inf ball: x' <- clip_[0,1](x + clip_[-eps,eps](x' + step_size * sign(grad objective(x')) - x)).

    Args:
        objective: adversarial images -> scalar to maximise.
        images: clean images in [0, 1], `[B, C, H, W]`.
        budget: epsilon, step size, steps and random start, in pixel units.
        model: the model the objective calls; put in eval mode during the attack and restored afterwards.
        generator: random generator of the start point (for reproducible attacks).
        stop_when: early stopping, for evaluation (AutoAttack's convention: attack only the points still robust).
            Called after each objective evaluation as `stop_when(objective, index)`, with `index` the batch positions
            of the images just evaluated, it returns a bool mask of those whose current iterate already reached the
            attack's goal (e.g. misclassified, read from the logits the objective kept): they keep that iterate and
            leave the attack, so each image counts as broken if any iterate broke it and the attack costs passes only
            for the images still standing. The objective is then called as `objective(images, index=index)`.

    Returns: detached adversarial images, within `budget.epsilon` of `images` and in [0, 1].
    """
    if not isinstance(budget, AttackBudget):
        raise TypeError(f"budget must be a mimir_hf.AttackBudget, got {type(budget).__name__}.")
    clean = check_pixel_range(images.detach() if isinstance(images, torch.Tensor) else images, "images")
    if budget.epsilon == 0:  # the eps-ball is the clean image itself
        return clean.clone()
    adversarial = random_start(clean, budget.epsilon, generator) if budget.random_start else clean.clone()
    active = torch.arange(len(clean), device=clean.device)
    listener = _progress_listener.get()
    with eval_mode(model), torch.enable_grad():
        for step in range(budget.steps):
            if listener is not None and step:  # share done: images that left, plus the rest's finished steps
                listener(1 - len(active) / len(clean) * (1 - step / budget.steps))
            if stop_when is None:
                current = adversarial.requires_grad_(True)
                value = objective(current)
            else:
                if active.numel() == 0:
                    break
                current = adversarial[active].requires_grad_(True)
                value = objective(current, index=active)
            (gradient,) = torch.autograd.grad(value, current)
            # torch's sign() maps a NaN gradient entry (e.g. an fp16 overflow inside the model) to 0 and +-inf to
            # +-1, so a non-finite gradient costs that pixel one step, never the image (tested).
            stepped = project(current.detach() + budget.step_size * gradient.sign(), clean[active], budget.epsilon)
            if stop_when is None:
                adversarial = stepped
                continue
            done = stop_when(objective, active).to(torch.bool)
            stepped[done] = current.detach()[done]  # keep the iterate that reached the goal
            adversarial[active] = stepped
            active = active[~done]
    if listener is not None:
        listener(1.0)
    return adversarial.detach()


# ----------------------------------------------------------------------------------------------------------------
# Objectives
# ----------------------------------------------------------------------------------------------------------------


def logits_of(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Float32 logits of a transformers classifier (`.logits`) or of a plain module returning a tensor."""
    outputs = model(pixel_values=images) if hasattr(model, "config") else model(images)
    return (outputs.logits if hasattr(outputs, "logits") else outputs).float()


def class_labels(model: nn.Module, labels: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """`labels` checked against `images` (one class index per image, inside the model's `num_labels` when it has
    one) and returned as int64 on the images' device; a `ValueError` naming what was wrong otherwise."""
    if (
        not isinstance(labels, torch.Tensor)
        or labels.dim() != 1
        or labels.dtype.is_floating_point
        or labels.is_complex()
    ):
        what = (
            f"dtype {labels.dtype}, shape {tuple(labels.shape)}" if isinstance(labels, torch.Tensor) else type(labels)
        )
        raise ValueError(f"labels must be a 1-D integer tensor of class indices, got {what}.")
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"Got {labels.shape[0]} labels for {images.shape[0]} images; expected one label per image.")
    num_labels = getattr(getattr(model, "config", None), "num_labels", None)
    if num_labels is not None:
        bad = labels[(labels < 0) | (labels >= num_labels)]
        if bad.numel():
            raise ValueError(
                f"labels must be in [0, {num_labels}) (the model's classes), got {sorted(set(bad.tolist()))}."
            )
    return labels.to(device=images.device, dtype=torch.long)


def soft_targets(model: nn.Module, targets: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """`targets` checked as soft targets for `images` (one probability row per image, over the model's `num_labels`
    when it has one: e.g. mixup / cutmix targets) and returned as float32 on the images' device."""
    if not isinstance(targets, torch.Tensor) or targets.dim() != 2 or not targets.dtype.is_floating_point:
        kind = isinstance(targets, torch.Tensor)
        what = f"dtype {targets.dtype}, shape {tuple(targets.shape)}" if kind else type(targets).__name__
        raise ValueError(f"soft targets must be a 2-D float tensor [batch, classes], got {what}.")
    num_labels = getattr(getattr(model, "config", None), "num_labels", targets.shape[1])
    if targets.shape != (images.shape[0], num_labels):
        raise ValueError(
            f"soft targets must have shape (images, classes) = {(images.shape[0], num_labels)}, got "
            f"{tuple(targets.shape)}."
        )
    targets = targets.to(device=images.device, dtype=torch.float32)
    if (targets < 0).any() or not torch.allclose(targets.sum(1), torch.ones_like(targets[:, 0]), atol=1e-4):
        raise ValueError("soft targets must be probabilities: non-negative rows that sum to 1.")
    return targets


def cross_entropy_objective(model: nn.Module, labels: torch.Tensor) -> Objective:
    """Summed cross-entropy of the true labels: the PGD / FGSM objective. Keeps the last logits (`.logits`) for
    early stopping; `index` selects the labels of a subset of the batch."""

    def objective(images: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        objective.logits = logits_of(model, images)
        return F.cross_entropy(objective.logits, labels if index is None else labels[index], reduction="sum")

    return objective


def soft_target_objective(model: nn.Module, targets: torch.Tensor, label_smoothing: float = 0.0) -> Objective:
    """Summed soft-target cross-entropy, -sum_k t_k log p_k(x') with t smoothed by `label_smoothing`: the attack on
    mixup / cutmix batches (the authors' ARES fine-tuning attacks timm's SoftTargetCrossEntropy on the mixed,
    label-smoothed targets)."""
    return lambda images: F.cross_entropy(
        logits_of(model, images), targets, label_smoothing=label_smoothing, reduction="sum"
    )


def margin_objective(model: nn.Module, labels: torch.Tensor) -> Objective:
    """Summed Carlini-Wagner margin max_{j != y} z_j - z_y: PGD on it is the CW-inf attack."""

    def objective(images: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        target = labels if index is None else labels[index]
        objective.logits = logits = logits_of(model, images)
        true = logits.gather(1, target[:, None]).squeeze(1)
        other = logits.masked_fill(F.one_hot(target, logits.shape[1]).bool(), float("-inf")).amax(dim=1)
        return (other - true).sum()

    return objective


def misclassified(labels: torch.Tensor) -> Callable[[Objective, torch.Tensor], torch.Tensor]:
    """`stop_when` for classification attacks: the images whose last logits (kept by the objective) miss the label."""
    return lambda objective, index: objective.logits.argmax(dim=1) != labels[index]


def trades_objective(model: nn.Module, clean_probabilities: torch.Tensor) -> Objective:
    """Summed KL(p(x) || p(x')): TRADES' inner maximisation, with p(x) fixed."""
    return lambda images: F.kl_div(F.log_softmax(logits_of(model, images), dim=1), clean_probabilities, reduction="sum")


def mi_objective(
    model: nn.Module, labels: torch.Tensor, weight: float | None = None, sigma: float | None = None
) -> Objective:
    """Adaptive PGD-MI, the authors' objective: mean cross-entropy over the batch + `weight` * HSIC(features(x'), x').

    `weight` and `sigma` default to the model's own MI settings (`config.mi_weight`, `config.mi_sigma`), so the attack
    knows the defence. Needs a classifier with `features` and `classifier` (every mimir_hf classifier has both).
    """
    config = getattr(model, "config", None)
    weight = getattr(config, "mi_weight", DEFAULT_MI_WEIGHT) if weight is None else weight
    sigma = getattr(config, "mi_sigma", DEFAULT_MI_SIGMA) if sigma is None else sigma

    def objective(images: torch.Tensor) -> torch.Tensor:
        features = model.features(images)
        logits = model.classifier(features).float()
        return F.cross_entropy(logits, labels) + weight * hsic(features, images, sigma=sigma)

    return objective


def feature_objective(model: nn.Module, clean_features: torch.Tensor) -> Objective:
    """Adaptive PGD-feature: summed L2 distance between the encoder features of x' and of the clean x. Keeps the
    logits of x' (the head on those features) for early stopping."""

    def objective(images: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        features = model.features(images)
        objective.logits = model.classifier(features).float()
        reference = clean_features if index is None else clean_features[index]
        return (features.float() - reference).norm(dim=1).sum()

    return objective


def mae_objective(model: nn.Module) -> Objective:
    """MIMIR's pre-training objective: the MAE loss of x' reconstructing itself, under a fresh random mask."""
    return lambda images: model(pixel_values=images, compute_mi_loss=False).reconstruction_loss * images.shape[0]


# ----------------------------------------------------------------------------------------------------------------
# Named attacks
# ----------------------------------------------------------------------------------------------------------------

_PGD_LOSSES = {"ce": cross_entropy_objective, "margin": margin_objective}


def pgd_attack(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    budget: AttackBudget,
    loss: str = "ce",
    generator: torch.Generator | None = None,
    early_stop: bool = False,
) -> torch.Tensor:
    """L-inf PGD on cross-entropy (`loss="ce"`) or on the CW margin (`loss="margin"`, i.e. CW-inf). With
    `early_stop` (evaluation), an image stops being attacked at the first iterate that is misclassified."""
    if loss not in _PGD_LOSSES:
        raise ValueError(f"Unknown PGD loss {loss!r}; expected one of {sorted(_PGD_LOSSES)}.")
    labels = class_labels(model, labels, images)
    return projected_gradient_ascent(
        _PGD_LOSSES[loss](model, labels), images, budget, model=model, generator=generator,
        stop_when=misclassified(labels) if early_stop else None,
    )  # fmt: skip


def soft_target_attack(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    budget: AttackBudget,
    label_smoothing: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """L-inf PGD on the soft-target cross-entropy of `targets` `[B, classes]` (mixup / cutmix training batches)."""
    targets = soft_targets(model, targets, images)
    objective = soft_target_objective(model, targets, label_smoothing)
    return projected_gradient_ascent(objective, images, budget, model=model, generator=generator)


def fgsm_attack(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, epsilon: float) -> torch.Tensor:
    """FGSM: one signed-gradient step of size eps from the clean image."""
    budget = AttackBudget(epsilon=epsilon, step_size=max(epsilon, 1e-12), steps=1, random_start=False)
    return pgd_attack(model, images, labels, budget)


def trades_attack(
    model: nn.Module, images: torch.Tensor, budget: AttackBudget, generator: torch.Generator | None = None
) -> torch.Tensor:
    """TRADES' adversarial example: maximise KL(p(x) || p(x')) with p(x) from the model in eval mode."""
    check_pixel_range(images, "images")
    with eval_mode(model), torch.no_grad():
        clean_probabilities = F.softmax(logits_of(model, images), dim=1)
    return projected_gradient_ascent(
        trades_objective(model, clean_probabilities), images, budget, model=model, generator=generator
    )


def mae_attack(
    model: nn.Module,
    images: torch.Tensor,
    budget: AttackBudget | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """MIMIR's pre-training attack on a `...ForPreTraining` model; `budget` defaults to `model.config.attack_budget`."""
    budget = model.config.attack_budget if budget is None else budget
    return projected_gradient_ascent(mae_objective(model), images, budget, model=model, generator=generator)


__all__ = [
    "class_labels",
    "cross_entropy_objective",
    "eval_mode",
    "feature_objective",
    "fgsm_attack",
    "logits_of",
    "mae_attack",
    "mae_objective",
    "margin_objective",
    "mi_objective",
    "misclassified",
    "pgd_attack",
    "project",
    "projected_gradient_ascent",
    "random_start",
    "reporting_progress",
    "soft_target_attack",
    "soft_target_objective",
    "soft_targets",
    "trades_attack",
    "trades_objective",
]


# ----------------------------------------------------------------------------------------------------------------
# The adversarial-training losses that go with the attacks above
# ----------------------------------------------------------------------------------------------------------------


def trades_loss(
    clean_logits: torch.Tensor,
    adversarial_logits: torch.Tensor,
    labels: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """TRADES (Zhang et al. 2019): the (label-smoothed) cross-entropy on the clean images plus beta times the batch mean
    of KL(p(x) || p(x')), x' from `trades_attack`."""
    natural = F.cross_entropy(clean_logits, labels, label_smoothing=label_smoothing)
    robust = F.kl_div(F.log_softmax(adversarial_logits, 1), F.softmax(clean_logits, 1), reduction="batchmean")
    return natural + beta * robust


def mart_loss(
    clean_logits: torch.Tensor, adversarial_logits: torch.Tensor, labels: torch.Tensor, beta: float
) -> torch.Tensor:
    """MART (Wang et al. 2020): the boosted cross-entropy on x' (the true class up, the strongest other class down)
    plus beta times KL(p(x) || p(x')) weighted by how unsure the model is on the clean image, 1 - p_y(x)."""
    adversarial_probs = F.softmax(adversarial_logits, dim=1)
    top2 = adversarial_probs.argsort(dim=1)[:, -2:]
    runner_up = torch.where(top2[:, -1] == labels, top2[:, -2], top2[:, -1])
    boosted = F.cross_entropy(adversarial_logits, labels) + F.nll_loss(
        torch.log(1.0001 - adversarial_probs + 1e-12), runner_up
    )
    clean_probs = F.softmax(clean_logits, dim=1)
    true_probs = clean_probs.gather(1, labels[:, None]).squeeze(1)
    kl = F.kl_div(torch.log(adversarial_probs + 1e-12), clean_probs, reduction="none").sum(dim=1)
    return boosted + beta * (kl * (1.0000001 - true_probs)).mean()
