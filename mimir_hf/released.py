"""The authors' released MIMIR checkpoints and what the paper / their README reports for each: the one table the
README, the model cards and the converter's output cards are built from."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReleasedCheckpoint:
    """One released classifier. Accuracies in %, as the authors report them; `robust_attack` names the attack."""

    family: str  # "vit", "swin", "cait", "convit"
    model: str  # e.g. "ViT-B"
    dataset: str
    epsilon_255: float
    natural: float
    robust: float
    robust_attack: str
    note: str = ""


RELEASED = (
    ReleasedCheckpoint("vit", "ViT-T", "CIFAR-10", 8, 84.82, 52.96, "AutoAttack"),
    ReleasedCheckpoint("vit", "ViT-S", "CIFAR-10", 8, 88.11, 53.18, "AutoAttack"),
    ReleasedCheckpoint("vit", "ViT-B", "CIFAR-10", 8, 89.30, 54.55, "AutoAttack"),
    ReleasedCheckpoint("vit", "ViT-S", "CIFAR-10", 8, 91.94, 61.06, "AutoAttack", "+5M EDM images"),
    ReleasedCheckpoint("vit", "ViT-B", "CIFAR-10", 8, 92.82, 63.43, "AutoAttack", "+5M EDM images"),
    ReleasedCheckpoint("vit", "ViT-S", "ImageNet-1K", 2, 74.60, 54.56, "PGD-20"),
    ReleasedCheckpoint("vit", "ViT-B", "ImageNet-1K", 2, 75.88, 55.42, "PGD-20"),
    ReleasedCheckpoint("vit", "ViT-S", "ImageNet-1K", 4, 71.29, 40.98, "PGD-20"),
    ReleasedCheckpoint("vit", "ViT-B", "ImageNet-1K", 4, 73.22, 41.26, "PGD-20"),
    ReleasedCheckpoint("vit", "ViT-S", "ImageNet-1K", 4, 71.00, 46.10, "AutoAttack", "2-step APGD AT, 300 epochs"),
    ReleasedCheckpoint("vit", "ViT-B", "ImageNet-1K", 4, 76.32, 54.28, "AutoAttack", "2-step APGD AT, 300 epochs"),
    ReleasedCheckpoint("swin", "Swin-B", "ImageNet-1K", 4, 76.62, 55.90, "AutoAttack", "RobustBench Xu2024MIMIR"),
    ReleasedCheckpoint("swin", "Swin-L", "ImageNet-1K", 4, 78.62, 59.68, "AutoAttack", "RobustBench Xu2024MIMIR"),
    ReleasedCheckpoint("cait", "CaiT-XXS24", "ImageNet-1K", 2, 73.39, 53.39, "PGD-20"),
    ReleasedCheckpoint("cait", "CaiT-S36", "ImageNet-1K", 2, 76.05, 56.78, "PGD-20"),
    ReleasedCheckpoint("cait", "CaiT-XXS24", "ImageNet-1K", 4, 69.90, 40.53, "PGD-20"),
    ReleasedCheckpoint("cait", "CaiT-S36", "ImageNet-1K", 4, 73.57, 40.03, "PGD-20"),
    ReleasedCheckpoint("convit", "ConViT-T", "CIFAR-10", 8, 80.74, 45.04, "AutoAttack"),
    ReleasedCheckpoint("convit", "ConViT-S", "CIFAR-10", 8, 87.49, 52.54, "AutoAttack"),
    ReleasedCheckpoint("convit", "ConViT-B", "CIFAR-10", 8, 89.30, 55.64, "AutoAttack"),
)


def released(family: str) -> list[ReleasedCheckpoint]:
    """The released classifiers of one family."""
    return [checkpoint for checkpoint in RELEASED if checkpoint.family == family]


def released_table(family: str | None = None) -> str:
    """A Markdown table of the released classifiers (of one family, or all)."""
    rows = [c for c in RELEASED if family is None or c.family == family]
    lines = ["| model | data | L-inf eps | natural (%) | robust (%) | note |", "| --- | --- | --- | --- | --- | --- |"]
    for c in rows:
        lines.append(
            f"| {c.model} | {c.dataset} | {c.epsilon_255:g}/255 | {c.natural:.2f} | {c.robust:.2f} ({c.robust_attack})"
            f" | {c.note} |"
        )
    return "\n".join(lines)


__all__ = ["RELEASED", "ReleasedCheckpoint", "released", "released_table"]
