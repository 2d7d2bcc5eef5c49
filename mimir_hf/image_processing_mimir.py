"""Image processor of MIMIR models: resize (and optionally centre-crop) to the model's size, rescale to [0, 1], match
the model's channel count. The one preprocessing path of training, evaluation and `pipeline()`.

transformers' PIL image-processing backend with normalisation off -- it happens inside the model -- and one addition:
PIL images are first brought to 8-bit pixels of the model's channels ("L" for 1, "RGB" for 3) by their real range, so
that nothing is silently clipped or zeroed: 16-bit images are divided by 65535, float ("F") images are read as [0, 1],
[0, 255] or [0, 65535] by their range, images with transparency are composited on white (so content drawn in the
alpha channel stays visible), and what cannot be converted is refused with the file's name.

`carried_preprocessing` reads another image processor (a ViTMAE checkpoint's `ViTImageProcessor`) as what MIMIR can
carry over: its resize for a `MimirImageProcessor`, its normalisation for the model's `image_mean` / `image_std`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NoReturn

import numpy as np
import torch
from PIL import Image
from transformers.image_processing_backends import PilBackend, TorchvisionBackend
from transformers.image_utils import PILImageResampling


class MimirImageProcessor(PilBackend):
    r"""
    Args:
        num_channels (`int`, defaults to 3): the model's input channels (1 or 3).
        size (`dict`, defaults to `{"height": 224, "width": 224}`): resize target, or `{"shortest_edge": N}` to
            resize the short side to N keeping the aspect ratio (then `do_center_crop` to `crop_size`).
        do_center_crop (`bool`, defaults to `False`): centre-crop to `crop_size` after resizing (ImageNet models:
            resize 256, crop 224).
        crop_size (`dict`, *optional*): `{"height": ..., "width": ...}` of the crop.

    Resizing is bicubic unless `resample` says otherwise (a processor carried over from a checkpoint keeps its
    filter); pixels are rescaled to [0, 1] and never normalised.
    """

    resample = PILImageResampling.BICUBIC
    size = {"height": 224, "width": 224}
    do_resize = True
    do_rescale = True
    do_normalize = False
    do_center_crop = False
    image_mean = None
    image_std = None

    def __init__(self, num_channels: int = 3, **kwargs):
        super().__init__(**kwargs)
        if num_channels not in (1, 3):
            raise ValueError(f"MimirImageProcessor handles 1- or 3-channel models, got num_channels={num_channels}.")
        self.num_channels = num_channels

    def to_dict(self):
        # No `image_processor_type`: AutoImageProcessor then finds the class through the model's config (the
        # registered class when mimir_hf is imported, its `auto_map` otherwise), and pipeline()'s probe for a video
        # processor finds no custom code to ask about (transformers would prompt "run custom code? [y/N]").
        output = super().to_dict()
        output.pop("image_processor_type", None)
        return output

    def process_image(self, image, do_convert_rgb=None, input_data_format=None, **kwargs):
        if isinstance(image, Image.Image):
            image = to_model_mode(image, self.num_channels)
            do_convert_rgb = False
        return super().process_image(
            image, do_convert_rgb=do_convert_rgb, input_data_format=input_data_format, **kwargs
        )


def _already_at_size(image, processor: MimirImageProcessor) -> bool:
    """Whether `processor` would only rescale `image`: an 8-bit PIL image of the model's mode at the output size of a
    plain resize (no centre crop, no normalisation, no padding). transformers' resize would then turn it into a
    numpy array, back into a PIL image, copy it (PIL resizes to the same size by copying) and back again."""
    if not isinstance(processor, MimirImageProcessor) or not isinstance(image, Image.Image):
        return False
    if image.mode != ("L" if processor.num_channels == 1 else "RGB"):
        return False
    if not processor.do_resize or not processor.do_rescale or processor.do_center_crop or processor.do_normalize:
        return False
    if getattr(processor, "do_pad", None):
        return False
    size = processor.size
    return image.size == (size.get("width"), size.get("height"))


def _unit_range_table(scale: float) -> np.ndarray:
    """The float32 value the processor's rescale gives each 8-bit level: float32(float64(level) * scale), as
    transformers' `rescale` computes it (upcast to float64, multiply, downcast)."""
    return (np.arange(256, dtype=np.float64) * scale).astype(np.float32)


def image_tensors(images: list, processor) -> list[torch.Tensor]:
    """`processor(images=images, return_tensors="pt")["pixel_values"]` as a list of `[C, H, W]` tensors, equal bit
    for bit, with images already at the model's size (CIFAR files, the output of a random-resized crop) read
    straight into [0, 1] floats through a 256-entry table: no resize round trip, one conversion from 8 bits instead
    of two (to float64, then float32). The other images go through `processor`."""
    out = [None] * len(images)
    table = None
    for index, image in enumerate(images):
        if _already_at_size(image, processor):
            if table is None:
                table = _unit_range_table(processor.rescale_factor)
            pixels = np.asarray(image)
            pixels = pixels[None] if pixels.ndim == 2 else np.ascontiguousarray(pixels.transpose(2, 0, 1))
            out[index] = torch.from_numpy(table[pixels])
    rest = [image for image, pixels in zip(images, out, strict=True) if pixels is None]
    if rest:
        converted = iter(processor(images=rest, return_tensors="pt")["pixel_values"])
        out = [next(converted) if pixels is None else pixels for pixels in out]
    return out


PREPROCESSOR_FILE = "preprocessor_config.json"
# The steps of transformers' standard image pipeline (resize -> centre crop -> rescale -> normalise -> pad); a processor
# that changes any of them does something MimirImageProcessor cannot reproduce.
_STANDARD_STEPS = ("preprocess", "_preprocess", "resize", "center_crop", "rescale", "normalize")


@dataclass
class CarriedPreprocessing:
    """What a MIMIR model keeps of another image processor: `resize` (`MimirImageProcessor` keyword arguments: size,
    resample, centre crop), the `output_size` (height, width) it gives, and its normalisation (`image_mean` /
    `image_std`, `None` when it does not normalise), which MIMIR applies inside the model."""

    resize: dict
    output_size: tuple[int, int]
    image_mean: list[float] | None = None
    image_std: list[float] | None = None

    def describe_resize(self) -> str:
        """The resize in words, e.g. "resize to 224x224 (bilinear)"."""
        size, filter_name = self.resize["size"], PILImageResampling(self.resize["resample"]).name.lower()
        if "height" in size and "width" in size:
            text = f"resize to {size['height']}x{size['width']} ({filter_name})"
        else:
            text = f"resize ({', '.join(f'{k} {v}' for k, v in size.items())}, {filter_name})"
        if self.resize.get("do_center_crop"):
            text += f", centre crop {self.output_size[0]}x{self.output_size[1]}"
        return text


def carried_preprocessing(processor, source: str, num_channels: int = 3) -> CarriedPreprocessing:
    """Read an image processor (`source` names where it came from, for the messages) as resize + [0, 1] rescale +
    optional normalisation, the steps a MIMIR model can reproduce: the resize in a `MimirImageProcessor`, the
    normalisation inside the model. A processor that does anything else (no resize to a fixed size, another rescale,
    padding, its own preprocessing code) is refused with a `ValueError` naming the fix."""
    kind = type(processor).__name__.removesuffix("Pil")  # as its file names it

    def refuse(reason: str) -> NoReturn:
        raise ValueError(
            f"The image processor of {source} ({kind}) {reason}, which a MIMIR model cannot reproduce (it takes [0, 1] "
            f"pixels resized, and optionally centre-cropped, to its size, and normalises inside). Save a "
            f"ViTImageProcessor (resize, rescale 1/255, normalise) as its {PREPROCESSOR_FILE}, or remove that file "
            "and give the model image_mean/image_std yourself."
        )

    base = next((cls for cls in (PilBackend, TorchvisionBackend) if isinstance(processor, cls)), None)
    if base is None:
        refuse("is not one of transformers' standard image processors")
    changed = [name for name in _STANDARD_STEPS if getattr(type(processor), name) is not getattr(base, name)]
    if changed:
        refuse(f"runs preprocessing code of its own ({', '.join(changed)})")
    if not processor.do_resize:
        refuse("does not resize (do_resize=False)")
    size = {key: int(value) for key, value in dict(processor.size).items()}
    crop = {key: int(value) for key, value in dict(processor.crop_size or {}).items()}
    if processor.do_center_crop:
        if set(crop) != {"height", "width"}:
            refuse(f"centre-crops to {crop or 'no size'} (expected a height and a width)")
        output_size = (crop["height"], crop["width"])
    elif set(size) == {"height", "width"}:
        output_size = (size["height"], size["width"])
    else:
        refuse(f"resizes to {size} without a centre crop, so its images have no fixed size")
    to_unit_range = MimirImageProcessor.rescale_factor  # 8-bit pixels -> [0, 1]
    if not processor.do_rescale or not math.isclose(processor.rescale_factor or 0.0, to_unit_range):
        refuse(f"does not rescale 8-bit pixels to [0, 1] (do_rescale={processor.do_rescale}, rescale_factor="
               f"{processor.rescale_factor})")  # fmt: skip
    if getattr(processor, "do_pad", None):
        refuse("pads its images (do_pad=True)")
    # None: the PIL backend's default filter
    resample = int(processor.resample if processor.resample is not None else PILImageResampling.BILINEAR)
    resize = dict(size=size, resample=resample, do_center_crop=bool(processor.do_center_crop))
    if processor.do_center_crop:
        resize["crop_size"] = crop
    mean = std = None
    if processor.do_normalize:
        mean, std = (_per_channel(value, num_channels) for value in (processor.image_mean, processor.image_std))
        if mean is None or std is None:
            refuse(f"normalises with {processor.image_mean} / {processor.image_std}, not one value per channel "
                   f"({num_channels})")  # fmt: skip
    return CarriedPreprocessing(resize, output_size, mean, std)


def _per_channel(value, num_channels: int) -> list[float] | None:
    """`value` (a number, or a sequence of one or `num_channels` numbers) as `num_channels` floats; None otherwise."""
    values = [value] if isinstance(value, (int, float)) else list(value or [])
    if len(values) == 1:
        values = values * num_channels
    return [float(v) for v in values] if len(values) == num_channels else None


def saved_image_processor(path: str, **hub_kwargs):
    """The image processor saved with a checkpoint (a folder or Hub id), with transformers' PIL backend (the one
    `MimirImageProcessor` uses), or None when the checkpoint has none. A file that cannot be loaded is a `ValueError`
    naming it."""
    from transformers import AutoImageProcessor
    from transformers.utils import cached_file

    try:
        if cached_file(path, PREPROCESSOR_FILE, _raise_exceptions_for_missing_entries=False, **hub_kwargs) is None:
            return None
        return AutoImageProcessor.from_pretrained(path, backend="pil", **hub_kwargs)
    except (OSError, ValueError, KeyError, TypeError) as error:
        reason = str(error).split("\n")[0][:200]
        raise ValueError(
            f"The {PREPROCESSOR_FILE} of {path} cannot be loaded as an image processor ({reason}); fix or remove it."
        ) from None


_16_BIT = ("I;16", "I;16B", "I;16L", "I;16N")


def _scale_to_8bit(array: np.ndarray, image: Image.Image) -> Image.Image:
    """An "L" image from integer or float pixel values, divided by the range they are in: [0, 1], [0, 255] or
    [0, 65535] (16-bit); anything else is refused."""
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise ValueError(f"{_name(image)} has NaN or infinite pixel values; expected a finite image.")
    low, high = float(array.min()), float(array.max())
    if image.mode in _16_BIT:
        scale = 65535.0
    elif low >= 0 and high <= 1 and image.mode == "F":
        scale = 1.0
    elif low >= 0 and high <= 255:
        scale = 255.0
    elif low >= 0 and high <= 65535:
        scale = 65535.0
    else:
        raise ValueError(
            f"{_name(image)} (mode {image.mode}) has pixel values in [{low:g}, {high:g}], which is not an 8-bit, "
            "16-bit or [0, 1] range; convert it to an 8- or 16-bit image first."
        )
    return Image.fromarray(np.round(array / scale * 255.0).astype(np.uint8), mode="L")


def _name(image: Image.Image) -> str:
    filename = getattr(image, "filename", "") or ""
    return f"The image {filename}" if filename else "An image"


def to_model_mode(image: Image.Image, num_channels: int) -> Image.Image:
    """`image` as 8-bit "L" (`num_channels` 1) or "RGB" (3) pixels, converted by its real range (see the module
    docstring); a `ValueError` naming the file for an image that cannot be converted."""
    target = "L" if num_channels == 1 else "RGB"
    if image.mode == target:
        return image
    if image.mode in _16_BIT or image.mode in ("I", "F"):
        image = _scale_to_8bit(np.asarray(image), image)
    elif image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    elif image.mode not in ("1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"):
        raise ValueError(
            f"{_name(image)} has the PIL mode {image.mode!r}, which mimir_hf cannot convert to {target} pixels "
            "faithfully; convert it to an 8- or 16-bit grey or RGB image first."
        )
    return image.convert(target)


__all__ = [
    "PREPROCESSOR_FILE",
    "CarriedPreprocessing",
    "MimirImageProcessor",
    "carried_preprocessing",
    "image_tensors",
    "saved_image_processor",
    "to_model_mode",
]
