"""MIMIR ConViT configuration: the ViT with gated positional self-attention (d'Ascoli et al. 2021) of MIMIR's
pre-training and fine-tuning, in one config."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import PretrainedConfig

from ...configuration_common import MimirConfigMixin
from ...mutual_information import DEFAULT_MI_ALPHA, DEFAULT_MI_SIGMA, DEFAULT_MI_WEIGHT
from ...threat_model import PRETRAINING_ATTACK

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
class MimirConvitConfig(MimirConfigMixin, PretrainedConfig):
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

    Args:
        image_size (`int` or `tuple[int, int]`, defaults to 224):
            Input resolution; an int means a square image. Each side must be divisible by `patch_size`.
        patch_size (`int`, defaults to 16):
            Side of the square patches (2 for MIMIR's 32 px CIFAR-10 models).
        num_channels (`int`, defaults to 3):
            Number of input channels.
        hidden_size (`int`, defaults to 768):
            Width of the encoder; ConViT uses 48 per head (192 / 432 / 768 for T / S / B).
        num_hidden_layers (`int`, defaults to 12):
            Number of encoder layers, GPSA and ordinary together; the depth layer-wise lr decay counts.
        num_attention_heads (`int`, defaults to 16):
            Attention heads of every encoder layer (4 / 9 / 16 for T / S / B); must divide `hidden_size`.
        intermediate_size (`int`, *optional*):
            Width of the encoder MLPs; `None` means `4 * hidden_size`.
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
        hidden_act (`str`, defaults to `"gelu"`):
            Activation of the MLPs (exact GELU, as `nn.GELU`).
        layer_norm_eps (`float`, defaults to 1e-6):
            Epsilon of every LayerNorm.
        attention_probs_dropout_prob (`float`, defaults to 0.0):
            Dropout on the attention probabilities.
        drop_path_rate (`float`, defaults to 0.0):
            Stochastic-depth rate of the last encoder layer, increasing linearly from 0 over the depth (the decoder
            has none). MIMIR fine-tunes with 0.1 and pre-trains with 0.
        initializer_range (`float`, defaults to 0.02):
            Standard deviation of the truncated-normal init of the classifier's linear layers, class token and
            positions (timm's ConViT init). `MimirConvitForPreTraining` initialises as MAE does instead (xavier-uniform
            linear layers, sin-cos positions); both then apply ConViT's local init to the GPSA layers.
        decoder_hidden_size (`int`, defaults to 128):
            Width of the MAE decoder (MIMIR's light decoder, whatever the encoder size).
        decoder_num_hidden_layers (`int`, defaults to 2):
            Depth of the MAE decoder (all GPSA layers, as in the authors' decoder of depth 2 < 10).
        decoder_num_attention_heads (`int`, defaults to 16):
            Attention heads per decoder layer; must divide `decoder_hidden_size`.
        decoder_intermediate_size (`int`, defaults to 512):
            Width of the decoder MLPs.
        mask_ratio (`float`, defaults to 0.75):
            Fraction of patches hidden from the encoder in pre-training; in [0, 1).
        norm_pix_loss (`bool`, defaults to `True`):
            Reconstruct per-patch normalised pixels (mean 0, variance 1), as every MIMIR reference script does.
        label_smoothing (`float`, defaults to 0.1):
            Label smoothing of the classification loss.
        image_mean (`list[float]`, *optional*):
            Per-channel mean subtracted inside the model. `None` feeds [0, 1] pixels to the patch embedding.
        image_std (`list[float]`, *optional*):
            Per-channel standard deviation divided out inside the model; set together with `image_mean`.
        attack_epsilon (`float`, defaults to 8/255):
            L-inf radius of the pre-training attack, in [0, 1] pixel units.
        attack_step_size (`float`, defaults to 10/255):
            Step size of the pre-training attack.
        attack_steps (`int`, defaults to 1):
            Number of PGD steps of the pre-training attack, which maximises the MAE loss of x' against itself.
        attack_random_start (`bool`, defaults to `True`):
            Start the pre-training attack from a uniform point of the eps-ball.
        mi_estimator (`str`, defaults to `"hsic"`):
            Estimator of the I(X'; Z) penalty: `"hsic"`, `"renyi"` or `"none"` (plain adversarial MAE).
        mi_weight (`float`, defaults to 1e-5):
            Weight lambda of the MI penalty in `loss = reconstruction_loss + lambda * mi_loss`.
        mi_sigma (`float`, defaults to 5.0):
            Width of the Gaussian kernels of the MI estimators.
        mi_alpha (`float`, defaults to 1.01):
            Order alpha of the Renyi entropy (only for `mi_estimator="renyi"`).

    Example:

    ```python
    >>> from mimir_hf import MimirConvitConfig, MimirConvitForPreTraining
    >>> config = MimirConvitConfig.from_preset("convit-small-patch2-32", qkv_bias=True)  # CIFAR-10 pre-training
    >>> model = MimirConvitForPreTraining(config)
    ```
    """

    model_type = "mimir_convit"
    presets = PRESETS

    image_size: int | list[int] | tuple[int, int] = 224
    patch_size: int = 16
    num_channels: int = 3
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 16
    intermediate_size: int | None = None
    local_up_to_layer: int = 10
    locality_strength: float | int = 1.0
    use_pos_embed: bool = True
    qkv_bias: bool = False
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6
    attention_probs_dropout_prob: float | int = 0.0
    drop_path_rate: float | int = 0.0
    initializer_range: float = 0.02
    decoder_hidden_size: int = 128
    decoder_num_hidden_layers: int = 2
    decoder_num_attention_heads: int = 16
    decoder_intermediate_size: int = 512
    mask_ratio: float | int = 0.75
    norm_pix_loss: bool = True
    label_smoothing: float | int = 0.1
    image_mean: list[float] | tuple[float, ...] | None = None
    image_std: list[float] | tuple[float, ...] | None = None
    attack_epsilon: float | int = PRETRAINING_ATTACK.epsilon
    attack_step_size: float | int = PRETRAINING_ATTACK.step_size
    attack_steps: int = PRETRAINING_ATTACK.steps
    attack_random_start: bool = PRETRAINING_ATTACK.random_start
    mi_estimator: str = "hsic"
    mi_weight: float | int = DEFAULT_MI_WEIGHT
    mi_sigma: float | int = DEFAULT_MI_SIGMA
    mi_alpha: float | int = DEFAULT_MI_ALPHA

    def __post_init__(self, **kwargs):
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Checks run by `@strict` at construction: each names the field, the value and what is expected."""
        self.check_common_fields()
        if not 0 <= self.local_up_to_layer < self.num_hidden_layers:
            raise ValueError(
                f"local_up_to_layer ({self.local_up_to_layer}) must be in [0, num_hidden_layers) = "
                f"[0, {self.num_hidden_layers}): the class token joins before layer local_up_to_layer."
            )


__all__ = ["PRESETS", "MimirConvitConfig"]
