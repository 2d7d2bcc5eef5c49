"""Train-time data augmentation: per-example image transforms and batch-level mixup / cutmix with soft targets.

Per-example augmentation (`AugmentationArguments` -> `TrainAugmentation`) runs inside the training split's `datasets`
transform (`mimir_hf.data.with_pixel_transform(..., augmentation=...)`), so DataLoader workers run it; the evaluation
split never gets one. It has two stages around the image processor:

- on the PIL image, before the processor: random-resized crop (bicubic, to the model's size) + horizontal flip, and
  RandAugment;
- on the `[C, H, W]` tensor of [0, 1] pixels, after it: pad-4 random crop + horizontal flip (at the model's size, as
  CIFAR's `RandomCrop(32, padding=4)`), and random erasing.

Mixup / cutmix mix a whole batch and turn its labels into soft targets (`mix_batch`); `MimirAdversarialTrainer`
applies it to training batches (`mixup_alpha`, `cutmix_alpha`), and its attack and loss then use the soft-target
cross-entropy, as the authors' Swin fine-tuning (ARES, timm `Mixup` + `SoftTargetCrossEntropy`) does.

The image operations are PIL's (`ImageOps`, `ImageEnhance`, affine `Image.transform`) and small tensor code: no
dependency beyond what mimir_hf already has. The RandAugment policy is the one of the authors' timm setting
`rand-m9-mstd0.5-inc1`: 15 operations with severity increasing in the magnitude, 2 drawn per image with
replacement, each applied with probability 0.5 at a magnitude drawn from N(m, mstd) clipped to [0, 10].
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass, field

import torch
from PIL import Image, ImageEnhance, ImageOps

from .image_processing_mimir import to_model_mode

AUGMENTATIONS = ("none", "crop-flip", "resized-crop-flip")
RESIZED_CROP_RATIO = (3 / 4, 4 / 3)  # aspect-ratio range of the random-resized crop (torchvision's and timm's)
MAX_MAGNITUDE = 10  # RandAugment magnitudes are on timm's 0..10 scale
ERASING_AREA = (0.02, 1 / 3)  # random erasing: fraction of the image erased, and the aspect-ratio range
ERASING_RATIO = (0.3, 1 / 0.3)
MIXUP_SWITCH_PROB = 0.5  # with both mixup and cutmix on, a batch is cut-mixed with this probability (timm's)


@dataclass
class AugmentationArguments:
    """Train-time augmentation of each training image (off by default; evaluation never augments).

    Presets of the paper's rows: CIFAR-10 pre-training and fine-tuning `crop-flip`; ImageNet MAE pre-training
    `resized-crop-flip` with scale 0.2; the authors' ARES Swin / ViT fine-tuning `resized-crop-flip` with scale 0.08,
    `randaugment_magnitude 9`, `random_erasing 0.25` (plus mixup 0.8 / cutmix 1.0 in the trainer's arguments).
    """

    augmentation: str = field(
        default="none",
        metadata={
            "help": "Geometric augmentation of training images: 'none'; 'crop-flip' (zero-pad by crop_padding, random "
            "crop back to the model's size, horizontal flip: CIFAR); 'resized-crop-flip' (random-resized crop of "
            "resized_crop_scale..1 of the area, aspect 3/4..4/3, bicubic, horizontal flip: MAE / ImageNet)."
        },
    )
    crop_padding: int = field(default=4, metadata={"help": "Zero padding of 'crop-flip', in pixels."})
    resized_crop_scale: float = field(
        default=0.2,
        metadata={"help": "Smallest area fraction of 'resized-crop-flip' (MAE pre-training 0.2; timm/ARES 0.08)."},
    )
    randaugment_magnitude: float | None = field(
        default=None, metadata={"help": "RandAugment magnitude on the 0..10 scale (ARES: 9); none: no RandAugment."}
    )
    randaugment_magnitude_std: float = field(
        default=0.5, metadata={"help": "Standard deviation of each operation's magnitude (ARES: 0.5)."}
    )
    randaugment_num_ops: int = field(default=2, metadata={"help": "RandAugment operations per image."})
    random_erasing: float = field(
        default=0.0, metadata={"help": "Probability of erasing one random rectangle with noise (ARES: 0.25)."}
    )

    def __post_init__(self):
        if self.augmentation not in AUGMENTATIONS:
            raise ValueError(f"augmentation must be one of {AUGMENTATIONS}, got {self.augmentation!r}.")
        if self.crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {self.crop_padding}.")
        if not 0 < self.resized_crop_scale <= 1:
            raise ValueError(f"resized_crop_scale must be in (0, 1], got {self.resized_crop_scale}.")
        if self.randaugment_magnitude is not None and not 0 <= self.randaugment_magnitude <= MAX_MAGNITUDE:
            raise ValueError(
                f"randaugment_magnitude must be in [0, {MAX_MAGNITUDE}], got {self.randaugment_magnitude}."
            )
        if self.randaugment_magnitude_std < 0 or self.randaugment_num_ops < 1:
            raise ValueError(
                "randaugment_magnitude_std must be >= 0 and randaugment_num_ops >= 1, got "
                f"{self.randaugment_magnitude_std} and {self.randaugment_num_ops}."
            )
        if not 0 <= self.random_erasing <= 1:
            raise ValueError(f"random_erasing must be a probability in [0, 1], got {self.random_erasing}.")

    @property
    def enabled(self) -> bool:
        return self.augmentation != "none" or self.randaugment_magnitude is not None or self.random_erasing > 0

    def describe(self) -> str:
        """E.g. `"resized-crop-flip (scale 0.08-1, bicubic), RandAugment m9 mstd0.5 x2, random erasing 0.25"`."""
        parts = []
        if self.augmentation == "crop-flip":
            parts.append(f"pad-{self.crop_padding} random crop + horizontal flip")
        elif self.augmentation == "resized-crop-flip":
            parts.append(f"random-resized crop (scale {self.resized_crop_scale:g}-1, bicubic) + horizontal flip")
        if self.randaugment_magnitude is not None:
            parts.append(
                f"RandAugment m{self.randaugment_magnitude:g} mstd{self.randaugment_magnitude_std:g} "
                f"x{self.randaugment_num_ops}"
            )
        if self.random_erasing > 0:
            parts.append(f"random erasing {self.random_erasing:g}")
        return ", ".join(parts) or "none"

    def build(self, image_size: tuple[int, int], num_channels: int) -> TrainAugmentation | None:
        """The per-example transform for a model of `image_size` (height, width), or None when nothing is on."""
        return TrainAugmentation(self, image_size, num_channels) if self.enabled else None


class _Randomness:
    """A Python and a torch generator of this process (and DataLoader worker): seeded from torch's initial seed, which
    transformers' `seed_worker` sets per worker and rank (and `set_seed` per run), and from the rank, so processes never
    draw alike and a new seed starts new draws."""

    _by_process: dict[tuple[int, int], _Randomness] = {}

    def __init__(self, seed: int):
        seed = (seed + 1_000_003 * int(os.environ.get("RANK", "0"))) % 2**63
        self.python = random.Random(seed)
        self.torch = torch.Generator().manual_seed(seed)

    @classmethod
    def here(cls) -> _Randomness:
        key = (os.getpid(), torch.initial_seed())
        if key not in cls._by_process:
            cls._by_process[key] = cls(key[1])
        return cls._by_process[key]


class TrainAugmentation:
    """The per-example training transform built from `AugmentationArguments` for one model size.

    `augment_image` is the PIL stage (before the image processor), `augment_tensor` the tensor stage (after it, on
    `[C, H, W]` pixels in [0, 1]). Both draw from a generator of their own process (see `_Randomness`).
    """

    def __init__(self, settings: AugmentationArguments, image_size: tuple[int, int], num_channels: int):
        self.settings = settings
        self.height, self.width = int(image_size[0]), int(image_size[1])
        self.mode = "L" if num_channels == 1 else "RGB"

    def __repr__(self) -> str:
        return f"TrainAugmentation({self.settings.describe()}, {self.height}x{self.width})"

    @property
    def outputs_model_size(self) -> bool:
        """Whether `augment_image` gives every image at the model's size (its random-resized crop does), so that the
        image processor has nothing left to resize or crop."""
        return self.settings.augmentation == "resized-crop-flip"

    def augment_image(self, image) -> Image.Image:
        """Random-resized crop + flip and RandAugment on one PIL image (numpy arrays are converted first)."""
        settings = self.settings
        if settings.augmentation != "resized-crop-flip" and settings.randaugment_magnitude is None:
            return image
        rng = _Randomness.here().python
        if not isinstance(image, Image.Image):
            image = Image.fromarray(image)
        image = to_model_mode(image, 1 if self.mode == "L" else 3)
        if settings.augmentation == "resized-crop-flip":
            image = random_resized_crop(image, (self.height, self.width), settings.resized_crop_scale, rng)
            if rng.random() < 0.5:
                image = ImageOps.mirror(image)
        if settings.randaugment_magnitude is not None:
            image = rand_augment(
                image, settings.randaugment_magnitude, settings.randaugment_magnitude_std, settings.randaugment_num_ops,
                rng,
            )  # fmt: skip
        return image

    def augment_tensor(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pad-and-crop + flip, and random erasing, on one `[C, H, W]` image of [0, 1] pixels."""
        settings = self.settings
        randomness = _Randomness.here()
        if settings.augmentation == "crop-flip":
            pixel_values = padded_random_crop(pixel_values, settings.crop_padding, randomness.python)
            if randomness.python.random() < 0.5:
                pixel_values = pixel_values.flip(-1)
        if settings.random_erasing > 0 and randomness.python.random() < settings.random_erasing:
            pixel_values = random_erase(pixel_values, randomness.python, randomness.torch)
        return pixel_values


# ----------------------------------------------------------------------------------------------------------------
# Geometric operations
# ----------------------------------------------------------------------------------------------------------------


def random_resized_crop(
    image: Image.Image, size: tuple[int, int], scale_min: float, rng: random.Random, attempts: int = 10
) -> Image.Image:
    """A crop of a random area fraction in [scale_min, 1] and aspect ratio in [3/4, 4/3] (log-uniform), resized
    bicubically to `size` (height, width). After `attempts` draws that do not fit, the centre crop of the largest
    box whose aspect ratio is within the range."""
    width, height = image.size
    area = width * height
    low, high = (math.log(r) for r in RESIZED_CROP_RATIO)
    for _ in range(attempts):
        target = area * rng.uniform(scale_min, 1.0)
        ratio = math.exp(rng.uniform(low, high))
        crop_w, crop_h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            left, top = rng.randint(0, width - crop_w), rng.randint(0, height - crop_h)
            break
    else:
        aspect = width / height
        if aspect < RESIZED_CROP_RATIO[0]:
            crop_w, crop_h = width, round(width / RESIZED_CROP_RATIO[0])
        elif aspect > RESIZED_CROP_RATIO[1]:
            crop_w, crop_h = round(height * RESIZED_CROP_RATIO[1]), height
        else:
            crop_w, crop_h = width, height
        left, top = (width - crop_w) // 2, (height - crop_h) // 2
    box = (left, top, left + crop_w, top + crop_h)
    return image.resize((size[1], size[0]), Image.Resampling.BICUBIC, box=box)


def padded_random_crop(pixel_values: torch.Tensor, padding: int, rng: random.Random) -> torch.Tensor:
    """Zero-pad `[C, H, W]` by `padding` on every side and take a random `H x W` crop (CIFAR's RandomCrop)."""
    if padding == 0:
        return pixel_values
    _, height, width = pixel_values.shape
    padded = torch.nn.functional.pad(pixel_values, (padding, padding, padding, padding))
    top, left = rng.randint(0, 2 * padding), rng.randint(0, 2 * padding)
    return padded[:, top : top + height, left : left + width].contiguous()


def random_erase(
    pixel_values: torch.Tensor, rng: random.Random, generator: torch.Generator, attempts: int = 10
) -> torch.Tensor:
    """Replace one random rectangle (2%-33% of the image, aspect 0.3-3.3) of `[C, H, W]` with per-pixel noise.

    The noise is N(0, 1) clipped to [0, 1]. timm's "pixel" mode fills with N(0, 1) in the model's normalised space;
    with the authors' mean 0 / std 1 those values leave [0, 1], and their attack clipped its examples back into
    [0, 1], so this is what their model saw; mimir_hf keeps every training image in [0, 1] from the start.
    """
    channels, height, width = pixel_values.shape
    area = height * width
    low, high = (math.log(r) for r in ERASING_RATIO)
    for _ in range(attempts):
        target = area * rng.uniform(*ERASING_AREA)
        ratio = math.exp(rng.uniform(low, high))
        erase_h, erase_w = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < erase_h < height and 0 < erase_w < width:
            top, left = rng.randint(0, height - erase_h), rng.randint(0, width - erase_w)
            noise = torch.randn(channels, erase_h, erase_w, generator=generator).clamp_(0.0, 1.0)
            pixel_values = pixel_values.clone()
            pixel_values[:, top : top + erase_h, left : left + erase_w] = noise.to(pixel_values.dtype)
            break
    return pixel_values


# ----------------------------------------------------------------------------------------------------------------
# RandAugment (the "increasing" operation set of timm's rand-m*-inc1)
# ----------------------------------------------------------------------------------------------------------------

_FILL = 0  # what rotations, shears and translations uncover: black, the authors' mean with mean 0 / std 1
_BICUBIC = Image.Resampling.BICUBIC


def _signed(value: float, rng: random.Random) -> float:
    return -value if rng.random() < 0.5 else value


def _affine(image: Image.Image, coefficients: tuple) -> Image.Image:
    return image.transform(image.size, Image.Transform.AFFINE, coefficients, resample=_BICUBIC, fillcolor=_FILL)


def _enhance(kind):
    # Factor 1 leaves the image as it is; the magnitude moves it towards 0.1 or 1.9.
    return lambda image, level, rng: kind(image).enhance(max(0.1, 1.0 + _signed(0.9 * level, rng)))


def _posterize(image: Image.Image, level: float, rng: random.Random) -> Image.Image:
    # Keeps 4 bits at magnitude 0 down to 1 bit at 10 (0 bits, a black image, with the Pillow of 2023; Pillow now
    # refuses 0, as newer timm does).
    return ImageOps.posterize(image, max(1, 4 - int(4 * level)))


def _solarize_add(image: Image.Image, level: float, rng: random.Random) -> Image.Image:
    add = int(110 * level)  # brighten the pixels below 128
    table = [min(255, value + add) if value < 128 else value for value in range(256)]
    return image.point(table * len(image.getbands()))


# Each operation maps (image, level in [0, 1], rng) to an image; level = magnitude / 10.
RAND_AUGMENT_OPERATIONS = {
    "auto_contrast": lambda image, level, rng: ImageOps.autocontrast(image),
    "equalize": lambda image, level, rng: ImageOps.equalize(image),
    "invert": lambda image, level, rng: ImageOps.invert(image),
    "rotate": lambda image, level, rng: image.rotate(_signed(30 * level, rng), resample=_BICUBIC, fillcolor=_FILL),
    "posterize": _posterize,
    "solarize": lambda image, level, rng: ImageOps.solarize(image, 256 - int(256 * level)),
    "solarize_add": _solarize_add,
    "color": _enhance(ImageEnhance.Color),
    "contrast": _enhance(ImageEnhance.Contrast),
    "brightness": _enhance(ImageEnhance.Brightness),
    "sharpness": _enhance(ImageEnhance.Sharpness),
    "shear_x": lambda image, level, rng: _affine(image, (1, _signed(0.3 * level, rng), 0, 0, 1, 0)),
    "shear_y": lambda image, level, rng: _affine(image, (1, 0, 0, _signed(0.3 * level, rng), 1, 0)),
    "translate_x": lambda image, level, rng: _affine(image, (1, 0, _signed(0.45 * level, rng) * image.width, 0, 1, 0)),
    "translate_y": lambda image, level, rng: _affine(image, (1, 0, 0, 0, 1, _signed(0.45 * level, rng) * image.height)),
}


def rand_augment(
    image: Image.Image, magnitude: float, magnitude_std: float, num_ops: int, rng: random.Random, probability=0.5
) -> Image.Image:
    """RandAugment: `num_ops` operations drawn uniformly with replacement, each applied with `probability` at a
    magnitude from N(`magnitude`, `magnitude_std`) clipped to [0, 10]."""
    for name in rng.choices(list(RAND_AUGMENT_OPERATIONS), k=num_ops):
        if rng.random() >= probability:
            continue
        drawn = rng.gauss(magnitude, magnitude_std) if magnitude_std > 0 else magnitude
        level = min(max(drawn, 0.0), MAX_MAGNITUDE) / MAX_MAGNITUDE
        image = RAND_AUGMENT_OPERATIONS[name](image, level, rng)
    return image


# ----------------------------------------------------------------------------------------------------------------
# Mixup / cutmix
# ----------------------------------------------------------------------------------------------------------------


def mix_batch(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    mixup_alpha: float,
    cutmix_alpha: float,
    rng: random.Random,
    switch_prob: float = MIXUP_SWITCH_PROB,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix a batch with its reverse (one mixing weight for the whole batch, timm's "batch" mode) and return the mixed
    images and their soft targets `[B, num_classes]` (float32, rows summing to 1).

    With both alphas > 0, cutmix (lambda ~ Beta(cutmix_alpha, cutmix_alpha)) is chosen with `switch_prob`, mixup
    (lambda ~ Beta(mixup_alpha, mixup_alpha)) otherwise. Mixup blends the images, x = lambda x + (1 - lambda) x_rev;
    cutmix pastes a box of x_rev of area ~(1 - lambda) and lambda is corrected to the box's real area after clipping.
    Targets: lambda * onehot(y) + (1 - lambda) * onehot(y_rev); label smoothing is applied by the loss.
    """
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        raise ValueError("mix_batch needs mixup_alpha > 0 or cutmix_alpha > 0.")
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or rng.random() < switch_prob)
    alpha = cutmix_alpha if use_cutmix else mixup_alpha
    lam = rng.betavariate(alpha, alpha)
    reverse = images.flip(0)
    if use_cutmix:
        height, width = images.shape[-2:]
        cut = math.sqrt(1.0 - lam)
        cut_h, cut_w = int(height * cut), int(width * cut)
        center_y, center_x = rng.randrange(height), rng.randrange(width)
        top, bottom = max(center_y - cut_h // 2, 0), min(center_y + cut_h // 2, height)
        left, right = max(center_x - cut_w // 2, 0), min(center_x + cut_w // 2, width)
        images = images.clone()
        images[..., top:bottom, left:right] = reverse[..., top:bottom, left:right]
        lam = 1.0 - (bottom - top) * (right - left) / (height * width)
    else:
        images = images * lam + reverse * (1.0 - lam)
    one_hot = torch.nn.functional.one_hot(labels.long(), num_classes).float()
    return images, lam * one_hot + (1.0 - lam) * one_hot.flip(0)


__all__ = [
    "AUGMENTATIONS",
    "RAND_AUGMENT_OPERATIONS",
    "AugmentationArguments",
    "TrainAugmentation",
    "mix_batch",
    "padded_random_crop",
    "rand_augment",
    "random_erase",
    "random_resized_crop",
]
