"""The Carlini et al. (2019) checks against gradient masking, as pass/fail rows of the report (`SanityCheck`),
from the accuracies and the eps sweep (`SweepPoint`s)."""

from __future__ import annotations

from dataclasses import dataclass


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


def sanity_checks(
    accuracy: dict[str, float],
    sweep: list[SweepPoint],
    tolerance: float = 0.5,
    autoattack_reference: float | None = None,
) -> list[SanityCheck]:
    """Carlini et al. (2019) checks against gradient masking.

    `autoattack_reference` is the short PGD's accuracy on the images AutoAttack ran on (all of them by default).
    """
    pgd = [name for name in accuracy if name.startswith("pgd") and name[3:].isdigit()]
    short, long = pgd[0], pgd[-1]
    checks = []

    def check(name: str, passed: bool | None, detail: str) -> None:
        checks.append(SanityCheck(name, None if passed is None else bool(passed), detail))

    largest = sweep[-1]
    check(
        "accuracy reaches 0 at a large eps",
        largest.accuracy == 0.0,
        f"{short.upper()} at eps {largest.epsilon_255:g}/255: {largest.accuracy}%",
    )
    check(
        "more PGD steps never help the model",
        accuracy[long] <= accuracy[short] + tolerance,
        f"{long.upper()} {accuracy[long]}% vs {short.upper()} {accuracy[short]}% (tolerance {tolerance} pt)",
    )
    check(
        "multi-step PGD at least as strong as FGSM",
        accuracy[short] <= accuracy["fgsm"] + tolerance,
        f"{short.upper()} {accuracy[short]}% vs FGSM {accuracy['fgsm']}%",
    )
    if "autoattack" in accuracy:
        reference = accuracy[short] if autoattack_reference is None else autoattack_reference
        check(
            "AutoAttack at least as strong as PGD",
            accuracy["autoattack"] <= reference + tolerance,
            f"AutoAttack {accuracy['autoattack']}% vs {short.upper()} {reference}% on the same images",
        )
    else:
        check("AutoAttack at least as strong as PGD", None, "AutoAttack skipped")
    check(
        "random noise of the same eps weaker than PGD",
        accuracy["uniform_noise"] >= accuracy[short],
        f"noise {accuracy['uniform_noise']}% vs {short.upper()} {accuracy[short]}%",
    )
    values = [point.accuracy for point in sweep]
    starts_clean = sweep[0].epsilon > 0 or values[0] == accuracy["natural"]
    check(
        "accuracy falls monotonically with eps, from the natural accuracy",
        all(b <= a + tolerance for a, b in zip(values, values[1:], strict=False)) and starts_clean,
        " -> ".join(f"{point.epsilon_255:g}:{point.accuracy}" for point in sweep),
    )
    return checks
