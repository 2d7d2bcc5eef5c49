"""Model cards for saved MIMIR models: the templates of `model_cards/`, filled in, with `model-index` metadata."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

TEMPLATES = Path(__file__).resolve().parent.parent / "model_cards"


def _metadata(kind: str, dataset_name: str, metrics: list[dict]) -> str:
    task = "image-classification" if kind == "finetuned" else "image-feature-extraction"
    metadata = {
        "library_name": "transformers",
        "pipeline_tag": task,
        "tags": ["mimir", "mimir_hf", "adversarial-robustness", "vision-transformer", "masked-image-modeling"],
        "datasets": [dataset_name],
    }
    if metrics:
        metadata["model-index"] = [
            {
                "name": "mimir",
                "results": [
                    {
                        "task": {"type": task},
                        "dataset": {"name": dataset_name, "type": dataset_name},
                        "metrics": metrics,
                    }
                ],
            }
        ]
    return yaml.safe_dump(metadata, sort_keys=False).strip()


def robustness_metrics(report: dict) -> list[dict]:
    """`model-index` metric entries from an `evaluate_robustness` report (accuracies in %)."""
    eps = report["settings"]["epsilon_255"]
    entries = [{"type": "accuracy", "name": "natural accuracy", "value": report["natural_accuracy"]}]
    entries.append(
        {"type": "accuracy", "name": f"robust accuracy, worst case over all attacks, Linf eps={eps:g}/255",
         "value": report["robust_accuracy"]}
    )
    for name, value in report["accuracy"].items():
        if name not in ("natural", "uniform_noise"):
            entries.append({"type": "accuracy", "name": f"{name} accuracy, Linf eps={eps:g}/255", "value": value})
    return entries


def write_model_card(
    output_dir: str,
    kind: str,
    dataset_name: str,
    training: dict,
    results_markdown: str,
    metrics: list[dict] | None = None,
    model_id: str | None = None,
) -> str:
    """Write `README.md` in `output_dir` from `model_cards/{kind}.md` (`kind`: "pretrained" or "finetuned")."""
    template_path = TEMPLATES / f"{kind}.md"
    if not template_path.is_file():
        raise FileNotFoundError(f"Model card template {template_path} is missing (kind must be 'pretrained' or 'finetuned').")
    model_id = model_id or os.path.basename(os.path.abspath(output_dir))
    table = "\n".join(f"| {key} | {value} |" for key, value in training.items())
    card = template_path.read_text().format(
        metadata=_metadata(kind, dataset_name, metrics or []),
        model_name=model_id,
        model_id=model_id,
        training_table=table,
        results=results_markdown,
    )
    path = os.path.join(output_dir, "README.md")
    with open(path, "w") as f:
        f.write(card)
    return path


__all__ = ["robustness_metrics", "write_model_card"]
