"""The report: `RobustnessReport` (what `evaluate_robustness` returns; `to_dict()` is `robustness.json`), built from
the merged tally of every process (`build_report`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .registry import Attack
from .sanity import SanityCheck, SweepPoint, sanity_checks
from .settings import RobustnessSettings, autoattack_status
from .tally import AttackCosts, Tally, percent


@dataclass
class RobustnessReport:
    """What `evaluate_robustness` returns; `to_dict()` is `robustness.json`. Accuracies in %."""

    num_samples: int
    natural_accuracy: float
    robust_accuracy: float
    robust_accuracy_attacks: list[str]
    accuracy: dict[str, float]
    attack_samples: dict[str, int]
    titles: dict[str, str]
    autoattack: str
    eps_sweep: list[SweepPoint]
    sanity_checks: list[SanityCheck]
    settings: dict
    seconds: dict[str, float] = field(default_factory=dict)  # wall time of each attack (this process)
    # per attack: seconds, forward passes and backward passes per image attacked (an image of a batch of B counts
    # 1/B of a batch's pass), to predict the report's cost on other hardware (see examples/benchmark.py)
    cost: dict[str, dict[str, float]] = field(default_factory=dict)
    info: dict = field(default_factory=dict)  # model, device, ... (set by the caller)

    def to_dict(self) -> dict:
        return asdict(self)


def build_report(
    tally: Tally, costs: AttackCosts, attacks: list[Attack], sweep: list[Attack], settings: RobustnessSettings
) -> RobustnessReport:
    """The report of every process's `tally` (`costs`: this process's); `attacks` and `sweep` are the report's rows
    and the sweep's points, as `attack_registry` and `sweep_attacks` made them."""
    rows = tally.rows()
    accuracy = {name: tally.accuracy(name) for name in rows if not name.startswith("sweep_")}
    titles = {"natural": "natural (no attack)", **{a.name: a.title for a in attacks + sweep}}
    sweep_points = [
        SweepPoint(eps, round(eps * 255, 2), tally.accuracy(point.name))
        for eps, point in zip(settings.eps_sweep, sweep, strict=True)
    ]
    status, reference = _autoattack_line(tally, attacks, settings)
    return RobustnessReport(
        num_samples=tally.images,
        natural_accuracy=accuracy["natural"],
        robust_accuracy=tally.robust_accuracy(),
        robust_accuracy_attacks=[a.name for a in attacks if a.in_worst_case and a.name in accuracy],
        accuracy=accuracy,
        attack_samples={name: tally.total[name] for name in accuracy},
        titles={name: titles[name] for name in rows},
        autoattack=status,
        eps_sweep=sweep_points,
        sanity_checks=sanity_checks(accuracy, sweep_points, settings.tolerance, reference),
        settings={
            **asdict(settings),
            "epsilon_255": round(settings.epsilon * 255, 2),
            "step_size_255": round(settings.step_size * 255, 2),
        },
        seconds={name: round(value, 2) for name, value in costs.seconds.items()},
        cost=costs.per_image(),
    )


def _autoattack_line(tally: Tally, attacks: list[Attack], settings: RobustnessSettings) -> tuple[str, float | None]:
    """(the report's AutoAttack line, the short PGD's accuracy on the images AutoAttack covered, or None if it did
    not run)."""
    covered = tally.total.get("autoattack", 0)
    if not covered:
        return autoattack_status(settings), None
    status = next(a.run.description for a in attacks if a.name == "autoattack")
    reference = percent(tally.autoattack_reference, covered)
    if covered < tally.images:
        status += f", on the first {covered} of {tally.images} images (PGD-{settings.pgd_steps[0]} there: {reference}%)"
    return status, reference
