"""Convert the authors' MAE/timm-style MIMIR checkpoints (`.pth`) into `save_pretrained` folders.

    python -m mimir_hf.convert mimir_vit_small_pretrain.pth out/mimir-vit-small          # kind and shape inferred
    python -m mimir_hf.convert finetuned.pth out/classifier --num_attention_heads 6

Pre-training checkpoints hold the encoder (`patch_embed.proj`, `cls_token`, `pos_embed`, `blocks.N.*`, `norm`) and
the decoder (`decoder_*`, `mask_token`) under a `"model"` entry; fine-tuned ones hold the encoder with `fc_norm` and
`head` (global pooling) -- or `norm` and `head` (CLS pooling). The file is read with `torch.load(weights_only=True)`:
nothing in it is executed. The architecture is inferred from the tensors' shapes, except the attention-head counts,
which shapes cannot tell (defaults: 64-wide encoder heads as in ViT-T/S/B/L, 16 decoder heads as in MIMIR's decoder).
"""

from __future__ import annotations

import argparse
import pickle
import re

import torch

from .configuration_mimir import MimirConfig
from .data import image_processor_for
from .modeling_mimir import MimirForImageClassification, MimirForPreTraining

_BLOCK = {  # timm Block -> ViTMAE layer, under blocks.N. / decoder_blocks.N.
    "norm1": "layernorm_before",
    "norm2": "layernorm_after",
    "attn.proj": "attention.o_proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_TOP = {
    "patch_embed.proj": "vit.embeddings.patch_embeddings.projection",
    "cls_token": "vit.embeddings.cls_token",
    "pos_embed": "vit.embeddings.position_embeddings",
    "norm": "vit.layernorm",
    "fc_norm": "fc_norm",
    "head": "classifier",
    "decoder_embed": "decoder.decoder_embed",
    "mask_token": "decoder.mask_token",
    "decoder_pos_embed": "decoder.decoder_pos_embed",
    "decoder_norm": "decoder.decoder_norm",
    "decoder_pred": "decoder.decoder_pred",
}


def load_checkpoint(path: str) -> dict[str, torch.Tensor]:
    """The state dict of a `.pth` file (its `"model"` / `"state_dict"` entry if there is one), read weights-only."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"{path} holds objects other than tensors and plain containers; mimir_hf only reads checkpoints with "
            f"torch.load(weights_only=True) and will not unpickle it ({error})."
        ) from None
    except (RuntimeError, EOFError, OSError) as error:
        raise ValueError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): {error}") from None
    for entry in ("model", "state_dict"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(entry), dict):
            checkpoint = checkpoint[entry]
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors.")
    return {key.removeprefix("module."): value for key, value in checkpoint.items()}


def _count(state: dict, prefix: str) -> int:
    indices = {int(m.group(1)) for key in state if (m := re.match(rf"^{prefix}\.(\d+)\.", key))}
    return max(indices) + 1 if indices else 0


def infer_config(state: dict[str, torch.Tensor], **overrides) -> MimirConfig:
    """A `MimirConfig` matching the checkpoint's tensors; `overrides` set what shapes cannot tell (head counts)."""
    required = ("patch_embed.proj.weight", "cls_token", "pos_embed")
    missing = [key for key in required if key not in state]
    if missing:
        raise ValueError(f"Not a MAE/MIMIR ViT checkpoint: missing {missing} (it has e.g. {sorted(state)[:5]}).")
    hidden, channels, patch, _ = state["patch_embed.proj.weight"].shape
    num_patches = state["pos_embed"].shape[1] - 1
    side = int(round(num_patches**0.5))
    fields = dict(
        hidden_size=hidden,
        num_channels=channels,
        patch_size=patch,
        image_size=side * patch if side * side == num_patches else None,
        num_hidden_layers=_count(state, "blocks"),
        num_attention_heads=max(hidden // 64, 1),
        intermediate_size=state["blocks.0.mlp.fc1.weight"].shape[0],
        qkv_bias="blocks.0.attn.qkv.bias" in state,
    )
    if "decoder_embed.weight" in state:
        decoder_hidden = state["decoder_embed.weight"].shape[0]
        fields.update(
            decoder_hidden_size=decoder_hidden,
            decoder_num_hidden_layers=_count(state, "decoder_blocks"),
            decoder_num_attention_heads=16 if decoder_hidden % 16 == 0 else max(decoder_hidden // 64, 1),
            decoder_intermediate_size=state["decoder_blocks.0.mlp.fc1.weight"].shape[0],
        )
    if "head.weight" in state:
        fields.update(num_labels=state["head.weight"].shape[0], classifier_pooling="mean" if "fc_norm.weight" in state else "cls")
    fields.update({k: v for k, v in overrides.items() if v is not None})
    if fields["image_size"] is None:
        raise ValueError(f"pos_embed has {num_patches} patches, not a square grid: pass image_size=(height, width).")
    return MimirConfig(**fields)


def rename_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm/MAE names -> mimir_hf names; the fused qkv projection is split into q, k and v."""
    renamed, unknown = {}, []
    for key, value in state.items():
        match = re.match(r"^(blocks|decoder_blocks)\.(\d+)\.(.+)\.(weight|bias)$", key)
        if match:
            stack, index, module, kind = match.groups()
            prefix = f"vit.layers.{index}" if stack == "blocks" else f"decoder.decoder_layers.{index}"
            if module == "attn.qkv":
                for name, chunk in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0), strict=True):
                    renamed[f"{prefix}.attention.{name}.{kind}"] = chunk.clone()
            elif module in _BLOCK:
                renamed[f"{prefix}.{_BLOCK[module]}.{kind}"] = value
            else:
                unknown.append(key)
            continue
        module, _, kind = key.rpartition(".")
        if key in _TOP:  # bare parameters (tokens, position embeddings)
            renamed[_TOP[key]] = value
        elif module in _TOP and kind in ("weight", "bias"):
            renamed[f"{_TOP[module]}.{kind}"] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"Unknown keys in the checkpoint (not a MAE/MIMIR ViT layout): {sorted(unknown)}")
    return renamed


def convert_checkpoint(path: str, output_dir: str | None = None, **config_overrides):
    """Load a `.pth` checkpoint into `MimirForPreTraining` (decoder present) or `MimirForImageClassification`
    (head present), check that every tensor found its place, and `save_pretrained` it (with its image processor)."""
    state = load_checkpoint(path)
    config = infer_config(state, **config_overrides)
    model_class = MimirForPreTraining if "decoder_embed.weight" in state else MimirForImageClassification
    if model_class is MimirForImageClassification and "head.weight" not in state:
        raise ValueError(f"{path} has neither a decoder (pre-training) nor a head (fine-tuned): nothing to convert to.")
    model = model_class(config)
    renamed = rename_state_dict(state)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(renamed)), sorted(set(renamed) - expected)
    if missing or unexpected:
        raise ValueError(f"The checkpoint does not fit {model_class.__name__}: missing {missing}, unexpected {unexpected}.")
    shapes = [k for k, v in renamed.items() if v.shape != model.state_dict()[k].shape]
    if shapes:
        raise ValueError(f"Shape mismatch for {shapes}; check --num_attention_heads / --image_size.")
    model.load_state_dict(renamed, strict=True)
    model.eval()
    if output_dir is not None:
        model.save_pretrained(output_dir)
        image_processor_for(config).save_pretrained(output_dir)
    return model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="The .pth file (MAE/timm layout, tensors under 'model').")
    parser.add_argument("output_dir", help="Where the save_pretrained folder goes.")
    parser.add_argument("--num_attention_heads", type=int, help="Encoder heads (default: hidden size / 64).")
    parser.add_argument("--decoder_num_attention_heads", type=int, help="Decoder heads (default: 16).")
    parser.add_argument("--image_size", type=int, help="Input resolution (default: from pos_embed x patch size).")
    parser.add_argument("--norm_pix_loss", type=lambda v: v.lower() in ("1", "true", "yes"), help="Default: true.")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k not in ("checkpoint", "output_dir") and v is not None}
    model = convert_checkpoint(args.checkpoint, args.output_dir, **overrides)
    print(f"Converted {args.checkpoint} -> {args.output_dir} ({type(model).__name__}, {model.config.hidden_size} wide, "
          f"{model.config.num_hidden_layers} layers, patch {model.config.patch_size}, image {model.config.image_size}).")


__all__ = ["convert_checkpoint", "infer_config", "load_checkpoint", "rename_state_dict"]


if __name__ == "__main__":
    main()
