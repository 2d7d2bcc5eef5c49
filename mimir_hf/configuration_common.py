"""What the configs of the MIMIR model families share: derived shapes, the pre-training attack, presets and checks.

`MimirConfigMixin` holds no fields: each family's config declares (and documents, in its docstring) every field it
has, with the same names. The mixin turns those fields into the properties the shared machinery reads
(`attack_budget`, `grid_size`, `num_patches`) and checks them with one message per mistake.
"""

from __future__ import annotations

import math

from .threat_model import AttackBudget, check_budget

MI_ESTIMATORS = ("hsic", "renyi", "none")
# `from_pretrained` keyword arguments that say where a checkpoint's files are (passed on when reading its other files).
HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "proxies", "revision", "subfolder", "token")


class MimirConfigMixin:
    """Mixed into a family's `PretrainedConfig` (before it). A config using it has the fields `image_size`,
    `patch_size`, `num_channels`, `image_mean`, `image_std`, `label_smoothing`, `drop_path_rate` and, for the MIMIR
    pre-training model, `decoder_hidden_size`, `decoder_num_attention_heads`, `mask_ratio`, `attack_*` and `mi_*`."""

    # name -> field values of the family's named shapes (set by each family's config class)
    presets = {}

    @property
    def attack_budget(self) -> AttackBudget:
        """The pre-training attack (`attack_epsilon`, `attack_step_size`, `attack_steps`, `attack_random_start`)."""
        return AttackBudget(self.attack_epsilon, self.attack_step_size, self.attack_steps, self.attack_random_start)

    @property
    def image_size_hw(self) -> tuple[int, int]:
        """`image_size` as (height, width)."""
        if isinstance(self.image_size, int):
            return (self.image_size, self.image_size)
        height, width = self.image_size
        return (int(height), int(width))

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

    @classmethod
    def from_preset(cls, name: str, **kwargs):
        """A config of one of the family's named shapes (`cls.presets`); keyword arguments override or add fields."""
        if name not in cls.presets:
            raise ValueError(f"Unknown {cls.model_type} preset {name!r}. Available presets: {', '.join(cls.presets)}.")
        return cls(**{**cls.presets[name], **kwargs})

    def check_common_fields(self) -> None:
        """The checks every MIMIR family shares (call from `validate_architecture`): input shape and normalisation,
        widths that the heads divide, rates, the MAE settings, the pre-training attack and the MI term."""
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
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}.")
        if not 0 <= self.drop_path_rate < 1:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}.")
        if self.mi_estimator not in MI_ESTIMATORS:
            raise ValueError(f"mi_estimator must be one of {MI_ESTIMATORS}, got {self.mi_estimator!r}.")
        if self.mi_weight < 0 or self.mi_sigma <= 0:
            raise ValueError(f"mi_weight must be >= 0 and mi_sigma > 0, got {self.mi_weight} and {self.mi_sigma}.")
        if self.mi_alpha <= 0 or self.mi_alpha == 1:
            raise ValueError(f"mi_alpha must be > 0 and != 1, got {self.mi_alpha}.")
        check_budget(self.attack_epsilon, self.attack_step_size, self.attack_steps, prefix="attack_")
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


__all__ = ["HUB_KWARGS", "MI_ESTIMATORS", "MimirConfigMixin"]
