"""Resume files: finished batches, one JSON line each, under a header naming what produced them (digests of the
model, the data and the settings), so that a rerun of the same evaluation skips them and any other is refused."""

from __future__ import annotations

import hashlib
import json
import os

import torch
from torch import nn

from .processes import Share


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
    config and class, the data's first batch and size, the settings) and names the process's share of the batches;
    a file written for anything else is refused, naming what differs, rather than mixed in. Under a process group
    each process keeps its own file, `<path>.rank<N>`."""

    def __init__(self, path: str | None, identity: dict, share: Share):
        self.path, self.done, self.share, self.grouped = path, {}, share.describe(), share.grouped
        if path is None:
            return
        self.path = f"{path}.rank{share.process}" if share.grouped else path
        self.parts = {name: _digest(value) for name, value in identity.items()}
        if os.path.isfile(self.path):
            self._read()
        else:
            with open(self.path, "w") as f:
                f.write(json.dumps({"identity": self.parts, "share": self.share}) + "\n")

    def _read(self) -> None:
        lines, complete = [], True
        with open(self.path) as f:
            for line in f:
                try:
                    lines.append(json.loads(line))
                except json.JSONDecodeError:  # the last line of a run killed while writing it
                    complete = False
                    break
        header = lines[0] if lines and isinstance(lines[0], dict) else {}
        if header.get("identity") != self.parts:
            raise ValueError(self._refusal(header))
        if not complete:  # drop the partial line, so that the next batch starts a line of its own
            with open(self.path, "w") as f:
                f.writelines(json.dumps(line) + "\n" for line in lines)
        self.done = {line["batch"]: line for line in lines[1:]}

    def _refusal(self, header: dict) -> str:
        """Why the file's results are not this evaluation's: another share of the batches, or the parts that differ."""
        recorded = header.get("identity")
        recorded = recorded if isinstance(recorded, dict) else {}
        differ = [name for name in self.parts if recorded.get(name) != self.parts[name]]
        written_for = header.get("share")
        if recorded and "data" in differ and written_for != self.share and (written_for or self.grouped):
            why = (
                f"written for {written_for or 'another share of the batches'}, while this process evaluates "
                f"{self.share}: the processes share the batches otherwise (another number of processes, or an "
                "earlier mimir_hf, which gave the extra batches to the last processes)"
            )
        else:
            why = f"its {', '.join(differ)} differ from this one's"
        return (
            f"{self.path} holds results of another evaluation ({why}): they are not this model's numbers. Delete or "
            "move that file to start afresh, or choose another --resume_file."
        )

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
