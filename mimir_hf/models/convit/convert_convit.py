"""The ConViT family's side of `mimir-hf convert`: the authors' timm-layout ConViT files -> mimir_hf's names.

Fine-tuned classifiers (timm's `ConVit`, `global_pool="token"`) hold `patch_embed.proj`, `pos_embed` (patches only),
`cls_token`, GPSA blocks `blocks.N.{norm1, attn.qk, attn.v, attn.proj, attn.pos_proj, attn.gating_param, norm2,
mlp.fc1, mlp.fc2}` then ordinary blocks `blocks.N.{..., attn.qkv, attn.proj, ...}`, `norm`, `head`. Pre-training files
(`MaskedAutoencoderConVit`) hold the same encoder without `head`, and the decoder: `decoder_embed`, `mask_token`,
`decoder_pos_embed`, `decoder_blocks.N.*` (GPSA blocks), `decoder_norm`, `decoder_pred`. Every shape comes from the
tensors: the head counts from GPSA's `pos_proj` (Linear(3, heads)), the number of GPSA layers from the `attn.qk` keys,
the qkv bias from the keys. The authors' fine-tuned ConViTs have no qkv bias and their pre-training encoders do (their
fine-tuning dropped the biases without a word): `qkv_bias=False` converts a biased file that way, each dropped bias
listed in `ignored`.
"""

from __future__ import annotations

import re

import torch

from .. import conversion
from .modeling_mimir_convit import MimirConvitPreTrainedModel

# inside a block, timm -> ours: GPSA's value and positional projections besides the common modules
_LAYER = {**conversion.TIMM_BLOCK, "attn.v": "attention.v_proj", "attn.pos_proj": "attention.position_proj"}
_FUSED = {"attn.qk": ("q_proj", "k_proj"), "attn.qkv": ("q_proj", "k_proj", "v_proj")}  # split along output rows
# ConViT's sizes (d'Ascoli et al. 2021, Table 1; timm's `convit_tiny`, the authors' `convit_ti`, `mae_convit_small`,
# ...): 48 wide per head, 12 blocks.
_SIZES = {"ti": ("Ti", 4), "tiny": ("Ti", 4), "small": ("S", 9), "base": ("B", 16)}
_NAME = re.compile(r"convit_(tiny|ti|small|base)(?![a-z])")


def named_convit(name: str) -> conversion.NamedModel | None:
    """The ConViT one of timm's / the authors' model names stands for, or None when the name is not one of them."""
    match = _NAME.search(str(name or "").lower())
    if not match:
        return None
    size, heads = _SIZES[match.group(1)]
    return conversion.NamedModel(f"ConViT-{size}", 48 * heads, {"blocks": 12}, heads)


def _block_tensor(stack: str, prefix: str, name: str, value: torch.Tensor) -> dict[str, torch.Tensor] | None:
    """ConViT's own tensors inside a block: GPSA's gate and the fused `attn.qk` / `attn.qkv` (split along the output
    rows); None for the modules every block has."""
    if name == "attn.gating_param":
        return {prefix + "attention.gating_param": value}
    module, _, kind = name.rpartition(".")
    if module in _FUSED and kind in ("weight", "bias"):
        names = _FUSED[module]
        chunks = value.chunk(len(names), dim=0)
        return {f"{prefix}attention.{n}.{kind}": chunk.clone() for n, chunk in zip(names, chunks, strict=True)}
    return None


def _gpsa_layers(state: dict[str, torch.Tensor], stack: str) -> int:
    """Number of leading GPSA blocks of `stack`; a `ValueError` when GPSA blocks do not all come first."""
    depth = conversion.count_indexed(state, stack)
    gpsa = [index for index in range(depth) if f"{stack}.{index}.attn.qk.weight" in state]
    if gpsa != list(range(len(gpsa))):
        raise ValueError(f"GPSA layers must come first, found them at {stack} {gpsa} of {depth}.")
    return len(gpsa)


def _heads(state: dict[str, torch.Tensor], overrides: dict, named, hidden_size: int, notes: list) -> int:
    """The head count: GPSA's `pos_proj` (Linear(3, heads)) gives it; without GPSA layers, the override, the named
    model's, or a guess (width / 48, ConViT's head width) with a note."""
    if "blocks.0.attn.pos_proj.weight" in state:
        return state["blocks.0.attn.pos_proj.weight"].shape[0]
    if "num_attention_heads" in overrides:
        return overrides["num_attention_heads"]
    if named is not None and named.width == hidden_size:
        return named.heads
    notes.append(
        f"num_attention_heads = {max(hidden_size // 48, 1)} is a guess (width / 48, ConViT's head width): the file has "
        "no GPSA layer to read it from. Pass --num_attention_heads if it is wrong."
    )
    return max(hidden_size // 48, 1)


def _read_fields(state: dict[str, torch.Tensor], args: dict | None, overrides: dict, notes: list, fields: dict):
    """ConViT's config fields from the tensors: depth, GPSA layers, heads, MLP width, qkv bias, whether there is a
    position table, and the image size (a square `pos_embed`, else `args.input_size`); refuses a decoder of non-GPSA
    blocks."""
    fields.update(
        num_hidden_layers=conversion.count_indexed(state, "blocks"),
        local_up_to_layer=_gpsa_layers(state, "blocks"),
        intermediate_size=state["blocks.0.mlp.fc1.weight"].shape[0],
        qkv_bias=any(f"blocks.0.attn.{name}.bias" in state for name in ("qk", "qkv")),
        use_pos_embed="pos_embed" in state,
    )
    name = str(conversion.arg(args, "model", ""))
    named = named_convit(name)
    fields["num_attention_heads"] = _heads(state, overrides, named, fields["hidden_size"], notes)
    conversion.check_against_name(state, name, named, fields["hidden_size"], fields["num_attention_heads"], notes)
    fields["image_size"] = conversion.arg(args, "input_size")
    if "pos_embed" in state:
        num_patches = state["pos_embed"].shape[1]
        side = int(round(num_patches**0.5))
        fields["image_size"] = side * fields["patch_size"] if side * side == num_patches else None
    if "decoder_embed.weight" in state and _gpsa_layers(state, "decoder_blocks") != conversion.count_indexed(
        state, "decoder_blocks"
    ):
        raise ValueError("The ConViT decoder has non-GPSA blocks (use_convit_dec=False), which mimir_hf lacks.")


LAYOUT = conversion.TimmMaeLayout(
    title="ConViT",
    base_class=MimirConvitPreTrainedModel,
    stacks={"blocks": "convit.layers", "decoder_blocks": "decoder.decoder_layers"},  # timm stack -> ours
    block=_LAYER,
    block_tensor=_block_tensor,
    required=("patch_embed.proj.weight", "cls_token", "blocks.0.mlp.fc1.weight"),
    read_fields=_read_fields,
    decoder_heads_key="decoder_blocks.0.attn.pos_proj.weight",
    default_num_labels=10,  # an encoder-only file: the released ConViTs are CIFAR-10 models
    layout=(
        "the timm ConViT / MIMIR MaskedAutoencoderConVit layout; a global-pooling head with fc_norm is not supported"
    ),
    unreadable_size="The image size cannot be read (no square pos_embed, no args.input_size): pass image_size.",
    rebuilt=re.compile(r"^(decoder_)?blocks\.\d+\.attn\.rel_indices$"),  # GPSA's cached offsets, if ever saved
    rebuilt_reason="GPSA's cached patch offsets, recomputed from the patch grid",
)
convert_convit_checkpoint = LAYOUT.convert
infer_convit_config = LAYOUT.infer_config
rename_state_dict = LAYOUT.rename_state_dict


__all__ = ["LAYOUT", "convert_convit_checkpoint", "infer_convit_config", "named_convit", "rename_state_dict"]
