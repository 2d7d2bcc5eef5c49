"""MIMIR ConViT models: vision transformers with gated positional self-attention (d'Ascoli et al. 2021), the
classifier the authors released and the masked autoencoder they pre-trained it as.

Read top to bottom: relative patch offsets -> gated positional self-attention (GPSA) -> layer -> the MAE
decoder -> `MimirConvitPreTrainedModel` -> `MimirConvitModel` (the trunk) -> `MimirConvitForImageClassification`,
`MimirConvitForPreTraining`. Pixel values are in [0, 1]; the optional per-channel normalisation of the config is
applied inside the embeddings, so attacks act on pixels.

The building blocks ConViT shares with ViT are transformers' own (`ViTMLP`, and `ViTAttention` for the ordinary layers
from `local_up_to_layer` on, which therefore run on SDPA); those it shares with the other MIMIR families are
`modeling_common`'s (the embeddings with a late class token, the attention's projections, the MAE decoder's frame)
and `modeling_heads`' (the encoder's forward, the classification head, the pre-training model); GPSA is written here.
Module names follow transformers' ViT (`q_proj`, `o_proj`, `layernorm_before`, ...), GPSA's own being
`position_proj` and `gating_param`: `convert_convit.py` maps the authors' timm-layout files onto them.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.models.vit.modeling_vit import ViTAttention, ViTMLP

from ...modeling_common import (
    DropPath,
    MimirExplicitAttention,
    MimirMaeDecoderBase,
    MimirMaeFamilyMixin,
    MimirPatchTokenEmbeddings,
)
from ...modeling_heads import MimirEncoderMixin, MimirImageClassifierMixin, MimirPreTrainingMixin, auto_classes
from .configuration_mimir_convit import MimirConvitConfig


def relative_patch_offsets(
    grid_size: tuple[int, int], device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """`(dx, dy, dx^2 + dy^2)` from every query patch to every key patch. Shape `[num_patches, num_patches, 3]`.

    Patches are numbered row-major; `dx` = key column - query column, `dy` = key row - query row (timm's GPSA
    `rel_indices`, which only handles square grids, for any grid).
    """
    rows, columns = grid_size
    row = torch.arange(rows, device=device, dtype=dtype).repeat_interleave(columns)
    column = torch.arange(columns, device=device, dtype=dtype).repeat(rows)
    dx = column[None, :] - column[:, None]
    dy = row[None, :] - row[:, None]
    return torch.stack([dx, dy, dx**2 + dy**2], dim=-1)


def visible_patch_grid(num_visible: int) -> tuple[int, int]:
    """The grid the authors' MAE encoder gives GPSA for its `num_visible` patches: a square one, filled in their
    shuffled order (so the positional prior carries no true geometry there). A `ValueError` if `num_visible` is no
    square."""
    side = math.isqrt(num_visible)
    if side * side != num_visible:
        raise ValueError(
            f"ConViT's GPSA layers see the {num_visible} visible patches as a square grid (as the authors' MAE does), "
            "so their number int(num_patches * (1 - mask_ratio)) must be a square; choose image_size and mask_ratio "
            "accordingly (e.g. mask_ratio 0.75 on a square grid of an even side)."
        )
    return (side, side)


class MimirConvitGatedPositionalAttention(MimirExplicitAttention):
    """Gated positional self-attention (GPSA), ConViT's attention of the first `local_up_to_layer` layers.

    Per head h: `A = (1 - sigmoid(g_h)) * softmax(q k^T / sqrt(d)) + sigmoid(g_h) * softmax(r W_h + b_h)`, with `r` the
    relative offsets `(dx, dy, dx^2 + dy^2)` of the key patch from the query patch and `W`, `b` the `position_proj`
    Linear(3, heads); `A` is renormalised to rows summing to 1 and applied to the values. Two softmaxes mixed by a
    gate are not something SDPA / flash kernels compute, so this layer always computes its attention explicitly.
    """

    def __init__(self, config: MimirConvitConfig):
        super().__init__(config)  # q_proj and k_proj: the halves of timm's attn.qk
        self.position_proj = nn.Linear(3, self.num_heads)  # timm: attn.pos_proj
        self.gating_param = nn.Parameter(torch.ones(self.num_heads))

    def reset_mimir_weights(self, mae: bool) -> None:
        """ConViT's local init, after the generic init of its projections (see `initialize_locality`)."""
        self.initialize_locality()

    @torch.no_grad()
    def initialize_locality(self) -> None:
        """ConViT's convolutional initialisation (paper, Sec. 3; timm's `local_init`).

        Values pass through (`v_proj` = identity). With k = floor(sqrt(heads)) and c = (k - 1) / 2, head `i + k * j`
        (i, j < k) gets the positional score `-alpha * ((dx - (j - c))^2 + (dy - (i - c))^2)` up to a constant: it
        attends around one cell of a k x k kernel. Heads beyond k * k keep their random weights; all are scaled by
        alpha = `locality_strength`. Gates start at 1.
        """
        init.eye_(self.v_proj.weight)
        weight = self.position_proj.weight.detach().clone()
        kernel = math.isqrt(self.num_heads)
        head = torch.arange(kernel * kernel, device=weight.device, dtype=weight.dtype)
        i, j = head % kernel, torch.div(head, kernel, rounding_mode="floor")
        centre = (kernel - 1) / 2
        weight[: kernel * kernel] = torch.stack([2 * (j - centre), 2 * (i - centre), -torch.ones_like(head)], dim=1)
        init.copy_(self.position_proj.weight, weight * self.config.locality_strength)
        init.ones_(self.gating_param)

    def forward(self, hidden_states: torch.Tensor, relative_offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r"""
        hidden_states (`torch.FloatTensor` of shape `(batch_size, num_tokens, hidden_size)`): patch tokens only.
        relative_offsets (`torch.FloatTensor` of shape `(num_tokens, num_tokens, 3)`): see `relative_patch_offsets`.
        """
        query, key, value = self.heads(hidden_states)  # [B, heads, N, head_dim]
        content = ((query @ key.transpose(-2, -1)) * self.scaling).softmax(dim=-1, dtype=torch.float32)
        positional = self.position_proj(relative_offsets).permute(2, 0, 1).softmax(dim=-1, dtype=torch.float32)
        gate = torch.sigmoid(self.gating_param.float()).view(1, -1, 1, 1)
        weights = (1.0 - gate) * content + gate * positional  # [B, heads, N, N]
        return self.attend((weights / weights.sum(dim=-1, keepdim=True)).to(value.dtype), value)


class MimirConvitLayer(GradientCheckpointingLayer):
    """A pre-norm transformer layer (timm's ConViT `Block`) whose attention is GPSA (`use_gpsa`) or ordinary
    multi-head attention."""

    def __init__(self, config: MimirConvitConfig, use_gpsa: bool, drop_path_rate: float = 0.0):
        super().__init__()
        self.use_gpsa = use_gpsa
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = MimirConvitGatedPositionalAttention(config) if use_gpsa else ViTAttention(config)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = ViTMLP(config)
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    def forward(self, hidden_states: torch.Tensor, relative_offsets: torch.Tensor | None = None) -> torch.Tensor:
        normed = self.layernorm_before(hidden_states)
        if self.use_gpsa:
            attention_output, _ = self.attention(normed, relative_offsets)
        else:
            attention_output, _ = self.attention(normed)
        hidden_states = hidden_states + self.drop_path(attention_output)
        return hidden_states + self.drop_path(self.mlp(self.layernorm_after(hidden_states)))


class MimirConvitDecoder(MimirMaeDecoderBase):
    """The authors' light ConViT decoder (`MaskedAutoencoderConVit`, `use_convit_dec=True`).

    Encoder tokens [class, visible] -> `decoder_embed`; the class token is set aside for good; mask tokens fill the
    hidden patches, which are put back in patch order and get fixed sin-cos positions; then `decoder_num_hidden_layers`
    GPSA layers (qkv bias, the encoder's locality strength, no drop path) over the full patch grid in its true order,
    `decoder_norm`, and `decoder_pred` to the `patch_size**2 * num_channels` pixels of every patch. (The authors'
    decoder would join the class token before its layer `local_up_to_layer` = 10 and then fail to compute its loss;
    with its depth of 2 every layer is GPSA, as here.)
    """

    def __init__(self, config: MimirConvitConfig):
        layer_config = self.layer_config(config, qkv_bias=True)
        layers = [MimirConvitLayer(layer_config, use_gpsa=True) for _ in range(config.decoder_num_hidden_layers)]
        super().__init__(config, layers)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """`latent` `[B, 1 + keep, D]` (class token first) -> predicted pixels `[B, num_patches, p * p * C]`."""
        _, hidden_states = self.embed(latent, ids_restore)
        offsets = relative_patch_offsets(self.config.grid_size, device=hidden_states.device, dtype=hidden_states.dtype)
        for layer in self.decoder_layers:
            hidden_states = layer(hidden_states, offsets)
        return self.predict(hidden_states)


class MimirConvitPreTrainedModel(MimirMaeFamilyMixin, PreTrainedModel):
    """What the MIMIR ConViT models share: the config class, the init (timm's ConViT init, truncated normal, by
    default; MAE's for pre-training; then GPSA's local init), mimir_hf's loading checks and code export."""

    config_class = MimirConvitConfig
    config: MimirConvitConfig
    base_model_prefix = "convit"
    _no_split_modules = ["MimirPatchTokenEmbeddings", "MimirConvitLayer"]
    # SDPA serves the ordinary layers (from `local_up_to_layer` on); GPSA always computes attention explicitly.
    _supports_sdpa = True
    _auto_classes = auto_classes("MimirConvit")


class MimirConvitModel(MimirEncoderMixin, MimirConvitPreTrainedModel):
    """The ConViT trunk: embeddings, `local_up_to_layer` GPSA layers over the patches, the class token joined, the
    ordinary layers, final LayerNorm; `forward` is `MimirEncoderMixin`'s, `pooler_output` the normalised class token.

    With `apply_masking=True` it is the authors' MAE encoder: the layers see only the visible patches, in their shuffled
    order, and GPSA's relative offsets are those of a square grid of that many tokens. `mae_initialization` selects
    MAE's init for a trunk built inside `MimirConvitForPreTraining`.
    """

    def __init__(self, config: MimirConvitConfig, mae_initialization: bool = False):
        super().__init__(config)
        self._mae_initialization = mae_initialization
        self.embeddings = MimirPatchTokenEmbeddings(config, use_position_embeddings=config.use_pos_embed)
        depth = config.num_hidden_layers
        rates = [config.drop_path_rate * index / max(depth - 1, 1) for index in range(depth)]  # linear ramp from 0
        self.layers = nn.ModuleList(
            [MimirConvitLayer(config, index < config.local_up_to_layer, rates[index]) for index in range(depth)]
        )
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def run_layers(self, hidden_states, pixel_values, masked, collected):
        """Every layer (each one's output collected), the class token joined in front before layer
        `local_up_to_layer`. GPSA's offsets follow the input's patch grid, or with masking the square grid the
        authors' GPSA assumes for the visible patches."""
        if masked and self.config.local_up_to_layer > 0:
            grid = visible_patch_grid(hidden_states.shape[1])
        else:
            grid = (pixel_values.shape[-2] // self.config.patch_size, pixel_values.shape[-1] // self.config.patch_size)
        relative_offsets = relative_patch_offsets(grid, device=hidden_states.device, dtype=hidden_states.dtype)
        for index, layer in enumerate(self.layers):
            if index == self.config.local_up_to_layer:
                class_token = self.embeddings.cls_token.expand(hidden_states.shape[0], -1, -1)
                hidden_states = torch.cat([class_token, hidden_states], dim=1)
            hidden_states = layer(hidden_states, relative_offsets)
            if collected is not None:
                collected.append(hidden_states)
        return hidden_states


class MimirConvitForImageClassification(MimirImageClassifierMixin, MimirConvitPreTrainedModel):
    """ConViT with a linear head on the normalised class token: `logits = classifier(features(pixel_values))` (timm's
    `ConVit` with `global_pool="token"`, what MIMIR fine-tunes)."""

    trunk_class = MimirConvitModel


class MimirConvitForPreTraining(MimirPreTrainingMixin, MimirConvitPreTrainedModel):
    """MIMIR pre-training of ConViT: the authors' ConViT masked autoencoder, whose encoder reads adversarial images X'
    and whose decoder reconstructs the clean X.

    `loss = reconstruction_loss + config.mi_weight * I(X'; Z)`, Z the encoder tokens (class token + visible patches,
    after the final norm). The adversarial images come from outside (`mimir_hf.attacks.mae_attack`,
    `MimirPreTrainingTrainer`). Initialised as the authors' MAE is: xavier-uniform linear layers, then ConViT's local
    init of every GPSA layer, sin-cos (learnable) encoder positions, fixed sin-cos decoder positions, N(0, 0.02) class
    and mask tokens. The authors pre-train with `qkv_bias=True`.
    """

    trunk_class = MimirConvitModel
    decoder_class = MimirConvitDecoder

    def __init__(self, config: MimirConvitConfig):
        if not config.use_pos_embed:
            raise ValueError("MimirConvitForPreTraining needs use_pos_embed=True (the authors' MAE adds positions).")
        if config.local_up_to_layer > 0:
            visible_patch_grid(config.num_visible_patches)  # a clear error now rather than at the first forward
        super().__init__(config)


__all__ = [
    "MimirConvitForImageClassification",
    "MimirConvitForPreTraining",
    "MimirConvitModel",
    "MimirConvitPreTrainedModel",
    "relative_patch_offsets",
    "visible_patch_grid",
]
