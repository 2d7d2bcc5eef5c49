"""The CaiT family's side of `mimir-hf convert`: the authors' timm-layout CaiT files -> mimir_hf's names.

Fine-tuned classifiers (timm's `Cait`, `global_pool="token"`) hold `patch_embed.proj`, `pos_embed` (patches only),
`cls_token`, `blocks.N.{norm1, attn.qkv, attn.proj_l, attn.proj_w, attn.proj, gamma_1, norm2, mlp.fc1, mlp.fc2,
gamma_2}`, `blocks_token_only.N.{norm1, attn.q, attn.k, attn.v, attn.proj, gamma_1, norm2, mlp.fc1, mlp.fc2, gamma_2}`,
`norm`, `head`. Pre-training files (`MaskedAutoencoderCait`) hold the same encoder without `head`, and the decoder:
`decoder_embed`, `mask_token`, `decoder_pos_embed`, `decoder_blocks.N.*` (the same talking-heads layer), `decoder_norm`,
`decoder_pred`. Every shape, the head counts included (the talking-heads mixers are heads x heads), comes from the
tensors; the saved `args` give the LayerScale init (from `args.model`), the pre-training method and the input
normalisation. A file with a decoder converts to `MimirCaitForPreTraining`, one without to
`MimirCaitForImageClassification` (with a new head when it has none).
"""

from __future__ import annotations

import re

import torch

from .. import conversion
from .configuration_mimir_cait import PRESETS
from .modeling_mimir_cait import MimirCaitPreTrainedModel

_LAYER = {  # inside a block, timm -> ours (talking-heads and class-attention layers alike)
    **conversion.TIMM_BLOCK,
    "attn.q": "attention.q_proj",  # class attention
    "attn.k": "attention.k_proj",
    "attn.v": "attention.v_proj",
    "attn.proj_l": "attention.logits_mix",  # talking heads: mixes the logits before the softmax
    "attn.proj_w": "attention.weights_mix",  # ... and the probabilities after it
}
_LAYER_SCALES = {"gamma_1": "layer_scale1.lambda1", "gamma_2": "layer_scale2.lambda1"}
# CaiT's sizes (Touvron et al. 2021, Table 1; timm's and the authors' `cait_xxs24`, `cait_s36`, `mae_cait_xxs24`,
# ...): width and heads by the size letters, depth by the number; every model ends in 2 class-attention layers.
_SIZES = {"xxs": (192, 4), "xs": (288, 6), "s": (384, 8), "m": (768, 16)}
_NAME = re.compile(r"cait_(xxs|xs|s|m)(\d+)")


def named_cait(name: str) -> conversion.NamedModel | None:
    """The CaiT one of timm's / the authors' model names stands for, or None when the name is not one of them."""
    match = _NAME.search(str(name or "").lower())
    if not match:
        return None
    (width, heads), depth = _SIZES[match.group(1)], int(match.group(2))
    title = f"CaiT-{match.group(1).upper()}{depth}"
    return conversion.NamedModel(title, width, {"blocks": depth, "blocks_token_only": 2}, heads)


def _block_tensor(stack: str, prefix: str, name: str, value: torch.Tensor) -> dict[str, torch.Tensor] | None:
    """CaiT's own tensors inside a block: the LayerScale vectors and the fused `attn.qkv` (split into q, k and v) of
    the talking-heads layers; None for the modules every block has."""
    if name in _LAYER_SCALES:
        return {prefix + _LAYER_SCALES[name]: value}
    module, _, kind = name.rpartition(".")
    if module == "attn.qkv" and kind in ("weight", "bias") and stack != "blocks_token_only":
        return conversion.split_fused_qkv(value, prefix + "attention.", kind)
    return None


def _layer_scale_init(fields: dict, args: dict | None, notes: list) -> float:
    """LayerScale's initial value (the config records it; loaded vectors replace it): from `args.model`, else from a
    released shape, else 1e-5 with a note."""
    name = str(conversion.arg(args, "model", "")).lower()
    if "cait" in name:
        return 1e-6 if "s36" in name else 1e-5
    shape = {key: fields[key] for key in ("hidden_size", "num_hidden_layers", "num_attention_heads")}
    for preset in PRESETS.values():
        if all(preset[key] == value for key, value in shape.items()):
            return preset["layer_scale_init"]
    notes.append(
        "layer_scale_init = 1e-5 is assumed (no args.model and not a released shape); it only matters for layers "
        "initialised afresh, the loaded LayerScale vectors are the file's."
    )
    return 1e-5


def _read_fields(state: dict[str, torch.Tensor], args: dict | None, overrides: dict, notes: list, fields: dict):
    """CaiT's config fields from the tensors: the grid (a square `pos_embed`), both depths, the heads (the
    talking-heads mixer is heads x heads), the MLP width, the qkv bias; LayerScale's init from `args.model`."""
    num_patches = state["pos_embed"].shape[1]
    side = int(round(num_patches**0.5))
    fields.update(
        image_size=side * fields["patch_size"] if side * side == num_patches else None,
        num_hidden_layers=conversion.count_indexed(state, "blocks"),
        num_class_attention_layers=conversion.count_indexed(state, "blocks_token_only"),
        num_attention_heads=state["blocks.0.attn.proj_l.weight"].shape[0],
        intermediate_size=state["blocks.0.mlp.fc1.weight"].shape[0],
        qkv_bias="blocks.0.attn.qkv.bias" in state,
    )
    name = str(conversion.arg(args, "model", ""))
    heads = fields["num_attention_heads"]
    conversion.check_against_name(state, name, named_cait(name), fields["hidden_size"], heads, notes)
    fields["layer_scale_init"] = _layer_scale_init(fields, args, notes)


LAYOUT = conversion.TimmMaeLayout(
    title="CaiT",
    base_class=MimirCaitPreTrainedModel,
    stacks={  # timm stack -> ours
        "blocks": "cait.layers",
        "blocks_token_only": "cait.class_attention_layers",
        "decoder_blocks": "decoder.decoder_layers",
    },
    block=_LAYER,
    block_tensor=_block_tensor,
    required=("patch_embed.proj.weight", "pos_embed", "cls_token", "blocks.0.attn.proj_l.weight"),
    read_fields=_read_fields,
    decoder_heads_key="decoder_blocks.0.attn.proj_l.weight",
    default_num_labels=1000,  # an encoder-only file: ImageNet-1K fine-tuning, unless told otherwise
    layout=(
        "the timm CaiT / MIMIR MaskedAutoencoderCait layout; a global-pooling head with fc_norm or a ViT-block "
        "decoder is not supported"
    ),
    unreadable_size="pos_embed has {patches} patches, not a square grid: pass image_size=(height, width).",
)
convert_cait_checkpoint = LAYOUT.convert
infer_cait_config = LAYOUT.infer_config
rename_state_dict = LAYOUT.rename_state_dict


__all__ = ["LAYOUT", "convert_cait_checkpoint", "infer_cait_config", "named_cait", "rename_state_dict"]
