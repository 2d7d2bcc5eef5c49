#!/usr/bin/env python
"""MIMIR pre-training: an adversarial masked autoencoder with an HSIC bottleneck, on any image dataset.

    python examples/run_pretraining.py --output_dir out/pretrain                       # digits, offline
    python examples/run_pretraining.py --dataset_name cifar10 --model_preset vit-small-patch2-32 \
        --image_column_name img --output_dir out/pretrain --num_train_epochs 800 --bf16

Writes the model (safetensors + config), `reconstructions.png` and a model card `README.md` in --output_dir.
Runs unchanged under `accelerate launch` and `torchrun`.
"""

from __future__ import annotations

import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
    ModelArguments,
    PreTrainingArguments,
    default_num_channels,
    load_data,
    logger,
    mark_complete,
    start_training_run,
    train,
)

from mimir_hf import MimirConfig, MimirForPreTraining  # noqa: E402
from mimir_hf.data import collate_fn, image_processor_for, tensors  # noqa: E402
from mimir_hf.evaluation import plot_reconstructions  # noqa: E402
from mimir_hf.model_card import write_model_card  # noqa: E402
from mimir_hf.trainer import MimirPreTrainingTrainer  # noqa: E402


def build_model(model_args: ModelArguments, num_channels: int) -> MimirForPreTraining:
    if model_args.model_name_or_path:
        return MimirForPreTraining.from_pretrained(model_args.model_name_or_path, **model_args.config_overrides())
    return MimirForPreTraining(model_args.new_config(num_channels))


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, training_args, resume = start_training_run("run_pretraining", PreTrainingArguments, argv)

    model = build_model(model_args, default_num_channels(data_args))
    config: MimirConfig = model.config
    train_dataset, eval_dataset, _ = load_data(data_args, config.image_size_hw, config.num_channels, training_args.seed)
    logger.info(
        f"MIMIR pre-training: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
        f"{len(train_dataset)} training images, attack eps {config.attack_epsilon * 255:.1f}/255 x "
        f"{config.attack_steps} step(s), MI: {config.mi_estimator} (weight {config.mi_weight:g})"
    )

    trainer = MimirPreTrainingTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset if training_args.do_eval else None,
        data_collator=collate_fn,
    )
    result = train(trainer, resume)
    metrics = dict(result.metrics)
    if training_args.do_eval:
        metrics.update(trainer.evaluate())
    trainer.save_model()
    if trainer.is_world_process_zero():
        image_processor_for(model.config).save_pretrained(training_args.output_dir)
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("all", metrics)

    if trainer.is_world_process_zero():
        images, _ = tensors(eval_dataset, limit=8)
        plot_reconstructions(model, images, os.path.join(training_args.output_dir, "reconstructions.png"))
        dataset_name = data_args.dataset_name or ("sklearn-digits" if data_args.uses_default_data else "imagefolder")
        training = {
            "data": f"{dataset_name}, {len(train_dataset)} images at {config.image_size_hw[0]}x{config.image_size_hw[1]}",
            "encoder": f"ViT {config.hidden_size} wide, {config.num_hidden_layers} layers, patch {config.patch_size}",
            "decoder": f"{config.decoder_hidden_size} wide, {config.decoder_num_hidden_layers} layers",
            "mask ratio": config.mask_ratio,
            "pre-training attack": f"PGD eps {config.attack_epsilon * 255:.1f}/255, step {config.attack_step_size * 255:.1f}/255, "
            f"{config.attack_steps} step(s), maximising the MAE loss",
            "MI penalty": f"{config.mi_estimator}, weight {config.mi_weight:g}, sigma {config.mi_sigma:g}",
            "optimisation": f"AdamW lr {training_args.learning_rate:g}, {training_args.num_train_epochs:g} epochs, "
            f"batch {training_args.per_device_train_batch_size} per device, seed {training_args.seed}",
        }
        final = {k: v for k, v in trainer.state.log_history[-1].items() if isinstance(v, (int, float))}
        results = (
            f"Final training loss {metrics.get('train_loss', float('nan')):.4f}; last logged reconstruction loss "
            f"{final.get('reconstruction_loss', math.nan):.4f} and MI {final.get('mi_loss', math.nan):.4f}."
        )
        write_model_card(training_args.output_dir, "pretrained", dataset_name, training, results,
                         model_id=training_args.hub_model_id)
        mark_complete(training_args.output_dir, metrics=metrics)
    if training_args.push_to_hub:
        trainer.push_to_hub(commit_message="MIMIR pre-training")
    return metrics


if __name__ == "__main__":
    main()
