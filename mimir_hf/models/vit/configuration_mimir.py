"""MIMIR ViT configuration: one config for the MAE encoder/decoder, the classifier head and MIMIR's knobs."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import PretrainedConfig
from transformers.utils import logging

from ...configuration_common import HUB_KWARGS, MimirMaeConfig
from ...image_processing_mimir import carried_preprocessing, saved_image_processor

logger = logging.get_logger(__name__)

CLASSIFIER_POOLINGS = ("mean", "cls")

# Encoder shapes of the paper (width, depth, heads); the MLP is 4x wide.
_ENCODERS = {
    "vit-tiny": (192, 12, 3),
    "vit-small": (384, 12, 6),
    "vit-base": (768, 12, 12),
    "vit-large": (1024, 24, 16),
}
# Input shapes of the paper: CIFAR-10 at 32 px with patch 2, ImageNet at 224 px with patch 16.
_INPUTS = {"patch2-32": (32, 2), "patch16-224": (224, 16)}
PRESETS = {
    f"{encoder}-{inputs}": dict(
        hidden_size=width,
        num_hidden_layers=depth,
        num_attention_heads=heads,
        intermediate_size=4 * width,
        image_size=image_size,
        patch_size=patch_size,
    )
    for encoder, (width, depth, heads) in _ENCODERS.items()
    for inputs, (image_size, patch_size) in _INPUTS.items()
}


@strict
class MimirConfig(MimirMaeConfig):
    r"""
    Configuration of the MIMIR models (`MimirForPreTraining`, `MimirForImageClassification`).

    MIMIR (Xu et al., arXiv:2312.04960) pre-trains a masked autoencoder whose encoder reads adversarial images and
    whose decoder reconstructs the clean ones, with an HSIC penalty on the mutual information between the
    adversarial input and the latent. The defaults reproduce the paper's ViT-B / 224 px recipe with the
    "recommended" light decoder. Field names follow `transformers.ViTMAEConfig` where the concept is the same.

    Pixel values given to every MIMIR model are in [0, 1]; `image_mean`/`image_std`, when set, are applied inside the
    model, so every attack budget (`attack_epsilon`, ...) is in pixel units. The model checks the input's shape; its
    range is checked where images enter (the image processor, the attacks), not in `forward`.

    Args (the ViT's own fields and changed defaults; the shared fields are documented in `MimirMaeConfig`):
        intermediate_size (`int`, defaults to 3072):
            Width of the encoder MLP.
        hidden_dropout_prob (`float`, defaults to 0.0):
            Dropout on the residual branches.
        classifier_pooling (`str`, defaults to `"mean"`):
            `"mean"`: average the patch tokens and apply `fc_norm` (the MAE fine-tuning head; the encoder's final
            norm is then unused). `"cls"`: the CLS token after the encoder's final norm.

    `drop_path_rate` is the stochastic-depth rate of the last encoder layer (linearly increasing from 0 over the
    depth). `initializer_range` is the standard deviation of the normal init of the CLS and mask tokens (linear layers
    are xavier-uniform, as in MAE). `ViTMAEConfig` defaults `layer_norm_eps` to 1e-12; MAE/MIMIR use 1e-6.

    Example:

    ```python
    >>> from mimir_hf import MimirConfig, MimirForPreTraining
    >>> config = MimirConfig.from_preset("vit-small-patch2-32")
    >>> model = MimirForPreTraining(config)
    ```
    """

    model_type = "mimir"

    intermediate_size: int = 3072
    hidden_dropout_prob: float | int = 0.0
    classifier_pooling: str = "mean"

    presets = PRESETS

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs) -> tuple[dict, dict]:
        """`PretrainedConfig.get_config_dict`, with a transformers ViTMAE checkpoint read as a MIMIR ViT (see
        `config_dict_from_vit_mae`): every `from_pretrained` of the ViT family goes through here."""
        hub_kwargs = {name: kwargs[name] for name in HUB_KWARGS if kwargs.get(name) is not None}
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        if config_dict.get("model_type") == "vit_mae":
            source = str(pretrained_model_name_or_path)
            config_dict = config_dict_from_vit_mae(config_dict, source, hub_kwargs, given=set(kwargs))
        return config_dict, kwargs

    def validate_architecture(self):
        """Checks run by `@strict` at construction: each names the field, the value and what is expected."""
        super().validate_architecture()
        if self.classifier_pooling not in CLASSIFIER_POOLINGS:
            raise ValueError(
                f"classifier_pooling must be one of {CLASSIFIER_POOLINGS}, got {self.classifier_pooling!r}."
            )


def config_dict_from_vit_mae(config_dict: dict, source: str, hub_kwargs: dict, given: set[str] = frozenset()) -> dict:
    """A transformers ViTMAE checkpoint's config (`config_dict`, from `source`) as a `MimirConfig` dict, so that the
    MIMIR encoder computes what ViTMAE's does on the same images:

    - every `ViTMAEConfig` field (MimirConfig has them all, under the same names) takes ViTMAE's value, its default
      where the file is silent: `layer_norm_eps` 1e-12, `norm_pix_loss` False and the 512-wide decoder differ from
      MimirConfig's defaults;
    - the normalisation of the checkpoint's image processor (a `ViTImageProcessor`: ImageNet mean/std in the
      facebook/vit-mae-* folders) becomes `image_mean` / `image_std`, applied inside the model, so that it takes
      [0, 1] pixels like every MIMIR model; a processor whose steps MIMIR cannot reproduce is refused (see
      `carried_preprocessing`). Its resize is kept by `mimir_hf.data.checkpoint_image_processor`.

    Fields in `given` (the caller's keyword arguments) are the caller's: an `image_mean` / `image_std` given there
    replaces the processor's. What carried over is said in one log line.
    """
    from transformers import ViTMAEConfig

    vit_mae = ViTMAEConfig.from_dict(dict(config_dict)).to_dict()
    shared = [name for name in ViTMAEConfig.__dataclass_fields__ if name not in PretrainedConfig.__dataclass_fields__]
    result = {**config_dict, **{name: vit_mae[name] for name in shared}, "model_type": MimirConfig.model_type}
    defaults = MimirConfig.__dataclass_fields__
    differing = [f"{name}={vit_mae[name]!r}" for name in shared if vit_mae[name] != defaults[name].default]
    if {"image_mean", "image_std"} & given:
        normalisation = "image_mean/image_std as given (the checkpoint's image processor is not read)"
    elif (processor := saved_image_processor(source, **hub_kwargs)) is None:
        normalisation = (
            "it has no image processor, so image_mean/image_std stay unset and the patch embedding sees [0, 1] pixels "
            "(give image_mean/image_std if it was trained on normalised ones)"
        )
    else:
        carried = carried_preprocessing(processor, source, vit_mae["num_channels"])
        result.update(image_mean=carried.image_mean, image_std=carried.image_std)
        done = (
            f"normalises with image_mean={carried.image_mean}, image_std={carried.image_std}, now applied inside the "
            "model (inputs stay [0, 1] pixels)"
            if carried.image_mean is not None
            else "does not normalise"
        )
        normalisation = (
            f"its {type(processor).__name__.removesuffix('Pil')} {done}; its {carried.describe_resize()} is what the "
            "mimir-hf commands train with and save"
        )
    logger.warning_once(
        f"{source} is a ViTMAE checkpoint, read as a MIMIR ViT: ViTMAE's {', '.join(differing) or 'fields'} carry "
        f"over (where MimirConfig's defaults differ); {normalisation}."
    )
    return result


__all__ = ["MimirConfig", "PRESETS", "config_dict_from_vit_mae"]
