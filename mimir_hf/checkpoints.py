"""Training checkpoints that a crash cannot make unusable: a completion marker written last, a check before every
resume, and a fall-back to the last complete checkpoint.

`Trainer` writes `checkpoint-N/` file by file; a run killed (or out of disk) half-way leaves a folder that looks like
a checkpoint but cannot be resumed from. The MIMIR trainers write `COMPLETE_MARKER` into the folder after everything
else (synced to disk), and resume only from a checkpoint that has it and whose files read back; an incomplete one is
skipped, with a warning that names it, in favour of the previous complete one. Nothing is deleted. A MIMIR run needs
every file its exact resume reads (`resume_needs`: the marker, optimizer, scheduler, RNG states, and the EMA when it
keeps one); a checkpoint of a plain `Trainer` given by path needs only its weights and state to read back.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import zipfile
from contextlib import contextmanager

from safetensors import SafetensorError, safe_open
from transformers.utils import logging

logger = logging.get_logger(__name__)

COMPLETE_MARKER = "mimir_checkpoint_complete.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_REQUIRED = ("trainer_state.json",)


def write_marker(folder: str, info: dict) -> None:
    """Write `COMPLETE_MARKER` (with `info`: the step and the run's loss so far) and make it durable."""
    path = os.path.join(folder, COMPLETE_MARKER)
    with open(path + ".tmp", "w") as f:
        json.dump(info, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)


def read_marker(folder: str) -> dict | None:
    try:
        with open(os.path.join(folder, COMPLETE_MARKER)) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def resume_needs(args) -> tuple[str, ...]:
    """The files a MIMIR run's checkpoint must hold to be resumed exactly (besides the weights and trainer state):
    the completion marker, the optimizer and scheduler states (unless `save_only_model`), the RNG state (one file per
    process: `rng_state*.pth`) and, for a run with an EMA, `ema.safetensors`."""
    needs = [COMPLETE_MARKER, "rng_state"]
    if not getattr(args, "save_only_model", False):
        needs += ["optimizer.pt", "scheduler.pt"]
    if getattr(args, "ema_decay", 0) > 0:
        needs.append("ema.safetensors")
    return tuple(needs)


def _safetensors_problem(path: str) -> str | None:
    try:
        with safe_open(path, "pt") as f:
            for key in f.keys():  # safe_open checks the header against the file's size
                f.get_slice(key)
    except (SafetensorError, OSError, ValueError) as error:
        return f"{path} cannot be read ({error}): it is truncated or corrupt"
    return None


def checkpoint_problem(folder: str, needs: tuple[str, ...] = ()) -> str | None:
    """Why `folder` cannot be resumed from (naming the file at fault), or None when it is complete and readable.
    `needs`: further files it must hold (see `resume_needs`; "rng_state" stands for any `rng_state*.pth`)."""
    if not os.path.isdir(folder):
        return f"{folder} is not a checkpoint folder"
    names = set(os.listdir(folder))
    for need in needs:
        present = (
            any(n.startswith("rng_state") and n.endswith(".pth") for n in names)
            if need == "rng_state"
            else (need in names)
        )
        if not present:
            what = "rng_state*.pth" if need == "rng_state" else need
            return f"{os.path.join(folder, what)} is missing (the checkpoint was not completely written)"
    for name in _REQUIRED:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            return f"{path} is missing (the checkpoint was not completely written)"
        try:
            with open(path) as f:
                json.load(f)
        except (OSError, json.JSONDecodeError) as error:
            return f"{path} cannot be read ({error})"
    weights = os.path.join(folder, "model.safetensors")
    if os.path.isfile(weights):
        if problem := _safetensors_problem(weights):
            return problem
    elif not any(name.endswith((".safetensors", ".bin")) for name in os.listdir(folder)):
        return f"{folder} holds no model weights"
    for name in sorted(names):
        if name.endswith(".safetensors") and name != "model.safetensors":  # ema.safetensors, sharded weights
            if problem := _safetensors_problem(os.path.join(folder, name)):
                return problem
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.endswith((".pt", ".pth", ".bin")) and not zipfile.is_zipfile(path):  # torch.save writes zip files
            return f"{path} is truncated or corrupt"
    return None


def checkpoints(output_dir: str) -> list[str]:
    """`checkpoint-N` folders of `output_dir`, oldest (smallest N) first."""
    if not os.path.isdir(output_dir):
        return []
    found = [(int(m.group(1)), name) for name in os.listdir(output_dir) if (m := _CHECKPOINT.match(name))]
    return [
        os.path.join(output_dir, name) for _, name in sorted(found) if os.path.isdir(os.path.join(output_dir, name))
    ]


def last_complete_checkpoint(output_dir: str, needs: tuple[str, ...] = ()) -> str | None:
    """The newest checkpoint of `output_dir` that is complete (with every file of `needs`) and readable; newer
    incomplete ones are skipped, each with a warning saying why (they are left where they are)."""
    for folder in reversed(checkpoints(output_dir)):
        problem = checkpoint_problem(folder, needs)
        if problem is None:
            return folder
        logger.warning(f"Not resuming from {folder}: {problem}. Trying the previous checkpoint.")
    return None


def check_resume_checkpoint(folder: str, model, needs: tuple[str, ...] = ()) -> None:
    """A `ValueError` naming the file when `folder` is not a complete checkpoint of `model` (another model class, other
    shapes, a truncated or missing file, one of `needs` missing)."""
    problem = checkpoint_problem(folder, needs)
    if problem is not None:
        raise ValueError(f"Cannot resume from {folder}: {problem}.")
    config_path = os.path.join(folder, "config.json")
    config = getattr(model, "config", None)
    if os.path.isfile(config_path) and config is not None:
        with open(config_path) as f:
            saved = json.load(f)
        if saved.get("model_type") != config.model_type or saved.get("architectures", [type(model).__name__]) != [
            type(model).__name__
        ]:
            raise ValueError(
                f"Cannot resume from {folder}: {config_path} is a {saved.get('model_type')!r} "
                f"{saved.get('architectures')} checkpoint, not one of this {type(model).__name__} "
                f"({config.model_type!r}). Resume a run of the same model, or start a new one."
            )
    weights = os.path.join(folder, "model.safetensors")
    if os.path.isfile(weights):
        with safe_open(weights, "pt") as f:
            saved_shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
        expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
        missing = sorted(set(expected) - set(saved_shapes))
        shapes = [key for key in expected if key in saved_shapes and saved_shapes[key] != expected[key]]
        if missing or shapes:
            raise ValueError(
                f"Cannot resume from {folder}: {weights} does not fit this {type(model).__name__} (missing "
                f"{missing[:5]}, other shapes {shapes[:5]}). Resume a run of the same model, or start a new one."
            )


def disk_full_error(path: str, needed_bytes: int, what: str = "a checkpoint") -> OSError:
    """One clear line for a full disk: where, how much is needed, how much is free."""
    directory = path if os.path.isdir(path) else os.path.dirname(path) or "."
    while not os.path.exists(directory) and os.path.dirname(directory) != directory:
        directory = os.path.dirname(directory)
    free = shutil.disk_usage(directory).free
    again = "training resumes from the last complete checkpoint" if what == "a checkpoint" else "nothing else is lost"
    return OSError(
        errno.ENOSPC,
        f"No space left on the device while writing {path}: {what} needs about {needed_bytes / 2**20:.1f} MiB "
        f"and {free / 2**20:.1f} MiB are free. Free some space (or lower save_total_limit) and run again: {again}.",
    )


def is_disk_full(error: BaseException, path: str, needed_bytes: int) -> bool:
    """Whether `error`, raised while writing `needed_bytes` under `path`, is a full disk: an ENOSPC `OSError`, a
    safetensors or other error saying so, or torch.save's bare `RuntimeError` ("enforce fail at
    inline_container.cc", "PytorchStreamWriter failed writing") on a file system with less free space than needed."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return True
    text = str(error)
    if "No space left on device" in text or "os error 28" in text or "StorageFull" in text:
        return True
    if isinstance(error, RuntimeError) and ("inline_container" in text or "PytorchStreamWriter" in text):
        directory = path if os.path.isdir(path) else os.path.dirname(path) or "."
        while not os.path.exists(directory) and os.path.dirname(directory) != directory:
            directory = os.path.dirname(directory)
        return shutil.disk_usage(directory).free < needed_bytes
    return False


@contextmanager
def disk_full_reported(path: str, needed_bytes: int, what: str = "a checkpoint"):
    """Within the block, a full disk (see `is_disk_full`) becomes `disk_full_error`'s one line; other errors pass."""
    try:
        yield
    except (OSError, RuntimeError, SafetensorError) as error:
        if is_disk_full(error, path, needed_bytes):
            raise disk_full_error(path, needed_bytes, what) from None
        raise


__all__ = [
    "COMPLETE_MARKER",
    "resume_needs",
    "check_resume_checkpoint",
    "checkpoint_problem",
    "checkpoints",
    "disk_full_error",
    "disk_full_reported",
    "is_disk_full",
    "last_complete_checkpoint",
    "read_marker",
    "write_marker",
]
