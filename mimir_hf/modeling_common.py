"""The building blocks every MIMIR model family shares: input checks, in-model normalisation, stochastic depth, MAE's
masking, positions and loss pieces, the embeddings of the late-class-token families, the MAE decoder's frame, the
optimizer grouping, and `MimirLoadingMixin` (safe `from_pretrained`, and `save_pretrained` folders that carry their
own code). The heads written once over them (encoder forward, classifier, pre-training model) are `modeling_heads.py`.

Model families live in `mimir_hf/models/<family>/`; their configuration and modelling files import from here, from
`modeling_heads.py` and from `mutual_information.py` / `threat_model.py`. `save_pretrained` copies those files,
flattened into one folder with their relative imports rewritten, so a saved model loads with
`trust_remote_code=True` where mimir_hf is not installed (transformers' own code copying only follows `from .x import`
within one folder).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import sys

import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.models.vit.modeling_vit import ViTPatchEmbeddings
from transformers.models.vit_mae.modeling_vit_mae import build_2d_sinusoidal_position_embedding
from transformers.utils import logging

from .configuration_common import HUB_KWARGS

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


class MimirExplicitAttention(nn.Module):
    """Multi-head self-attention whose probabilities the family computes itself (CaiT's talking heads, ConViT's gated
    positional attention: neither is what SDPA / flash kernels compute), over ViT's projections `q_proj`, `k_proj`,
    `v_proj` and `o_proj`. `heads` gives the query, key and value `[batch, heads, tokens, head_dim]`; `attend`
    applies the family's probabilities (after attention dropout) to the values and projects the result."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.qkv_bias)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.qkv_bias)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.qkv_bias)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def heads(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Query, key and value of `hidden_states` `[batch, tokens, hidden]`, each `[batch, heads, tokens,
        head_dim]`."""
        shape = (*hidden_states.shape[:2], self.num_heads, self.head_dim)
        projections = (self.q_proj, self.k_proj, self.v_proj)
        return tuple(projection(hidden_states).view(shape).transpose(1, 2) for projection in projections)

    def attend(self, weights: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The output `[batch, tokens, hidden]` of the probabilities `weights` `[batch, heads, tokens, tokens]` over
        `value`, and the probabilities after attention dropout (what `output_attentions` returns)."""
        weights = nn.functional.dropout(weights, p=self.config.attention_probs_dropout_prob, training=self.training)
        attention_output = (weights @ value).transpose(1, 2).flatten(2)
        return self.o_proj(attention_output), weights


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


class MimirMaeDecoderBase(nn.Module):
    """The light MAE decoder the authors built for CaiT and ConViT, but for its layers (given, built by the family
    from `layer_config`): `decoder_embed` to the decoder's width, a mask token for each hidden patch, fixed sin-cos
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

    @staticmethod
    def layer_config(config, **changes):
        """A copy of `config` at the decoder's shape (`decoder_hidden_size`, `..._num_hidden_layers`,
        `..._num_attention_heads`, `..._intermediate_size`), for building the decoder's layers from the encoder's
        layer class; `changes` set further fields (e.g. ConViT's decoder always has a qkv bias)."""
        copied = copy.deepcopy(config)
        copied.hidden_size = config.decoder_hidden_size
        copied.num_hidden_layers = config.decoder_num_hidden_layers
        copied.num_attention_heads = config.decoder_num_attention_heads
        copied.intermediate_size = config.decoder_intermediate_size
        for name, value in changes.items():
            setattr(copied, name, value)
        return copied

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
    "MimirExplicitAttention",
    "MimirLoadingMixin",
    "MimirMaeDecoderBase",
    "MimirMaeFamilyMixin",
    "MimirPatchTokenEmbeddings",
    "MimirPreTrainedMixin",
    "PixelNormalisation",
    "check_labels",
    "classification_loss",
    "check_pixel_values",
    "checkpoint_weight_names",
    "export_code",
    "masked_reconstruction_loss",
    "patch_tokens",
    "patchify",
    "random_masking",
    "reconstruction_target",
    "resize_patch_positions",
    "sincos_position_embedding",
    "unpatchify",
    "unshuffle_with_mask_tokens",
]
