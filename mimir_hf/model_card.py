"""Model cards for saved MIMIR models, built with `huggingface_hub.ModelCard` from the package's templates, with
`model-index` results (`EvalResult`) the Hub shows as a results table."""

from __future__ import annotations

import os
from importlib import resources

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .checkpoints import disk_full_reported

TAGS = ["mimir", "mimir_hf", "adversarial-robustness", "vision-transformer", "masked-image-modeling"]
KINDS = {"pretrained": "image-feature-extraction", "finetuned": "image-classification"}


def robustness_eval_results(report, dataset_name: str) -> list[EvalResult]:
    """`model-index` entries from a `RobustnessReport` (accuracies in %)."""
    eps = report.settings["epsilon_255"]
    entries = [("natural accuracy", report.natural_accuracy)]
    entries.append((f"robust accuracy, worst case over all attacks, Linf eps={eps:g}/255", report.robust_accuracy))
    for name, value in report.accuracy.items():
        if name not in ("natural", "uniform_noise"):
            entries.append((f"{name} accuracy, Linf eps={eps:g}/255", value))
    return accuracy_results(entries, dataset_name)


def accuracy_results(entries: list[tuple[str, float]], dataset_name: str) -> list[EvalResult]:
    """One image-classification accuracy `EvalResult` per (name, value in %) pair."""
    return [
        EvalResult(
            task_type="image-classification",
            dataset_type=dataset_name,
            dataset_name=dataset_name,
            metric_type="accuracy",
            metric_name=name,
            metric_value=value,
        )
        for name, value in entries
    ]


def build_model_card(
    kind: str,
    dataset_name: str,
    training: dict,
    results_markdown: str,
    eval_results: list[EvalResult] | None = None,
    model_id: str = "mimir-model",
) -> ModelCard:
    """A `ModelCard` from the `kind` template ("pretrained" or "finetuned"), with `model-index` results."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}.")
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag=KINDS[kind],
        tags=TAGS,
        datasets=[dataset_name],
        model_name=model_id,
        eval_results=eval_results or None,
    )
    template = resources.files("mimir_hf").joinpath("templates", f"{kind}.md").read_text(encoding="utf-8")
    return ModelCard.from_template(
        card_data,
        template_str=template,
        model_name=model_id,
        model_id=model_id,
        training_table="\n".join(f"| {key} | {value} |" for key, value in training.items()),
        results=results_markdown,
    )


def write_model_card(
    output_dir: str,
    kind: str,
    dataset_name: str,
    training: dict,
    results_markdown: str,
    eval_results: list[EvalResult] | None = None,
    model_id: str | None = None,
) -> str:
    """Write `README.md` in `output_dir` (see `build_model_card`); returns its path."""
    model_id = model_id or os.path.basename(os.path.abspath(output_dir))
    card = build_model_card(kind, dataset_name, training, results_markdown, eval_results, model_id)
    path = os.path.join(output_dir, "README.md")
    with disk_full_reported(path, 2**20, "the model card"):
        card.save(path)
    return path


FAMILY_DESCRIPTIONS = {
    "vit": (
        "ViT",
        "A Vision Transformer from the MIMIR recipe: pre-trained as a masked autoencoder that reconstructs clean "
        "images from adversarial ones under an HSIC mutual-information bottleneck, then adversarially fine-tuned.",
    ),
    "swin": (
        "Swin",
        "A Swin Transformer from the MIMIR recipe (adversarial GreenMIM pre-training, then ARES adversarial "
        "fine-tuning), computing exactly what Microsoft's Swin code computes (LayerNorm eps 1e-6 everywhere, "
        "windows clamped to small stages before their relative-position tables are built).",
    ),
    "cait": (
        "CaiT",
        "A CaiT (class-attention image transformer: talking-heads LayerScale layers over the patches, then two "
        "class-attention layers; head on the class token) from the MIMIR recipe: adversarial MAE pre-training with "
        "a light talking-heads decoder and an HSIC bottleneck, then adversarial fine-tuning on ImageNet-1K.",
    ),
    "convit": (
        "ConViT",
        "A ConViT (gated positional self-attention in the first 10 layers, the class token joined before layer 10; "
        "head on the class token) from the MIMIR recipe: adversarial MAE pre-training with a light GPSA decoder and "
        "an HSIC bottleneck, then adversarial fine-tuning on CIFAR-10 (32 px, patch 2).",
    ),
}


def build_conversion_card(
    family: str,
    config,
    source: dict,
    notes: list[str],
    ignored: dict[str, str],
    new_keys: list[str],
    model_id: str = "this-folder",
) -> ModelCard:
    """The model card of a converted released checkpoint: its source, the converter's choices, what was ignored,
    and the authors' reported numbers for this family."""
    from .released import released_table

    family_name, description = FAMILY_DESCRIPTIONS[family]
    classifier = "ForImageClassification" in (config.architectures or [""])[0]
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-classification" if classifier else "image-feature-extraction",
        tags=[*TAGS, family],
        model_name=model_id,
    )
    note_lines = "\n".join(f"- {note}" for note in notes)
    ignored_lines = "\n".join(f"- `{key}`: {reason}" for key, reason in sorted(ignored.items()))
    new_lines = ", ".join(f"`{key}`" for key in new_keys)
    template = resources.files("mimir_hf").joinpath("templates", "converted.md").read_text(encoding="utf-8")
    return ModelCard.from_template(
        card_data,
        template_str=template,
        model_name=f"MIMIR {family_name} ({config.model_type})",
        model_id=model_id,
        family_name=family_name,
        description=description,
        source_table="\n".join(f"| {key} | {value} |" for key, value in source.items()),
        notes=f"Choices the file could not settle:\n\n{note_lines}" if notes else "Nothing had to be guessed.",
        ignored=(f"Not carried over:\n\n{ignored_lines}" if ignored else "Every tensor of the file was carried over.")
        + (f"\n\nNewly initialised (not in the file): {new_lines}." if new_keys else ""),
        released=released_table(family),
    )


__all__ = [
    "accuracy_results",
    "build_conversion_card",
    "build_model_card",
    "robustness_eval_results",
    "write_model_card",
]
