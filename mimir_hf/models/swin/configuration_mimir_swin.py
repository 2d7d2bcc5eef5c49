"""MIMIR Swin configuration: transformers' `SwinConfig` with the released Swin-B/L defaults, in-model normalisation."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import SwinConfig

from ...configuration_common import MimirConfigMixin

# The authors' robust ImageNet classifiers (RobustBench "Xu2024MIMIR"), trained with Microsoft's Swin code at 224 px.
PRESETS = {
    "swin-base-224": dict(
        image_size=224, embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=7, num_labels=1000
    ),
    "swin-large-224": dict(
        image_size=224, embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), window_size=14, num_labels=1000
    ),
}


@strict
class MimirSwinConfig(MimirConfigMixin, SwinConfig):
    r"""
    Configuration of the MIMIR Swin models (`MimirSwinModel`, `MimirSwinForImageClassification`).

    MIMIR (Xu et al., arXiv:2312.04960) releases Swin-B and Swin-L ImageNet classifiers, pre-trained with adversarial
    GreenMIM and adversarially fine-tuned with Microsoft's Swin code. This config is transformers' `SwinConfig` (same
    field names, so `SwinModel` reads it) with defaults that reproduce the released Swin-B / 224 px model, and the two
    conventions of Microsoft's code that the checkpoints depend on:

    - `layer_norm_eps` applies to *every* LayerNorm, including the patch-embedding and patch-merging norms (transformers
      fixes those two at 1e-5).
    - A stage whose token grid is no larger than `window_size` attends over one window of the grid's size and never
      shifts; its relative-position table is sized for that smaller window (see `stage_window_sizes`). Swin-L at 224 px
      has window 14 but a 13x13 table in its last (7x7) stage.

    Pixel values given to the models are in [0, 1]; `image_mean`/`image_std`, when set, are applied inside the model,
    so attack budgets are in pixel units. The released models use no normalisation.

    Args:
        image_size (`int` or `tuple[int, int]`, defaults to 224):
            Input resolution; an int means a square image. The models accept only this size (Microsoft's code asserts
            it too): the window layout and the relative-position tables depend on it. Each side must be divisible by
            `patch_size * 2 ** (len(depths) - 1)`.
        patch_size (`int`, defaults to 4):
            Side of the square patches of the patch embedding.
        num_channels (`int`, defaults to 3):
            Number of input channels.
        embed_dim (`int`, defaults to 128):
            Width of the first stage; each later stage doubles it (Swin-B 128, Swin-L 192).
        depths (`list[int]`, defaults to `(2, 2, 18, 2)`):
            Number of blocks per stage.
        num_heads (`list[int]`, defaults to `(4, 8, 16, 32)`):
            Attention heads per stage; each must divide its stage's width (Swin-L: `(6, 12, 24, 48)`).
        window_size (`int`, defaults to 7):
            Side of the attention windows (Swin-L: 14). Clamped per stage, see `stage_window_sizes`.
        mlp_ratio (`float`, defaults to 4.0):
            Width of the MLPs relative to their stage's width.
        qkv_bias (`bool`, defaults to `True`):
            Whether the query/key/value projections have a bias.
        hidden_dropout_prob (`float`, defaults to 0.0):
            Dropout on the attention and MLP outputs.
        attention_probs_dropout_prob (`float`, defaults to 0.0):
            Dropout on the attention probabilities.
        drop_path_rate (`float`, defaults to 0.0):
            Stochastic-depth rate of the last block, rising linearly from 0 over all blocks, applied to the attention
            and the MLP branches. The authors' adversarial fine-tuning uses 0 (GreenMIM's own fine-tuning 0.1-0.3).
        hidden_act (`str`, defaults to `"gelu"`):
            Activation of the MLPs (exact GELU, as `nn.GELU`).
        use_absolute_embeddings (`bool`, defaults to `False`):
            Add a learned absolute position embedding after the patch embedding (Swin's "ape"; off in every MIMIR
            model).
        initializer_range (`float`, defaults to 0.02):
            Standard deviation of the normal init of linear layers (a new classification head, for instance).
        layer_norm_eps (`float`, defaults to 1e-6):
            Epsilon of every LayerNorm (the MIMIR Swin models use 1e-6 throughout; `SwinConfig` defaults to 1e-5).
        encoder_stride (`int`, defaults to 32):
            Total downsampling of the encoder; kept from `SwinConfig`, unused by the MIMIR models.
        image_mean (`list[float]`, *optional*):
            Per-channel mean subtracted inside the model. `None` (the released models) feeds [0, 1] pixels to the
            patch embedding.
        image_std (`list[float]`, *optional*):
            Per-channel standard deviation divided out inside the model; set together with `image_mean`.
        label_smoothing (`float`, defaults to 0.1):
            Label smoothing of the classification loss (the authors' recipe; it trains on mixup/cutmix soft targets,
            which the loss also accepts).
        num_labels (`int`, defaults to 2):
            Number of classes of the classification head (1000 in the presets), as in every transformers config.

    Example:

    ```python
    >>> from mimir_swin import MimirSwinConfig, MimirSwinForImageClassification
    >>> config = MimirSwinConfig.from_preset("swin-large-224")
    >>> config.stage_window_sizes
    [14, 14, 14, 7]
    >>> model = MimirSwinForImageClassification(config)
    ```
    """

    model_type = "mimir_swin"
    presets = PRESETS

    image_size: int | list[int] | tuple[int, int] = 224
    patch_size: int = 4
    num_channels: int = 3
    embed_dim: int = 128
    depths: list[int] | tuple[int, ...] = (2, 2, 18, 2)
    num_heads: list[int] | tuple[int, ...] = (4, 8, 16, 32)
    window_size: int = 7
    mlp_ratio: float | int = 4.0
    qkv_bias: bool = True
    hidden_dropout_prob: float | int = 0.0
    attention_probs_dropout_prob: float | int = 0.0
    drop_path_rate: float | int = 0.0
    hidden_act: str = "gelu"
    use_absolute_embeddings: bool = False
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-6
    encoder_stride: int = 32
    image_mean: list[float] | tuple[float, ...] | None = None
    image_std: list[float] | tuple[float, ...] | None = None
    label_smoothing: float | int = 0.1

    def __post_init__(self, **kwargs):
        # Lists, as they come back from JSON, so that a saved and reloaded config compares equal.
        self.depths, self.num_heads = list(self.depths), list(self.num_heads)
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Checks run by `@strict` at construction: each names the field, the value and what is expected."""
        super().validate_architecture()
        if len(self.depths) != len(self.num_heads) or not self.depths:
            raise ValueError(
                f"depths {list(self.depths)} and num_heads {list(self.num_heads)} need one entry per stage."
            )
        for stage, heads in enumerate(self.num_heads):
            width = self.embed_dim * 2**stage
            if heads < 1 or width % heads:
                raise ValueError(f"Stage {stage} is {width} wide, which num_heads[{stage}] = {heads} does not divide.")
        stride = self.patch_size * 2 ** (len(self.depths) - 1)
        if self.patch_size < 1 or any(side % stride for side in self.image_size_hw):
            raise ValueError(
                f"image_size {self.image_size} must be divisible by patch_size * 2**(stages - 1) = {stride}, so that "
                "every patch merging sees an even grid."
            )
        for stage, ((height, width), window) in enumerate(
            zip(self.stage_resolutions, self.stage_window_sizes, strict=True)
        ):
            if height % window or width % window:
                raise ValueError(
                    f"Stage {stage} has a {height}x{width} token grid that windows of {window} do not tile; choose "
                    "image_size and window_size so that they do (Microsoft's Swin code does not pad)."
                )
        self.check_input_fields()

    @property
    def stage_resolutions(self) -> list[tuple[int, int]]:
        """Token grid (height, width) of every stage: the patch grid, halved by each patch merging."""
        height, width = (side // self.patch_size for side in self.image_size_hw)
        return [(height // 2**stage, width // 2**stage) for stage in range(len(self.depths))]

    @property
    def stage_window_sizes(self) -> list[int]:
        """Attention window of every stage, as Microsoft's Swin builds it: a grid no larger than `window_size` is one
        window of its own size (and is never shifted). The relative-position tables are `(2 * w - 1) ** 2` long."""
        return [min(min(grid), self.window_size) for grid in self.stage_resolutions]

    @property
    def stage_shifts(self) -> list[bool]:
        """Whether every other block of a stage uses shifted windows (`window_size // 2`): only where the grid is
        larger than the window."""
        return [min(grid) > self.window_size for grid in self.stage_resolutions]


__all__ = ["PRESETS", "MimirSwinConfig"]
