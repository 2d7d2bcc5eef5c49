"""AdamW's parameter groups from what a model declares: weight decay on matrices except `no_weight_decay()`, none on
vectors, and layer-wise learning-rate decay by `layer_id(name)` (`OptimizerGroupsMixin`, as timm's models declare
them). Both trainers build their optimizer from `parameter_groups`."""

from __future__ import annotations

from torch import nn


def parameter_groups(
    model: nn.Module, learning_rate: float, weight_decay: float, layer_decay: float = 1.0
) -> list[dict]:
    """AdamW groups from what the model declares (`OptimizerGroupsMixin`, as timm's models do).

    Weight decay on every trainable matrix except the names in `model.no_weight_decay()`; none on vectors (biases,
    norms, LayerScale). The learning rate of a parameter at `model.layer_id(name)` is
    `learning_rate * layer_decay ** (top - id)`, top being the head's id: MAE's layer-wise decay for a stack of blocks,
    SimMIM's for Swin's stages. `layer_decay < 1` on a model that declares no layer ids is a `ValueError`: it would
    silently train with one learning rate."""
    named = [(name, parameter) for name, parameter in model.named_parameters() if parameter.requires_grad]
    excluded = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    if hasattr(model, "layer_id"):
        top = model.num_layer_ids() - 1
        ids = {name: model.layer_id(name) for name, _ in named}
    elif layer_decay < 1:
        raise ValueError(
            f"layer_decay={layer_decay} needs a model that says which layer each parameter is in (layer_id(), as "
            f"mimir_hf's models have); {type(model).__name__} does not, so every parameter would get one learning "
            "rate. Pass layer_decay=1.0 (--layer_decay 1.0) to train with one learning rate."
        )
    else:
        top, ids = 0, {name: 0 for name, _ in named}
    groups: dict[tuple[int, bool], dict] = {}
    for name, parameter in named:
        decay = parameter.ndim > 1 and name not in excluded
        group = groups.setdefault(
            (ids[name], decay),
            {
                "params": [],
                "weight_decay": weight_decay if decay else 0.0,
                "lr": learning_rate * layer_decay ** (top - ids[name]),
            },
        )
        group["params"].append(parameter)
    return list(groups.values())


__all__ = ["parameter_groups"]
