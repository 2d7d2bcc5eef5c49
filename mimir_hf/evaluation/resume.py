"""Resume files: finished batches, one JSON line each, under a header naming what produced them (digests of the
model, the data and the settings), so that a rerun of the same evaluation skips them and any other is refused."""

from __future__ import annotations

import hashlib
import json
import os

import torch
from torch import nn


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def tensors_digest(tensors) -> str:
    """A short sha256 of tensors' values, shapes and dtypes (weights, or a batch of images)."""
    digest = hashlib.sha256()
    for tensor in tensors:
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:16]


def model_identity(model: nn.Module) -> dict:
    """What makes a model's numbers its own: its weights and buffers (the normalisation of a pixel-space wrapper
    included), its config and its class."""
    config = getattr(model, "config", None)
    config = config.to_dict() if hasattr(config, "to_dict") else None
    return {
        "model weights": tensors_digest([*model.state_dict().values()]),
        "model config": _digest(config),
        "model class": type(model).__name__,
    }


class ResumeFile:
    """Finished batches, one JSON line each, under a header that identifies what produced them (the model's weights,
    config and class, the data's first batch and size, the settings); a file written for anything else is refused,
    naming what differs, rather than mixed in."""

    def __init__(self, path: str | None, identity: dict):
        self.path, self.done = path, {}
        if path is None:
            return
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        self.path = f"{path}.rank{rank}" if torch.distributed.is_initialized() else path
        parts = {name: _digest(value) for name, value in identity.items()}
        if os.path.isfile(self.path):
            lines, complete = [], True
            with open(self.path) as f:
                for line in f:
                    try:
                        lines.append(json.loads(line))
                    except json.JSONDecodeError:  # the last line of a run killed while writing it
                        complete = False
                        break
            recorded = lines[0].get("identity") if lines else None
            if not isinstance(recorded, dict) or recorded != parts:
                differ = [name for name in parts if not isinstance(recorded, dict) or recorded.get(name) != parts[name]]
                raise ValueError(
                    f"{self.path} holds results of another evaluation (its {', '.join(differ)} differ from this "
                    "one's): they are not this model's numbers. Delete or move that file to start afresh, or choose "
                    "another --resume_file."
                )
            if not complete:  # drop the partial line, so that the next batch starts a line of its own
                with open(self.path, "w") as f:
                    f.writelines(json.dumps(line) + "\n" for line in lines)
            self.done = {line["batch"]: line for line in lines[1:]}
        else:
            with open(self.path, "w") as f:
                f.write(json.dumps({"identity": parts}) + "\n")

    def get(self, index: int):
        line = self.done.get(index)
        if line is None:
            return None
        results = {name: torch.tensor(bits, dtype=torch.bool) for name, bits in line["results"].items()}
        return results, line["seconds"], line.get("cost", {})

    def add(self, index: int, results: dict[str, torch.Tensor], seconds: dict[str, float], cost: dict) -> None:
        if self.path is None:
            return
        line = {"batch": index, "results": {k: v.int().tolist() for k, v in results.items()}, "seconds": seconds,
                "cost": cost}  # fmt: skip
        with open(self.path, "a") as f:
            f.write(json.dumps(line) + "\n")
            f.flush()
            os.fsync(f.fileno())
