"""What the robustness report runs: `RobustnessSettings` (budgets, steps, the eps sweep, AutoAttack's options,
batch size and seed), the command-line arguments of `mimir-hf evaluate` and `mimir-hf run`."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..autoattack import IMPLEMENTATIONS
from ..threat_model import EVALUATION_ATTACK, AttackBudget, check_budget

DEFAULT_SWEEP_255 = (0, 2, 4, 8, 16, 32, 64, 128, 255)  # eps values of the sweep, in 1/255


@dataclass
class RobustnessSettings:
    """What `evaluate_robustness` runs. Budgets are in [0, 1] pixel units; the fields are command-line arguments of
    `mimir-hf evaluate` and `mimir-hf run` (parsed by `HfArgumentParser`)."""

    epsilon: float = field(
        default=EVALUATION_ATTACK.epsilon, metadata={"help": "L-inf eps of every attack, in [0, 1]."}
    )
    step_size: float = field(default=EVALUATION_ATTACK.step_size, metadata={"help": "PGD step size, in [0, 1]."})
    pgd_steps: list[int] = field(
        default_factory=lambda: [EVALUATION_ATTACK.steps, 5 * EVALUATION_ATTACK.steps],
        metadata={"help": "Steps of the PGD attacks (one row each), e.g. 20 100."},
    )
    cw_steps: int = field(default=30, metadata={"help": "Steps of CW-inf (PGD on the margin loss)."})
    adaptive_steps: int = field(default=100, metadata={"help": "Steps of the adaptive PGD-MI and PGD-feature."})
    pgd_mi_weight: float | None = field(
        default=None, metadata={"help": "PGD-MI's HSIC weight (default: the model's config.mi_weight)."}
    )
    pgd_mi_sigma: float | None = field(
        default=None, metadata={"help": "PGD-MI's kernel width (default: the model's config.mi_sigma)."}
    )
    eps_sweep: list[float] = field(
        default_factory=lambda: [e / 255 for e in DEFAULT_SWEEP_255],
        metadata={"help": "eps values (in [0, 1]) of the PGD sweep."},
    )
    autoattack: bool = field(default=True, metadata={"help": "Run AutoAttack (standard version)."})
    autoattack_max_samples: int = field(
        default=-1, metadata={"help": "AutoAttack on the first N images only: -1 = all, 0 = none."}
    )
    autoattack_implementation: str = field(
        default="reference",
        metadata={"help": "'reference': Croce and Hein's code (pyautoattack); 'torchattacks': its re-implementation "
                  "(pip install --no-deps torchattacks), whose numbers differ (docs/autoattack.md)."},
    )  # fmt: skip
    autoattack_iterations: int = field(
        default=100,
        metadata={"help": "Iterations of AutoAttack's APGD-CE, APGD-T and FAB-T: 100 is the reference's standard "
                  "version (Square always makes 5000 queries); fewer is cheaper and weaker, and the report says so."},
    )  # fmt: skip
    eval_batch_size: int = field(default=256, metadata={"help": "Images per evaluation batch (per process)."})
    eval_seed: int = field(default=0, metadata={"help": "Seed of the attacks' random starts."})
    tolerance: float = field(
        default=0.5, metadata={"help": "Points of accuracy the 'never better' sanity checks allow (random starts)."}
    )

    def __post_init__(self):
        check_budget(self.epsilon, self.step_size, min(self.pgd_steps, default=0))
        for name in ("cw_steps", "adaptive_steps"):
            check_budget(self.epsilon, self.step_size, getattr(self, name), prefix=f"{name}: ")
        if any(not 0 <= eps <= 1 for eps in self.eps_sweep):
            raise ValueError(f"eps_sweep values must be in [0, 1] (pixel units), got {list(self.eps_sweep)}.")
        if self.autoattack_max_samples < -1:
            raise ValueError(
                f"autoattack_max_samples must be -1 (all images), 0 (none) or a positive count, got "
                f"{self.autoattack_max_samples}."
            )
        if self.eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be >= 1, got {self.eval_batch_size}.")
        if self.autoattack_iterations < 1:
            raise ValueError(
                f"autoattack_iterations must be >= 1 (100: the reference's standard version), got "
                f"{self.autoattack_iterations}."
            )
        if self.autoattack_implementation not in IMPLEMENTATIONS:
            raise ValueError(
                f"autoattack_implementation must be one of {IMPLEMENTATIONS}, got {self.autoattack_implementation!r}."
            )

    def budget(self, steps: int, epsilon: float | None = None) -> AttackBudget:
        """The PGD budget with `steps` steps (at `epsilon`, default the settings' eps; step eps/4 for other eps)."""
        if epsilon is None or epsilon == self.epsilon:
            return AttackBudget(self.epsilon, self.step_size, steps)
        return AttackBudget(epsilon, max(epsilon / 4, 1e-6), steps)


def autoattack_status(settings: RobustnessSettings) -> str:
    """Why AutoAttack will not run ("skipped: disabled"), or "" when it will."""
    return "skipped: disabled" if not settings.autoattack or settings.autoattack_max_samples == 0 else ""
