"""MIMIR CaiT models: class-attention image transformers (Touvron et al. 2021), the classifier the authors released and
the masked autoencoder they pre-trained it as.

Read top to bottom: talking-heads attention -> class attention -> LayerScale -> the two layer kinds -> the MAE
decoder -> `MimirCaitPreTrainedModel` -> `MimirCaitModel` (the trunk) -> `MimirCaitForImageClassification`,
`MimirCaitForPreTraining`. Pixel values are in [0, 1]; the optional per-channel normalisation of the config is applied
inside the embeddings, so attacks act on pixels.

The building blocks CaiT shares with ViT are transformers' own (`ViTMLP`, and `ViTAttention` under the class
attention); those it shares with the other MIMIR families are `modeling_common`'s (the embeddings with a late class
token, the attention's projections, the MAE decoder's frame) and `modeling_heads`' (the encoder's forward, the
classification head, the pre-training model); what CaiT adds is written here. Module names follow transformers' ViT
(`q_proj`, `o_proj`, `layernorm_before`, ...), with the talking-heads mixers `logits_mix` and `weights_mix` and the
LayerScale vectors `layer_scale1` / `layer_scale2`; `convert_cait.py` maps the authors' timm-layout files onto them.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.vit.modeling_vit import ViTAttention, ViTMLP, eager_attention_forward

from ...modeling_common import (
    DropPath,
    MimirExplicitAttention,
    MimirMaeDecoderBase,
    MimirMaeFamilyMixin,
    MimirPatchTokenEmbeddings,
)
from ...modeling_heads import MimirEncoderMixin, MimirImageClassifierMixin, MimirPreTrainingMixin, auto_classes
from .configuration_mimir_cait import MimirCaitConfig


def mix_heads(mixer: nn.Linear, scores: torch.Tensor) -> torch.Tensor:
    """Apply `mixer` (a Linear(heads, heads)) across the head axis of `scores` `[batch, heads, queries, keys]`."""
    return mixer(scores.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class MimirCaitTalkingHeadsAttention(MimirExplicitAttention):
    """Multi-head self-attention with talking heads (Shazeer et al. 2020).

    The attention logits are mixed across heads by `logits_mix` before the softmax, and the probabilities by
    `weights_mix` after it. Mixing heads around the softmax is not something SDPA / flash kernels compute, so this
    layer always computes its attention explicitly (softmax in float32), whatever `config._attn_implementation`.
    """

    def __init__(self, config: MimirCaitConfig):
        super().__init__(config)
        self.logits_mix = nn.Linear(self.num_heads, self.num_heads)  # timm: attn.proj_l
        self.weights_mix = nn.Linear(self.num_heads, self.num_heads)  # timm: attn.proj_w
        # o_proj registered last, as before the shared base: parameter order decides the seeded initialisation and
        # the order of saved optimizer states, which a resumed run must find unchanged.
        self.o_proj = self._modules.pop("o_proj")

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        query, key, value = self.heads(hidden_states)  # [B, heads, N, head_dim]
        logits = mix_heads(self.logits_mix, (query * self.scaling) @ key.transpose(-2, -1))  # [B, heads, N, N]
        weights = logits.softmax(dim=-1, dtype=torch.float32).to(query.dtype)
        return self.attend(mix_heads(self.weights_mix, weights), value)


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
        self.init_value = float(config.layer_scale_init)
        self.lambda1 = nn.Parameter(torch.full((config.hidden_size,), self.init_value))

    def reset_mimir_weights(self, mae: bool) -> None:
        init.constant_(self.lambda1, self.init_value)

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


class MimirCaitDecoder(MimirMaeDecoderBase):
    """The authors' light CaiT decoder (`MaskedAutoencoderCait`, `use_cait_block=True`).

    Encoder tokens [class, visible] -> `decoder_embed`; mask tokens fill the hidden patches, which are put back in
    patch order and get fixed sin-cos positions; the (projected) class token goes in front without a position; then
    `decoder_num_hidden_layers` talking-heads LayerScale layers (the encoder's layer, at the decoder's width, heads
    and MLP; same qkv bias, LayerScale init and drop-path rate), `decoder_norm`, and `decoder_pred` to the
    `patch_size**2 * num_channels` pixels of every patch. The class token's prediction is dropped.
    """

    def __init__(self, config: MimirCaitConfig):
        layer_config = self.layer_config(config)
        layers = [MimirCaitLayer(layer_config, config.drop_path_rate) for _ in range(config.decoder_num_hidden_layers)]
        super().__init__(config, layers)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """`latent` `[B, 1 + keep, D]` (class token first) -> predicted pixels `[B, num_patches, p * p * C]`."""
        class_token, patches = self.embed(latent, ids_restore)
        hidden_states = torch.cat([class_token, patches], dim=1)
        for layer in self.decoder_layers:
            hidden_states = layer(hidden_states)
        return self.predict(hidden_states)[:, 1:]


class MimirCaitPreTrainedModel(MimirMaeFamilyMixin, PreTrainedModel):
    """What the MIMIR CaiT models share: the config class, the init (timm's CaiT init, truncated normal, by default;
    MAE's for pre-training; LayerScale vectors at `layer_scale_init`), mimir_hf's loading checks and code export."""

    config_class = MimirCaitConfig
    config: MimirCaitConfig
    base_model_prefix = "cait"
    _no_split_modules = ["MimirPatchTokenEmbeddings", "MimirCaitLayer", "MimirCaitClassAttentionLayer"]
    # SDPA serves the class attention only; the talking-heads layers always compute attention explicitly.
    _supports_sdpa = True
    _auto_classes = auto_classes("MimirCait")


class MimirCaitModel(MimirEncoderMixin, MimirCaitPreTrainedModel):
    """The CaiT trunk: embeddings, self-attention layers over the patches, class-attention layers, final LayerNorm;
    `forward` is `MimirEncoderMixin`'s, `pooler_output` the normalised class token.

    With `apply_masking=True` it is the MAE encoder of pre-training: the layers see only the visible patches and the
    class token attends over [class token, visible patches]. `mae_initialization` selects MAE's init for a trunk built
    inside `MimirCaitForPreTraining`.
    """

    def __init__(self, config: MimirCaitConfig, mae_initialization: bool = False):
        super().__init__(config)
        self._mae_initialization = mae_initialization
        self.embeddings = MimirPatchTokenEmbeddings(config)
        self.layers = nn.ModuleList(
            [MimirCaitLayer(config, config.drop_path_rate) for _ in range(config.num_hidden_layers)]
        )
        self.class_attention_layers = nn.ModuleList(
            [MimirCaitClassAttentionLayer(config) for _ in range(config.num_class_attention_layers)]
        )
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def attention_modules(self) -> list[nn.Module]:
        """The self-attention layers' attentions, then the class-attention layers'."""
        return [layer.attention for layer in (*self.layers, *self.class_attention_layers)]

    def run_layers(self, hidden_states, pixel_values, masked, collected):
        """The self-attention layers over the patches (each one's output collected), then the class-attention layers
        over [class token, patches]; returns [class token, patches] for the final norm."""
        for layer in self.layers:
            hidden_states = layer(hidden_states)
            if collected is not None:
                collected.append(hidden_states)
        class_token = self.embeddings.cls_token.expand(hidden_states.shape[0], -1, -1)
        for layer in self.class_attention_layers:
            class_token = layer(class_token, hidden_states)
        return torch.cat([class_token, hidden_states], dim=1)


class MimirCaitForImageClassification(MimirImageClassifierMixin, MimirCaitPreTrainedModel):
    """CaiT with a linear head on the normalised class token: `logits = classifier(features(pixel_values))` (timm's
    `Cait` with `global_pool="token"`, what MIMIR fine-tunes)."""

    trunk_class = MimirCaitModel


class MimirCaitForPreTraining(MimirPreTrainingMixin, MimirCaitPreTrainedModel):
    """MIMIR pre-training of CaiT: the authors' CaiT masked autoencoder, whose encoder reads adversarial images X' and
    whose decoder reconstructs the clean X.

    `loss = reconstruction_loss + config.mi_weight * I(X'; Z)`, Z the encoder tokens (class token + visible patches,
    after the final norm). The adversarial images come from outside (`mimir_hf.attacks.mae_attack`,
    `MimirPreTrainingTrainer`). Initialised as the authors' MAE is: xavier-uniform linear layers, sin-cos (learnable)
    encoder positions, fixed sin-cos decoder positions, N(0, 0.02) class and mask tokens.
    """

    trunk_class = MimirCaitModel
    decoder_class = MimirCaitDecoder


__all__ = [
    "MimirCaitForImageClassification",
    "MimirCaitForPreTraining",
    "MimirCaitModel",
    "MimirCaitPreTrainedModel",
]
