"""Any image classifier as a classifier of [0, 1] pixels: the threat model every attack and report of mimir_hf uses.

MIMIR models take [0, 1] pixels (their normalisation, if any, is inside the model). Other transformers classifiers
(ViT, DeiT, ResNet, ConvNeXt, ...) take what their image processor makes: resized, rescaled and *normalised*
tensors, in which an L-inf budget of 8/255 means nothing fixed. `PixelSpaceClassifier` moves the processor's
normalisation, (x - mean) / std, inside a wrapper, and `PixelPreprocessor` runs the rest of the processor (resize,
crop, channels, rescale by 1/255) in the data loader, so batches hold pixels in [0, 1] at the model's input size and
the attacks perturb those pixels: RobustBench's convention. `pixel_space_classifier` builds both from a loaded model
and its processor and says in one line what it did (the report records it).
"""

from __future__ import annotations

import torch
from torch import nn

from .threat_model import GREY_LEVEL

_RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}  # PIL's codes


class PixelSpaceClassifier(nn.Module):
    """`model` (a transformers image classifier) applied to `[B, C, H, W]` pixels in [0, 1]: the processor's
    normalisation `(x - image_mean) / image_std` runs first, inside `forward`, so gradients reach the pixels.

    `config` is the wrapped model's config (`num_labels`, `id2label`), so the attacks and the report treat the
    wrapper like any classifier; outputs are the wrapped model's (`.logits`)."""

    main_input_name = "pixel_values"

    def __init__(self, model: nn.Module, image_mean: list[float], image_std: list[float]):
        super().__init__()
        self.model = model
        self.config = model.config
        self.register_buffer("mean", torch.tensor(image_mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(image_std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    @property
    def base_model(self) -> nn.Module:
        """The wrapped model's trunk (what the report's pass counter watches)."""
        return getattr(self.model, "base_model", self.model)

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, **kwargs):
        normalised = (pixel_values - self.mean) / self.std
        return self.model(pixel_values=normalised, labels=labels, **kwargs)


class PixelPreprocessor:
    """An image processor without its normalisation: PIL images -> `{"pixel_values": [B, C, H, W] in [0, 1]}`.

    Called like the processor itself (`preprocessor(images=..., return_tensors="pt")`), so the data transforms of
    `mimir_hf.data` take it in place of one."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, images, return_tensors: str = "pt", **kwargs):
        pixel_values = self.processor(images=images, do_normalize=False, return_tensors="pt", **kwargs)["pixel_values"]
        # Bicubic resizing of float pixels can overshoot [0, 1] by a little: the pixels of the threat model are in it.
        return {"pixel_values": pixel_values.clamp(0.0, 1.0)}


def _per_channel(values, channels: int, name: str, processor) -> list[float]:
    values = [float(values)] * channels if isinstance(values, (int, float)) else [float(v) for v in values]
    if len(values) != channels:
        raise ValueError(
            f"{type(processor).__name__}.{name} has {len(values)} values but the model takes {channels} channels; "
            "fix the preprocessor_config.json saved with the model."
        )
    return values


def _geometry(processor) -> str:
    """The processor's resize and crop settings, as it holds them (e.g. "size {'shortest_edge': 224}, crop_pct
    0.875, bicubic")."""
    parts = []
    if getattr(processor, "do_resize", False):
        parts.append(f"size {dict(getattr(processor, 'size', None) or {})}")
        if getattr(processor, "crop_pct", None) is not None:
            parts.append(f"crop_pct {processor.crop_pct}")
        resample = getattr(processor, "resample", None)
        name = getattr(resample, "name", None) or {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}.get(
            resample
        )
        if name:
            parts.append(name.lower())
    if getattr(processor, "do_center_crop", False):
        parts.append(f"centre crop {dict(getattr(processor, 'crop_size', None) or {})}")
    return ", ".join(parts) if parts else "no resize"


def pixel_space_classifier(model: nn.Module, processor) -> tuple[nn.Module, object, str]:
    """(classifier of [0, 1] pixels, data preprocessor yielding such pixels, one line saying what was done).

    A model whose processor does not normalise (every MIMIR model: normalisation is in its config) is returned as
    it is. A processor that does not map 8-bit images to [0, 1] (`do_rescale` with factor 1/255) is refused: the
    attacks' budgets would not be in pixel units."""
    name = type(processor).__name__
    if not getattr(processor, "do_rescale", False) or abs(getattr(processor, "rescale_factor", 0) - GREY_LEVEL) > 1e-9:
        raise ValueError(
            f"{name} does not rescale 8-bit pixels by 1/255 (do_rescale={getattr(processor, 'do_rescale', None)}, "
            f"rescale_factor={getattr(processor, 'rescale_factor', None)}), so its outputs are not [0, 1] pixels and "
            "an L-inf budget such as 8/255 would not be in pixel units; save a processor that rescales by 1/255 "
            "with the model."
        )
    geometry = f"{name} ({_geometry(processor)}), pixels rescaled to [0, 1]"
    if not getattr(processor, "do_normalize", False):
        mean = getattr(getattr(model, "config", None), "image_mean", None)
        inside = (
            f"normalisation (x - {list(mean)}) / {list(model.config.image_std)} inside the model"
            if mean is not None
            else "no normalisation"
        )
        return model, PixelPreprocessor(processor), f"{geometry}; {inside}; attacks act on these pixels"
    channels = getattr(model.config, "num_channels", 3)
    mean = _per_channel(processor.image_mean, channels, "image_mean", processor)
    std = _per_channel(processor.image_std, channels, "image_std", processor)
    if min(std) <= 0:
        raise ValueError(f"{name}.image_std must be positive, got {std}.")
    wrapped = PixelSpaceClassifier(model, mean, std)
    wrapped.to(next(model.parameters()).device)
    return (
        wrapped,
        PixelPreprocessor(processor),
        f"{geometry}; its normalisation (x - {mean}) / {std} applied inside a wrapper of the model; attacks act on "
        "the [0, 1] pixels",
    )


__all__ = ["PixelPreprocessor", "PixelSpaceClassifier", "pixel_space_classifier"]
