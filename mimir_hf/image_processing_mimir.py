"""Image processor of MIMIR models: resize (and optionally centre-crop) to the model's size, rescale to [0, 1], match
the model's channel count. The one preprocessing path of training, evaluation and `pipeline()`.

transformers' PIL image-processing backend with normalisation off -- it happens inside the model -- and one addition:
PIL images are first brought to 8-bit pixels of the model's channels ("L" for 1, "RGB" for 3) by their real range, so
that nothing is silently clipped or zeroed: 16-bit images are divided by 65535, float ("F") images are read as [0, 1],
[0, 255] or [0, 65535] by their range, images with transparency are composited on white (so content drawn in the
alpha channel stays visible), and what cannot be converted is refused with the file's name.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from transformers.image_processing_backends import PilBackend
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

    Resizing is bicubic; pixels are rescaled to [0, 1] and never normalised.
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


__all__ = ["MimirImageProcessor", "to_model_mode"]
