"""AutoAttack for the robustness report: Croce and Hein's reference implementation, planned and checked up front.

AutoAttack "standard" (Croce & Hein, ICML 2020) runs APGD-CE, then APGD-T (targeted DLR loss), FAB-T and Square,
each on the images the previous ones left correct. The default implementation is the authors' own code as published
on PyPI (`pyautoattack`; its attack modules are the files of github.com/fra31/auto-attack at a392200, only the
imports and logging changed, see docs/autoattack.md) at the reference settings: 100 iterations of APGD-CE, APGD-T and
FAB-T, 9 target classes, 5000 Square queries. torchattacks' re-implementation is the alternative (10 iterations by
default, other numbers: docs/autoattack.md).

`plan_autoattack` decides everything before the report's first attack, from the settings and the model's number of
classes: with C < 10 classes the targeted attacks use C - 1 targets (the most the reference's own check allows);
APGD-T's targeted DLR loss reads the 3rd and 4th largest logits, so with 2 or 3 classes it cannot run and is left
out, said in the report; fewer than 2 classes is refused. `AutoAttackRunner` runs the plan on one batch, leaving
the global RNG and the model's train/eval mode as they were, and passes the reference's progress lines (which attack
runs, how many images it broke) to the report's progress bar.
"""

from __future__ import annotations

import importlib.metadata
import logging
from dataclasses import dataclass

import torch
from torch import nn

from .attacks import eval_mode, logits_of

IMPLEMENTATIONS = ("reference", "torchattacks")
TARGETS = 9  # the reference's target classes of APGD-T and FAB-T
SQUARE_QUERIES = 5000
_NAMES = {"apgd-ce": "APGD-CE", "apgd-t": "APGD-T", "fab-t": "FAB-T", "square": "Square"}
_PACKAGES = {"reference": "pyautoattack", "torchattacks": "torchattacks"}


@dataclass(frozen=True)
class AutoAttackPlan:
    """What AutoAttack will run: the implementation, its attacks in order with their counts, what was left out."""

    implementation: str
    version: str
    epsilon: float
    iterations: int
    targets: int
    queries: int
    attacks: tuple[str, ...]
    left_out: tuple[str, ...]  # "APGD-T: ..." reasons
    seed: int

    @property
    def standard(self) -> bool:
        return self.attacks == ("apgd-ce", "apgd-t", "fab-t", "square")

    @property
    def passes(self) -> float:
        """Forward-and-backward passes per image, at most (a Square query is a forward pass: a third of one)."""
        per_attack = {"apgd-ce": self.iterations, "apgd-t": self.iterations * self.targets,
                      "fab-t": self.iterations * self.targets, "square": self.queries / 3}  # fmt: skip
        return sum(per_attack[name] for name in self.attacks)

    def describe(self) -> str:
        """E.g. "reference implementation (pyautoattack 0.2.0), standard version: APGD-CE 100 iterations, ..."."""
        who = (
            f"reference implementation (pyautoattack {self.version}, Croce and Hein's code)"
            if self.implementation == "reference"
            else f"torchattacks {self.version}'s re-implementation"
        )
        counts = {
            "apgd-ce": f"APGD-CE {self.iterations} iterations",
            "apgd-t": f"APGD-T {self.iterations} iterations x {self.targets} target classes",
            "fab-t": f"FAB-T {self.iterations} iterations x {self.targets} target classes",
            "square": f"Square {self.queries} queries",
        }
        text = f"{who}, {'standard version' if self.standard else 'standard version less what is left out'}: "
        text += ", ".join(counts[name] for name in self.attacks)
        return text + "".join(f"; {reason}" for reason in self.left_out)


def plan_autoattack(
    num_classes: int, epsilon: float, seed: int, implementation: str = "reference", iterations: int = 100
) -> AutoAttackPlan:
    """The AutoAttack of a report on a `num_classes`-way classifier; a `ValueError` for what cannot run."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"autoattack_implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}.")
    if num_classes < 2:
        raise ValueError(f"AutoAttack needs a classifier of at least 2 classes, got {num_classes}.")
    package = _PACKAGES[implementation]
    try:
        version = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        fix = "pip install pyautoattack" if implementation == "reference" else "pip install --no-deps torchattacks"
        raise ValueError(
            f"AutoAttack's {implementation} implementation needs the {package} package, which is not installed "
            f"({fix}); or pass --autoattack false."
        ) from None
    attacks, left_out = ["apgd-ce", "apgd-t", "fab-t", "square"], []
    if num_classes < 4:
        attacks.remove("apgd-t")
        left_out.append(
            f"APGD-T left out: its targeted DLR loss needs at least 4 classes ({num_classes} here), as the "
            "reference's own check says"
        )
    targets = min(TARGETS, num_classes - 1)
    if targets < TARGETS:
        left_out.append(f"{targets} target class{'es' if targets > 1 else ''} ({num_classes} classes, C - 1)")
    return AutoAttackPlan(
        implementation, version, epsilon, iterations, targets, SQUARE_QUERIES, tuple(attacks), tuple(left_out), seed
    )


class _Logits(nn.Module):
    """The model as AutoAttack calls it: pixels in, a logits tensor out."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return logits_of(self.model, images)


class _Relay(logging.Handler):
    """Passes the reference's progress lines to `status` and each distinct warning once to mimir_hf's log."""

    def __init__(self, status, seen: set[str]):
        super().__init__(logging.DEBUG)
        self.status, self.seen = status, seen

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            if message not in self.seen:
                self.seen.add(message)
                logging.getLogger("mimir_hf.autoattack").warning(f"AutoAttack (reference): {message}")
        elif self.status is not None:
            self.status(message)


class AutoAttackRunner:
    """The report's AutoAttack row: `runner(model, images, labels, generator)` returns the adversarial images of a
    batch, as the plan says (the generator is unused: AutoAttack seeds itself with `plan.seed`)."""

    def __init__(self, plan: AutoAttackPlan):
        self.plan = plan
        self.description = plan.describe()
        self.warned: set[str] = set()

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, generator=None) -> torch.Tensor:
        from .progress import current_status

        logits = _Logits(model).eval()
        devices = [images.device.index or 0] if images.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), eval_mode(model):  # both implementations reseed torch's RNG
            if self.plan.implementation == "reference":
                return self._reference(logits, images, labels, current_status())
            return self._torchattacks(logits, images, labels)

    def _reference(self, logits, images, labels, status) -> torch.Tensor:
        from pyautoattack import AutoAttack

        plan = self.plan
        attack = AutoAttack(logits, norm="Linf", eps=plan.epsilon, seed=plan.seed, device=images.device)
        for component in (attack.apgd, attack.apgd_targeted, attack.fab):
            component.n_iter = plan.iterations
        attack.apgd_targeted.n_target_classes = attack.fab.n_target_classes = plan.targets
        attack.square.n_queries = plan.queries
        attack.attacks_to_run = list(plan.attacks)
        log = logging.getLogger("auto-attack")
        relay = _Relay(status, self.warned)
        level, propagate = log.level, log.propagate
        log.addHandler(relay)
        log.setLevel(logging.DEBUG)
        log.propagate = False  # its debug lines go to the progress bar, not to the console
        try:
            adversarial, _ = attack.run_standard_evaluation(images, labels, batch_size=len(images))
        finally:
            log.removeHandler(relay)
            log.setLevel(level)
            log.propagate = propagate
        return adversarial

    def _torchattacks(self, logits, images, labels) -> torch.Tensor:
        import torchattacks as ta

        plan = self.plan
        common = dict(eps=plan.epsilon, norm="Linf", seed=plan.seed, n_restarts=1)
        classes = plan.targets + 1  # torchattacks targets n_classes - 1 classes
        parts = {
            "apgd-ce": lambda: ta.APGD(logits, loss="ce", steps=plan.iterations, **common),
            "apgd-t": lambda: ta.APGDT(logits, n_classes=classes, steps=plan.iterations, **common),
            "fab-t": lambda: ta.FAB(logits, multi_targeted=True, n_classes=classes, steps=plan.iterations, **common),
            "square": lambda: ta.Square(logits, n_queries=plan.queries, **common),
        }
        return ta.MultiAttack([parts[name]() for name in plan.attacks])(images, labels)


__all__ = ["IMPLEMENTATIONS", "AutoAttackPlan", "AutoAttackRunner", "plan_autoattack"]
