"""The ViT family's side of `mimir-hf convert`: the authors' MAE/timm key layout -> mimir_hf's.

Pre-training checkpoints hold the encoder (`patch_embed.proj`, `cls_token`, `pos_embed`, `blocks.N.*`, `norm`) and
the decoder (`decoder_*`, `mask_token`); fine-tuned ones hold the encoder with `fc_norm` and `head` (global pooling)
-- or `norm` and `head` (CLS pooling). Shapes give the widths, depths, patch and image size; the attention-head
counts come from the checkpoint's saved `args.model` (e.g. `mae_vit_small`: 6 heads; `vit_small_ds`: the 768-wide,
8-head variant), whose width and depth the weights must have (a file that lacks blocks, or whose width several
encoders share, is refused), and only when the file has no `args` are they guessed (width / 64, as in ViT-T/S/B/L),
with a warning. The saved `args` also give the pre-training settings (mask ratio, attack, MI weight, norm_pix_loss)
and the input normalisation (`use_normalize`), which mimir_hf applies inside the model so that attacks see [0, 1]
pixels.
"""

from __future__ import annotations

import re

import torch

from .. import conversion
from .configuration_mimir import MimirConfig
from .modeling_mimir import MimirForImageClassification, MimirForPreTraining

_MODULES, _PARAMETERS = conversion.mae_layout_names("vit")  # timm / MAE -> ours, outside the blocks
_TOP = {**_MODULES, **_PARAMETERS, "fc_norm": "fc_norm"}  # fc_norm: the mean-pooling head's norm
# The authors' ViT encoders (`models/models_vit.py`, `models/mae_vit.py`; older names carry the patch size) and MAE's
# ViT-H, by the size in their names. "small_ds" is the authors' 768-wide, 8-deep, 8-head ViT-S (MLP ratio 3).
_ENCODERS = {
    "ti": conversion.NamedModel("ViT-Ti", 192, {"blocks": 12}, 3),
    "small": conversion.NamedModel("ViT-S", 384, {"blocks": 12}, 6),
    "small_ds": conversion.NamedModel("ViT-S ds", 768, {"blocks": 8}, 8),
    "base": conversion.NamedModel("ViT-B", 768, {"blocks": 12}, 12),
    "large": conversion.NamedModel("ViT-L", 1024, {"blocks": 24}, 16),
    "huge": conversion.NamedModel("ViT-H", 1280, {"blocks": 32}, 16),
}
_NAME = re.compile(r"vit_(ti|tiny|small_ds|small|base|large|huge)(?![a-z])")
_DECODER_HEADS = 16  # every MIMIR (128 wide) and Meta MAE (512 wide) decoder


def named_encoder(name: str) -> conversion.NamedModel | None:
    """The encoder one of the authors' ViT model names stands for, or None when the name is not one of them."""
    match = _NAME.search(name or "")
    return _ENCODERS[{"tiny": "ti"}.get(match.group(1), match.group(1))] if match else None


def heads_from_model_name(name: str) -> int | None:
    """Encoder attention heads of one of the authors' ViT model names, or None when the name is not one of them."""
    encoder = named_encoder(name)
    return encoder.heads if encoder else None


def _heads(state: dict[str, torch.Tensor], args: dict | None, hidden: int, given: int | None, notes: list) -> int:
    """The encoder's head count, which the weights cannot tell: `given` (--num_attention_heads), else that of the
    encoder `args.model` names, checked against the weights' width and depth; else a guess (width / 64), noted.

    A name whose width the weights contradict does not tell the heads: the width then decides when it is one
    encoder's (e.g. 384: ViT-S), said in a note; otherwise (768: ViT-B or ViT-S ds; a width of no encoder) the file is
    refused. An encoder of the weights' width must also have their depth (`check_depths`)."""
    name = str(conversion.arg(args, "model", ""))
    named = named_encoder(name)
    if named is not None and named.width != hidden:
        same_width = [encoder for encoder in _ENCODERS.values() if encoder.width == hidden]
        contradiction = f"args.model={name} names {named.describe()}, but the weights are {hidden} wide"
        if given is not None:
            notes.append(f"{contradiction}: num_attention_heads = {given} as given, the other shapes from the weights.")
            return given
        if len(same_width) != 1:
            which = " and ".join(f"{encoder.title} ({encoder.heads} heads)" for encoder in same_width)
            which = f"the width of both {which}" if which else "the width of none of the authors' ViTs"
            raise ValueError(
                f"{contradiction}, {which}: the head count cannot be told. Pass --num_attention_heads (and check "
                "that the file is the one you meant)."
            )
        named = same_width[0]
        conversion.check_depths(
            state, name, named, f"{named.title} (args.model={name}; the width {hidden} is {named.title}'s)"
        )
        notes.append(
            f"num_attention_heads = {named.heads} is {named.title}'s: {contradiction}, which only {named.title} is. "
            "Pass --num_attention_heads if it is wrong."
        )
    if named is not None:
        conversion.check_depths(state, name, named)
        return given if given is not None else named.heads
    if given is not None:
        return given
    heads = max(hidden // 64, 1)
    why = f"args.model {name!r} is not a known ViT name" if args else "the file holds no training args"
    notes.append(
        f"num_attention_heads = {heads} is a guess (width {hidden} / 64): {why}, and the weights cannot tell the "
        "head count (the authors also have a 768-wide 8-head ViT-S). Pass --num_attention_heads if it is wrong."
    )
    return heads


def infer_config(state: dict[str, torch.Tensor], args: dict | None = None, **overrides) -> tuple[MimirConfig, list]:
    """A `MimirConfig` matching the checkpoint's tensors and saved `args`, and the notes on what had to be guessed.
    `overrides` set any field (e.g. `num_attention_heads` for a file without `args`)."""
    required = ("patch_embed.proj.weight", "cls_token", "pos_embed")
    missing = [key for key in required if key not in state]
    if missing:
        raise ValueError(f"Not a MAE/MIMIR ViT checkpoint: missing {missing} (it has e.g. {sorted(state)[:5]}).")
    notes = []
    fields = conversion.patch_embedding_fields(state)
    hidden, patch = fields["hidden_size"], fields["patch_size"]
    num_patches = state["pos_embed"].shape[1] - 1
    side = int(round(num_patches**0.5))
    image_size = side * patch if side * side == num_patches else None
    heads = _heads(state, args, hidden, overrides.get("num_attention_heads"), notes)
    fields.update(
        image_size=image_size,
        num_hidden_layers=conversion.count_indexed(state, "blocks"),
        num_attention_heads=heads,
        intermediate_size=state["blocks.0.mlp.fc1.weight"].shape[0],
        qkv_bias="blocks.0.attn.qkv.bias" in state,
        norm_pix_loss=bool(conversion.arg(args, "norm_pix_loss", True)),
    )
    if "decoder_embed.weight" in state:
        fields.update(
            decoder_hidden_size=state["decoder_embed.weight"].shape[0],
            decoder_num_hidden_layers=conversion.count_indexed(state, "decoder_blocks"),
            decoder_num_attention_heads=_DECODER_HEADS,
            decoder_intermediate_size=state["decoder_blocks.0.mlp.fc1.weight"].shape[0],
        )
        fields.update(conversion.pretraining_method_fields(args, notes))
    if "head.weight" in state:
        fields.update(
            num_labels=state["head.weight"].shape[0],
            classifier_pooling="mean" if "fc_norm.weight" in state else "cls",
            drop_path_rate=float(conversion.arg(args, "drop_path", 0.0)),
        )
    fields.update(conversion.normalisation_fields(args, notes))
    fields.update({k: v for k, v in overrides.items() if v is not None})
    if fields["image_size"] is None:
        raise ValueError(f"pos_embed has {num_patches} patches, not a square grid: pass image_size=(height, width).")
    input_size = conversion.arg(args, "input_size")
    if input_size is not None and int(input_size) != fields["image_size"] and "image_size" not in overrides:
        notes.append(f"args.input_size is {input_size} but pos_embed fits {fields['image_size']}: using the weights'.")
    return MimirConfig(**fields), notes


def _rename_key(key: str, value: torch.Tensor) -> dict[str, torch.Tensor] | None:
    """One timm/MAE key -> ours (the fused qkv projection split into q, k and v), or None for an unknown key."""
    if match := re.match(r"^(blocks|decoder_blocks)\.(\d+)\.(.+)$", key):
        stack, index, name = match.groups()
        prefix = f"vit.layers.{index}." if stack == "blocks" else f"decoder.decoder_layers.{index}."
        module, _, kind = name.rpartition(".")
        if module == "attn.qkv" and kind in ("weight", "bias"):
            return conversion.split_fused_qkv(value, f"{prefix}attention.", kind)
        return conversion.module_tensor(name, value, conversion.TIMM_BLOCK, prefix)
    if key in _TOP:  # bare parameters (tokens, position embeddings)
        return {_TOP[key]: value}
    return conversion.module_tensor(key, value, _TOP)


def rename_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm/MAE names -> mimir_hf names; the fused qkv projection is split into q, k and v. Unknown keys raise a
    `ValueError` listing them."""
    return conversion.rename_keys(state, _rename_key, "the MAE/MIMIR ViT layout")[0]


def convert_vit_state_dict(
    state: dict[str, torch.Tensor], args: dict | None = None, **overrides
) -> conversion.Conversion:
    """`MimirForPreTraining` (decoder present) or `MimirForImageClassification` (head present) from a MAE/timm
    layout state dict and its run's `args`."""
    if "decoder_embed.weight" not in state and "head.weight" not in state:
        raise ValueError("The ViT checkpoint has neither a decoder (pre-training) nor a head (fine-tuned).")
    config, notes = infer_config(state, args, **overrides)
    model_class = MimirForPreTraining if "decoder_embed.weight" in state else MimirForImageClassification
    ignored = {}
    if model_class is MimirForImageClassification and config.classifier_pooling == "mean" and "norm.weight" in state:
        state = {k: v for k, v in state.items() if not k.startswith("norm.")}
        ignored.update({k: "unused final norm (mean pooling reads fc_norm)" for k in ("norm.weight", "norm.bias")})
    return conversion.Conversion(model_class, config, rename_state_dict(state), ignored=ignored, notes=notes)


__all__ = ["convert_vit_state_dict", "heads_from_model_name", "infer_config", "named_encoder", "rename_state_dict"]
