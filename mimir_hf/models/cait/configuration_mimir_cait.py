"""MIMIR CaiT configuration: the class-attention image transformer (Touvron et al. 2021) of MIMIR's pre-training and
fine-tuning, in one config."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict

from ...configuration_common import MimirMaeConfig

# The CaiT shapes MIMIR released (ImageNet-1K, 224 px, patch 16). LayerScale starts smaller in the deeper model. The
# authors' S36 is timm's `cait_s36_384` built at 224 px (196 patches).
_SHAPES = {"cait-xxs24-224": (192, 24, 4, 1e-5), "cait-s36-224": (384, 36, 8, 1e-6)}  # width, depth, heads, init
PRESETS = {
    name: dict(
        hidden_size=width,
        num_hidden_layers=depth,
        num_attention_heads=heads,
        layer_scale_init=layer_scale_init,
        image_size=224,
        patch_size=16,
    )
    for name, (width, depth, heads, layer_scale_init) in _SHAPES.items()
}


@strict
class MimirCaitConfig(MimirMaeConfig):
    r"""
    Configuration of the MIMIR CaiT models (`MimirCaitModel`, `MimirCaitForImageClassification`,
    `MimirCaitForPreTraining`).

    CaiT ("Going deeper with Image Transformers", Touvron et al. 2021) is a ViT in two stages. First
    `num_hidden_layers` self-attention layers over the patch tokens only, with *talking heads* (the attention logits are
    mixed across heads before the softmax and the probabilities again after it) and *LayerScale* (each residual branch
    is multiplied by a learned per-channel vector, initialised to `layer_scale_init`). Then
    `num_class_attention_layers` *class-attention* layers in which only a class token changes: it queries [class token,
    patches]. The classifier reads the class token after the final LayerNorm. Position embeddings are learned and added
    to the patch tokens only (the class token has none). The defaults are CaiT-XXS24 at 224 px.

    MIMIR pre-trains CaiT as a masked autoencoder (the authors' `MaskedAutoencoderCait`): the encoder above on the
    visible patches (class attention over [class token, visible patches]), and a light decoder of
    `decoder_num_hidden_layers` talking-heads LayerScale layers that keeps the class token in front of the patch tokens.

    Pixel values given to the models are in [0, 1]; `image_mean`/`image_std`, when set, are applied inside the model,
    so every attack budget is in pixel units.

    Args (CaiT's own fields and changed defaults; the shared fields are documented in `MimirMaeConfig`):
        hidden_size (`int`, defaults to 192):
            Width of the encoder (192 for XXS, 384 for S).
        num_hidden_layers (`int`, defaults to 24):
            Number of self-attention (talking-heads) layers over the patches; the depth layer-wise lr decay counts.
        num_attention_heads (`int`, defaults to 4):
            Attention heads of every encoder layer, class attention included; must divide `hidden_size`.
        num_class_attention_layers (`int`, defaults to 2):
            Number of class-attention layers.
        layer_scale_init (`float`, defaults to 1e-5):
            Initial value of every LayerScale vector, the decoder's too (1e-5 for XXS24, 1e-6 for S36). Irrelevant when
            weights are loaded.

    `intermediate_size` is the width of the MLPs of both stages (CaiT's MLP ratio 4 by default); `qkv_bias` applies to
    the decoder too (timm's CaiT and the authors' MAE both have one). `drop_path_rate` is the stochastic-depth rate of
    every self-attention layer (CaiT uses one rate for all of them, not a ramp) and of the decoder layers; the
    class-attention layers never drop. `initializer_range` is the standard deviation of the truncated-normal init of
    the classifier's linear layers, class token and positions (timm's CaiT init); `MimirCaitForPreTraining`
    initialises as MAE does instead (xavier-uniform linear layers, sin-cos positions).

    Example:

    ```python
    >>> from mimir_hf import MimirCaitConfig, MimirCaitForImageClassification
    >>> config = MimirCaitConfig.from_preset("cait-s36-224", num_labels=1000)
    >>> model = MimirCaitForImageClassification(config)
    ```
    """

    model_type = "mimir_cait"
    presets = PRESETS

    # CaiT's own fields, then the shared ones whose defaults differ (CaiT-XXS24)
    layer_scale_init: float | int = 1e-5
    num_class_attention_layers: int = 2
    hidden_size: int = 192
    num_hidden_layers: int = 24
    num_attention_heads: int = 4

    def validate_architecture(self):
        """Checks run by `@strict` at construction: each names the field, the value and what is expected."""
        super().validate_architecture()
        if self.num_class_attention_layers < 1:
            raise ValueError(f"num_class_attention_layers must be >= 1, got {self.num_class_attention_layers}.")


__all__ = ["PRESETS", "MimirCaitConfig"]
