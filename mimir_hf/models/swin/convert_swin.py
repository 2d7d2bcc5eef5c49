"""Map the authors' Microsoft-layout Swin state dicts onto `MimirSwinForImageClassification` (pure functions, no IO).

Two kinds of files hold Swin weights in the MIMIR release:

- fine-tuned classifiers (Microsoft / SimMIM / ARES Swin code): `patch_embed.{proj,norm}`, `layers.i.blocks.j.{norm1,
  attn.qkv, attn.proj, attn.relative_position_bias_table, norm2, mlp.fc1, mlp.fc2}`, `layers.i.downsample.{reduction,
  norm}`, `norm`, `head`, plus the buffers `attn.relative_position_index` and `attn_mask` (rebuilt by the model);
- GreenMIM pre-training checkpoints: the same encoder keys under `encoder.`, a MAE decoder (`decoder_*`, `mask_token`)
  and no head; they convert to a classifier whose head is new, ready for fine-tuning.

Typical use, after reading the file (`torch.load(path, weights_only=True)["model"]`):

    conversion = convert_swin_checkpoint(state_dict)               # config inferred from the tensors' shapes
    model = MimirSwinForImageClassification(conversion.config)
    model.load_state_dict(conversion.state_dict, strict=not conversion.new_keys)
    print(conversion.ignored, conversion.new_keys)                # what was dropped (and why), what is new
"""

from __future__ import annotations

import math
import re

import torch

from .. import conversion
from .configuration_mimir_swin import MimirSwinConfig
from .modeling_mimir_swin import MimirSwinForImageClassification

_TOP = {
    "patch_embed.proj": "swin.embeddings.patch_embeddings.projection",
    "patch_embed.norm": "swin.embeddings.norm",
    "norm": "swin.layernorm",
    "head": "classifier",
}
# Buffers of Microsoft's blocks that the model derives from its config instead of reading them.
_REBUILT_BUFFERS = re.compile(r"^layers\.\d+\.blocks\.\d+\.(attn\.relative_position_index|attn_mask)$")
# What a GreenMIM pre-training file holds besides its `encoder.`: the MAE decoder.
_GREENMIM_DECODER = re.compile(r"^(decoder_(embed|pos_embed|blocks|norm|pred)\b|mask_token$)")
_DEFAULT_IMAGE_SIZE = 224
_DEFAULT_NUM_LABELS = 1000  # a head-less (pre-training) file: ImageNet-1k fine-tuning, unless told otherwise
# Swin's sizes (Liu et al. 2021; Microsoft's `swin_base_patch4_window7_224`, ARES's `swin_large_patch4_window14`, ...):
# width, blocks per stage, heads per stage.
_SIZES = {
    "tiny": ("Swin-T", 96, (2, 2, 6, 2), (3, 6, 12, 24)),
    "small": ("Swin-S", 96, (2, 2, 18, 2), (3, 6, 12, 24)),
    "base": ("Swin-B", 128, (2, 2, 18, 2), (4, 8, 16, 32)),
    "large": ("Swin-L", 192, (2, 2, 18, 2), (6, 12, 24, 48)),
}
_NAME = re.compile(r"swin_(tiny|small|base|large)(?![a-z])")


def named_swin(name: str) -> conversion.NamedModel | None:
    """The Swin one of Microsoft's / timm's / the authors' model names stands for, or None when it is not one."""
    match = _NAME.search(str(name or "").lower())
    if not match:
        return None
    title, width, depths, heads = _SIZES[match.group(1)]
    return conversion.NamedModel(title, width, {f"layers.{i}.blocks": depth for i, depth in enumerate(depths)}, heads)


def split_encoder_keys(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The encoder's tensors under Microsoft's names, and the keys left out.

    Strips a DDP `module.` prefix; for a GreenMIM file (keys under `encoder.`) keeps the encoder, strips `encoder.` and
    leaves out its decoder. Any other key outside `encoder.` in such a file raises a `ValueError`.
    """
    state = {key.removeprefix("module."): value for key, value in state_dict.items()}
    if not any(key.startswith("encoder.") for key in state):
        return state, []
    encoder = {key.removeprefix("encoder."): value for key, value in state.items() if key.startswith("encoder.")}
    others = sorted(key for key in state if not key.startswith("encoder."))
    unknown = [key for key in others if not _GREENMIM_DECODER.match(key)]
    if unknown:
        raise ValueError(f"Unknown keys next to the `encoder.` of a GreenMIM checkpoint: {unknown}.")
    return encoder, others


def _stage_indices(state: dict[str, torch.Tensor]) -> dict[int, int]:
    """{stage: number of blocks} from the `layers.i.blocks.j.` keys."""
    depths: dict[int, int] = {}
    for key in state:
        if match := re.match(r"^layers\.(\d+)\.blocks\.(\d+)\.", key):
            stage, block = int(match.group(1)), int(match.group(2))
            depths[stage] = max(depths.get(stage, 0), block + 1)
    return depths


def _table_window(table: torch.Tensor, key: str) -> int:
    """Window side w of a relative-position table of (2w - 1)^2 rows."""
    side = math.isqrt(table.shape[0])
    if side * side != table.shape[0] or side % 2 == 0:
        raise ValueError(f"{key} has {table.shape[0]} rows, not (2 * window - 1) ** 2 for a square window.")
    return (side + 1) // 2


def infer_swin_config(state_dict: dict[str, torch.Tensor], **overrides) -> MimirSwinConfig:
    """A `MimirSwinConfig` matching a Microsoft-layout (or GreenMIM `encoder.`-prefixed) Swin state dict.

    Read from the tensors: `embed_dim`, `num_channels`, `patch_size` (patch embedding), `depths` (block keys),
    `num_heads` (the last dimension of each stage's relative-position table), each stage's window (the table's
    length, `(2w - 1)^2`), `mlp_ratio`, `qkv_bias`, `use_absolute_embeddings` and `num_labels` (the head; 1000 for a
    head-less pre-training file). `image_size` comes from a shifted stage's `attn_mask` (number of windows), else from
    a clamped stage (a window smaller than the others equals its stage's grid), else defaults to 224. The inferred
    per-stage windows must then equal `config.stage_window_sizes`, the Microsoft rule; a `ValueError` says otherwise.

    `overrides` set any config field (e.g. `image_size`, `num_labels`, `label_smoothing`, `image_mean`/`image_std`).
    """
    state, _ = split_encoder_keys(state_dict)
    if "patch_embed.proj.weight" not in state:
        raise ValueError(
            f"Not a Microsoft-layout Swin state dict: no patch_embed.proj.weight (keys: {sorted(state)[:6]})."
        )
    if "patch_embed.norm.weight" not in state:
        raise ValueError(
            "The checkpoint has no patch_embed.norm (patch_norm=False), which transformers' Swin cannot express."
        )
    embed_dim, num_channels, patch_size, _ = state["patch_embed.proj.weight"].shape
    depths_by_stage = _stage_indices(state)
    if sorted(depths_by_stage) != list(range(len(depths_by_stage))) or not depths_by_stage:
        raise ValueError(f"Stages must be numbered 0, 1, ...; found layers {sorted(depths_by_stage)}.")
    depths = [depths_by_stage[stage] for stage in range(len(depths_by_stage))]
    tables = {stage: f"layers.{stage}.blocks.0.attn.relative_position_bias_table" for stage in range(len(depths))}
    num_heads = [state[key].shape[1] for key in tables.values()]
    windows = [_table_window(state[key], key) for key in tables.values()]
    fields = dict(
        embed_dim=embed_dim,
        num_channels=num_channels,
        patch_size=patch_size,
        depths=depths,
        num_heads=num_heads,
        window_size=max(windows),
        mlp_ratio=state["layers.0.blocks.0.mlp.fc1.weight"].shape[0] / embed_dim,
        qkv_bias="layers.0.blocks.0.attn.qkv.bias" in state,
        use_absolute_embeddings="absolute_pos_embed" in state,
        num_labels=state["head.weight"].shape[0] if "head.weight" in state else _DEFAULT_NUM_LABELS,
        image_size=_infer_image_size(state, windows, patch_size),
    )
    fields.update(overrides)
    config = MimirSwinConfig(**fields)
    if config.stage_window_sizes != windows:
        raise ValueError(
            f"The checkpoint's windows per stage {windows} (from the relative-position tables) are not those of a "
            f"{config.image_size} px model with window {config.window_size} ({config.stage_window_sizes}); pass the "
            "image_size it was trained at."
        )
    _check_attention_masks(state, config)
    return config


def _infer_image_size(state: dict[str, torch.Tensor], windows: list[int], patch_size: int) -> int:
    """Square image side: from the first `attn_mask` buffer (stage grid = window * sqrt(number of windows)), else from a
    clamped stage (its grid equals its window), else 224."""
    for key in sorted(state):
        if match := re.match(r"^layers\.(\d+)\.blocks\.\d+\.attn_mask$", key):
            stage = int(match.group(1))
            windows_per_side = math.isqrt(state[key].shape[0])
            return windows[stage] * windows_per_side * patch_size * 2**stage
    for stage, window in enumerate(windows):
        if window < max(windows):
            return window * patch_size * 2**stage
    return _DEFAULT_IMAGE_SIZE


def _check_attention_masks(state: dict[str, torch.Tensor], config: MimirSwinConfig) -> None:
    """The `attn_mask` buffers, when present, must be those of `config`: shifted blocks only, (windows, w^2, w^2)."""
    for key, mask in state.items():
        if match := re.match(r"^layers\.(\d+)\.blocks\.(\d+)\.attn_mask$", key):
            stage, block = int(match.group(1)), int(match.group(2))
            (height, width), window = config.stage_resolutions[stage], config.stage_window_sizes[stage]
            expected = ((height // window) * (width // window), window * window, window * window)
            if not (config.stage_shifts[stage] and block % 2 == 1) or tuple(mask.shape) != expected:
                raise ValueError(
                    f"{key} has shape {tuple(mask.shape)}, which a {config.image_size} px model with window "
                    f"{config.window_size} does not have; pass the image_size the checkpoint was trained at."
                )


def convert_swin_state_dict(state_dict: dict[str, torch.Tensor], config: MimirSwinConfig) -> dict[str, torch.Tensor]:
    """Microsoft names -> `MimirSwinForImageClassification` names (`swin.` encoder, `classifier` head).

    The fused `attn.qkv` is split into `attention.{q,k,v}_proj`; `relative_position_index` and `attn_mask` buffers are
    dropped (the model rebuilds them from `config`); a GreenMIM file's `encoder.` prefix is stripped and its decoder
    dropped (see `convert_swin_checkpoint` for the list of what was dropped and what is new). Unknown keys raise a
    `ValueError` listing them.
    """
    state, _ = split_encoder_keys(state_dict)
    kept = {key: value for key, value in state.items() if not _REBUILT_BUFFERS.match(key)}
    return conversion.rename_keys(kept, _rename_key, "Microsoft's Swin layout")[0]


def _rename_key(key: str, value: torch.Tensor) -> dict[str, torch.Tensor] | None:
    """One Microsoft key -> ours (the fused `attn.qkv` split), or None for a key of no Swin layout."""
    if match := re.match(r"^layers\.(\d+)\.blocks\.(\d+)\.(.+)$", key):
        stage, block, name = match.groups()
        prefix = f"swin.encoder.layers.{stage}.blocks.{block}."
        module, _, kind = name.rpartition(".")
        if module == "attn.qkv" and kind in ("weight", "bias"):
            return conversion.split_fused_qkv(value, f"{prefix}attention.", kind)
        if name == "attn.relative_position_bias_table":
            return {f"{prefix}attention.relative_position_bias.relative_position_bias_table": value}
        return conversion.module_tensor(name, value, conversion.TIMM_BLOCK, prefix)
    if match := re.match(r"^layers\.(\d+)\.downsample\.(reduction|norm)\.(weight|bias)$", key):
        stage, module, kind = match.groups()
        return {f"swin.encoder.layers.{stage}.downsample.{module}.{kind}": value}
    if key == "absolute_pos_embed":
        return {"swin.embeddings.position_embeddings": value}
    return conversion.module_tensor(key, value, _TOP)


def convert_swin_checkpoint(
    state_dict: dict[str, torch.Tensor], args: dict | None = None, **config_overrides
) -> conversion.Conversion:
    """Infer the config, convert the tensors and account for every key: what was ignored, which weights are new.

    `args` (a training run's saved arguments) are not needed: the tensors determine a Swin completely. When
    `args.model` names a Swin of the file's width, the file must have its blocks (a `ValueError` says which are
    missing); a name of another width or other heads is noted, and the model follows the weights.

    Raises a `ValueError` when a converted tensor has no place in the model or the wrong shape, or when the model needs
    a weight the file lacks other than a new classification head.
    """
    config = infer_swin_config(state_dict, **config_overrides)
    renamed = convert_swin_state_dict(state_dict, config)
    state, decoder = split_encoder_keys(state_dict)
    ignored = {key: "GreenMIM pre-training decoder (not part of the classifier)" for key in decoder}
    ignored.update({key: "buffer rebuilt from the config" for key in sorted(state) if _REBUILT_BUFFERS.match(key)})
    with torch.device("meta"):  # only names and shapes are needed: nothing is allocated or initialised
        expected = MimirSwinForImageClassification(config).state_dict()
    unexpected = sorted(set(renamed) - set(expected))
    wrong_shape = [
        f"{key}: {tuple(value.shape)} vs {tuple(expected[key].shape)}"
        for key, value in renamed.items()
        if key in expected and value.shape != expected[key].shape
    ]
    if unexpected or wrong_shape:
        raise ValueError(
            f"The checkpoint does not fit {config.model_type}: unexpected {unexpected}, shapes {wrong_shape}."
        )
    new_keys = sorted(set(expected) - set(renamed))
    missing = [key for key in new_keys if not key.startswith("classifier.")]
    if missing:
        raise ValueError(f"The checkpoint lacks {len(missing)} encoder weights, e.g. {missing[:6]}.")
    notes = []
    name = str(conversion.arg(args, "model", ""))
    conversion.check_against_name(state, name, named_swin(name), config.embed_dim, list(config.num_heads), notes)
    if new_keys:
        notes.append(
            f"a pre-training (GreenMIM) backbone: the {config.num_labels}-class head is newly initialised, for "
            "fine-tuning (pass --num_labels for another number of classes)."
        )
    return conversion.Conversion(MimirSwinForImageClassification, config, renamed, ignored, new_keys, notes)


__all__ = [
    "convert_swin_checkpoint",
    "named_swin",
    "convert_swin_state_dict",
    "infer_swin_config",
    "split_encoder_keys",
]
