"""`mimir-hf pretrain`: MIMIR pre-training, an adversarial masked autoencoder with an MI bottleneck, on any images.

    mimir-hf pretrain --output_dir out/pretrain --num_train_epochs 30                   # the built-in digits
    mimir-hf pretrain --train_dir photos/train --model_preset vit-small-patch16-224 --output_dir out/pretrain
    mimir-hf pretrain cifar10/pretrain_vit_small --gradient_accumulation_steps 4   # a paper row (a recipe), 1 GPU

Arguments: `ModelArguments` and `DataArguments` (`common.py`) and the library's `MimirPreTrainingArguments` and
`AugmentationArguments`. A checkpoint to start from (`--model_name_or_path`: MIMIR, or a transformers ViTMAE such as
facebook/vit-mae-base) keeps its image processor's resize and normalisation (`checkpoint_image_processor`). Writes the
model (safetensors + config), its image processor, `reconstructions.png` and a
model card `README.md` in --output_dir (and the EMA weights in `ema/` with --ema_decay). Runs unchanged under
`torchrun` and `accelerate launch`.
"""

from __future__ import annotations

import math
import os

import torch

from mimir_hf import MimirForPreTraining
from mimir_hf.attacks import eval_mode, mae_attack
from mimir_hf.augmentation import AugmentationArguments
from mimir_hf.data import checkpoint_image_processor, tensors
from mimir_hf.model_card import write_model_card
from mimir_hf.run_record import failures_recorded, mark_complete
from mimir_hf.trainer import MimirPreTrainingArguments, MimirPreTrainingTrainer

from .common import (
    PRETRAINING_CLASSES,
    DataArguments,
    ModelArguments,
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


def build_model(model_args, num_channels: int):
    """A MIMIR pre-training model of the checkpoint's family (a ViT MAE checkpoint: a MIMIR ViT), or a new one."""
    if model_args.model_name_or_path:
        model_type = checkpoint_config(model_args.model_name_or_path).get("model_type")
        if model_type == "mimir_swin":
            raise ValueError(
                f"{model_args.model_name_or_path} is a Swin classifier; mimir_hf has no Swin pre-training model. "
                "Fine-tune it with mimir-hf finetune, or pre-train a ViT, CaiT or ConViT (--model_preset)."
            )
        model_class = PRETRAINING_CLASSES.get(model_type, MimirForPreTraining)
        return model_class.from_pretrained(
            model_args.model_name_or_path,
            ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
            **config_overrides(model_args, model_class.config_class),
        )
    config = new_config(model_args, num_channels)
    return PRETRAINING_CLASSES[config.model_type](config)


def plot_reconstructions(model, images: torch.Tensor, path: str, seed: int = 0) -> None:
    """A grid of clean x, adversarial x' (the pre-training attack), masked x', and the reconstruction, one row each.

    With `norm_pix_loss` the model predicts per-patch normalised pixels; the plot un-normalises each predicted patch
    with the mean and variance of the *clean target* patch (as MAE's visualisation does), so it shows shapes, not
    the model's own colour estimate.
    """
    from matplotlib.figure import Figure

    device = next(model.parameters()).device
    images = images.to(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    adversarial = mae_attack(model, images, generator=generator)
    noise = torch.rand(images.shape[0], model.config.num_patches, generator=generator, device=device)
    with torch.no_grad(), eval_mode(model):
        out = model(images, adversarial_pixel_values=adversarial, noise=noise, compute_mi_loss=False)
        prediction = out.logits.float()
        if model.config.norm_pix_loss:
            target = model.patchify(images.float())
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            prediction = prediction * (var + 1e-6) ** 0.5 + mean
        mask = out.mask.unsqueeze(-1)
        visible = model.patchify(adversarial.float()) * (1 - mask)
        masked = model.unpatchify(visible + 0.5 * mask)
        reconstruction = model.unpatchify(prediction * mask + visible)
    rows = [
        ("clean x", images),
        ("adversarial x'", adversarial),
        ("masked x' (encoder input)", masked),
        ("reconstruction (visible: x')", reconstruction),
    ]
    n = images.shape[0]
    figure = Figure(figsize=(1.3 * n, 1.45 * len(rows)))
    axes = figure.subplots(len(rows), n, squeeze=False)
    for r, (title, batch) in enumerate(rows):
        for c in range(n):
            picture = batch[c].clamp(0, 1).permute(1, 2, 0).cpu().numpy()
            axes[r][c].imshow(picture.squeeze(-1) if picture.shape[-1] == 1 else picture, cmap="gray", vmin=0, vmax=1)
            axes[r][c].axis("off")
        axes[r][0].set_title(title, fontsize=8, loc="left")
    note = (
        " (per-patch normalised predictions shown with each clean patch's mean/var)"
        if model.config.norm_pix_loss
        else ""
    )
    figure.suptitle(f"MIMIR reconstructions{note}", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def run(
    model_args,
    data_args: DataArguments,
    training_args: MimirPreTrainingArguments,
    run_args: RunArguments,
    augmentation: AugmentationArguments | None = None,
) -> dict:
    """Pre-train, save the model, its image processor, `reconstructions.png` and the model card; returns metrics."""
    augmentation = augmentation or AugmentationArguments()
    resume = start_training_run("run_pretraining", model_args, data_args, training_args, run_args, augmentation)
    model = build_model(model_args, default_num_channels(data_args))
    config = model.config
    image_processor = checkpoint_image_processor(model_args.model_name_or_path, config)
    train_dataset, eval_dataset, _ = load_data(
        data_args, config, training_args.seed, augmentation, need_labels=False, image_processor=image_processor,
        prepare_train=prepares_in_memory(training_args),
    )  # fmt: skip
    aux_dataset = load_aux_data(data_args, config, augmentation, image_processor=image_processor)
    logger.info(
        f"MIMIR pre-training: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
        f"{len(train_dataset)} training images, attack {config.attack_budget.describe()}, MI: {config.mi_estimator} "
        f"(weight {config.mi_weight:g})"
    )
    settings = effective_settings(training_args, augmentation, config, data_args.aux_data_file)
    log_effective_settings(settings)

    trainer = MimirPreTrainingTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset if training_args.do_eval else None,
        aux_dataset=aux_dataset,
    )
    result = train(trainer, resume)
    metrics = dict(result.metrics)
    if training_args.do_eval:
        metrics.update(trainer.evaluate())
    trainer.save_model()
    if trainer.ema is not None:
        ema_dir = trainer.save_ema_model()
        if trainer.is_world_process_zero():
            image_processor.save_pretrained(ema_dir)
    if trainer.is_world_process_zero():
        image_processor.save_pretrained(training_args.output_dir)
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("all", metrics)

    if trainer.is_world_process_zero():
        images, _ = tensors(eval_dataset if eval_dataset is not None else train_dataset, limit=8)
        plot_reconstructions(model, images, os.path.join(training_args.output_dir, "reconstructions.png"))
        height, width = config.image_size_hw
        training = {
            "initialisation": model_args.model_name_or_path or "random",
            "data": f"{data_args.display_name}, {len(train_dataset)} images at {height}x{width}",
            "encoder": encoder_description(config),
            "decoder": f"{config.decoder_hidden_size} wide, {config.decoder_num_hidden_layers} layers",
            "mask ratio": config.mask_ratio,
            "pre-training attack": f"PGD maximising the MAE loss, {config.attack_budget.describe()}",
            "MI penalty": f"{config.mi_estimator}, weight {config.mi_weight:g}, "
            + ("kernel widths from each batch" if config.mi_estimator == "renyi" else f"sigma {config.mi_sigma:g}"),
            "optimisation": f"AdamW lr {training_args.learning_rate:g}, {training_args.num_train_epochs:g} epochs, "
            f"batch {training_args.per_device_train_batch_size} per device, seed {training_args.seed}",
        }
        if augmentation.enabled:
            training["augmentation"] = augmentation.describe()
        if trainer.ema is not None:
            training["EMA"] = f"decay {training_args.ema_decay} (weights in ema/)"
        if aux_dataset is not None:
            training["auxiliary data"] = f"{len(aux_dataset)} images, {training_args.aux_fraction:g} of each batch"
        final = {k: v for k, v in trainer.state.log_history[-1].items() if isinstance(v, (int, float))}
        results = (
            f"Final training loss {metrics.get('train_loss', math.nan):.4f}; last logged reconstruction loss "
            f"{final.get('reconstruction_loss', math.nan):.4f} and MI {final.get('mi_loss', math.nan):.4f}."
        )
        write_model_card(
            training_args.output_dir, "pretrained", data_args.display_name, training, results,
            model_id=training_args.hub_model_id,
        )  # fmt: skip
        mark_complete(training_args.output_dir, metrics=metrics, effective_settings=settings)
    if training_args.push_to_hub:
        push_to_hub(trainer, "MIMIR pre-training")
    return metrics


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    """The command: its arguments parsed (a recipe first, if any), then `run`; a failure marks its runs failed."""
    with failures_recorded():
        return run(
            *parse(
                (ModelArguments, DataArguments, MimirPreTrainingArguments, RunArguments, AugmentationArguments),
                argv,
                prog,
            )
        )


if __name__ == "__main__":
    import sys

    from .cli import main as cli

    raise SystemExit(cli(["pretrain", *sys.argv[1:]]))
