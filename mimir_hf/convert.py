"""Convert the authors' released MIMIR checkpoints (`.pth`) into `save_pretrained` folders.

    mimir-hf convert checkpoint-799.pth out/mimir-vit-small-cifar10      # family and shape from the file
    mimir-hf convert swin_base.pth out/mimir-swin-base --use_ema          # the EMA weights of a timm file
    mimir-hf convert finetuned.pth out/classifier --num_attention_heads 6 # a bare state dict: say the heads
    mimir-hf convert convit_small.pth out/mimir-convit-s                  # CaiT and ConViT the same way
    mimir-hf convert swin_base.pth out/mimir-swin-base --label_names imagenet      # class names in id2label
    mimir-hf convert new.pth out/mimir-vit-s --overwrite_output_dir        # into a folder that is not empty

Files are read with `torch.load(weights_only=True)` and an allow-list of exactly what the authors' training scripts
pickle besides tensors (`argparse.Namespace`, their saved arguments): nothing else in a file is ever unpickled or run.
Accepted layouts: a bare state dict, or a dict with `model` (MAE-style scripts), `state_dict` / `state_dict_ema`
(timm's checkpoint saver), `model_state_dict`; keys may carry `module.` (DDP). One rule for EMA weights in every layout:
`--use_ema` converts them (`state_dict_ema` or `model_ema`: what the authors evaluate); without it a file that has them
converts its other weights, with one warning naming `--use_ema`. When the file holds the run's `args`, the architecture
comes from them (`args.model`, input size, pooling, normalisation), checked against the tensors (a file must have the
blocks of the model `args.model` names; see `mimir_hf.models.conversion.check_depths`); otherwise from the tensors, and
what they cannot tell is guessed, said in a warning and recorded in the output's README.

Each family's key layout is handled by its own module (`mimir_hf/models/<family>/convert_*.py`); this module reads the
file, picks the family, checks that every tensor found its place (only a new head may be left at its initialisation)
and saves the model with its image processor and a model card. It never overwrites what a user owns: the output folder
must be new or empty, or (`--overwrite_output_dir`) only the converter's own files (`OUTPUT_FILES`) are replaced in it;
everything is written into a temporary folder first and moved in place by atomic renames. `--label_names` names a
classifier's classes (`id2label`, shown by `pipeline("image-classification")`): cifar10, imagenet, a JSON file or a
comma-separated list (`mimir_hf.class_names`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from transformers.utils import logging

from .class_names import label_config_fields, resolve_class_names
from .data import image_processor_for
from .models import FAMILIES
from .models.conversion import Conversion

logger = logging.get_logger(__name__)

_ENTRIES = ("model", "state_dict", "model_state_dict")  # where training scripts put the weights, in order
_EMA_ENTRIES = ("state_dict_ema", "model_ema")
# Evaluation pre-processing of the ImageNet models (224 px, and every Swin): resize to 256 (bicubic), centre-crop 224.
IMAGENET_CROP_PCT = 0.875
# The converter's record of a folder it wrote: the files it wrote there (replaced, or removed when no longer written,
# by a later conversion into the folder), the source file and its sha256.
MANIFEST = "mimir_convert.json"
# All the converter writes into an output folder, and all it may replace there: these files and the model's code (the
# `.py` files `save_pretrained` copies so that the folder loads with `trust_remote_code=True`).
OUTPUT_FILES = ("config.json", "model.safetensors", "preprocessor_config.json", "README.md", MANIFEST)
_STAGING = ".mimir-convert-"  # prefix of the folder, inside the output folder, that a conversion is first written to
_CARD_MARKER = "Converted with `mimir_hf` (`mimir-hf convert`)"  # in every card the converter wrote (before MANIFEST)


@dataclass
class Checkpoint:
    """What a training script's `.pth` file holds: the weights (from `entry`) and the run's arguments (if saved)."""

    path: str
    state_dict: dict[str, torch.Tensor]
    args: dict | None
    entry: str  # "model", "state_dict", "state_dict_ema", ... or "(bare state dict)"
    unused_ema: str | None = None  # the file's EMA weights ("state_dict_ema" / "model_ema") when `entry` is not them


def read_checkpoint(path: str, use_ema: bool = False) -> Checkpoint:
    """Read a `.pth` file safely (see the module docstring); a `ValueError` naming the file and what was expected
    for anything else: a directory, text, random bytes, a truncated file, or objects outside the allow-list."""
    expected = "a PyTorch checkpoint (.pth) written by torch.save"
    if os.path.isdir(path):
        raise ValueError(f"{path} is a directory; expected {expected} (a file).")
    if not os.path.isfile(path):
        raise ValueError(f"{path} does not exist; expected {expected}.")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError, IndexError, ... on bad bytes
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
        if isinstance(error, pickle.UnpicklingError) and found:
            raise ValueError(
                f"{path} holds objects ({found.group(1)}) beyond tensors, plain containers and argparse.Namespace; "
                "mimir_hf reads checkpoints with torch.load(weights_only=True) and will not unpickle it."
            ) from None
        reason = type(error).__name__ if isinstance(error, pickle.UnpicklingError) else str(error).split("\n")[0][:160]
        reason = reason or type(error).__name__
        raise ValueError(
            f"{path} is not {expected}: it is truncated, corrupt or another kind of file ({reason})."
        ) from None

    args = None
    if isinstance(raw, dict) and isinstance(raw.get("args"), argparse.Namespace):
        args = vars(raw["args"])

    def present(names):
        return [name for name in names if isinstance(raw, dict) and isinstance(raw.get(name), dict)]

    entries = _EMA_ENTRIES if use_ema else _ENTRIES
    entry = next(iter(present(entries)), None)
    ema = next(iter(present(_EMA_ENTRIES)), None)
    if use_ema and entry is None:
        found = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise ValueError(f"--use_ema: {path} has no EMA weights ({' or '.join(_EMA_ENTRIES)}); it holds {found}.")
    state = raw[entry] if entry else raw
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        found = sorted(raw)[:8] if isinstance(raw, dict) else type(raw).__name__
        hint = f"; pass --use_ema to convert its {ema}" if ema else ""
        raise ValueError(
            f"{path} holds no state dict of tensors (looked for a bare state dict or {', '.join(entries)}; found "
            f"{found}){hint}."
        )
    unused_ema = None if use_ema else ema
    if unused_ema:  # one rule for every layout: the authors evaluate (ARES) the EMA weights of a file that has them
        logger.warning(
            f"{path} holds EMA weights ({unused_ema}) besides {entry}, which this converts; the authors evaluate the "
            "EMA weights: pass --use_ema to convert those."
        )
    state = {key.removeprefix("module."): value for key, value in state.items()}
    return Checkpoint(path, state, args, entry or "(bare state dict)", unused_ema)


def detect_family(checkpoint: Checkpoint) -> str:
    """The model family of a checkpoint: from its `args.model` (or timm's `arch`) when saved, else from its keys."""
    name = str((checkpoint.args or {}).get("model", "")).lower()
    for family in ("swin", "cait", "convit", "xcit", "vit"):
        if family in name:
            return _supported(family, checkpoint.path)
    keys = {key.removeprefix("encoder.") for key in checkpoint.state_dict}
    if any(key.endswith("attn.relative_position_bias_table") for key in keys):
        return "swin"
    if any(key.startswith("blocks_token_only.") for key in keys):
        return "cait"
    if any(key.endswith(("attn.gating_param", "attn.pos_proj.weight")) for key in keys):
        return "convit"
    if "patch_embed.proj.weight" in keys and any(key.endswith("attn.qkv.weight") for key in keys):
        return "vit"
    raise ValueError(
        f"{checkpoint.path} is not a checkpoint of a model family mimir_hf converts ({', '.join(sorted(FAMILIES))}): "
        f"its keys look like {sorted(checkpoint.state_dict)[:6]}."
    )


def _supported(family: str, path: str) -> str:
    if family not in FAMILIES:
        raise ValueError(f"{path} is a {family} checkpoint; mimir_hf converts {', '.join(sorted(FAMILIES))} ones.")
    return family


def convert_checkpoint(
    path: str,
    output_dir: str | None = None,
    use_ema: bool = False,
    family: str | None = None,
    label_names=None,
    overwrite_output_dir: bool = False,
    **config_overrides,
):
    """Read `path`, convert it with its family's converter, check that every tensor found its place, and (with
    `output_dir`) save the model, its image processor and a model card. Returns the model, in eval mode.

    `output_dir` must be new or empty (checked before the file is read); `overwrite_output_dir=True` converts into a
    folder that is not, replacing only the converter's own files (`OUTPUT_FILES` and the model's code) and keeping
    every other file (see `check_output_dir`, `save_conversion`).

    `label_names` names a classifier's classes in index order (its `id2label` / `label2id`): "cifar10", "imagenet",
    a JSON file (a list, or an {index: name} mapping), a comma-separated string, or a list (see
    `mimir_hf.class_names.resolve_class_names`); their number must be the model's number of classes.
    `config_overrides` set config fields the file cannot tell or that should change (`num_attention_heads` for a
    ViT file without `args`, `image_mean`/`image_std` for a run trained on normalised inputs, ...).
    """
    names = resolve_class_names(label_names) if label_names is not None else None
    earlier = check_output_dir(output_dir, overwrite_output_dir) if output_dir is not None else []
    checkpoint = read_checkpoint(path, use_ema=use_ema)
    family = family or detect_family(checkpoint)
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {sorted(FAMILIES)}, got {family!r}.")
    conversion = FAMILIES[family].convert(checkpoint.state_dict, checkpoint.args, **config_overrides)
    if names is not None:
        name_classes(conversion, names, path)
    model = load_conversion(conversion, path)
    for note in conversion.notes:
        logger.warning(f"{os.path.basename(path)}: {note}")
    if output_dir is not None:
        digest = _sha256(path)
        size = conversion.config.image_size
        imagenet_style = family == "swin" or (size if isinstance(size, int) else min(size)) >= 224
        crop_pct = IMAGENET_CROP_PCT if imagenet_style else None

        def write(folder: str) -> None:
            model.save_pretrained(folder)
            image_processor_for(conversion.config, crop_pct=crop_pct).save_pretrained(folder)
            write_conversion_card(folder, checkpoint, family, conversion, model, digest)

        record = {"source": os.path.basename(path), "source_sha256": digest, "weights_entry": checkpoint.entry}
        save_conversion(output_dir, write, record, earlier)
    return model


def _earlier_conversion(output_dir: str) -> list[str] | None:
    """The files an earlier conversion recorded in `output_dir` (its `MANIFEST`; [] for a folder whose card says it was
    converted, from before the manifest), or None when the converter did not write the folder."""
    try:
        with open(os.path.join(output_dir, MANIFEST), encoding="utf-8") as f:
            files = json.load(f)["files"]
        return [name for name in files if isinstance(name, str) and os.path.basename(name) == name]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        with open(os.path.join(output_dir, "README.md"), encoding="utf-8") as f:
            return [] if _CARD_MARKER in f.read() else None
    except (OSError, UnicodeDecodeError):
        return None


def _own(name: str) -> bool:
    """Whether the converter may write (and so replace) a file of this name: one of `OUTPUT_FILES`, or model code."""
    return name in OUTPUT_FILES or name.endswith(".py")


def check_output_dir(output_dir: str, overwrite: bool = False) -> list[str]:
    """Refuse an output folder that holds anything unless `overwrite` (--overwrite_output_dir), with one line naming
    the folder and the flag; a path that is a file always. Returns the files an earlier conversion recorded there,
    which a new one replaces (or removes, when it no longer writes them); [] for a new or empty folder."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ValueError(f"{output_dir} is a file; expected a folder (new or empty) for the converted model.")
    if not os.path.isdir(output_dir):
        return []
    entries = sorted(name for name in os.listdir(output_dir) if not name.startswith(_STAGING))
    if not entries:
        return []
    earlier = _earlier_conversion(output_dir)
    if not overwrite and earlier is not None:
        raise ValueError(
            f"{output_dir} holds an earlier conversion; pass --overwrite_output_dir to convert into it again (its "
            "files that the converter did not write are kept), or choose a new folder."
        )
    if not overwrite:
        shown = ", ".join(entries[:4]) + (f" and {len(entries) - 4} more" if len(entries) > 4 else "")
        own = ", ".join(OUTPUT_FILES)
        raise ValueError(
            f"{output_dir} is not empty ({shown}) and was not written by mimir-hf convert; choose a new or empty "
            f"folder, or pass --overwrite_output_dir to replace only the converter's files there ({own} and the "
            "model's .py code), keeping every other file."
        )
    return earlier or []


def save_conversion(
    output_dir: str, write: Callable[[str], None], record: dict, earlier: Iterable[str] = ()
) -> list[str]:
    """Write a conversion into `output_dir` without leaving a half-written file or touching files it does not own.

    `write(folder)` saves everything into a fresh folder inside `output_dir`; each file then replaces its namesake
    with an atomic rename, files of the `earlier` conversion that this one no longer writes are removed, and the
    `MANIFEST` (with `record` and the list of files) goes in last. Returns the files written."""
    os.makedirs(output_dir, exist_ok=True)
    for name in os.listdir(output_dir):  # a conversion killed while writing leaves its staging folder behind
        if name.startswith(_STAGING):
            shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)
    stage = tempfile.mkdtemp(prefix=_STAGING, dir=output_dir)
    try:
        write(stage)
        written = sorted([*os.listdir(stage), MANIFEST])
        unlisted = [name for name in written if not _own(name)]
        if unlisted:  # keeps OUTPUT_FILES the complete list of what a conversion may replace
            raise RuntimeError(f"mimir-hf convert wrote {unlisted}, which OUTPUT_FILES does not list.")
        from . import __version__

        with open(os.path.join(stage, MANIFEST), "w", encoding="utf-8") as f:
            json.dump(
                {"written_by": f"mimir-hf convert (mimir_hf {__version__})", **record, "files": written}, f, indent=2
            )
        for name in written:
            if name != MANIFEST:
                os.replace(os.path.join(stage, name), os.path.join(output_dir, name))
        for name in earlier:
            old = os.path.join(output_dir, name)
            if name not in written and _own(name) and os.path.isfile(old):
                os.remove(old)
        os.replace(os.path.join(stage, MANIFEST), os.path.join(output_dir, MANIFEST))
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return written


def name_classes(conversion: Conversion, names: list[str], path: str = "the checkpoint") -> None:
    """Set the converted classifier's `id2label` / `label2id` to `names`: one per class, else a `ValueError`."""
    if "ForImageClassification" not in conversion.model_class.__name__:
        raise ValueError(
            f"{path} converts to {conversion.model_class.__name__}, which has no classes to name; label names apply to "
            "classifiers (fine-tuned checkpoints)."
        )
    num_labels = conversion.config.num_labels
    if len(names) != num_labels:
        raise ValueError(
            f"{len(names)} label names given for a classifier of {num_labels} classes ({path}); give one name per "
            "class, in index order."
        )
    for name, value in label_config_fields(names).items():
        setattr(conversion.config, name, value)


def load_conversion(conversion: Conversion, path: str = "the checkpoint"):
    """Build `conversion.model_class` and load the converted tensors: every tensor must have a place of the right
    shape, and only `conversion.new_keys` may be missing."""
    model = conversion.model_class(conversion.config)
    expected = model.state_dict()
    unexpected = sorted(set(conversion.state_dict) - set(expected))
    missing = sorted(set(expected) - set(conversion.state_dict) - set(conversion.new_keys))
    shapes = [
        f"{key}: {tuple(value.shape)} in the file, {tuple(expected[key].shape)} in the model"
        for key, value in conversion.state_dict.items()
        if key in expected and value.shape != expected[key].shape
    ]
    if unexpected or missing or shapes:
        raise ValueError(
            f"{path} does not fit {conversion.model_class.__name__} ({conversion.config.model_type}): missing "
            f"{missing[:8]}, unexpected {unexpected[:8]}, shapes {shapes[:4]}. Check the overrides (e.g. "
            "--num_attention_heads, --image_size)."
        )
    model.load_state_dict(conversion.state_dict, strict=not conversion.new_keys)
    return model.eval()


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_conversion_card(
    output_dir: str, checkpoint: Checkpoint, family: str, conversion: Conversion, model, digest: str | None = None
) -> str:
    """README.md of a converted folder: where it came from, the choices made, what was ignored, and the numbers the
    authors report for their released checkpoints of this family. `digest`: the file's sha256, when already known."""
    from .model_card import build_conversion_card

    config = conversion.config
    digest = digest or _sha256(checkpoint.path)
    entry = checkpoint.entry
    if checkpoint.unused_ema:
        entry += f" (the file also holds EMA weights, {checkpoint.unused_ema}: `--use_ema` converts those)"
    source = {
        "source file": f"`{os.path.basename(checkpoint.path)}` (sha256 `{digest[:16]}...`)",
        "weights entry": entry,
        "training arguments in the file": f"yes (`args.model` = `{checkpoint.args.get('model')}`)"
        if checkpoint.args
        else "no: architecture from the tensors' shapes",
        "model class": type(model).__name__,
        "parameters": f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M",
        "input": f"{config.num_channels} x {config.image_size} px in [0, 1]"
        + ("" if getattr(config, "image_mean", None) is None else ", normalised inside the model"),
    }
    card = build_conversion_card(
        family, model.config, source, conversion.notes, conversion.ignored, conversion.new_keys
    )
    path = os.path.join(output_dir, "README.md")
    card.save(path)
    return path


def _floats(text: str) -> list[float]:
    return [float(value) for value in text.split(",")]


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    """`mimir-hf convert` (also `mimir-hf convert`): a `ValueError` naming the file for input it refuses."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="The .pth file.")
    parser.add_argument("output_dir", help="Where the save_pretrained folder goes.")
    parser.add_argument("--use_ema", action="store_true", help="Convert the EMA weights (state_dict_ema / model_ema), "
                        "which the authors evaluate; without it a file that has them converts its other weights, "
                        "with a warning.")  # fmt: skip
    parser.add_argument("--overwrite_output_dir", action="store_true", help="Convert into a folder that is not "
                        "empty: replace the converter's files there (config.json, model.safetensors, ...), keep the "
                        "others.")  # fmt: skip
    parser.add_argument("--family", choices=sorted(FAMILIES), help="Default: from the file's args or keys.")
    parser.add_argument("--num_attention_heads", type=int, help="ViT encoder heads (default: from args.model).")
    parser.add_argument("--decoder_num_attention_heads", type=int, help="ViT decoder heads (default: 16).")
    parser.add_argument("--image_size", type=int, help="Input resolution (default: from the weights).")
    parser.add_argument("--num_labels", type=int, help="Classes of a new head on a pre-training backbone.")
    parser.add_argument("--image_mean", type=_floats, help="Per-channel mean the model was trained with, e.g. "
                        "0.485,0.456,0.406 (applied inside the model; inputs stay [0, 1] pixels).")  # fmt: skip
    parser.add_argument("--image_std", type=_floats, help="Per-channel std, with --image_mean.")
    parser.add_argument("--label_names", help="Class names of a classifier, in index order (id2label): cifar10, "
                        "imagenet (the 1000 ImageNet-1k names), a .json file (a list, or {index: name}) or a "
                        "comma-separated list.")  # fmt: skip
    parser.add_argument("--qkv_bias", type=_bool, help="false: drop the file's query/key/value biases (listed in "
                        "the README), e.g. a ConViT pre-training encoder for bias-free fine-tuning.")  # fmt: skip
    args = parser.parse_args(argv)
    overrides = {
        name: value
        for name, value in vars(args).items()
        if name not in ("checkpoint", "output_dir", "use_ema", "family", "label_names", "overwrite_output_dir")
        and value is not None
    }
    model = convert_checkpoint(
        args.checkpoint,
        args.output_dir,
        args.use_ema,
        args.family,
        label_names=args.label_names,
        overwrite_output_dir=args.overwrite_output_dir,
        **overrides,
    )
    size = sum(p.numel() for p in model.parameters()) / 1e6
    print(
        f"Converted {args.checkpoint} -> {args.output_dir}: {type(model).__name__} ({model.config.model_type}), "
        f"{size:.2f}M parameters; see {args.output_dir}/README.md."
    )


__all__ = [
    "MANIFEST",
    "OUTPUT_FILES",
    "Checkpoint",
    "check_output_dir",
    "convert_checkpoint",
    "detect_family",
    "load_conversion",
    "name_classes",
    "read_checkpoint",
    "save_conversion",
]


if __name__ == "__main__":
    from .commands.cli import main as cli

    sys.exit(cli(["convert", *sys.argv[1:]]))
