"""MIMIR ViT models: the adversarial MAE of pre-training and the classifier of fine-tuning, on transformers' ViTMAE.

Read top to bottom: embeddings -> layer -> encoder / decoder -> `MimirPreTrainedModel` -> `MimirForPreTraining`,
`MimirForImageClassification`. Pixel values are in [0, 1]; the optional per-channel normalisation of the config is
applied inside the embeddings, so attacks act on pixels.

Parameter names are those of transformers' ViTMAE modules (`vit.embeddings...`, `vit.layers.N.attention.q_proj...`,
`decoder...`) and checkpoints store exactly these names, so `Trainer`'s `resume_from_checkpoint` (a plain
`load_state_dict`) restores every weight. `from_pretrained` also reads ViTMAE's on-disk layout (`facebook/vit-mae-*`:
`vit.encoder.layer.N.attention.attention.query...`) through `VIT_MAE_KEY_MAPPING`.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.models.vit_mae.modeling_vit_mae import (
    ViTMAEDecoder,
    ViTMAEEmbeddings,
    ViTMAELayer,
)
from transformers.utils import logging

from ...modeling_common import (
    DropPath,
    MimirMaeFamilyMixin,
    PixelNormalisation,
    check_num_labels,
    checkpoint_weight_names,
    patch_tokens,
    sincos_position_embedding,
)
from ...modeling_heads import (
    MimirEncoderMixin,
    MimirEncoderOutput,
    MimirImageClassifierMixin,
    MimirPreTrainingMixin,
    auto_classes,
)
from .configuration_mimir import MimirConfig

logger = logging.get_logger(__name__)

# ViTMAE's on-disk key layout -> module names (applied when loading only; regexes, in order).
VIT_MAE_KEY_MAPPING = {
    r"encoder\.layer\.": "layers.",  # also decoder.decoder_encoder.layer. -> decoder.decoder_layers.
    r"attention\.attention\.query": "attention.q_proj",
    r"attention\.attention\.key": "attention.k_proj",
    r"attention\.attention\.value": "attention.v_proj",
    r"attention\.output\.dense": "attention.o_proj",
    r"intermediate\.dense": "mlp.fc1",
    r"(?<!attention\.)output\.dense": "mlp.fc2",
}


MimirModelOutput = MimirEncoderOutput  # the name of earlier releases


class MimirEmbeddings(ViTMAEEmbeddings):
    """[0, 1] pixels -> (optional normalisation) -> patch tokens + sin-cos positions -> (optional masking) -> CLS."""

    def __init__(self, config: MimirConfig):
        super().__init__(config)
        self.grid_size = config.grid_size
        self.normalisation = PixelNormalisation(config.num_channels, config.image_mean, config.image_std)

    def reset_mimir_weights(self, mae: bool = True) -> None:
        """MAE's init: sin-cos positions, xavier patch projection, N(0, 0.02) class token."""
        init.copy_(
            self.position_embeddings, sincos_position_embedding(self.grid_size, self.position_embeddings.shape[-1])
        )
        weight = self.patch_embeddings.projection.weight  # initialised like an nn.Linear, as in MAE
        if not getattr(weight, "_is_hf_initialized", False):
            nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
        init.normal_(self.cls_token, std=self.config.initializer_range)

    def interpolate_pos_encoding(self, embeddings: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Position embeddings resized (bicubic) from the trained grid to the grid of a `height` x `width` image."""
        new_grid = (height // self.config.patch_size, width // self.config.patch_size)
        if new_grid == self.grid_size:
            return self.position_embeddings
        cls_position, patch_positions = self.position_embeddings[:, :1], self.position_embeddings[:, 1:]
        dim = patch_positions.shape[-1]
        patch_positions = patch_positions.reshape(1, *self.grid_size, dim).permute(0, 3, 1, 2)
        patch_positions = nn.functional.interpolate(patch_positions, size=new_grid, mode="bicubic", align_corners=False)
        return torch.cat([cls_position, patch_positions.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)

    def forward(
        self,
        pixel_values: torch.Tensor,
        noise: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        apply_masking: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        height, width = pixel_values.shape[-2:]
        embeddings = patch_tokens(self, pixel_values, interpolate_pos_encoding)
        if interpolate_pos_encoding:
            position_embeddings = self.interpolate_pos_encoding(embeddings, height, width)
        else:
            position_embeddings = self.position_embeddings
        embeddings = embeddings + position_embeddings[:, 1:]
        mask = ids_restore = None
        if apply_masking:
            embeddings, mask, ids_restore = self.random_masking(embeddings, noise)
        cls_tokens = (self.cls_token + position_embeddings[:, :1]).expand(embeddings.shape[0], -1, -1)
        return torch.cat([cls_tokens, embeddings], dim=1), mask, ids_restore


class MimirLayer(ViTMAELayer):
    """A ViTMAE pre-norm transformer layer with stochastic depth on both residual branches."""

    def __init__(self, config: MimirConfig, drop_path_rate: float = 0.0):
        super().__init__(config)
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
    ) -> torch.Tensor:
        attention_output, _ = self.attention(self.layernorm_before(hidden_states), attention_mask, **kwargs)
        hidden_states = hidden_states + self.drop_path(self.dropout(attention_output))
        mlp_output = self.mlp(self.layernorm_after(hidden_states))
        return hidden_states + self.drop_path(self.dropout(mlp_output))


class MimirDecoder(ViTMAEDecoder):
    """ViTMAE's light decoder: mask tokens filled in, sin-cos positions, transformer layers, pixel predictor."""

    def __init__(self, config: MimirConfig):
        super().__init__(config, num_patches=config.num_patches)

    def initialize_weights(self, num_patches: int | None = None):  # called by ViTMAEDecoder.__init__ too
        grid_size = self.config.grid_size
        init.copy_(self.decoder_pos_embed, sincos_position_embedding(grid_size, self.decoder_pos_embed.shape[-1]))
        init.normal_(self.mask_token, std=self.config.initializer_range)

    def reset_mimir_weights(self, mae: bool = True) -> None:
        self.initialize_weights()


class MimirPreTrainedModel(MimirMaeFamilyMixin, PreTrainedModel):
    """What the MIMIR ViT models share: the config class, MAE's init (xavier-uniform linear layers, zero biases, unit
    norms, sin-cos positions, N(0, 0.02) tokens), ViTMAE's attention kernels, mimir_hf's loading checks (ViTMAE
    checkpoints included) and code export."""

    config_class = MimirConfig
    config: MimirConfig
    base_model_prefix = "vit"
    _no_split_modules = ["MimirEmbeddings", "MimirLayer", "ViTMAELayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _mae_initialization = True

    _loadable_model_types = ("mimir", "vit_mae")
    _checkpoint_key_mapping = VIT_MAE_KEY_MAPPING
    _auto_classes = auto_classes("Mimir")


class MimirModel(MimirEncoderMixin, MimirPreTrainedModel):
    """The MIMIR ViT encoder: embeddings, `num_hidden_layers` layers, final LayerNorm (or none, see below); `forward`
    is `MimirEncoderMixin`'s.

    `mae_initialization` (default) initialises as MAE does; `False` gives timm's ViT init (truncated normal).

    `use_final_norm=False` replaces the final norm by `nn.Identity()`: the mean-pooling classifier normalises the
    pooled feature with its own `fc_norm` instead, as in MAE fine-tuning. `from_pretrained` picks it for a checkpoint
    without a final norm (a mean-pooling classifier's folder, or such an encoder saved on its own), and says so.
    """

    # A classifier's head, or a pre-training checkpoint's decoder, is not part of the encoder.
    _keys_to_ignore_on_load_unexpected = [r"^fc_norm\.", r"^classifier\.", r"^decoder\."]

    @classmethod
    def _init_kwargs_for(cls, path, config_dict: dict, hub_kwargs: dict) -> dict:
        """`use_final_norm=False` for a checkpoint that has no final norm: the encoder of a mean-pooling classifier."""
        if config_dict.get("classifier_pooling", "mean") != "mean":
            return {}
        architectures = config_dict.get("architectures") or []
        if "MimirForImageClassification" in architectures:
            what = (
                "is a mean-pooling MimirForImageClassification: its encoder has no final norm (the classifier "
                "normalises the pooled patch tokens with fc_norm)"
            )
        elif "MimirModel" in architectures:
            names = checkpoint_weight_names(path, **hub_kwargs)
            if names is None or {"layernorm.weight", "vit.layernorm.weight"} & names:
                return {}
            what = "holds an encoder saved without a final norm"
        else:
            return {}
        logger.warning(
            f"MimirModel: {path} {what}, so MimirModel is built without one (use_final_norm=False) and "
            "last_hidden_state is the last layer's output and pooler_output the mean of its patch tokens, before "
            "the classifier's fc_norm (not loaded, nor the classifier)."
        )
        return {"use_final_norm": False}

    def __init__(self, config: MimirConfig, use_final_norm: bool = True, mae_initialization: bool = True):
        super().__init__(config)
        self._mae_initialization = mae_initialization
        self.embeddings = MimirEmbeddings(config)
        rates = torch.linspace(0, config.drop_path_rate, config.num_hidden_layers).tolist()
        self.layers = nn.ModuleList([MimirLayer(config, rate) for rate in rates])
        self.layernorm = (
            nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if use_final_norm else nn.Identity()
        )
        self.post_init()

    def run_layers(self, hidden_states, pixel_values, masked, collected):
        """Every layer over [CLS, patches], each one's output collected."""
        for layer in self.layers:
            hidden_states = layer(hidden_states)
            if collected is not None:
                collected.append(hidden_states)
        return hidden_states

    def pool(self, sequence_output: torch.Tensor) -> torch.Tensor:
        """The CLS token, or with `classifier_pooling="mean"` the mean of the patch tokens (before the classifier's
        `fc_norm`)."""
        if self.config.classifier_pooling == "mean":
            return sequence_output[:, 1:].mean(dim=1)
        return sequence_output[:, 0]


class MimirForPreTraining(MimirPreTrainingMixin, MimirPreTrainedModel):
    """MIMIR pre-training: an MAE whose encoder reads adversarial images X' and whose decoder reconstructs clean X.

    `loss = reconstruction_loss + config.mi_weight * I(X'; Z)`, with Z the encoder tokens (CLS + visible patches).
    The adversarial images come from outside (see `mimir_hf.attacks.mae_attack` and `MimirPreTrainingTrainer`).
    """

    trunk_class = MimirModel
    decoder_class = MimirDecoder

    def decode(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        return self.decoder(latent, ids_restore).logits  # ViTMAE's decoder returns an output object


class MimirForImageClassification(MimirImageClassifierMixin, MimirPreTrainedModel):
    """The MIMIR encoder on all patches (no masking, no shuffling), pooled, then a linear head.

    Pooling `"mean"` (default): average of the patch tokens -> `fc_norm` -> `classifier` (the encoder's final norm is
    unused and absent). Pooling `"cls"`: the CLS token after the encoder's final norm -> `classifier`.
    """

    # A pre-training checkpoint's decoder (and, with mean pooling, the encoder's final norm) is dropped on purpose.
    _keys_to_ignore_on_load_unexpected = [r"^decoder\.", r"^vit\.layernorm\."]
    _new_weights_allowed = ("classifier.", "fc_norm.")

    def __init__(self, config: MimirConfig):
        # Not the mixin's __init__: the ViT head has an fc_norm between the trunk and the classifier.
        MimirPreTrainedModel.__init__(self, config)
        check_num_labels(config)
        self.num_labels = config.num_labels
        mean_pooling = config.classifier_pooling == "mean"
        self.vit = MimirModel(config, use_final_norm=not mean_pooling)
        self.fc_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if mean_pooling else nn.Identity()
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if module is getattr(self, "classifier", None):
            init.trunc_normal_(module.weight, std=2e-5)  # MAE fine-tuning's head init

    def head_input(self, pooler_output: torch.Tensor) -> torch.Tensor:
        """Mean pooling: the patch tokens' mean normalised by `fc_norm`; CLS pooling: the CLS token (already normed)."""
        return self.fc_norm(pooler_output)


__all__ = [
    "MimirForImageClassification",
    "MimirForPreTraining",
    "MimirModel",
    "MimirPreTrainedModel",
]
