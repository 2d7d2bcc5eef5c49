"""MIMIR Swin models: transformers' Swin, adjusted to compute exactly what Microsoft's Swin code (the authors') does.

`MimirSwinModel` is `SwinModel` and `MimirSwinForImageClassification` is `SwinForImageClassification`, with three
changes made once, right after the parent has built its modules (`follow_microsoft_swin`):

1. LayerNorm eps: transformers builds the patch-embedding norm and the patch-merging norms with PyTorch's default eps
   (1e-5) whatever the config says; Microsoft's code (and every MIMIR checkpoint) uses `config.layer_norm_eps` there
   too.
2. Window clamp: transformers builds every block's relative-position table for `config.window_size` and only shrinks
   the window at forward time, so a stage whose grid is smaller than the window (the last stage of Swin-L: 7x7 tokens,
   window 14) gets a 27x27 table that the checkpoint's 13x13 table does not fit, and a forward pass that fails. Such
   blocks are rebuilt with the window of `config.stage_window_sizes` and no shift, as Microsoft builds them.
3. Stochastic depth on the MLP branch: transformers' `SwinLayer` applies drop path to the attention branch only;
   Microsoft's block applies it to both. This changes nothing at inference or with `drop_path_rate=0` (the released
   models' recipe), only training with drop path.

Everything else (window attention, cyclic shift and its mask, patch merging order, pooling) is transformers' code, and
parameter names are transformers' (`swin.encoder.layers.N.blocks.M.attention.q_proj...`); `convert_swin.py` maps the
authors' Microsoft-layout files onto them. Pixel values are in [0, 1]; the optional `config.image_mean`/`image_std`
normalisation happens inside the model, so attacks act on pixels.
"""

from __future__ import annotations

import re

import torch
from torch import nn
from transformers.models.swin.modeling_swin import (
    SwinDropPath,
    SwinForImageClassification,
    SwinMLP,
    SwinModel,
    SwinModelOutput,
    SwinPreTrainedModel,
    SwinRelativePositionBias,
)

from ...modeling_common import MimirPreTrainedMixin, PixelNormalisation, check_pixel_values
from ...modeling_heads import MimirImageClassifierMixin, auto_classes, finish_output, output_flags
from .configuration_mimir_swin import MimirSwinConfig


class MimirSwinMLPWithDropPath(nn.Module):
    """A block's `SwinMLP` (its own `fc1`/`fc2`, so parameter names do not change) followed by stochastic depth, as in
    Microsoft's block: `x = x + drop_path(mlp(norm2(x)))`."""

    def __init__(self, mlp: SwinMLP, drop_prob: float):
        super().__init__()
        self.fc1, self.activation_fn, self.fc2 = mlp.fc1, mlp.activation_fn, mlp.fc2
        self.drop_path = SwinDropPath(drop_prob)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.drop_path(self.fc2(self.activation_fn(self.fc1(hidden_states))))


def follow_microsoft_swin(model: SwinModel, config: MimirSwinConfig) -> None:
    """Adjust a freshly built `SwinModel` in place to Microsoft's Swin (see the module docstring): eps of the patch
    embedding and patch-merging norms, window clamp of the stages smaller than the window, drop path on the MLPs.
    The rebuilt relative-position tables are new parameters: the `post_init()` that follows initialises them."""
    model.embeddings.norm.eps = config.layer_norm_eps
    for stage, window, shifts in zip(model.encoder.layers, config.stage_window_sizes, config.stage_shifts, strict=True):
        if stage.downsample is not None:
            stage.downsample.norm.eps = config.layer_norm_eps
        for block in stage.blocks:
            if not shifts:
                block.shift_size = 0
            if block.window_size != window:
                block.window_size = window
                heads = block.attention.num_attention_heads
                block.attention.relative_position_bias = SwinRelativePositionBias(heads, (window, window))
            if isinstance(block.drop_path, SwinDropPath):
                block.mlp = MimirSwinMLPWithDropPath(block.mlp, block.drop_path.drop_prob)


class MimirSwinPreTrainedModel(MimirPreTrainedMixin, SwinPreTrainedModel):
    """What the MIMIR Swin models share: the config class, mimir_hf's loading checks and code export, transformers'
    Swin init and the init of the pixel-normalisation buffers."""

    config_class = MimirSwinConfig
    config: MimirSwinConfig
    base_model_prefix = "swin"
    _auto_classes = auto_classes("MimirSwin", pretraining=False)

    # ARES's Swin fine-tuning (timm's optimizer) keeps only the absolute positions (unused by the released models)
    # out of weight decay; the relative-position tables decay like any matrix.
    _no_weight_decay_endings = ("position_embeddings",)

    def num_layer_ids(self) -> int:
        """The patch embedding, each block of every stage, and one for the final norm and head: SimMIM's ids."""
        return sum(self.config.depths) + 2

    def layer_id(self, name: str) -> int:
        """SimMIM's Swin fine-tuning ids: 0 for the patch embedding (and mask token), the running block number + 1
        for a block, the stage's last block's id for its patch merging, the top id for the final norm and head."""
        prefix = re.escape(self.base_model_prefix)
        if re.match(rf"^(?:{prefix}\.)?embeddings\.", name):
            return 0
        match = re.match(rf"^(?:{prefix}\.)?encoder\.layers\.(\d+)\.(blocks\.(\d+)|downsample)\.", name)
        if not match:
            return self.num_layer_ids() - 1
        stage, block = int(match.group(1)), match.group(3)
        blocks_before = sum(self.config.depths[:stage])
        if block is None:  # patch merging at the end of the stage
            return blocks_before + self.config.depths[stage]
        return blocks_before + int(block) + 1


class MimirSwinModel(SwinModel, MimirSwinPreTrainedModel):
    """The Swin encoder of MIMIR: (normalisation) -> patch embedding -> stages -> final norm -> mean pooling.

    `outputs.pooler_output` (`[batch, config.hidden_size]`) is the feature the classification head reads.
    """

    config_class = MimirSwinConfig  # set on every class: transformers derives it per class from its parents otherwise
    config: MimirSwinConfig

    def __init__(self, config: MimirSwinConfig, add_pooling_layer: bool = True, use_mask_token: bool = False):
        super().__init__(config, add_pooling_layer=add_pooling_layer, use_mask_token=use_mask_token)
        follow_microsoft_swin(self, config)
        self.pixel_normalization = PixelNormalisation(config.num_channels, config.image_mean, config.image_std)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        bool_masked_pos: torch.BoolTensor | None = None,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> SwinModelOutput | tuple:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            Images in [0, 1], at `config.image_size`.
        bool_masked_pos (`torch.BoolTensor` of shape `(batch_size, num_patches)`, *optional*):
            Patches replaced by the mask token (only for a model built with `use_mask_token=True`).
        interpolate_pos_encoding (`bool`, defaults to `False`):
            Not available: a MIMIR Swin reads `config.image_size` only (`True` is a `ValueError`).
        output_hidden_states, output_attentions, return_dict (`bool`, *optional*):
            As in transformers (unset: the config's).
        """
        if interpolate_pos_encoding:
            raise ValueError(
                f"A MIMIR Swin reads images of config.image_size ({self.config.image_size}) only: its windows and "
                "relative positions are fixed by it. Resize the images instead of interpolate_pos_encoding=True."
            )
        # Only config.image_size: transformers' SwinLayer would pad other sizes and permanently shrink the window and
        # drop the shift of any block that once saw a grid smaller than its window.
        check_pixel_values(pixel_values, self.config.num_channels, self.config.image_size_hw)
        output_hidden_states, output_attentions, return_dict = output_flags(
            self.config, output_hidden_states, output_attentions, return_dict
        )
        outputs = super().forward(
            self.pixel_normalization(pixel_values),
            bool_masked_pos=bool_masked_pos,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
        )
        return finish_output(outputs, return_dict)


class MimirSwinForImageClassification(MimirImageClassifierMixin, SwinForImageClassification, MimirSwinPreTrainedModel):
    """MIMIR's robust Swin classifier: `classifier(features(x))`, the head a linear layer on the pooled, normed feature.

    `features` is exposed on its own for adaptive attacks (PGD-feature, PGD-MI) that need the encoder's feature.
    """

    config_class = MimirSwinConfig
    config: MimirSwinConfig

    def __init__(self, config: MimirSwinConfig):
        # Not SwinForImageClassification.__init__: it would build a second, plain SwinModel only to replace it.
        MimirSwinPreTrainedModel.__init__(self, config)
        trunk = MimirSwinModel(config)
        self.attach_trunk_and_head(trunk, trunk.num_features)
        self.post_init()


__all__ = [
    "MimirSwinForImageClassification",
    "MimirSwinModel",
    "MimirSwinPreTrainedModel",
    "follow_microsoft_swin",
]
