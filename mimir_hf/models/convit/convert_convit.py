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
from .configuration_mimir_convit import MimirConvitConfig
from .modeling_mimir_convit import MimirConvitForImageClassification, MimirConvitForPreTraining

_TOP, _PARAMETERS = conversion.mae_layout_names("convit")  # timm -> ours, outside the blocks
_STACKS = {"blocks": "convit.layers", "decoder_blocks": "decoder.decoder_layers"}
# inside a block, timm -> ours: GPSA's value and positional projections besides the common modules
_LAYER = {**conversion.TIMM_BLOCK, "attn.v": "attention.v_proj", "attn.pos_proj": "attention.position_proj"}
_FUSED = {"attn.qk": ("q_proj", "k_proj"), "attn.qkv": ("q_proj", "k_proj", "v_proj")}  # split along output rows
_REBUILT = re.compile(r"^(decoder_)?blocks\.\d+\.attn\.rel_indices$")  # GPSA's cached offsets, if ever saved
_DEFAULT_NUM_LABELS = 10  # an encoder-only file: the released ConViTs are CIFAR-10 models
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


def _rename_key(key: str, value: torch.Tensor) -> dict[str, torch.Tensor] | None:
    """One timm key -> ours (the fused `attn.qk` / `attn.qkv` split), or None for a key of no ConViT layout."""
    if key in _PARAMETERS:
        return {_PARAMETERS[key]: value}
    if match := re.match(r"^(blocks|decoder_blocks)\.(\d+)\.(.+)$", key):
        stack, index, name = match.groups()
        prefix = f"{_STACKS[stack]}.{index}."
        module, _, kind = name.rpartition(".")
        if name == "attn.gating_param":
            return {prefix + "attention.gating_param": value}
        if module in _FUSED and kind in ("weight", "bias"):
            names = _FUSED[module]
            chunks = value.chunk(len(names), dim=0)
            return {f"{prefix}attention.{n}.{kind}": chunk.clone() for n, chunk in zip(names, chunks, strict=True)}
        return conversion.module_tensor(name, value, _LAYER, prefix)
    return conversion.module_tensor(key, value, _TOP)


def rename_state_dict(
    state: dict[str, torch.Tensor], ignored: dict[str, str]
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """timm names -> ours, the fused `attn.qk` / `attn.qkv` split; and our key -> the checkpoint key it came from.
    Cached GPSA offsets go to `ignored`; unknown keys raise a `ValueError` listing them."""
    for key in state:
        if _REBUILT.match(key):
            ignored[key] = "GPSA's cached patch offsets, recomputed from the patch grid"
    layout = (
        "the timm ConViT / MIMIR MaskedAutoencoderConVit layout; a global-pooling head with fc_norm is not supported"
    )
    kept = {key: value for key, value in state.items() if key not in ignored}
    return conversion.rename_keys(kept, _rename_key, layout)


def _gpsa_layers(state: dict[str, torch.Tensor], stack: str) -> int:
    """Number of leading GPSA blocks of `stack`; a `ValueError` when GPSA blocks do not all come first."""
    depth = conversion.count_indexed(state, stack)
    gpsa = [index for index in range(depth) if f"{stack}.{index}.attn.qk.weight" in state]
    if gpsa != list(range(len(gpsa))):
        raise ValueError(f"GPSA layers must come first, found them at {stack} {gpsa} of {depth}.")
    return len(gpsa)


def infer_convit_config(
    state: dict[str, torch.Tensor], args: dict | None = None, **overrides
) -> tuple[MimirConvitConfig, list[str]]:
    """A `MimirConvitConfig` matching the checkpoint's tensors and saved `args`, and the notes on what had to be
    assumed. `overrides` set any field (`None` values are ignored)."""
    required = ("patch_embed.proj.weight", "cls_token", "blocks.0.mlp.fc1.weight")
    missing = [key for key in required if key not in state]
    if missing:
        raise ValueError(f"Not a timm-layout ConViT checkpoint: missing {missing} (it has e.g. {sorted(state)[:5]}).")
    overrides = {key: value for key, value in overrides.items() if value is not None}
    notes: list[str] = []
    fields = conversion.patch_embedding_fields(state)
    hidden_size, patch_size = fields["hidden_size"], fields["patch_size"]
    local_up_to_layer = _gpsa_layers(state, "blocks")
    fields.update(
        num_hidden_layers=conversion.count_indexed(state, "blocks"),
        local_up_to_layer=local_up_to_layer,
        intermediate_size=state["blocks.0.mlp.fc1.weight"].shape[0],
        qkv_bias=any(f"blocks.0.attn.{name}.bias" in state for name in ("qk", "qkv")),
        use_pos_embed="pos_embed" in state,
    )
    name = str(conversion.arg(args, "model", ""))
    named = named_convit(name)
    if local_up_to_layer:
        fields["num_attention_heads"] = state["blocks.0.attn.pos_proj.weight"].shape[0]
    elif "num_attention_heads" in overrides:
        fields["num_attention_heads"] = overrides["num_attention_heads"]
    elif named is not None and named.width == hidden_size:
        fields["num_attention_heads"] = named.heads
    else:
        fields["num_attention_heads"] = max(hidden_size // 48, 1)
        notes.append(
            f"num_attention_heads = {fields['num_attention_heads']} is a guess (width / 48, ConViT's head width): the "
            "file has no GPSA layer to read it from. Pass --num_attention_heads if it is wrong."
        )
    conversion.check_against_name(state, name, named, hidden_size, fields["num_attention_heads"], notes)
    image_size = conversion.arg(args, "input_size")
    if "pos_embed" in state:
        num_patches = state["pos_embed"].shape[1]
        side = int(round(num_patches**0.5))
        image_size = side * patch_size if side * side == num_patches else None
    fields["image_size"] = image_size
    if "decoder_embed.weight" in state and _gpsa_layers(state, "decoder_blocks") != conversion.count_indexed(
        state, "decoder_blocks"
    ):
        raise ValueError("The ConViT decoder has non-GPSA blocks (use_convit_dec=False), which mimir_hf lacks.")
    unreadable_size = "The image size cannot be read (no square pos_embed, no args.input_size): pass image_size."
    decoder_key = "decoder_blocks.0.attn.pos_proj.weight"  # gives a pre-training file's decoder heads
    fields = conversion.task_and_input_fields(
        state, args, notes, fields, overrides, decoder_key, _DEFAULT_NUM_LABELS, unreadable_size
    )
    return MimirConvitConfig(**fields), notes


convert_convit_checkpoint = conversion.encoder_and_decoder_converter(
    "convit", infer_convit_config, rename_state_dict, MimirConvitForPreTraining, MimirConvitForImageClassification
)


__all__ = ["convert_convit_checkpoint", "infer_convit_config", "named_convit", "rename_state_dict"]
