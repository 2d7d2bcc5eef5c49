"""`mimir-hf finetune`: adversarial fine-tuning of a classifier, from a MIMIR pre-training checkpoint or from scratch.

    mimir-hf finetune --model_name_or_path out/pretrain --output_dir out/finetune      # the built-in digits
    mimir-hf finetune --model_name_or_path out/pretrain --train_dir photos/train --validation_dir photos/val \
        --adversarial_method trades --output_dir out/finetune
    mimir-hf finetune cifar10/finetune_vit_small --gradient_accumulation_steps 4   # a paper row on one GPU

Arguments: `FineTuningModelArguments` (`ModelArguments`, drop path 0.1, without the pre-training-only fields, which
are refused by name) and `DataArguments` (`common.py`) and the
library's `MimirAdversarialTrainingArguments` (PGD-AT at 8/255, 10 steps of 2/255 by default) and
`AugmentationArguments`. Fine-tunes a MIMIR ViT, CaiT or ConViT, or a MIMIR Swin from a converted checkpoint
(`--model_name_or_path`, whose image processor's resize is kept for evaluation, e.g. a converted ImageNet model's
256 / crop 224: `checkpoint_image_processor`; a random-resized crop's output is the training image as it is).
Writes the classifier (safetensors + config with id2label), a quick natural / PGD-20 measurement (of the EMA weights
too, saved in `ema/`, with --ema_decay) and a model card `README.md`. For the full robustness report run
`mimir-hf evaluate` on the output. Runs under `torchrun` and `accelerate launch`.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader
from transformers import AutoConfig, default_data_collator

from mimir_hf import MimirConfig, MimirForImageClassification, MimirSwinForImageClassification
from mimir_hf.attacks import pgd_attack
from mimir_hf.augmentation import AugmentationArguments
from mimir_hf.data import checkpoint_image_processor
from mimir_hf.evaluation import Attack, RobustnessSettings, evaluate_batch
from mimir_hf.model_card import accuracy_results, write_model_card
from mimir_hf.progress import Heartbeat, advancing, attack_bar
from mimir_hf.run_record import failures_recorded, mark_complete
from mimir_hf.threat_model import EVALUATION_ATTACK
from mimir_hf.trainer import MimirAdversarialTrainer, MimirAdversarialTrainingArguments

from .common import (
    CLASSIFIER_CLASSES,
    PRETRAINING_ONLY_OVERRIDES,
    DataArguments,
    FineTuningModelArguments,
    RunArguments,
    checkpoint_config,
    config_overrides,
    default_num_channels,
    effective_settings,
    encoder_description,
    load_aux_data,
    load_data,
    log_effective_settings,
    logger,
    new_config,
    parse,
    prepares_in_memory,
    push_to_hub,
    start_training_run,
    train,
)

# Of the config overrides, those a Swin checkpoint takes (the others describe a ViT's shape or its pre-training).
SWIN_OVERRIDES = ("drop_path_rate", "label_smoothing")


def build_classifier(model_args, num_channels: int, names: list[str], config=None):
    """A MIMIR classifier of the checkpoint's family (ViT, CaiT, ConViT, Swin; a ViT MAE checkpoint: a MIMIR ViT), or
    a new one of the preset's family."""
    labels = dict(num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    if not model_args.model_name_or_path:
        config = new_config(model_args, num_channels, **labels)
        return CLASSIFIER_CLASSES[config.model_type](config)
    model_class = CLASSIFIER_CLASSES.get(getattr(config, "model_type", None), MimirForImageClassification)
    if model_class is MimirSwinForImageClassification:
        unused = sorted(set(config_overrides(model_args)) - set(SWIN_OVERRIDES))
        if unused:
            raise ValueError(
                f"{model_args.model_name_or_path} is a Swin checkpoint; {unused} apply to ViT, CaiT and ConViT only."
            )
        overrides = {k: v for k, v in config_overrides(model_args).items() if k in SWIN_OVERRIDES}
        return model_class.from_pretrained(
            model_args.model_name_or_path,
            ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
            **overrides,
            **labels,
        )
    overrides = config_overrides(model_args, model_class.config_class)
    return model_class.from_pretrained(
        model_args.model_name_or_path,
        ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
        **overrides,
        **labels,
    )


def quick_robustness(model, dataset, epsilon: float, batch_size: int = 256, disable: bool = False) -> dict:
    """Natural and PGD-20 accuracy (%) at the training eps (step eps/4, random start), streamed batch by batch."""
    budget = RobustnessSettings().budget(EVALUATION_ATTACK.steps, epsilon)  # the report's PGD-20 at this eps
    attack = Attack("pgd20", "PGD-20", lambda m, x, y, g: pgd_attack(m, x, y, budget, generator=g))
    device = next(model.parameters()).device
    counts = {"natural": 0, "pgd20": 0}
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=default_data_collator)
    description = f"Quick check, PGD-20 at eps {epsilon * 255:g}/255"
    with attack_bar(description, len(dataset), disable) as bar, Heartbeat([bar]):
        for index, batch in enumerate(loader):
            generator = torch.Generator(device=device).manual_seed(index)
            with advancing(bar, len(batch["labels"])):
                results = evaluate_batch(
                    model, [attack], batch["pixel_values"].to(device), batch["labels"].to(device), generator
                )
            for name in counts:
                counts[name] += int(results[name].sum())
    return {f"{name}_accuracy": round(100 * count / len(dataset), 2) for name, count in counts.items()}


def run(
    model_args,
    data_args: DataArguments,
    training_args: MimirAdversarialTrainingArguments,
    run_args: RunArguments,
    augmentation: AugmentationArguments | None = None,
    evaluate: bool = True,
) -> dict:
    """Fine-tune, save the classifier, its image processor and the model card; returns metrics (accuracies in %).

    `evaluate=False` skips the quick natural / PGD-20 check, for a caller that runs the full report next
    (`mimir-hf evaluate` writes its results into the card), as `mimir-hf run` does."""
    augmentation = augmentation or AugmentationArguments()
    resume = start_training_run("run_finetuning", model_args, data_args, training_args, run_args, augmentation)
    if model_args.model_name_or_path:  # the checkpoint decides the input shape
        checkpoint_config(model_args.model_name_or_path)  # a missing or unreadable config: one clear error
        config = AutoConfig.from_pretrained(model_args.model_name_or_path)
        if config.model_type == "vit_mae":  # read as the MIMIR ViT it becomes (its normalisation carried over)
            config = MimirConfig.from_pretrained(model_args.model_name_or_path)
    else:
        config = new_config(model_args, default_num_channels(data_args))
    image_processor = checkpoint_image_processor(model_args.model_name_or_path, config)
    train_dataset, eval_dataset, names = load_data(
        data_args, config, training_args.seed, augmentation, image_processor=image_processor,
        prepare_train=prepares_in_memory(training_args),
    )  # fmt: skip
    aux_dataset = load_aux_data(data_args, config, augmentation, num_labels=len(names), image_processor=image_processor)
    model = build_classifier(model_args, config.num_channels, names, config)
    logger.info(
        f"Adversarial fine-tuning ({training_args.adversarial_method}, {training_args.adversarial_budget.describe()}) "
        f"of {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters on {len(train_dataset)} images, "
        f"{len(names)} classes"
    )
    settings = effective_settings(training_args, augmentation, model.config, data_args.aux_data_file)
    log_effective_settings(settings)
    trainer = MimirAdversarialTrainer(
        model=model, args=training_args, train_dataset=train_dataset, aux_dataset=aux_dataset
    )
    result = train(trainer, resume)
    trainer.save_model()
    config = model.config
    ema_dir = trainer.save_ema_model() if trainer.ema is not None else None
    if trainer.is_world_process_zero():
        for folder in filter(None, (training_args.output_dir, ema_dir)):
            image_processor.save_pretrained(folder)
    metrics = dict(result.metrics)
    if trainer.is_world_process_zero():
        if evaluate:
            quiet = training_args.disable_tqdm
            metrics.update(quick_robustness(model, eval_dataset, training_args.adversarial_epsilon, disable=quiet))
        if trainer.ema is not None:
            with trainer.ema.applied(model):
                ema = quick_robustness(
                    model, eval_dataset, training_args.adversarial_epsilon, disable=training_args.disable_tqdm
                )
            metrics.update({f"ema_{name}": value for name, value in ema.items()})
        trainer.log_metrics("finetune", metrics)
        trainer.save_metrics("all", metrics)
        height, width = config.image_size_hw
        training = {
            "initialisation": model_args.model_name_or_path or "random (no pre-training)",
            "data": f"{data_args.display_name}, {len(train_dataset)} training images at {height}x{width}",
            "encoder": encoder_description(config, classifier=True),
            "adversarial training": (
                f"{training_args.adversarial_method}, {training_args.adversarial_budget.describe()}"
            ),
            "optimisation": f"AdamW lr {training_args.learning_rate:g}, layer decay {training_args.layer_decay}, "
            f"{training_args.num_train_epochs:g} epochs, label smoothing {config.label_smoothing}, "
            f"seed {training_args.seed}",
        }
        if augmentation.enabled or training_args.mixes_batches:
            training["augmentation"] = settings["augmentation"] + (
                f", mixup {training_args.mixup_alpha:g} / cutmix {training_args.cutmix_alpha:g} (soft targets)"
                if training_args.mixes_batches
                else ""
            )
        if trainer.ema is not None:
            training["EMA"] = (
                f"decay {training_args.ema_decay} (weights in ema/: natural {metrics['ema_natural_accuracy']:.2f}%, "
                f"PGD-20 {metrics['ema_pgd20_accuracy']:.2f}%)"
            )
        if aux_dataset is not None:
            training["auxiliary data"] = f"{len(aux_dataset)} images, {training_args.aux_fraction:g} of each batch"
        eps = training_args.adversarial_epsilon * 255
        if evaluate:
            results = (
                f"On the {len(eval_dataset)} evaluation images: natural accuracy {metrics['natural_accuracy']:.2f}%, "
                f"PGD-20 (eps {eps:g}/255, step eps/4, random start) {metrics['pgd20_accuracy']:.2f}%. "
                "A quick check only: see robustness.md from `mimir-hf evaluate` for the full battery."
            )
            entries = [("natural accuracy", metrics["natural_accuracy"]),
                       (f"PGD-20 accuracy, Linf eps={eps:g}/255", metrics["pgd20_accuracy"])]  # fmt: skip
        else:
            results, entries = "Not evaluated yet: `mimir-hf evaluate` on this folder gives the robustness report.", []
        write_model_card(
            training_args.output_dir, "finetuned", data_args.display_name, training, results,
            accuracy_results(entries, data_args.display_name) or None, model_id=training_args.hub_model_id,
        )  # fmt: skip
        mark_complete(training_args.output_dir, metrics=metrics, card_training=training, effective_settings=settings)
    if training_args.push_to_hub:
        push_to_hub(trainer, "MIMIR adversarial fine-tuning")
    return metrics


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    """The command: its arguments parsed (a recipe first, if any), then `run`; a failure marks its runs failed."""
    with failures_recorded():
        argument_classes = (
            FineTuningModelArguments, DataArguments, MimirAdversarialTrainingArguments, RunArguments,
            AugmentationArguments,
        )  # fmt: skip
        parsed = parse(argument_classes, argv, prog, hidden=PRETRAINING_ONLY_OVERRIDES)
        refuse_pretraining_settings(parsed[0])
        return run(*parsed)


def refuse_pretraining_settings(model_args) -> None:
    """Refuse, by name, the model overrides only pre-training reads: given to fine-tuning they would change nothing
    but the saved config (its attack is `--adversarial_epsilon` / `--adversarial_step_size` / `--adversarial_steps`)."""
    given = [name for name in PRETRAINING_ONLY_OVERRIDES if getattr(model_args, name) is not None]
    if given:
        raise ValueError(
            f"{', '.join('--' + name for name in given)}: pre-training settings (the decoder, the masking, the "
            "MAE-loss attack, the MI term), which fine-tuning does not use. Fine-tuning's attack is set by "
            "--adversarial_epsilon, --adversarial_step_size and --adversarial_steps; pass the others to `mimir-hf "
            "pretrain`."
        )


if __name__ == "__main__":
    import sys

    from .cli import main as cli

    raise SystemExit(cli(["finetune", *sys.argv[1:]]))
