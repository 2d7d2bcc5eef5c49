"""What every MIMIR model family shares: input checks, stochastic depth, the MAE loss pieces, the pre-training output,
and `MimirLoadingMixin` (safe `from_pretrained`, and `save_pretrained` folders that carry their own code).

Model families live in `mimir_hf/models/<family>/`; their configuration and modelling files import from here and from
`mutual_information.py` / `threat_model.py`. `save_pretrained` copies those files, flattened into one folder with
their relative imports rewritten, so a saved model loads with `trust_remote_code=True` where mimir_hf is not
installed (transformers' own code copying only follows `from .x import` within one folder).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import sys
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.models.vit.modeling_vit import ViTPatchEmbeddings
from transformers.models.vit_mae.modeling_vit_mae import build_2d_sinusoidal_position_embedding
from transformers.utils import ModelOutput, logging

from .configuration_common import HUB_KWARGS
from .mutual_information import mutual_information

logger = logging.get_logger(__name__)


# ----------------------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------------------


def check_pixel_values(
    pixel_values: torch.Tensor,
    num_channels: int,
    image_size: tuple[int, int],
    patch_size: int | None = None,
    interpolate_pos_encoding: bool = False,
) -> None:
    """Raise a `ValueError` that says what is expected when `pixel_values` has the wrong shape for the model.

    Shape only (no device synchronisation): the [0, 1] range is checked where images enter, see
    `mimir_hf.threat_model.check_pixel_range`.
    """
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 4:
        shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__
        raise ValueError(f"pixel_values must be a 4-D tensor (batch, channels, height, width), got {shape}.")
    if pixel_values.shape[0] == 0:
        raise ValueError("pixel_values holds an empty batch (0 images); expected at least one image.")
    if pixel_values.shape[1] != num_channels:
        raise ValueError(
            f"pixel_values has {pixel_values.shape[1]} channels but the model expects {num_channels} "
            f"(shape {tuple(pixel_values.shape)})."
        )
    height, width = pixel_values.shape[-2:]
    if interpolate_pos_encoding and patch_size is not None:
        if height % patch_size or width % patch_size:
            raise ValueError(
                f"With interpolate_pos_encoding the image sides must be multiples of patch_size {patch_size}, "
                f"got {height}x{width}."
            )
    elif (height, width) != tuple(image_size):
        expected = "x".join(map(str, image_size))
        hint = " or pass interpolate_pos_encoding=True" if patch_size is not None else ""
        raise ValueError(
            f"Input image size {height}x{width} does not match the model's {expected}; resize the images (the "
            f"model's image processor does){hint}."
        )


def check_labels(labels: torch.Tensor, num_labels: int) -> None:
    """Raise a `ValueError` naming the problem when `labels` are neither class indices in `[0, num_labels)` nor
    per-class probabilities of shape `(batch, num_labels)` (mixup/cutmix soft targets)."""
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"labels must be a tensor of class indices, got {type(labels).__name__}.")
    if labels.dtype.is_floating_point:
        if labels.dim() != 2 or labels.shape[1] != num_labels:
            raise ValueError(
                f"Float labels are soft targets and must have shape (batch_size, {num_labels}), got "
                f"{tuple(labels.shape)}; class indices must be an integer tensor."
            )
        return
    if labels.dim() != 1:
        raise ValueError(f"labels must be a 1-D tensor of class indices, got shape {tuple(labels.shape)}.")
    bad = labels[(labels < 0) | (labels >= num_labels)]
    if bad.numel():
        raise ValueError(f"labels must be in [0, {num_labels}) (config.num_labels), got {sorted(set(bad.tolist()))}.")


def classification_loss(
    logits: torch.Tensor, labels: torch.Tensor, num_labels: int, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Label-smoothed cross-entropy in float32, for class indices or soft targets (see `check_labels`)."""
    check_labels(labels, num_labels)
    labels = labels.to(logits.device)
    if not labels.dtype.is_floating_point:
        labels = labels.long()
    return nn.functional.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)


def check_num_labels(config) -> None:
    """A classifier needs at least two classes (transformers reads `num_labels=1` as regression)."""
    if config.num_labels < 2:
        raise ValueError(
            f"An image classifier needs num_labels >= 2, got {config.num_labels}: set num_labels to the number of "
            "classes of your data."
        )


class PixelNormalisation(nn.Module):
    """(x - mean) / std with the config's optional per-channel `image_mean` / `image_std`, inside the model, so that
    every model takes [0, 1] pixels and every attack budget is in pixel units. Buffers are derived from the config
    (not saved) and refilled by `reset()`, which `_init_weights` calls after loading too."""

    def __init__(self, num_channels: int, mean=None, std=None):
        super().__init__()
        self.num_channels = num_channels
        self.mean_values, self.std_values = mean, std
        self.register_buffer("mean", torch.zeros(1, num_channels, 1, 1), persistent=False)
        self.register_buffer("std", torch.ones(1, num_channels, 1, 1), persistent=False)
        self.reset()

    @torch.no_grad()
    def reset(self) -> None:
        mean = self.mean_values if self.mean_values is not None else [0.0] * self.num_channels
        std = self.std_values if self.std_values is not None else [1.0] * self.num_channels
        self.mean.copy_(torch.tensor(mean, dtype=self.mean.dtype).view_as(self.mean))
        self.std.copy_(torch.tensor(std, dtype=self.std.dtype).view_as(self.std))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.mean_values is None:
            return pixel_values
        return (pixel_values - self.mean) / self.std


class DropPath(nn.Module):
    """Stochastic depth: drops a sample's whole residual branch with probability `rate` in training."""

    def __init__(self, rate: float):
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rate == 0.0 or not self.training:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"rate={self.rate}"


# ----------------------------------------------------------------------------------------------------------------
# MAE pieces (every family's pre-training)
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class MimirForPreTrainingOutput(ModelOutput):
    """
    Output of every family's `...ForPreTraining`.

    Args:
        loss (`torch.FloatTensor` of shape `()`):
            MIMIR's loss, `reconstruction_loss + mi_weight * mi_loss` (just the reconstruction loss without MI term).
        reconstruction_loss (`torch.FloatTensor` of shape `()`):
            MSE on the masked patches between the prediction and the clean target (per-patch normalised when
            `config.norm_pix_loss`).
        mi_loss (`torch.FloatTensor` of shape `()`, *optional*):
            The I(X'; Z) estimate between the encoder input X' and its output tokens Z; `None` when not computed.
        logits (`torch.FloatTensor` of shape `(batch_size, num_patches, patch_size**2 * num_channels)`):
            Predicted pixels of every patch.
        mask (`torch.FloatTensor` of shape `(batch_size, num_patches)`):
            0 for a visible patch, 1 for a masked one.
        ids_restore (`torch.LongTensor` of shape `(batch_size, num_patches)`):
            Permutation that puts the shuffled tokens back in patch order.
        latent (`torch.FloatTensor` of shape `(batch_size, num_tokens, hidden_size)`):
            The encoder tokens Z used for the MI term.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*):
            Encoder hidden states, when asked for.
    """

    loss: torch.FloatTensor | None = None
    reconstruction_loss: torch.FloatTensor | None = None
    mi_loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    mask: torch.FloatTensor | None = None
    ids_restore: torch.LongTensor | None = None
    latent: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


def patchify(pixel_values: torch.Tensor, patch_size: int) -> torch.Tensor:
    """`[B, C, H, W]` -> `[B, num_patches, patch_size**2 * C]`, patches row-major, pixels (p, q, c)-ordered (MAE's)."""
    batch_size, channels, height, width = pixel_values.shape
    p = patch_size
    patches = pixel_values.reshape(batch_size, channels, height // p, p, width // p, p)
    return patches.permute(0, 2, 4, 3, 5, 1).reshape(batch_size, (height // p) * (width // p), p * p * channels)


def unpatchify(patches: torch.Tensor, grid_size: tuple[int, int], patch_size: int, num_channels: int) -> torch.Tensor:
    """Inverse of `patchify` for a `grid_size` (rows, columns) patch grid."""
    (rows, columns), p = grid_size, patch_size
    images = patches.reshape(patches.shape[0], rows, columns, p, p, num_channels)
    return images.permute(0, 5, 1, 3, 2, 4).reshape(patches.shape[0], num_channels, rows * p, columns * p)


def reconstruction_target(pixel_values: torch.Tensor, patch_size: int, norm_pix_loss: bool) -> torch.Tensor:
    """Patchified clean pixels in float32, per-patch normalised (mean 0, var 1, eps 1e-6) when `norm_pix_loss`."""
    target = patchify(pixel_values.float(), patch_size)
    if norm_pix_loss:
        mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    return target


def masked_reconstruction_loss(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MAE's loss: per-patch MSE in float32, averaged over the masked patches only (`mask`: 1 = masked)."""
    per_patch = (prediction.float() - target).pow(2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum()


@dataclass
class MimirEncoderOutput(ModelOutput):
    """
    Output of every MIMIR encoder that can also run MAE-masked (the ViT, CaiT and ConViT trunks).

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, 1 + num_tokens, hidden_size)`):
            Class token first, then the patch tokens, after the final norm; with masking only the visible patches, in
            shuffled order.
        pooler_output (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
            The pooled feature the family's classifier starts from: the class token (CaiT, ConViT, a ViT with
            `classifier_pooling="cls"`) or the mean of the patch tokens (a ViT with `"mean"`, before its `fc_norm`).
        mask (`torch.FloatTensor` of shape `(batch_size, num_patches)`, *optional*):
            0 for a visible patch, 1 for a masked one; `None` without masking.
        ids_restore (`torch.LongTensor` of shape `(batch_size, num_patches)`, *optional*):
            Permutation that puts the shuffled tokens back in patch order; `None` without masking.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*, with `output_hidden_states=True`):
            The tokens entering every layer and leaving the last one (before the final norm).
        attentions (`tuple(torch.FloatTensor)`, *optional*, with `output_attentions=True`):
            Every layer's attention probabilities, `(batch_size, num_heads, tokens, tokens)`.
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    mask: torch.FloatTensor | None = None
    ids_restore: torch.LongTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


def output_flags(config, output_hidden_states: bool | None, output_attentions: bool | None, return_dict: bool | None):
    """The three output switches of a forward call, unset ones taken from the config (as transformers' models do)."""
    hidden = config.output_hidden_states if output_hidden_states is None else output_hidden_states
    attentions = config.output_attentions if output_attentions is None else output_attentions
    as_dict = config.use_return_dict if return_dict is None else return_dict
    return bool(hidden), bool(attentions), bool(as_dict)


@contextmanager
def recording_attentions(modules: list[nn.Module], enabled: bool):
    """Within the block, the attention probabilities each module returns (its output's second element), in call
    order: a list filled by forward hooks, or None when not `enabled`. A module that computed its attention with a
    fused kernel (SDPA, flash) returns no probabilities: a `ValueError` names the fix."""
    if not enabled:
        yield None
        return
    weights: list = []
    handles = [module.register_forward_hook(lambda _, __, output: weights.append(output[1])) for module in modules]
    try:
        yield weights
    finally:
        for handle in handles:
            handle.remove()
    if any(weight is None for weight in weights):
        raise ValueError(
            "output_attentions=True needs attention probabilities, which the fused attention kernels (sdpa, flash) "
            "do not return; load the model with attn_implementation='eager' (or call "
            "model.set_attn_implementation('eager'))."
        )


def finish_output(output: ModelOutput, return_dict: bool):
    """`output` itself, or its tuple of the fields that are set (transformers' `return_dict=False`)."""
    return output if return_dict else output.to_tuple()


class MimirEncoderMixin:
    """The forward of every MIMIR encoder that can also run MAE-masked (ViT, CaiT, ConViT), written once over the
    family's parts: `self.embeddings` (pixels -> tokens, with MAE's masking), `run_layers` (the family's layers),
    `self.layernorm` (the final norm) and `pool` (the feature its classifier starts from; the class token by
    default). Hidden states and attentions are collected here, the same way for every family."""

    def attention_modules(self) -> list[nn.Module]:
        """The modules whose attention probabilities `output_attentions` returns, in call order."""
        return [layer.attention for layer in self.layers]

    def run_layers(
        self, hidden_states: torch.Tensor, pixel_values: torch.Tensor, masked: bool, collected: list | None
    ) -> torch.Tensor:
        """The family's layers on the embeddings' tokens; returns the tokens for the final norm, class token first.
        Appends to `collected` (when given) the tokens leaving every layer that `output_hidden_states` reports."""
        raise NotImplementedError

    def pool(self, sequence_output: torch.Tensor) -> torch.Tensor:
        return sequence_output[:, 0]

    def forward(
        self,
        pixel_values: torch.Tensor,
        noise: torch.Tensor | None = None,
        apply_masking: bool = False,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> MimirEncoderOutput | tuple:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            Images in [0, 1].
        noise (`torch.FloatTensor` of shape `(batch_size, num_patches)`, *optional*):
            Uniform noise whose per-sample argsort decides the mask (with `apply_masking`; for reproducible masks).
        apply_masking (`bool`, defaults to `False`):
            Hide `config.mask_ratio` of the patches (MAE pre-training). `False`: every patch, in order.
        interpolate_pos_encoding (`bool`, defaults to `False`):
            Resize the position embeddings to the input's patch grid (for other image sizes).
        output_hidden_states, output_attentions, return_dict (`bool`, *optional*):
            As in transformers (unset: the config's): the tokens entering the first layer and leaving every layer
            (see the family's `run_layers`), every attention's probabilities (`attention_modules`; fused kernels
            return none: load with `attn_implementation="eager"`), and a `MimirEncoderOutput` rather than its tuple.

        Returns `last_hidden_state` `[batch, 1 + num_tokens, hidden]` (class token first, after the final norm),
        `pooler_output` `[batch, hidden]` (`pool`), plus `mask` and `ids_restore` with masking.
        """
        output_hidden_states, output_attentions, return_dict = output_flags(
            self.config, output_hidden_states, output_attentions, return_dict
        )
        hidden_states, mask, ids_restore = self.embeddings(
            pixel_values, noise=noise, apply_masking=apply_masking, interpolate_pos_encoding=interpolate_pos_encoding
        )
        collected = [hidden_states] if output_hidden_states else None
        with recording_attentions(self.attention_modules(), output_attentions) as attentions:
            hidden_states = self.run_layers(hidden_states, pixel_values, apply_masking, collected)
        sequence_output = self.layernorm(hidden_states)
        output = MimirEncoderOutput(
            last_hidden_state=sequence_output,
            pooler_output=self.pool(sequence_output),
            mask=mask,
            ids_restore=ids_restore,
            hidden_states=None if collected is None else tuple(collected),
            attentions=None if attentions is None else tuple(attentions),
        )
        return finish_output(output, return_dict)


class MimirImageClassifierMixin:
    """The classification head of every MIMIR family, written once: the trunk (`self.base_model`) gives
    `pooler_output`, `head_input` prepares it (ViT's `fc_norm` for mean pooling; nothing for the class-token
    families and Swin's mean-pooled final norm), and `self.classifier` maps it to logits. The loss is the
    label-smoothed cross-entropy of `config.label_smoothing`, on class indices or soft targets (mixup / cutmix)."""

    # A pre-training checkpoint's decoder is dropped on purpose; the head is new then.
    _keys_to_ignore_on_load_unexpected = [r"^decoder\."]
    _new_weights_allowed = ("classifier.",)
    # The family's encoder class, which the default `__init__` builds (a family whose head has more writes its own).
    trunk_class: type | None = None

    def __init__(self, config):
        super().__init__(config)
        self.attach_trunk_and_head(self.trunk_class(config))
        self.post_init()

    def attach_trunk_and_head(self, trunk: nn.Module, width: int | None = None) -> None:
        """Set the trunk (as `self.<base_model_prefix>`) and a linear `classifier` on its `width`-wide feature
        (`config.hidden_size` by default), after checking the config has classes."""
        check_num_labels(self.config)
        self.num_labels = self.config.num_labels
        setattr(self, self.base_model_prefix, trunk)
        self.classifier = nn.Linear(width or self.config.hidden_size, self.config.num_labels)

    def head_input(self, pooler_output: torch.Tensor) -> torch.Tensor:
        return pooler_output

    def features(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """The feature the head reads, `[batch_size, hidden_size]`: what adaptive attacks (PGD-feature, PGD-MI) use."""
        outputs = self.base_model(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True)
        return self.head_input(outputs.pooler_output)

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ):
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            Images in [0, 1].
        labels (`torch.LongTensor` of shape `(batch_size,)`, or `torch.FloatTensor` `(batch_size, num_labels)`):
            Class indices in `[0, config.num_labels)`, or soft targets (mixup/cutmix); the loss is label-smoothed
            by `config.label_smoothing`.
        interpolate_pos_encoding (`bool`, defaults to `False`):
            Resize the position embeddings to the input's patch grid (the trunks that have them).
        output_hidden_states, output_attentions, return_dict (`bool`, *optional*):
            As in transformers (unset: the config's): the trunk's hidden states and attentions.

        Returns `ImageClassifierOutput` (`loss` with `labels`, `logits`, `hidden_states`, `attentions`).
        """
        output_hidden_states, output_attentions, return_dict = output_flags(
            self.config, output_hidden_states, output_attentions, return_dict
        )
        outputs = self.base_model(
            pixel_values,
            interpolate_pos_encoding=interpolate_pos_encoding,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
        )
        logits = self.classifier(self.head_input(outputs.pooler_output))
        loss = None
        if labels is not None:
            loss = classification_loss(logits, labels, self.config.num_labels, self.config.label_smoothing)
        output = ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return finish_output(output, return_dict)


def random_masking(
    sequence: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAE's per-sample masking: keep the `int(L * (1 - mask_ratio))` tokens with the smallest `noise`.

    Args:
        sequence: `[B, L, D]` patch tokens in patch order.
        mask_ratio: fraction of the tokens to hide, in [0, 1).
        noise: `[B, L]` (uniform in [0, 1) when not given); its per-sample argsort is the shuffle.

    Returns: the kept tokens `[B, keep, D]` in shuffled order, the mask `[B, L]` (0 keep, 1 remove, patch order) and
    `ids_restore` `[B, L]` (the permutation back to patch order).
    """
    batch_size, length, dim = sequence.shape
    if noise is None:
        noise = torch.rand(batch_size, length, device=sequence.device)
    elif tuple(noise.shape) != (batch_size, length):
        raise ValueError(f"noise must have shape (batch_size, num_patches) = {(batch_size, length)}, got "
                         f"{tuple(noise.shape)}.")  # fmt: skip
    keep = int(length * (1 - mask_ratio))
    ids_shuffle = noise.to(sequence.device).argsort(dim=1)  # small noise: kept
    ids_restore = ids_shuffle.argsort(dim=1)
    kept = sequence.gather(1, ids_shuffle[:, :keep, None].expand(-1, -1, dim))
    mask = torch.ones(batch_size, length, device=sequence.device)
    mask[:, :keep] = 0
    return kept, mask.gather(1, ids_restore), ids_restore


def unshuffle_with_mask_tokens(visible: torch.Tensor, mask_token: torch.Tensor, ids_restore: torch.Tensor):
    """The MAE decoder's input: `visible` tokens `[B, keep, D]` (shuffled order) followed by copies of `mask_token`,
    put back in patch order. Shape `[B, L, D]`."""
    batch_size, keep, dim = visible.shape
    tokens = torch.cat([visible, mask_token.expand(batch_size, ids_restore.shape[1] - keep, -1)], dim=1)
    return tokens.gather(1, ids_restore[:, :, None].expand(-1, -1, dim))


def sincos_position_embedding(grid_size: tuple[int, int], dim: int, cls_token: bool = True) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding in MAE's layout (the column half first), with a zero row for the class
    token in front when `cls_token`. Shape `[1, (1 +) rows * columns, dim]`; `dim` must be a multiple of 4."""
    embedding = build_2d_sinusoidal_position_embedding(*grid_size, embed_dim=dim, cls_token=cls_token)
    half = dim // 2
    return torch.cat([embedding[:, half:], embedding[:, :half]], dim=-1).unsqueeze(0)


def resize_patch_positions(positions: torch.Tensor, grid_size: tuple[int, int], new_grid: tuple[int, int]):
    """Patch position embeddings `[1, rows * columns, D]` (no class slot) resized bicubically to `new_grid`."""
    if tuple(new_grid) == tuple(grid_size):
        return positions
    table = positions.reshape(1, *grid_size, -1).permute(0, 3, 1, 2)
    table = nn.functional.interpolate(table, size=tuple(new_grid), mode="bicubic", align_corners=False)
    return table.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], -1)


def patch_tokens(embeddings: nn.Module, pixel_values: torch.Tensor, interpolate_pos_encoding: bool) -> torch.Tensor:
    """What every MIMIR embedding does first: check the input's shape against `embeddings.config`, apply the in-model
    normalisation (`embeddings.normalisation`), and project the patches (`embeddings.patch_embeddings`, a
    transformers `ViTPatchEmbeddings`) to tokens `[B, N, D]`, without positions."""
    config = embeddings.config
    check_pixel_values(
        pixel_values, config.num_channels, config.image_size_hw, config.patch_size, interpolate_pos_encoding
    )
    pixel_values = embeddings.normalisation(pixel_values)
    return embeddings.patch_embeddings(pixel_values.to(embeddings.patch_embeddings.projection.weight.dtype))


def auto_classes(prefix: str, pretraining: bool = True) -> dict[str, str]:
    """A family's `_auto_classes` by its naming: `<prefix>Model`, `<prefix>ForImageClassification` and, where MIMIR
    pre-trains the family, `<prefix>ForPreTraining`."""
    names = {"AutoModel": f"{prefix}Model"}
    if pretraining:
        names["AutoModelForPreTraining"] = f"{prefix}ForPreTraining"
    names["AutoModelForImageClassification"] = f"{prefix}ForImageClassification"
    return names


class MimirPatchTokenEmbeddings(nn.Module):
    """[0, 1] pixels -> (optional normalisation) -> conv patch tokens (+ learned positions) -> (optional MAE masking),
    for the families whose class token joins late (CaiT, ConViT): their position table has no class slot.

    Also holds that class token, so that layer-wise lr decay counts it with the embeddings, as MAE's fine-tuning
    does. Without `use_position_embeddings` (ConViT's `use_pos_embed=False`) there is no position table.
    """

    def __init__(self, config, use_position_embeddings: bool = True):
        super().__init__()
        self.config = config
        self.normalisation = PixelNormalisation(config.num_channels, config.image_mean, config.image_std)
        self.patch_embeddings = ViTPatchEmbeddings(config)
        self.position_embeddings = (
            nn.Parameter(torch.zeros(1, config.num_patches, config.hidden_size)) if use_position_embeddings else None
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))

    def reset_mimir_weights(self, mae: bool) -> None:
        """timm's init (truncated normal), or MAE's (`mae`: sin-cos positions, xavier patch projection)."""
        std = self.config.initializer_range
        if mae:
            if self.position_embeddings is not None:
                positions = sincos_position_embedding(self.config.grid_size, self.config.hidden_size, cls_token=False)
                init.copy_(self.position_embeddings, positions)
            weight = self.patch_embeddings.projection.weight  # initialised like an nn.Linear, as in MAE
            if not getattr(weight, "_is_hf_initialized", False):
                nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
            init.normal_(self.cls_token, std=std)
        else:
            if self.position_embeddings is not None:
                init.trunc_normal_(self.position_embeddings, std=std)
            init.trunc_normal_(self.cls_token, std=std)

    def forward(
        self,
        pixel_values: torch.Tensor,
        noise: torch.Tensor | None = None,
        apply_masking: bool = False,
        interpolate_pos_encoding: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Patch tokens `[B, N, D]` (only the visible ones, shuffled, with `apply_masking`), the mask and
        `ids_restore` (`None` without masking)."""
        config = self.config
        height, width = pixel_values.shape[-2:]
        embeddings = patch_tokens(self, pixel_values, interpolate_pos_encoding)
        if self.position_embeddings is not None:
            positions = self.position_embeddings
            if interpolate_pos_encoding:
                new_grid = (height // config.patch_size, width // config.patch_size)
                positions = resize_patch_positions(positions, config.grid_size, new_grid)
            embeddings = embeddings + positions
        if not apply_masking:
            return embeddings, None, None
        return random_masking(embeddings, config.mask_ratio, noise)


def decoder_config(config, **changes):
    """A copy of `config` at the MAE decoder's shape (`decoder_hidden_size`, `..._num_hidden_layers`,
    `..._num_attention_heads`, `..._intermediate_size`), for building the decoder's layers from the encoder's layer
    class; `changes` set further fields (e.g. ConViT's decoder always has a qkv bias)."""
    copied = copy.deepcopy(config)
    copied.hidden_size = config.decoder_hidden_size
    copied.num_hidden_layers = config.decoder_num_hidden_layers
    copied.num_attention_heads = config.decoder_num_attention_heads
    copied.intermediate_size = config.decoder_intermediate_size
    for name, value in changes.items():
        setattr(copied, name, value)
    return copied


class MimirMaeDecoderBase(nn.Module):
    """The light MAE decoder the authors built for CaiT and ConViT, but for its layers (given, built by the family
    from `decoder_config`): `decoder_embed` to the decoder's width, a mask token for each hidden patch, fixed sin-cos
    positions over the patch grid, the layers, `decoder_norm`, and `decoder_pred` to the `patch_size**2 *
    num_channels` pixels of each patch. The family's `forward` says where the class token goes and how the layers
    are called."""

    def __init__(self, config, layers: list[nn.Module]):
        super().__init__()
        self.config = config
        self.decoder_embed = nn.Linear(config.hidden_size, config.decoder_hidden_size)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.decoder_hidden_size))
        self.decoder_pos_embed = nn.Parameter(
            torch.zeros(1, config.num_patches, config.decoder_hidden_size), requires_grad=False
        )  # fixed sin-cos
        self.decoder_layers = nn.ModuleList(layers)
        self.decoder_norm = nn.LayerNorm(config.decoder_hidden_size, eps=config.layer_norm_eps)
        self.decoder_pred = nn.Linear(config.decoder_hidden_size, config.patch_size**2 * config.num_channels)

    def reset_mimir_weights(self, mae: bool) -> None:
        positions = sincos_position_embedding(self.config.grid_size, self.config.decoder_hidden_size, cls_token=False)
        init.copy_(self.decoder_pos_embed, positions)
        init.normal_(self.mask_token, std=self.config.initializer_range)

    def embed(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`latent` `[B, 1 + keep, D]` (class token first) -> the class token `[B, 1, d]` and every patch's token in
        patch order with its position `[B, num_patches, d]`, at the decoder's width `d`."""
        tokens = self.decoder_embed(latent)
        patches = unshuffle_with_mask_tokens(tokens[:, 1:], self.mask_token, ids_restore) + self.decoder_pos_embed
        return tokens[:, :1], patches

    def predict(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.decoder_pred(self.decoder_norm(hidden_states))


class MimirPreTrainingMixin:
    """The MIMIR pre-training model of every family, written once (mixed in before the family's `PreTrainedModel`
    base): the family's encoder (`self.base_model`) reads X' masked, its `self.decoder` reconstructs the clean X
    (`decode`), and `mimir_pretraining_output` adds the MAE loss and the MI term. Also MAE's patch layout at the
    config's shape."""

    # The authors' pre-training decays every matrix and token (timm's param_groups_weight_decay, no list).
    _no_weight_decay_endings = ()
    # Initialised as the authors' MAE is: xavier-uniform linear layers, sin-cos positions.
    _mae_initialization = True
    _keys_to_ignore_on_load_unexpected = [r"^classifier\."]  # starting from a fine-tuned classifier
    _new_weights_allowed = ("decoder.",)  # e.g. an encoder-only checkpoint
    # The family's encoder and decoder classes, built by `__init__`.
    trunk_class: type | None = None
    decoder_class: type | None = None

    def __init__(self, config):
        super().__init__(config)
        setattr(self, self.base_model_prefix, self.trunk_class(config, mae_initialization=True))
        self.decoder = self.decoder_class(config)
        self.post_init()

    def decode(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """The decoder's pixel predictions `[batch, num_patches, patch_size**2 * channels]`."""
        return self.decoder(latent, ids_restore)

    def forward(
        self,
        pixel_values: torch.Tensor,
        adversarial_pixel_values: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        compute_mi_loss: bool | None = None,
        output_hidden_states: bool = False,
    ) -> MimirForPreTrainingOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            Clean images in [0, 1]: always the reconstruction target.
        adversarial_pixel_values (`torch.FloatTensor`, same shape, *optional*):
            What the encoder reads (X'); `pixel_values` when not given (plain MAE, with the MI term on X).
        noise (`torch.FloatTensor` of shape `(batch_size, num_patches)`, *optional*):
            Uniform noise whose argsort decides the mask; a fresh random mask when not given.
        compute_mi_loss (`bool`, *optional*):
            Whether to compute the I(X'; Z) term; defaults to `config.mi_estimator != "none"`.
        output_hidden_states (`bool`, defaults to `False`):
            Also return the encoder's hidden states.
        """
        encoder_input = self.encoder_input(pixel_values, adversarial_pixel_values)
        outputs = self.base_model(
            encoder_input, noise=noise, apply_masking=True, output_hidden_states=output_hidden_states, return_dict=True
        )
        return mimir_pretraining_output(
            self.config,
            pixel_values,
            encoder_input,
            outputs.last_hidden_state,
            self.decode(outputs.last_hidden_state, outputs.ids_restore),
            outputs.mask,
            outputs.ids_restore,
            compute_mi_loss=compute_mi_loss,
            hidden_states=outputs.hidden_states,
        )

    def patchify(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`[B, C, H, W]` -> `[B, num_patches, patch_size**2 * C]` (MAE's layout)."""
        return patchify(pixel_values, self.config.patch_size)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """Inverse of `patchify` at the config's image size."""
        return unpatchify(patches, self.config.grid_size, self.config.patch_size, self.config.num_channels)

    @staticmethod
    def encoder_input(pixel_values: torch.Tensor, adversarial_pixel_values: torch.Tensor | None) -> torch.Tensor:
        """What the encoder reads: X' when given (it must have the clean images' shape), else the clean X."""
        if adversarial_pixel_values is None:
            return pixel_values
        if adversarial_pixel_values.shape != pixel_values.shape:
            raise ValueError(
                f"adversarial_pixel_values {tuple(adversarial_pixel_values.shape)} must have the shape of pixel_values "
                f"{tuple(pixel_values.shape)}."
            )
        return adversarial_pixel_values


def mimir_pretraining_output(
    config,
    pixel_values: torch.Tensor,
    encoder_input: torch.Tensor,
    latent: torch.Tensor,
    logits: torch.Tensor,
    mask: torch.Tensor,
    ids_restore: torch.Tensor,
    compute_mi_loss: bool | None = None,
    hidden_states: tuple[torch.Tensor, ...] | None = None,
) -> MimirForPreTrainingOutput:
    """MIMIR's loss from an MAE forward pass, for every family: reconstruction of the clean `pixel_values` (masked
    patches only, in float32) plus `config.mi_weight` * the information-bottleneck penalty on Z = `latent` (the
    encoder's tokens), as the authors' pretrain.py computes it: HSIC(Z, X') on the adversarial input X' =
    `encoder_input`, or the Renyi MI I(X; Z) on the clean images.

    `compute_mi_loss` defaults to `config.mi_estimator != "none"`.
    """
    target = reconstruction_target(pixel_values, config.patch_size, config.norm_pix_loss)
    reconstruction_loss = masked_reconstruction_loss(logits, target, mask)
    if compute_mi_loss is None:
        compute_mi_loss = config.mi_estimator != "none"
    mi_loss, loss = None, reconstruction_loss
    if compute_mi_loss:
        estimator = config.mi_estimator if config.mi_estimator != "none" else "hsic"
        inputs = pixel_values if estimator == "renyi" else encoder_input
        mi_loss = mutual_information(estimator, latent, inputs, sigma=config.mi_sigma, alpha=config.mi_alpha)
        loss = reconstruction_loss + config.mi_weight * mi_loss
    return MimirForPreTrainingOutput(
        loss=loss,
        reconstruction_loss=reconstruction_loss,
        mi_loss=mi_loss,
        logits=logits,
        mask=mask,
        ids_restore=ids_restore,
        latent=latent,
        hidden_states=hidden_states,
    )


# ----------------------------------------------------------------------------------------------------------------
# Loading and saving
# ----------------------------------------------------------------------------------------------------------------


class OptimizerGroupsMixin:
    """How AdamW treats each parameter, declared by the model (as timm's models do), for the trainers' groups.

    `no_weight_decay()` names the parameters kept out of weight decay besides the vectors (biases, norms, LayerScale),
    which never decay. `layer_id(name)` places a parameter for layer-wise learning-rate decay: 0 for the embeddings,
    i + 1 for the i-th block of the encoder, `num_layer_ids() - 1` for everything above it (final norm, pooling,
    head, decoder). The default below is a single stack of blocks at `<base model>.layers.N` (ViT, CaiT's
    self-attention layers, ConViT); a family laid out otherwise overrides `layer_id` and `num_layer_ids` (Swin).
    """

    # Name endings kept out of weight decay, set per class: the fine-tuning models' tokens and learned positions
    # (MAE's and timm's `no_weight_decay()`); none for pre-training, whose AdamW decays every matrix and token.
    _no_weight_decay_endings: tuple[str, ...] = ()

    def no_weight_decay(self) -> set[str]:
        """Names of the parameters (besides vectors) that get no weight decay."""
        endings = self._no_weight_decay_endings
        return {name for name, _ in self.named_parameters() if endings and name.endswith(endings)}

    def num_layer_ids(self) -> int:
        """How many layer ids there are: embeddings, each block, and one for everything above."""
        return self.config.num_hidden_layers + 2

    def layer_id(self, name: str) -> int:
        """The layer id of the parameter called `name` (see the class docstring)."""
        prefix = re.escape(self.base_model_prefix)
        if re.match(rf"^(?:{prefix}\.)?embeddings\.", name):
            return 0
        match = re.match(rf"^(?:{prefix}\.)?layers\.(\d+)\.", name)
        return int(match.group(1)) + 1 if match else self.num_layer_ids() - 1


class MimirLoadingMixin:
    """Mixed into every family's `PreTrainedModel` base.

    `from_pretrained` refuses other architectures, unreadable weight files and checkpoints that leave weights other
    than `_new_weights_allowed` uninitialised, each with a `ValueError` that says what was wrong.
    `save_pretrained` writes `auto_map` for every class of the family (`_auto_classes`) and the family's code, so
    the folder loads with `trust_remote_code=True` without mimir_hf.
    """

    # Weights a checkpoint may lack for this class (initialised afresh, said in one log line); any other missing
    # weight is an error: a half-loaded model must not go unnoticed.
    _new_weights_allowed: tuple[str, ...] = ()
    # model_type values of checkpoints this class loads (its own family's, plus e.g. "vit_mae" for the ViT family).
    _loadable_model_types: tuple[str, ...] = ()
    # key renames applied when loading (regex -> replacement), e.g. ViTMAE's on-disk layout; None for none.
    _checkpoint_key_mapping: dict[str, str] | None = None
    # Auto class -> class name (in the family's modelling module), written to `auto_map` by `save_pretrained`.
    _auto_classes: dict[str, str] = {}

    @classmethod
    def _init_kwargs_for(cls, path, config_dict: dict, hub_kwargs: dict) -> dict:
        """Constructor arguments this class needs to hold the checkpoint at `path` (whose config is `config_dict`):
        none by default; see `MimirModel` (the encoder of a mean-pooling classifier has no final norm)."""
        return {}

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """`PreTrainedModel.from_pretrained` with MIMIR's checks (see the class docstring)."""
        path = pretrained_model_name_or_path
        hub_kwargs = {k: kwargs[k] for k in HUB_KWARGS if k in kwargs}
        if isinstance(kwargs.get("config"), PretrainedConfig):  # e.g. from an Auto class
            config_dict = kwargs["config"].to_dict()
        else:
            try:
                config_dict, _ = PretrainedConfig.get_config_dict(path, **hub_kwargs)
            except OSError as error:
                raise ValueError(f"Cannot read a model config from {path}: {error}") from None
            model_type = config_dict.get("model_type")
            loadable = cls._loadable_model_types or (cls.config_class.model_type,)
            if model_type not in loadable:
                architectures = ", ".join(config_dict.get("architectures") or [])
                raise ValueError(
                    f"{path} holds a {model_type!r} checkpoint ({architectures}); {cls.__name__} loads "
                    f"{' or '.join(repr(t) for t in loadable)} checkpoints. The authors' .pth files convert with "
                    "`mimir-hf convert`."
                )
        for name, value in cls._init_kwargs_for(path, config_dict, hub_kwargs).items():
            kwargs.setdefault(name, value)
        if cls._checkpoint_key_mapping is not None:
            kwargs.setdefault("key_mapping", cls._checkpoint_key_mapping)
        wants_info = kwargs.pop("output_loading_info", False)
        try:
            model, info = super().from_pretrained(path, *args, output_loading_info=True, **kwargs)
        except SafetensorError as error:
            raise ValueError(
                f"The weights file in {path} cannot be read ({error}): it is truncated or corrupt. Download or save it "
                "again."
            ) from None
        except RuntimeError as error:
            if "ignore_mismatched_sizes" not in str(error):
                raise
            raise ValueError(
                f"{path} holds weights of other shapes than this {cls.__name__} (the load report above lists them): "
                "typically another number of classes (num_labels) or another image size. Pass "
                "ignore_mismatched_sizes=True (--ignore_mismatched_sizes in the example scripts) to initialise those "
                "weights afresh, e.g. to fine-tune on new classes."
            ) from None
        missing = sorted(info["missing_keys"])
        unexplained = [key for key in missing if not key.startswith(cls._new_weights_allowed)]
        if unexplained:
            saved_as = [name for name in config_dict.get("architectures") or [] if name != cls.__name__]
            hint = (
                f"It is a {saved_as[0]} checkpoint, which has no such weights: load it with {saved_as[0]}."
                if saved_as and saved_as[0] in cls._auto_classes.values()
                else "Is it a checkpoint of another shape or model?"
            )
            raise ValueError(
                f"{path} does not hold {len(unexplained)} weights {cls.__name__} needs (e.g. {unexplained[:6]}); "
                f"refusing to return a half-loaded model. {hint}"
            )
        mismatched = sorted(key for key, *_ in info.get("mismatched_keys", ()))
        if mismatched:
            logger.warning(f"{cls.__name__} newly initialised {mismatched} (other shapes in {path}).")
        if missing:
            new = sorted({key.rsplit(".", 1)[0] for key in missing})
            logger.warning(
                f"{cls.__name__} loaded {len(model.state_dict()) - len(missing)} tensors from {path} and newly "
                f"initialised {', '.join(new)}; unused checkpoint weights (e.g. a pre-training decoder) were dropped."
            )
        else:
            logger.info(f"{cls.__name__} loaded all {len(model.state_dict())} tensors from {path}.")
        return (model, info) if wants_info else model

    def save_pretrained(self, save_directory, *args, is_main_process: bool = True, **kwargs):
        """`PreTrainedModel.save_pretrained`, plus `auto_map` (the family's classes and `MimirImageProcessor`) and
        the code they need (see `export_code`)."""
        config_module = type(self.config).__module__.rsplit(".", 1)[-1]
        model_module = type(self).__module__.rsplit(".", 1)[-1]
        processor_module = importlib.util.resolve_name(".image_processing_mimir", __name__.rpartition(".")[0])
        self.config.auto_map = {
            "AutoConfig": f"{config_module}.{type(self.config).__name__}",
            **{auto: f"{model_module}.{name}" for auto, name in self._auto_classes.items()},
            "AutoImageProcessor": "image_processing_mimir.MimirImageProcessor",
        }
        result = super().save_pretrained(save_directory, *args, is_main_process=is_main_process, **kwargs)
        if is_main_process:
            importlib.import_module(processor_module)
            export_code(save_directory, [type(self.config).__module__, type(self).__module__, processor_module])
        return result


class MimirPreTrainedMixin(OptimizerGroupsMixin, MimirLoadingMixin):
    """Mixed into every family's `PreTrainedModel` base (before it): image input, gradient checkpointing, batch-mean
    losses, the fine-tuning models' weight-decay exclusions, the optimizer grouping, the loading checks, and the
    in-model normalisation's buffers set from the config at init."""

    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    # Losses are batch means: Trainer must divide them by the gradient-accumulation steps itself.
    accepts_loss_kwargs = False
    # Fine-tuning keeps the class token and the learned positions out of weight decay (MAE, timm).
    _no_weight_decay_endings = ("cls_token", "position_embeddings")

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, PixelNormalisation):
            module.reset()


class MimirMaeFamilyMixin(MimirPreTrainedMixin):
    """The base of a family MIMIR pre-trains as a masked autoencoder (ViT, CaiT, ConViT): linear layers initialised
    as timm's classifiers are (truncated normal, `config.initializer_range`) or, with `_mae_initialization`, as MAE's
    (xavier-uniform), zero biases; then every module that has its own init (`reset_mimir_weights(mae)`: embeddings,
    decoder, LayerScale, ConViT's GPSA) runs it. Modules are initialised children first, so a module's own init
    overrides its sub-layers'."""

    _mae_initialization = False

    @torch.no_grad()
    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            if self._mae_initialization:
                init.xavier_uniform_(module.weight)
            else:
                init.trunc_normal_(module.weight, std=self.config.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)
        else:
            super()._init_weights(module)
        if hasattr(module, "reset_mimir_weights") and not isinstance(module, PreTrainedModel):
            module.reset_mimir_weights(mae=self._mae_initialization)


def checkpoint_weight_names(path, **hub_kwargs) -> set[str] | None:
    """The tensor names of a checkpoint's safetensors weights (a folder or Hub id; from the shard index or the file's
    header, no tensor is read), or None when it has no readable safetensors file."""
    from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, cached_file

    def find(name):
        return cached_file(path, name, _raise_exceptions_for_missing_entries=False, **hub_kwargs)

    try:
        if index := find(SAFE_WEIGHTS_INDEX_NAME):
            with open(index, encoding="utf-8") as f:
                return set(json.load(f)["weight_map"])
        if single := find(SAFE_WEIGHTS_NAME):
            with safe_open(single, "pt") as f:
                return set(f.keys())
    except (OSError, ValueError, KeyError, SafetensorError):
        pass  # unreadable: from_pretrained says so in its own words
    return None


_RELATIVE_IMPORT = re.compile(r"^(\s*from\s+)(\.+[\w.]*)(\s+import\b)", flags=re.MULTILINE)


def export_code(folder: str, module_names: list[str]) -> list[str]:
    """Copy the source of `module_names` and of every module they import relatively into `folder`, flat, with each
    relative import rewritten to `from .<file> import`. Returns the file names written."""
    written: dict[str, str] = {}  # file name -> module name
    pending = list(module_names)
    while pending:
        name = pending.pop()
        module = sys.modules[name]
        file_name = os.path.basename(module.__file__)
        if file_name in written:
            if written[file_name] != name:
                raise RuntimeError(f"Two modules would be saved as {file_name}: {written[file_name]} and {name}.")
            continue
        written[file_name] = name
        package = name.rpartition(".")[0]
        with open(module.__file__, encoding="utf-8") as f:
            source = f.read()

        def flatten(match: re.Match) -> str:
            target = importlib.util.resolve_name(match.group(2), package)
            pending.append(target)
            return f"{match.group(1)}.{target.rsplit('.', 1)[-1]}{match.group(3)}"

        with open(os.path.join(folder, file_name), "w", encoding="utf-8") as f:
            f.write(_RELATIVE_IMPORT.sub(flatten, source))
    return sorted(written)


__all__ = [
    "DropPath",
    "MimirEncoderMixin",
    "MimirEncoderOutput",
    "MimirForPreTrainingOutput",
    "MimirImageClassifierMixin",
    "MimirLoadingMixin",
    "MimirMaeDecoderBase",
    "MimirMaeFamilyMixin",
    "MimirPatchTokenEmbeddings",
    "MimirPreTrainedMixin",
    "MimirPreTrainingMixin",
    "PixelNormalisation",
    "auto_classes",
    "check_labels",
    "classification_loss",
    "check_pixel_values",
    "checkpoint_weight_names",
    "decoder_config",
    "export_code",
    "masked_reconstruction_loss",
    "mimir_pretraining_output",
    "patch_tokens",
    "patchify",
    "random_masking",
    "reconstruction_target",
    "resize_patch_positions",
    "sincos_position_embedding",
    "unpatchify",
    "unshuffle_with_mask_tokens",
]
