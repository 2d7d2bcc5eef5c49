"""MIMIR ConViT configuration: the ViT with gated positional self-attention (d'Ascoli et al. 2021) of MIMIR's
pre-training and fine-tuning, in one config."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict

from ...configuration_common import MimirMaeConfig

# ConViT's widths are 48 per head (d'Ascoli et al., Table 1); depth 12, GPSA in the first 10 layers.
_SIZES = {"convit-tiny": 4, "convit-small": 9, "convit-base": 16}
# MIMIR's CIFAR-10 input (32 px, patch 2: the released models) and ImageNet's (224 px, patch 16).
_INPUTS = {"patch2-32": (32, 2), "patch16-224": (224, 16)}
PRESETS = {
    f"{size}-{inputs}": dict(
        hidden_size=48 * heads,
        num_attention_heads=heads,
        num_hidden_layers=12,
        local_up_to_layer=10,
        image_size=image_size,
        patch_size=patch_size,
    )
    for size, heads in _SIZES.items()
    for inputs, (image_size, patch_size) in _INPUTS.items()
}


@strict
class MimirConvitConfig(MimirMaeConfig):
    r"""
    Configuration of the MIMIR ConViT models (`MimirConvitModel`, `MimirConvitForImageClassification`,
    `MimirConvitForPreTraining`).

    ConViT ("Improving Vision Transformers with Soft Convolutional Inductive Biases", d'Ascoli et al. 2021) replaces
    the self-attention of the first `local_up_to_layer` layers by *gated positional self-attention* (GPSA): each head
    mixes ordinary content attention with a purely positional attention over the relative offsets of the patches,
    `(1 - sigmoid(g)) * softmax(q k^T / sqrt(d)) + sigmoid(g) * softmax(pos_proj(dx, dy, dx^2 + dy^2))`, renormalised,
    with a learned gate `g` per head. The positional part starts as a soft convolution (`locality_strength`). These
    layers see the patch tokens only; the class token joins before layer `local_up_to_layer`, and the remaining layers
    use ordinary multi-head attention. The classifier reads the class token after the final LayerNorm. The defaults are
    ConViT-B as MIMIR fine-tunes it (no qkv bias), at 224 px.

    MIMIR pre-trains ConViT as a masked autoencoder (the authors' `MaskedAutoencoderConVit`): the encoder above on the
    visible patches, whose GPSA layers treat them, in their shuffled order, as a square grid (so the positional prior
    carries no true geometry there; the number of visible patches must be a square), and a light decoder of
    `decoder_num_hidden_layers` GPSA layers (qkv bias, always) over the full patch grid in its true order.

    Pixel values given to the models are in [0, 1]; `image_mean`/`image_std`, when set, are applied inside the model,
    so every attack budget is in pixel units.

    Args (ConViT's own fields and changed defaults; the shared fields are documented in `MimirMaeConfig`):
        num_attention_heads (`int`, defaults to 16):
            Attention heads of every encoder layer (4 / 9 / 16 for T / S / B); must divide `hidden_size`. ConViT
            uses 48 channels per head (`hidden_size` 192 / 432 / 768).
        local_up_to_layer (`int`, defaults to 10):
            Number of leading GPSA layers; the class token is joined just before layer `local_up_to_layer`, which
            must therefore exist (`0 <= local_up_to_layer < num_hidden_layers`).
        locality_strength (`float`, defaults to 1.0):
            Sharpness of the convolutional initialisation of the positional attention (the paper's alpha), in the
            decoder too. Irrelevant when weights are loaded.
        use_pos_embed (`bool`, defaults to `True`):
            Whether learned absolute position embeddings are added to the patch tokens (the class token has none).
            The pre-training model needs them.
        qkv_bias (`bool`, defaults to `False`):
            Whether the encoder's query/key/value projections have a bias. MIMIR's fine-tuned ConViTs have none
            (timm's default) while its MAE pre-training encoders have them; the decoder always has them.

    `num_hidden_layers` counts GPSA and ordinary layers together. `drop_path_rate` is the stochastic-depth rate of
    the last encoder layer, increasing linearly from 0 over the depth (the decoder has none). `initializer_range` is
    the standard deviation of the truncated-normal init of the classifier's linear layers, class token and positions
    (timm's ConViT init); `MimirConvitForPreTraining` initialises as MAE does instead (xavier-uniform linear layers,
    sin-cos positions); both then apply ConViT's local init to the GPSA layers. The decoder's layers are all GPSA
    layers, as in the authors' decoder of depth 2 < 10.

    Example:

    ```python
    >>> from mimir_hf import MimirConvitConfig, MimirConvitForPreTraining
    >>> config = MimirConvitConfig.from_preset("convit-small-patch2-32", qkv_bias=True)  # CIFAR-10 pre-training
    >>> model = MimirConvitForPreTraining(config)
    ```
    """

    model_type = "mimir_convit"
    presets = PRESETS

    # ConViT's own fields, then the shared ones whose defaults differ (ConViT-B as MIMIR fine-tunes it)
    local_up_to_layer: int = 10
    locality_strength: float | int = 1.0
    use_pos_embed: bool = True
    num_attention_heads: int = 16
    qkv_bias: bool = False

    def validate_architecture(self):
        """Checks run by `@strict` at construction: each names the field, the value and what is expected."""
        super().validate_architecture()
        if not 0 <= self.local_up_to_layer < self.num_hidden_layers:
            raise ValueError(
                f"local_up_to_layer ({self.local_up_to_layer}) must be in [0, num_hidden_layers) = "
                f"[0, {self.num_hidden_layers}): the class token joins before layer local_up_to_layer."
            )


__all__ = ["PRESETS", "MimirConvitConfig"]
