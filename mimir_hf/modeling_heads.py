"""The heads every MIMIR family shares, written once over the family contract: the encoder's forward
(`MimirEncoderMixin`: the family gives `embeddings`, `run_layers`, `layernorm`, `pool`), the classifier
(`MimirImageClassifierMixin`: the family gives its trunk class and, where it has one, `head_input`), the MIMIR
pre-training model (`MimirPreTrainingMixin`: the family gives its trunk and decoder classes) with its loss
(`mimir_pretraining_output`), their outputs, and the Auto classes a family declares by its naming.

The building blocks the heads stand on (input checks, masking, MAE's loss pieces, the decoder's frame, loading and
saving) are `modeling_common.py`'s; what a family adds is in `mimir_hf/models/<family>/`.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.utils import ModelOutput

from .modeling_common import (
    check_num_labels,
    classification_loss,
    masked_reconstruction_loss,
    patchify,
    reconstruction_target,
    unpatchify,
)
from .mutual_information import mutual_information


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


def auto_classes(prefix: str, pretraining: bool = True) -> dict[str, str]:
    """A family's `_auto_classes` by its naming: `<prefix>Model`, `<prefix>ForImageClassification` and, where MIMIR
    pre-trains the family, `<prefix>ForPreTraining`."""
    names = {"AutoModel": f"{prefix}Model"}
    if pretraining:
        names["AutoModelForPreTraining"] = f"{prefix}ForPreTraining"
    names["AutoModelForImageClassification"] = f"{prefix}ForImageClassification"
    return names


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


__all__ = [
    "MimirEncoderMixin",
    "MimirEncoderOutput",
    "MimirForPreTrainingOutput",
    "MimirImageClassifierMixin",
    "MimirPreTrainingMixin",
    "auto_classes",
    "finish_output",
    "mimir_pretraining_output",
    "output_flags",
    "recording_attentions",
]
