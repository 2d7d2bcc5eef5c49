"""What every family's checkpoint converter returns, and the small helpers they share.

A family's `convert_<family>.py` maps the authors' (timm / Microsoft / MAE layout) tensors onto its mimir_hf model
and returns a `Conversion`; `mimir_hf.convert` reads the file, picks the family, loads the model strictly against the
conversion's promises (every tensor placed, only `new_keys` left at their initialisation) and saves it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from transformers import PretrainedConfig


@dataclass
class Conversion:
    """A checkpoint's tensors mapped onto one mimir_hf model class.

    Args:
        model_class: the class to build (`config` decides its shape).
        config: the architecture the tensors (and the checkpoint's saved `args`, when present) describe.
        state_dict: the tensors under the model's parameter names.
        ignored: checkpoint keys deliberately not carried over, each with the reason (rebuilt buffers, a
            pre-training decoder, biases a bias-free fine-tuning model does not have, ...). Never silent: the
            converter prints them and writes them into the output's README.
        new_keys: parameters of the model the checkpoint does not hold (they keep their fresh initialisation: a new
            classification head on a pre-training backbone).
        notes: decisions the converter made that the file could not settle (e.g. a guessed head count).
    """

    model_class: type
    config: PretrainedConfig
    state_dict: dict[str, torch.Tensor]
    ignored: dict[str, str] = field(default_factory=dict)
    new_keys: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def count_indexed(state: dict[str, torch.Tensor], prefix: str) -> int:
    """Number of `prefix.N.` blocks in a state dict (max N + 1, 0 when there are none)."""
    indices = {int(m.group(1)) for key in state if (m := re.match(rf"^{re.escape(prefix)}\.(\d+)\.", key))}
    return max(indices) + 1 if indices else 0


def split_fused_qkv(value: torch.Tensor, prefix: str, suffix: str) -> dict[str, torch.Tensor]:
    """A fused `qkv` weight or bias (rows q, k, v) as three tensors named `{prefix}{q,k,v}_proj.{suffix}`."""
    return {
        f"{prefix}{name}.{suffix}": chunk.clone()
        for name, chunk in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0), strict=True)
    }


def arg(args: dict | None, name: str, default=None):
    """`args[name]` of a checkpoint's saved training arguments, or `default` when absent (or no args at all)."""
    if not args:
        return default
    value = args.get(name, default)
    return default if value is None else value


__all__ = ["Conversion", "arg", "count_indexed", "split_fused_qkv"]
