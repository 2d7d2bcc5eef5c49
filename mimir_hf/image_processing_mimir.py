"""Image processor of MIMIR models: resize (and optionally centre-crop) to the model's size, rescale to [0, 1], match
the model's channel count. The one preprocessing path of training, evaluation and `pipeline()`.

transformers' PIL image-processing backend with normalisation off -- it happens inside the model -- and one addition:
PIL images are converted to the model's channels ("L" for 1, "RGB" for 3) before anything else, so
`pipeline("image-classification")`, which hands over RGB images, also feeds grey-scale models.
"""

from __future__ import annotations

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

    def process_image(self, image, do_convert_rgb=None, input_data_format=None, **kwargs):
        if isinstance(image, Image.Image):
            image = image.convert("L" if self.num_channels == 1 else "RGB")
            do_convert_rgb = False
        return super().process_image(
            image, do_convert_rgb=do_convert_rgb, input_data_format=input_data_format, **kwargs
        )


MimirImageProcessor.register_for_auto_class("AutoImageProcessor")

__all__ = ["MimirImageProcessor"]
