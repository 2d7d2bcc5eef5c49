"""Counting: the per-image worst case over the attacks of one batch (`worst_case`), the counts the batches add up to
(`Tally`, merged over processes), and what each attack cost this process (`AttackCosts`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


def worst_case(results: dict[str, torch.Tensor], attack_names: list[str]) -> torch.Tensor:
    """Per image: still correct after every attack in `attack_names` (an attack that covered only a prefix of the
    images counts on that prefix)."""
    survived = results["natural"].clone()
    for name in attack_names:
        if name in results:  # absent: the attack's images ended in an earlier batch
            survived[: len(results[name])] &= results[name]
    return survived


def percent(correct: torch.Tensor | int, total: int | None = None) -> float:
    if isinstance(correct, torch.Tensor):
        correct, total = int(correct.sum()), len(correct)
    return round(100.0 * correct / total, 2) if total else 0.0


@dataclass
class Tally:
    """The counts behind the report, over the batches added so far (one process's, or several merged).

    Per row ("natural", each attack, each sweep point): `total`, the images the row covered, and `correct`, those
    still classified correctly. `images` counts every image, `robust` those correct under every attack of the worst
    case, and `autoattack_reference` the short PGD's correct images among those AutoAttack covered (the reference of
    its sanity check). Rows keep the order they were named in."""

    correct: dict[str, int] = field(default_factory=dict)
    total: dict[str, int] = field(default_factory=dict)
    images: int = 0
    robust: int = 0
    autoattack_reference: int = 0

    @classmethod
    def for_rows(cls, names: list[str]) -> Tally:
        return cls(dict.fromkeys(names, 0), dict.fromkeys(names, 0))

    def add(self, results: dict[str, torch.Tensor], worst_names: list[str], reference: str) -> None:
        """Count one batch: `results` holds each row's per-image correctness (see `evaluate_batch`), `worst_names`
        the rows of the worst case, `reference` the row AutoAttack is checked against."""
        for name, bits in results.items():
            self.correct[name] = self.correct.get(name, 0) + int(bits.sum())
            self.total[name] = self.total.get(name, 0) + len(bits)
        self.images += len(results["natural"])
        self.robust += int(worst_case(results, worst_names).sum())
        if "autoattack" in results:
            self.autoattack_reference += int(results[reference][: len(results["autoattack"])].sum())

    def merge(self, other: Tally) -> Tally:
        """The counts of both (e.g. two processes' shares of the batches), rows in this tally's order first."""
        names = list(dict.fromkeys([*self.total, *other.total]))
        return Tally(
            {name: self.correct.get(name, 0) + other.correct.get(name, 0) for name in names},
            {name: self.total.get(name, 0) + other.total.get(name, 0) for name in names},
            self.images + other.images,
            self.robust + other.robust,
            self.autoattack_reference + other.autoattack_reference,
        )

    def rows(self) -> list[str]:
        """The rows that covered at least one image."""
        return [name for name, total in self.total.items() if total > 0]

    def accuracy(self, name: str) -> float:
        """The row's accuracy in % (0 when it covered no image)."""
        return percent(self.correct.get(name, 0), self.total.get(name, 0))

    def robust_accuracy(self) -> float:
        """The worst case over the attacks, in % of every image."""
        return percent(self.robust, self.images)


@dataclass
class AttackCosts:
    """Per attack, what it cost this process: wall seconds, and the images it attacked with the forward and backward
    passes they took. Not merged over processes: per image they compare across them."""

    seconds: dict[str, float] = field(default_factory=dict)
    passes: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, seconds: dict[str, float], passes: dict[str, dict[str, int]]) -> None:
        for name, value in seconds.items():
            self.seconds[name] = self.seconds.get(name, 0.0) + value
        for name, counts in passes.items():
            total = self.passes.setdefault(name, dict.fromkeys(counts, 0))
            for key, value in counts.items():
                total[key] += value

    def per_image(self) -> dict[str, dict[str, float]]:
        """The report's `cost`: seconds, forward passes and backward passes per image attacked."""
        return {
            name: {
                "seconds_per_image": round(self.seconds.get(name, 0.0) / max(c["images"], 1), 5),
                "forward_passes_per_image": round(c["forward"] / max(c["images"], 1), 2),
                "backward_passes_per_image": round(c["backward"] / max(c["images"], 1), 2),
            }
            for name, c in self.passes.items()
        }
