"""The report's types: `RobustnessReport` (what `evaluate_robustness` returns; `to_dict()` is `robustness.json`),
a point of the eps sweep and a sanity-check row."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class SweepPoint:
    epsilon: float
    epsilon_255: float
    accuracy: float


@dataclass
class SanityCheck:
    check: str
    passed: bool | None  # None: skipped
    detail: str


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
