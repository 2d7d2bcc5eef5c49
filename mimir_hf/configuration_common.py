"""What the configs of the MIMIR model families share: their common fields, derived shapes, presets and checks.

Two pieces, so that each shared field is declared and documented once:

- `MimirConfigMixin` (no fields): the input checks, `image_size_hw` and `from_preset`, for every family (Swin mixes it
  into transformers' `SwinConfig`, whose fields it keeps).
- `MimirMaeConfig`: the fields of a plain transformer trunk and of MIMIR pre-training (the MAE decoder, the masking,
  the pre-training attack, the MI term), for the families MIMIR pre-trains (ViT, CaiT, ConViT). A family's config
  subclasses it, adds its own fields and changes the defaults that differ.
"""

from __future__ import annotations

import math

from huggingface_hub.dataclasses import strict
from transformers import PretrainedConfig

from .mutual_information import DEFAULT_MI_ALPHA, DEFAULT_MI_SIGMA, DEFAULT_MI_WEIGHT
from .threat_model import PRETRAINING_ATTACK, AttackBudget, check_budget

MI_ESTIMATORS = ("hsic", "renyi", "none")
# `from_pretrained` keyword arguments that say where a checkpoint's files are (passed on when reading its other files).
HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "proxies", "revision", "subfolder", "token")


class MimirConfigMixin:
    """Mixed into every family's config (before the `PretrainedConfig` class): reads `image_size`, `num_channels`,
    `image_mean`, `image_std`, `label_smoothing` and `drop_path_rate`, which every family has."""

    # name -> field values of the family's named shapes (set by each family's config class)
    presets = {}

    @property
    def image_size_hw(self) -> tuple[int, int]:
        """`image_size` as (height, width)."""
        if isinstance(self.image_size, int):
            return (self.image_size, self.image_size)
        height, width = self.image_size
        return (int(height), int(width))

    @classmethod
    def from_preset(cls, name: str, **kwargs):
        """A config of one of the family's named shapes (`cls.presets`); keyword arguments override or add fields."""
        if name not in cls.presets:
            raise ValueError(
                f"Unknown {cls.model_type} preset {name!r}. Available presets: {', '.join(sorted(cls.presets))}."
            )
        return cls(**{**cls.presets[name], **kwargs})

    def check_input_fields(self) -> None:
        """The checks every family shares (call from `validate_architecture`): the in-model normalisation and the
        rates of the classifier's training."""
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}.")
        if not 0 <= self.drop_path_rate < 1:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}.")
        if (self.image_mean is None) != (self.image_std is None):
            raise ValueError("image_mean and image_std must be set together (or both left None).")
        if self.image_mean is not None:
            if len(self.image_mean) != self.num_channels or len(self.image_std) != self.num_channels:
                raise ValueError(
                    f"image_mean and image_std need one value per channel ({self.num_channels}), "
                    f"got {len(self.image_mean)} and {len(self.image_std)}."
                )
            if min(self.image_std) <= 0:
                raise ValueError(f"image_std must be positive, got {list(self.image_std)}.")


@strict
class MimirMaeConfig(MimirConfigMixin, PretrainedConfig):
    r"""
    The fields shared by the configs of the families MIMIR pre-trains as a masked autoencoder (`MimirConfig`,
    `MimirCaitConfig`, `MimirConvitConfig`), declared and documented here once; each family adds its own and says
    which defaults it changes.

    Pixel values given to every MIMIR model are in [0, 1]; `image_mean`/`image_std`, when set, are applied inside the
    model, so every attack budget (`attack_epsilon`, ...) is in pixel units. The model checks the input's shape; its
    range is checked where images enter (the image processor, the attacks), not in `forward`.

    Args:
        image_size (`int` or `tuple[int, int]`, defaults to 224):
            Input resolution; an int means a square image. Each side must be divisible by `patch_size`.
        patch_size (`int`, defaults to 16):
            Side of the square patches (2 for the paper's 32 px CIFAR-10 models).
        num_channels (`int`, defaults to 3):
            Number of input channels.
        hidden_size (`int`, defaults to 768):
            Width of the encoder.
        num_hidden_layers (`int`, defaults to 12):
            Depth of the encoder (the layers layer-wise lr decay counts).
        num_attention_heads (`int`, defaults to 12):
            Attention heads per encoder layer; must divide `hidden_size`.
        intermediate_size (`int`, *optional*):
            Width of the encoder MLPs; `None` means `4 * hidden_size`.
        hidden_act (`str`, defaults to `"gelu"`):
            Activation of the MLPs (exact GELU, as `nn.GELU`).
        qkv_bias (`bool`, defaults to `True`):
            Whether the encoder's query/key/value projections have a bias.
        layer_norm_eps (`float`, defaults to 1e-6):
            Epsilon of every LayerNorm (MAE/MIMIR use 1e-6).
        attention_probs_dropout_prob (`float`, defaults to 0.0):
            Dropout on the attention probabilities.
        drop_path_rate (`float`, defaults to 0.0):
            Stochastic-depth rate of the encoder layers (each family's docstring says how it spreads over the depth).
            The paper pre-trains with 0 and fine-tunes with 0.1.
        initializer_range (`float`, defaults to 0.02):
            Standard deviation of the normal inits (the class and mask tokens; the family says what else).
        decoder_hidden_size (`int`, defaults to 128):
            Width of the MAE decoder (MIMIR's recommended light decoder, whatever the encoder size).
        decoder_num_hidden_layers (`int`, defaults to 2):
            Depth of the MAE decoder.
        decoder_num_attention_heads (`int`, defaults to 16):
            Attention heads per decoder layer; must divide `decoder_hidden_size`.
        decoder_intermediate_size (`int`, defaults to 512):
            Width of the decoder MLPs.
        mask_ratio (`float`, defaults to 0.75):
            Fraction of patches hidden from the encoder in pre-training; it must leave at least one patch visible and
            mask at least one (`0 < int(num_patches * (1 - mask_ratio)) < num_patches`).
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
            Step size of the pre-training attack (the reference uses 10/255 with one step).
        attack_steps (`int`, defaults to 1):
            Number of PGD steps of the pre-training attack, which maximises the MAE loss of x' against itself.
        attack_random_start (`bool`, defaults to `True`):
            Start the pre-training attack from a uniform point of the eps-ball.
        mi_estimator (`str`, defaults to `"hsic"`):
            Estimator of the MI penalty: `"hsic"` (normalised HSIC(Z, X') with kernel width `mi_sigma`, what every
            reference script uses), `"renyi"` (the authors' matrix Renyi alpha-entropy MI I(X; Z) on the clean images,
            kernel widths set from each batch as in their `MI/DIB_MI.py`) or `"none"` (plain adversarial MAE).
        mi_weight (`float`, defaults to 1e-5):
            Weight lambda of the MI penalty in `loss = reconstruction_loss + lambda * mi_loss`.
        mi_sigma (`float`, defaults to 5.0):
            Width of the Gaussian kernels of the HSIC estimator (the Renyi estimator sets its own from each batch).
        mi_alpha (`float`, defaults to 1.01):
            Order alpha of the Renyi entropy (only for `mi_estimator="renyi"`).
    """

    image_size: int | list[int] | tuple[int, int] = 224
    patch_size: int = 16
    num_channels: int = 3
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int | None = None
    hidden_act: str = "gelu"
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

    @property
    def attack_budget(self) -> AttackBudget:
        """The pre-training attack (`attack_epsilon`, `attack_step_size`, `attack_steps`, `attack_random_start`)."""
        return AttackBudget(self.attack_epsilon, self.attack_step_size, self.attack_steps, self.attack_random_start)

    @property
    def grid_size(self) -> tuple[int, int]:
        """Patch grid (rows, columns)."""
        height, width = self.image_size_hw
        return (height // self.patch_size, width // self.patch_size)

    @property
    def num_patches(self) -> int:
        return math.prod(self.grid_size)

    @property
    def num_visible_patches(self) -> int:
        """Patches the encoder sees in pre-training: `int(num_patches * (1 - mask_ratio))`, as MAE computes it."""
        return int(self.num_patches * (1 - self.mask_ratio))

    def validate_architecture(self):
        """Checks run by `@strict` at construction (a family adds its own after these): each names the field, the
        value and what is expected."""
        for name in ("num_channels", "num_hidden_layers", "intermediate_size", "decoder_num_hidden_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        height, width = self.image_size_hw
        if height < 1 or width < 1 or self.patch_size < 1 or height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} must be divisible by patch_size {self.patch_size} (both positive)."
            )
        for prefix in ("", "decoder_"):
            size, heads = getattr(self, f"{prefix}hidden_size"), getattr(self, f"{prefix}num_attention_heads")
            if heads < 1 or size % heads:
                raise ValueError(
                    f"{prefix}hidden_size ({size}) must be divisible by {prefix}num_attention_heads ({heads})."
                )
        if not 0 <= self.mask_ratio < 1:
            raise ValueError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}.")
        if not 0 < self.num_visible_patches < self.num_patches:
            raise ValueError(
                f"mask_ratio {self.mask_ratio} leaves {self.num_visible_patches} of {self.num_patches} patches "
                "visible; MIMIR's pre-training needs at least one visible and at least one masked patch (the paper: "
                "0.75)."
            )
        self.check_input_fields()
        if self.mi_estimator not in MI_ESTIMATORS:
            raise ValueError(f"mi_estimator must be one of {MI_ESTIMATORS}, got {self.mi_estimator!r}.")
        if self.mi_weight < 0 or self.mi_sigma <= 0:
            raise ValueError(f"mi_weight must be >= 0 and mi_sigma > 0, got {self.mi_weight} and {self.mi_sigma}.")
        if self.mi_alpha <= 0 or self.mi_alpha == 1:
            raise ValueError(f"mi_alpha must be > 0 and != 1, got {self.mi_alpha}.")
        check_budget(self.attack_epsilon, self.attack_step_size, self.attack_steps, prefix="attack_")


__all__ = ["HUB_KWARGS", "MI_ESTIMATORS", "MimirConfigMixin", "MimirMaeConfig"]
