#!/usr/bin/env python
"""Adversarial fine-tuning of a MIMIR classifier: from a MIMIR pre-training checkpoint, or from scratch.

    python examples/run_finetuning.py --model_name_or_path out/pretrain --output_dir out/finetune   # digits
    python examples/run_finetuning.py --model_name_or_path out/pretrain --dataset_name cifar10 \
        --image_column_name img --adversarial_method trades --output_dir out/finetune --bf16

Writes the classifier (safetensors + config with id2label), a quick PGD-20 measurement and a model card `README.md`.
For the full robustness report run `run_evaluation.py` on the output. Runs under `accelerate launch` and `torchrun`.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
    FineTuningArguments,
    ModelArguments,
    default_num_channels,
    load_data,
    logger,
    mark_complete,
    start_training_run,
    train,
)
from transformers import AutoConfig  # noqa: E402

from mimir_hf import MimirForImageClassification  # noqa: E402
from mimir_hf.attacks import pgd_attack  # noqa: E402
from mimir_hf.data import collate_fn, image_processor_for, tensors  # noqa: E402
from mimir_hf.evaluation import correct_under_attack  # noqa: E402
from mimir_hf.model_card import write_model_card  # noqa: E402
from mimir_hf.trainer import MimirAdversarialTrainer  # noqa: E402

FINETUNING_DROP_PATH = 0.1  # MIMIR.md: drop path 0.1 in fine-tuning


def build_classifier(model_args: ModelArguments, num_channels: int, names: list[str]) -> MimirForImageClassification:
    labels = dict(num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    overrides = {"drop_path_rate": FINETUNING_DROP_PATH, **model_args.config_overrides(), **labels}
    if model_args.model_name_or_path:
        return MimirForImageClassification.from_pretrained(model_args.model_name_or_path, **overrides)
    return MimirForImageClassification(model_args.new_config(num_channels, **overrides))


def quick_robustness(model, images, labels, epsilon: float) -> dict:
    """Natural and PGD-20 accuracy (%) at the training eps, step eps/4, random start."""
    natural = correct_under_attack(model, lambda x, y: x, images, labels)
    robust = correct_under_attack(
        model, lambda x, y: pgd_attack(model, x, y, epsilon=epsilon, step_size=max(epsilon / 4, 1e-6), steps=20),
        images, labels,
    )
    return {"natural_accuracy": round(100 * natural.float().mean().item(), 2),
            "pgd20_accuracy": round(100 * robust.float().mean().item(), 2)}


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, training_args, resume = start_training_run("run_finetuning", FineTuningArguments, argv)

    num_channels = default_num_channels(data_args)
    if model_args.model_name_or_path:  # the checkpoint decides the input shape
        shape = AutoConfig.from_pretrained(model_args.model_name_or_path)
        image_size = shape.image_size if isinstance(shape.image_size, (list, tuple)) else (shape.image_size,) * 2
        num_channels = shape.num_channels
    else:
        image_size = model_args.new_config(num_channels).image_size_hw
    train_dataset, eval_dataset, names = load_data(data_args, tuple(image_size), num_channels, training_args.seed)
    model = build_classifier(model_args, num_channels, names)
    logger.info(
        f"Adversarial fine-tuning ({training_args.adversarial_method}, eps {training_args.adversarial_epsilon * 255:.1f}/255, "
        f"{training_args.adversarial_steps} steps) of {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M "
        f"parameters on {len(train_dataset)} images, {len(names)} classes"
    )
    trainer = MimirAdversarialTrainer(
        model=model, args=training_args, train_dataset=train_dataset, data_collator=collate_fn
    )
    result = train(trainer, resume)
    trainer.save_model()
    if trainer.is_world_process_zero():
        image_processor_for(model.config).save_pretrained(training_args.output_dir)
    metrics = dict(result.metrics)
    if trainer.is_world_process_zero():
        images, labels = tensors(eval_dataset)
        metrics.update(quick_robustness(model, images, labels, training_args.adversarial_epsilon))
        trainer.log_metrics("finetune", metrics)
        trainer.save_metrics("all", metrics)
        config = model.config
        dataset_name = data_args.dataset_name or ("sklearn-digits" if data_args.uses_default_data else "imagefolder")
        training = {
            "initialisation": model_args.model_name_or_path or "random (no pre-training)",
            "data": f"{dataset_name}, {len(train_dataset)} training images at {config.image_size_hw[0]}x{config.image_size_hw[1]}",
            "encoder": f"ViT {config.hidden_size} wide, {config.num_hidden_layers} layers, patch {config.patch_size}, "
            f"{config.classifier_pooling} pooling",
            "adversarial training": f"{training_args.adversarial_method}, eps {training_args.adversarial_epsilon * 255:.1f}/255, "
            f"step {training_args.adversarial_step_size * 255:.1f}/255, {training_args.adversarial_steps} steps",
            "optimisation": f"AdamW lr {training_args.learning_rate:g}, layer decay {training_args.layer_decay}, "
            f"{training_args.num_train_epochs:g} epochs, label smoothing {config.label_smoothing}, seed {training_args.seed}",
        }
        eps = training_args.adversarial_epsilon * 255
        results = (
            f"On the {len(images)} evaluation images: natural accuracy {metrics['natural_accuracy']:.2f}%, "
            f"PGD-20 (eps {eps:.1f}/255, step eps/4, random start) {metrics['pgd20_accuracy']:.2f}%. "
            "A quick check only: see robustness.md from run_evaluation.py for the full battery."
        )
        card_metrics = [
            {"type": "accuracy", "name": "natural accuracy", "value": metrics["natural_accuracy"]},
            {"type": "accuracy", "name": f"PGD-20 accuracy, Linf eps={eps:g}/255", "value": metrics["pgd20_accuracy"]},
        ]
        write_model_card(training_args.output_dir, "finetuned", dataset_name, training, results, card_metrics,
                         model_id=training_args.hub_model_id)
        mark_complete(training_args.output_dir, metrics=metrics, card_training=training)
    if training_args.push_to_hub:
        trainer.push_to_hub(commit_message="MIMIR adversarial fine-tuning")
    return metrics


if __name__ == "__main__":
    main()
