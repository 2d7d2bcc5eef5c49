"""MIMIR CaiT models: class-attention image transformers (Touvron et al. 2021), the classifier the authors released and
the masked autoencoder they pre-trained it as.

Read top to bottom: embeddings -> talking-heads attention -> class attention -> LayerScale -> the two layer kinds ->
the MAE decoder -> `MimirCaitPreTrainedModel` -> `MimirCaitModel` (the trunk) -> `MimirCaitForImageClassification`,
`MimirCaitForPreTraining`. Pixel values are in [0, 1]; the optional per-channel normalisation of the config is applied
inside the embeddings, so attacks act on pixels.

The building blocks CaiT shares with ViT are transformers' own (`ViTPatchEmbeddings`, `ViTMLP`, and `ViTAttention`
under the class attention); what CaiT adds is written here. Module names follow transformers' ViT (`q_proj`, `o_proj`,
`layernorm_before`, ...); `convert_cait.py` maps the authors' timm-layout checkpoints onto them.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.vit.modeling_vit import ViTAttention, ViTMLP, ViTPatchEmbeddings, eager_attention_forward

from ...modeling_common import (
    DropPath,
    MimirEncoderOutput,
    MimirImageClassifierMixin,
    MimirLoadingMixin,
    MimirPreTrainingMixin,
    OptimizerGroupsMixin,
    PixelNormalisation,
    check_num_labels,
    check_pixel_values,
    finish_output,
    output_flags,
    random_masking,
    recording_attentions,
    resize_patch_positions,
    sincos_position_embedding,
    unshuffle_with_mask_tokens,
)
from .configuration_mimir_cait import MimirCaitConfig


class MimirCaitEmbeddings(nn.Module):
    """[0, 1] pixels -> (optional normalisation) -> conv patch tokens + learned positions -> (optional MAE masking).

    Also holds the class token, which CaiT only joins at the class-attention stage (its position table has no class
    slot), so that layer-wise lr decay counts it with the embeddings, as MAE's fine-tuning does.
    """

    def __init__(self, config: MimirCaitConfig):
        super().__init__()
        self.config = config
        self.normalisation = PixelNormalisation(config.num_channels, config.image_mean, config.image_std)
        self.patch_embeddings = ViTPatchEmbeddings(config)
        self.position_embeddings = nn.Parameter(torch.zeros(1, config.num_patches, config.hidden_size))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))

    def initialize_weights(self, mae: bool) -> None:
        """timm's CaiT init (truncated normal), or MAE's (`mae`: sin-cos positions, xavier patch projection)."""
        std = self.config.initializer_range
        if mae:
            positions = sincos_position_embedding(self.config.grid_size, self.config.hidden_size, cls_token=False)
            init.copy_(self.position_embeddings, positions)
            weight = self.patch_embeddings.projection.weight  # initialised like an nn.Linear, as in MAE
            if not getattr(weight, "_is_hf_initialized", False):
                nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
            init.normal_(self.cls_token, std=std)
        else:
            init.trunc_normal_(self.position_embeddings, std=std)
            init.trunc_normal_(self.cls_token, std=std)

    def forward(
        self,
        pixel_values: torch.Tensor,
        noise: torch.Tensor | None = None,
        apply_masking: bool = False,
        interpolate_pos_encoding: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Patch tokens `[B, N, D]` with positions (only the visible ones, shuffled, with `apply_masking`), the mask
        and `ids_restore` (`None` without masking)."""
        config = self.config
        check_pixel_values(
            pixel_values, config.num_channels, config.image_size_hw, config.patch_size, interpolate_pos_encoding
        )
        height, width = pixel_values.shape[-2:]
        pixel_values = self.normalisation(pixel_values)
        embeddings = self.patch_embeddings(pixel_values.to(self.patch_embeddings.projection.weight.dtype))
        positions = self.position_embeddings
        if interpolate_pos_encoding:
            new_grid = (height // config.patch_size, width // config.patch_size)
            positions = resize_patch_positions(positions, config.grid_size, new_grid)
        embeddings = embeddings + positions
        if not apply_masking:
            return embeddings, None, None
        return random_masking(embeddings, config.mask_ratio, noise)


def mix_heads(mixer: nn.Linear, scores: torch.Tensor) -> torch.Tensor:
    """Apply `mixer` (a Linear(heads, heads)) across the head axis of `scores` `[batch, heads, queries, keys]`."""
    return mixer(scores.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class MimirCaitTalkingHeadsAttention(nn.Module):
    """Multi-head self-attention with talking heads (Shazeer et al. 2020).

    The attention logits are mixed across heads by `logits_mix` before the softmax, and the probabilities by
    `weights_mix` after it. Mixing heads around the softmax is not something SDPA / flash kernels compute, so this
    layer always computes its attention explicitly (softmax in float32), whatever `config._attn_implementation`.
    """

    def __init__(self, config: MimirCaitConfig):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.qkv_bias)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.qkv_bias)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.qkv_bias)
        self.logits_mix = nn.Linear(self.num_heads, self.num_heads)  # timm: attn.proj_l
        self.weights_mix = nn.Linear(self.num_heads, self.num_heads)  # timm: attn.proj_w
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch_size, length, _ = hidden_states.shape
        head_shape = (batch_size, length, self.num_heads, self.head_dim)
        query = self.q_proj(hidden_states).view(head_shape).transpose(1, 2)  # [B, heads, N, head_dim]
        key = self.k_proj(hidden_states).view(head_shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(head_shape).transpose(1, 2)

        logits = mix_heads(self.logits_mix, (query * self.scaling) @ key.transpose(-2, -1))  # [B, heads, N, N]
        weights = logits.softmax(dim=-1, dtype=torch.float32).to(query.dtype)
        weights = mix_heads(self.weights_mix, weights)
        weights = nn.functional.dropout(weights, p=self.config.attention_probs_dropout_prob, training=self.training)

        attention_output = (weights @ value).transpose(1, 2).reshape(batch_size, length, -1)
        return self.o_proj(attention_output), weights


class MimirCaitClassAttention(ViTAttention):
    """Class attention: the class token (first token) is the only query; keys and values come from every token.

    A plain softmax attention, so it runs through transformers' attention interface (SDPA by default, or eager).
    Returns the class token's update `[batch, 1, hidden]` and the attention weights (`None` under SDPA).
    """

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch_size, length, _ = hidden_states.shape
        query = self.q_proj(hidden_states[:, :1]).view(batch_size, 1, -1, self.head_dim).transpose(1, 2)
        key = self.k_proj(hidden_states).view(batch_size, length, -1, self.head_dim).transpose(1, 2)
        value = self.v_proj(hidden_states).view(batch_size, length, -1, self.head_dim).transpose(1, 2)

        attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attention_output, weights = attention_interface(
            self,
            query,
            key,
            value,
            None,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            **kwargs,
        )
        return self.o_proj(attention_output.reshape(batch_size, 1, -1)), weights


class MimirCaitLayerScale(nn.Module):
    """LayerScale: a learned per-channel scale of a residual branch, initialised to `config.layer_scale_init`."""

    def __init__(self, config: MimirCaitConfig):
        super().__init__()
        self.lambda1 = nn.Parameter(torch.full((config.hidden_size,), float(config.layer_scale_init)))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states * self.lambda1


class MimirCaitLayer(GradientCheckpointingLayer):
    """A talking-heads layer: `x + drop_path(gamma_1 * attention(norm(x)))`, then the MLP alike (timm's
    `LayerScaleBlock`). The encoder's layers over the patches and the MAE decoder's layers."""

    def __init__(self, config: MimirCaitConfig, drop_path_rate: float = 0.0):
        super().__init__()
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = MimirCaitTalkingHeadsAttention(config)
        self.layer_scale1 = MimirCaitLayerScale(config)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = ViTMLP(config)
        self.layer_scale2 = MimirCaitLayerScale(config)
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        attention_output, _ = self.attention(self.layernorm_before(hidden_states))
        hidden_states = hidden_states + self.drop_path(self.layer_scale1(attention_output))
        mlp_output = self.mlp(self.layernorm_after(hidden_states))
        return hidden_states + self.drop_path(self.layer_scale2(mlp_output))


class MimirCaitClassAttentionLayer(GradientCheckpointingLayer):
    """A class-attention layer: only the class token changes. It attends over [class token, patches], normalised
    together by `layernorm_before`; the patches pass through untouched (timm's `LayerScaleBlockClassAttn`)."""

    def __init__(self, config: MimirCaitConfig):
        super().__init__()
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = MimirCaitClassAttention(config)
        self.layer_scale1 = MimirCaitLayerScale(config)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = ViTMLP(config)
        self.layer_scale2 = MimirCaitLayerScale(config)

    def forward(self, class_token: torch.Tensor, patch_tokens: torch.Tensor) -> torch.Tensor:
        tokens = torch.cat([class_token, patch_tokens], dim=1)
        attention_output, _ = self.attention(self.layernorm_before(tokens))
        class_token = class_token + self.layer_scale1(attention_output)
        return class_token + self.layer_scale2(self.mlp(self.layernorm_after(class_token)))


class MimirCaitDecoder(nn.Module):
    """The authors' light CaiT decoder (`MaskedAutoencoderCait`, `use_cait_block=True`).

    Encoder tokens [class, visible] -> `decoder_embed`; mask tokens fill the hidden patches, which are put back in
    patch order and get fixed sin-cos positions; the (projected) class token goes in front without a position; then
    `decoder_num_hidden_layers` talking-heads LayerScale layers (the encoder's layer, at the decoder's width, heads
    and MLP; same qkv bias, LayerScale init and drop-path rate), `decoder_norm`, and `decoder_pred` to the
    `patch_size**2 * num_channels` pixels of every patch. The class token's prediction is dropped.
    """

    def __init__(self, config: MimirCaitConfig):
        super().__init__()
        self.config = config
        decoder_config = copy.deepcopy(config)
        decoder_config.hidden_size = config.decoder_hidden_size
        decoder_config.num_hidden_layers = config.decoder_num_hidden_layers
        decoder_config.num_attention_heads = config.decoder_num_attention_heads
        decoder_config.intermediate_size = config.decoder_intermediate_size
        self.decoder_embed = nn.Linear(config.hidden_size, config.decoder_hidden_size)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.decoder_hidden_size))
        self.decoder_pos_embed = nn.Parameter(
            torch.zeros(1, config.num_patches, config.decoder_hidden_size), requires_grad=False
        )  # fixed sin-cos
        self.decoder_layers = nn.ModuleList(
            [MimirCaitLayer(decoder_config, config.drop_path_rate) for _ in range(config.decoder_num_hidden_layers)]
        )
        self.decoder_norm = nn.LayerNorm(config.decoder_hidden_size, eps=config.layer_norm_eps)
        self.decoder_pred = nn.Linear(config.decoder_hidden_size, config.patch_size**2 * config.num_channels)

    def initialize_weights(self) -> None:
        positions = sincos_position_embedding(self.config.grid_size, self.config.decoder_hidden_size, cls_token=False)
        init.copy_(self.decoder_pos_embed, positions)
        init.normal_(self.mask_token, std=self.config.initializer_range)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """`latent` `[B, 1 + keep, D]` (class token first) -> predicted pixels `[B, num_patches, p * p * C]`."""
        tokens = self.decoder_embed(latent)
        patches = unshuffle_with_mask_tokens(tokens[:, 1:], self.mask_token, ids_restore) + self.decoder_pos_embed
        hidden_states = torch.cat([tokens[:, :1], patches], dim=1)
        for layer in self.decoder_layers:
            hidden_states = layer(hidden_states)
        return self.decoder_pred(self.decoder_norm(hidden_states))[:, 1:]


class MimirCaitPreTrainedModel(OptimizerGroupsMixin, MimirLoadingMixin, PreTrainedModel):
    """What the MIMIR CaiT models share: the config class, the init, mimir_hf's loading checks and code export."""

    config_class = MimirCaitConfig
    config: MimirCaitConfig
    base_model_prefix = "cait"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["MimirCaitEmbeddings", "MimirCaitLayer", "MimirCaitClassAttentionLayer"]
    # SDPA serves the class attention only; the talking-heads layers always compute attention explicitly.
    _supports_sdpa = True
    # Losses are batch means: Trainer must divide them by the gradient-accumulation steps itself.
    accepts_loss_kwargs = False
    # Fine-tuning keeps the class token and the learned positions out of weight decay (MAE, timm).
    _no_weight_decay_endings = ("cls_token", "position_embeddings")
    _auto_classes = {
        "AutoModel": "MimirCaitModel",
        "AutoModelForPreTraining": "MimirCaitForPreTraining",
        "AutoModelForImageClassification": "MimirCaitForImageClassification",
    }
    # timm's CaiT init (truncated normal) by default; MAE's (xavier-uniform, sin-cos positions) for pre-training.
    _mae_initialization = False

    @torch.no_grad()
    def _init_weights(self, module):
        """Linear layers truncated-normal (timm) or xavier-uniform (MAE), zero biases; unit norms; positions, class
        and mask tokens; LayerScale vectors at `layer_scale_init`; the normalisation buffers from the config."""
        if isinstance(module, nn.Linear):
            if self._mae_initialization:
                init.xavier_uniform_(module.weight)
            else:
                init.trunc_normal_(module.weight, std=self.config.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)
        else:
            super()._init_weights(module)
        if isinstance(module, MimirCaitEmbeddings):
            module.initialize_weights(mae=self._mae_initialization)
        elif isinstance(module, MimirCaitDecoder):
            module.initialize_weights()
        elif isinstance(module, MimirCaitLayerScale):
            init.constant_(module.lambda1, self.config.layer_scale_init)
        elif isinstance(module, PixelNormalisation):
            module.reset()


class MimirCaitModel(MimirCaitPreTrainedModel):
    """The CaiT trunk: embeddings, self-attention layers over the patches, class-attention layers, final LayerNorm.

    With `apply_masking=True` it is the MAE encoder of pre-training: the layers see only the visible patches and the
    class token attends over [class token, visible patches]. `mae_initialization` selects MAE's init for a trunk built
    inside `MimirCaitForPreTraining`.
    """

    def __init__(self, config: MimirCaitConfig, mae_initialization: bool = False):
        super().__init__(config)
        self._mae_initialization = mae_initialization
        self.embeddings = MimirCaitEmbeddings(config)
        self.layers = nn.ModuleList(
            [MimirCaitLayer(config, config.drop_path_rate) for _ in range(config.num_hidden_layers)]
        )
        self.class_attention_layers = nn.ModuleList(
            [MimirCaitClassAttentionLayer(config) for _ in range(config.num_class_attention_layers)]
        )
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

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
        output_hidden_states (`bool`, *optional*):
            Also return the patch tokens entering every self-attention layer and leaving the last one.
        output_attentions (`bool`, *optional*):
            Also return every layer's attention probabilities (unset: the config's): the self-attention layers
            over the patches, then the class-attention layers.
        return_dict (`bool`, *optional*):
            A `MimirEncoderOutput`, or its tuple with `False` (unset: the config's).

        Returns `last_hidden_state` `[batch, 1 + num_tokens, hidden]` (class token first, after the final norm) and
        `pooler_output` `[batch, hidden]` (the normalised class token), plus `mask` and `ids_restore` with masking.
        """
        output_hidden_states, output_attentions, return_dict = output_flags(
            self.config, output_hidden_states, output_attentions, return_dict
        )
        hidden_states, mask, ids_restore = self.embeddings(
            pixel_values, noise=noise, apply_masking=apply_masking, interpolate_pos_encoding=interpolate_pos_encoding
        )
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        attention_modules = [layer.attention for layer in (*self.layers, *self.class_attention_layers)]
        with recording_attentions(attention_modules, output_attentions) as attentions:
            for layer in self.layers:
                hidden_states = layer(hidden_states)
                if output_hidden_states:
                    all_hidden_states += (hidden_states,)

            class_token = self.embeddings.cls_token.expand(hidden_states.shape[0], -1, -1)
            for layer in self.class_attention_layers:
                class_token = layer(class_token, hidden_states)

        sequence_output = self.layernorm(torch.cat([class_token, hidden_states], dim=1))
        output = MimirEncoderOutput(
            last_hidden_state=sequence_output,
            pooler_output=sequence_output[:, 0],
            mask=mask,
            ids_restore=ids_restore,
            hidden_states=all_hidden_states,
            attentions=None if attentions is None else tuple(attentions),
        )
        return finish_output(output, return_dict)


class MimirCaitForImageClassification(MimirImageClassifierMixin, MimirCaitPreTrainedModel):
    """CaiT with a linear head on the normalised class token: `logits = classifier(features(pixel_values))` (timm's
    `Cait` with `global_pool="token"`, what MIMIR fine-tunes)."""

    # A pre-training checkpoint's decoder is dropped on purpose; the head is new then.
    _keys_to_ignore_on_load_unexpected = [r"^decoder\."]
    _new_weights_allowed = ("classifier.",)

    def __init__(self, config: MimirCaitConfig):
        super().__init__(config)
        check_num_labels(config)
        self.num_labels = config.num_labels
        self.cait = MimirCaitModel(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()


class MimirCaitForPreTraining(MimirPreTrainingMixin, MimirCaitPreTrainedModel):
    """MIMIR pre-training of CaiT: the authors' CaiT masked autoencoder, whose encoder reads adversarial images X' and
    whose decoder reconstructs the clean X.

    `loss = reconstruction_loss + config.mi_weight * I(X'; Z)`, Z the encoder tokens (class token + visible patches,
    after the final norm). The adversarial images come from outside (`mimir_hf.attacks.mae_attack`,
    `MimirPreTrainingTrainer`). Initialised as the authors' MAE is: xavier-uniform linear layers, sin-cos (learnable)
    encoder positions, fixed sin-cos decoder positions, N(0, 0.02) class and mask tokens.
    """

    # The authors' pre-training decays every matrix and token (timm's param_groups_weight_decay, no list).
    _no_weight_decay_endings = ()

    _mae_initialization = True
    _keys_to_ignore_on_load_unexpected = [r"^classifier\."]  # starting from a fine-tuned classifier
    _new_weights_allowed = ("decoder.",)  # e.g. an encoder-only checkpoint

    def __init__(self, config: MimirCaitConfig):
        super().__init__(config)
        self.cait = MimirCaitModel(config, mae_initialization=True)
        self.decoder = MimirCaitDecoder(config)
        self.post_init()


__all__ = [
    "MimirCaitForImageClassification",
    "MimirCaitForPreTraining",
    "MimirCaitModel",
    "MimirCaitPreTrainedModel",
]
