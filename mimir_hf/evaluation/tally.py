"""Counting: the per-image worst case over the attacks of one batch, and percentages."""

from __future__ import annotations

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
