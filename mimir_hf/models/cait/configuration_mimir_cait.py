"""MIMIR CaiT configuration: the class-attention image transformer (Touvron et al. 2021) of MIMIR's pre-training and
fine-tuning, in one config."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import PretrainedConfig

from ...configuration_common import MimirConfigMixin
from ...mutual_information import DEFAULT_MI_ALPHA, DEFAULT_MI_SIGMA, DEFAULT_MI_WEIGHT
from ...threat_model import PRETRAINING_ATTACK

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
class MimirCaitConfig(MimirConfigMixin, PretrainedConfig):
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

    Args:
        image_size (`int` or `tuple[int, int]`, defaults to 224):
            Input resolution; an int means a square image. Each side must be divisible by `patch_size`.
        patch_size (`int`, defaults to 16):
            Side of the square patches.
        num_channels (`int`, defaults to 3):
            Number of input channels.
        hidden_size (`int`, defaults to 192):
            Width of the encoder (192 for XXS, 384 for S).
        num_hidden_layers (`int`, defaults to 24):
            Number of self-attention (talking-heads) layers over the patches; the depth layer-wise lr decay counts.
        num_attention_heads (`int`, defaults to 4):
            Attention heads of every encoder layer, class attention included; must divide `hidden_size`.
        intermediate_size (`int`, *optional*):
            Width of the MLPs of both stages; `None` means `4 * hidden_size` (CaiT's MLP ratio 4).
        num_class_attention_layers (`int`, defaults to 2):
            Number of class-attention layers.
        hidden_act (`str`, defaults to `"gelu"`):
            Activation of the MLPs (exact GELU, as `nn.GELU`).
        layer_scale_init (`float`, defaults to 1e-5):
            Initial value of every LayerScale vector, the decoder's too (1e-5 for XXS24, 1e-6 for S36). Irrelevant when
            weights are loaded.
        qkv_bias (`bool`, defaults to `True`):
            Whether the query/key/value projections (encoder and decoder) have a bias (timm's CaiT and the authors'
            MAE both have one).
        layer_norm_eps (`float`, defaults to 1e-6):
            Epsilon of every LayerNorm.
        attention_probs_dropout_prob (`float`, defaults to 0.0):
            Dropout on the attention probabilities.
        drop_path_rate (`float`, defaults to 0.0):
            Stochastic-depth rate of every self-attention layer (CaiT uses one rate for all of them, not a ramp) and of
            the decoder layers; the class-attention layers never drop. MIMIR fine-tunes with 0.1 and pre-trains with 0.
        initializer_range (`float`, defaults to 0.02):
            Standard deviation of the truncated-normal init of the classifier's linear layers, class token and
            positions (timm's CaiT init). `MimirCaitForPreTraining` initialises as MAE does instead (xavier-uniform
            linear layers, sin-cos positions).
        decoder_hidden_size (`int`, defaults to 128):
            Width of the MAE decoder (MIMIR's light decoder, whatever the encoder size).
        decoder_num_hidden_layers (`int`, defaults to 2):
            Depth of the MAE decoder.
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
    >>> from mimir_hf import MimirCaitConfig, MimirCaitForImageClassification
    >>> config = MimirCaitConfig.from_preset("cait-s36-224", num_labels=1000)
    >>> model = MimirCaitForImageClassification(config)
    ```
    """

    model_type = "mimir_cait"
    presets = PRESETS

    image_size: int | list[int] | tuple[int, int] = 224
    patch_size: int = 16
    num_channels: int = 3
    hidden_size: int = 192
    num_hidden_layers: int = 24
    num_attention_heads: int = 4
    intermediate_size: int | None = None
    num_class_attention_layers: int = 2
    hidden_act: str = "gelu"
    layer_scale_init: float | int = 1e-5
    qkv_bias: bool = True
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
        if self.num_hidden_layers < 1 or self.num_class_attention_layers < 1:
            raise ValueError(
                f"num_hidden_layers ({self.num_hidden_layers}) and num_class_attention_layers "
                f"({self.num_class_attention_layers}) must both be >= 1."
            )


__all__ = ["PRESETS", "MimirCaitConfig"]
