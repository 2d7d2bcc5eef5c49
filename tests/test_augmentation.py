"""Train-time augmentation: each operation, the transform around the image processor, mixup / cutmix soft targets and
the soft-target attack, and the adversarial trainer on mixed batches."""

import logging
import random

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage

from mimir_hf import AttackBudget, MimirForImageClassification
from mimir_hf.attacks import soft_target_attack
from mimir_hf.augmentation import (
    RAND_AUGMENT_OPERATIONS,
    AugmentationArguments,
    mix_batch,
    padded_random_crop,
    rand_augment,
    random_erase,
    random_resized_crop,
)
from mimir_hf.data import image_processor_for, tensors, with_pixel_transform
from mimir_hf.trainer import MimirAdversarialTrainer

from .conftest import tiny_config
from .test_trainer import arguments, dataset


def picture(width=60, height=40, mode="RGB", seed=0):
    pixels = np.random.RandomState(seed).randint(0, 256, (height, width, 3), dtype=np.uint8)
    return PILImage.fromarray(pixels).convert(mode)


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_every_rand_augment_operation_keeps_size_and_mode_at_every_level(mode):
    rng = random.Random(0)
    image = picture(mode=mode)
    for name, operation in RAND_AUGMENT_OPERATIONS.items():
        for level in (0.0, 0.5, 1.0):
            out = operation(image, level, rng)
            assert out.size == image.size and out.mode == image.mode, (name, level)
    assert len(RAND_AUGMENT_OPERATIONS) == 15  # timm's rand-*-inc1 set
    # level 0 of an "increasing" operation leaves the image as it is
    for name in ("color", "contrast", "brightness", "sharpness", "solarize", "solarize_add", "rotate", "shear_x"):
        assert np.array_equal(np.asarray(RAND_AUGMENT_OPERATIONS[name](image, 0.0, rng)), np.asarray(image)), name


def test_rand_augment_draws_two_operations_with_probability_one_half():
    image = picture()
    rng = random.Random(1)
    changed = sum(
        not np.array_equal(np.asarray(rand_augment(image, 9, 0.5, 2, rng)), np.asarray(image)) for _ in range(400)
    )
    # Unchanged only when neither operation fires (1/4), or rarely when one is a no-op on this image.
    assert 0.65 < changed / 400 < 0.85


def test_random_resized_crop_statistics_and_output_size():
    rng = random.Random(0)
    image = picture(120, 80)
    out = random_resized_crop(image, (32, 48), 0.2, rng)
    assert out.size == (48, 32)
    # scale 1 on a square image: the whole image (ratio 1 is the only one that fits), resized to itself
    square = picture(64, 64)
    scale_one = [random_resized_crop(square, (64, 64), 1.0, random.Random(seed)) for seed in range(5)]
    assert any(np.array_equal(np.asarray(crop), np.asarray(square)) for crop in scale_one)


def test_padded_crop_and_erasing_keep_shape_and_range():
    rng, generator = random.Random(0), torch.Generator().manual_seed(0)
    x = torch.rand(3, 32, 32) * 0.5 + 0.25
    shifted = [padded_random_crop(x, 4, rng) for _ in range(50)]
    assert all(s.shape == x.shape for s in shifted)
    assert any((s == 0).any() for s in shifted)  # some crops reach into the zero padding
    erased = random_erase(x, rng, generator)
    assert erased.shape == x.shape and 0 <= erased.min() and erased.max() <= 1
    changed = (erased != x).any(0)
    assert 0.02 * 1024 * 0.5 <= changed.sum() <= 1024 / 3 + 64  # one rectangle of 2%-33% of the image
    assert torch.equal(x, x.clone())  # the input is not modified in place


def test_augmentation_arguments_check_their_values():
    with pytest.raises(ValueError, match="augmentation must be one of"):
        AugmentationArguments(augmentation="autoaugment")
    with pytest.raises(ValueError, match="randaugment_magnitude must be in"):
        AugmentationArguments(randaugment_magnitude=12)
    with pytest.raises(ValueError, match="random_erasing must be a probability"):
        AugmentationArguments(random_erasing=2)
    assert AugmentationArguments().build((32, 32), 3) is None and AugmentationArguments().describe() == "none"
    described = AugmentationArguments(
        augmentation="resized-crop-flip", resized_crop_scale=0.08, randaugment_magnitude=9, random_erasing=0.25
    ).describe()
    assert described == (
        "random-resized crop (scale 0.08-1, bicubic) + horizontal flip, RandAugment m9 mstd0.5 x2, random erasing 0.25"
    )


def image_dataset(n=8, size=24):
    features = Features({"image": Image(), "label": ClassLabel(names=["a", "b", "c", "d"])})
    images = [picture(size, size, seed=i) for i in range(n)]
    return Dataset.from_dict({"image": images, "label": [i % 4 for i in range(n)]}, features=features)


@pytest.mark.parametrize(
    "settings",
    [
        AugmentationArguments(augmentation="crop-flip", random_erasing=0.5),
        AugmentationArguments(augmentation="resized-crop-flip", randaugment_magnitude=9, random_erasing=0.25),
    ],
)
def test_training_transform_augments_every_epoch_and_evaluation_never(settings):
    config = tiny_config()
    processor = image_processor_for(config)
    data = image_dataset()
    plain, _ = tensors(with_pixel_transform(data, "image", "label", processor))
    augmented = with_pixel_transform(data, "image", "label", processor, settings.build(config.image_size_hw, 3))
    first, labels = tensors(augmented)
    second, _ = tensors(augmented)
    assert first.shape == plain.shape == (8, 3, 16, 16) and labels.tolist() == [0, 1, 2, 3] * 2
    assert 0 <= first.min() and first.max() <= 1
    assert not torch.equal(first, second) and not torch.equal(first, plain)  # fresh draws at every access
    again, _ = tensors(with_pixel_transform(data, "image", "label", processor))
    assert torch.equal(again, plain)  # no augmentation: deterministic


@pytest.mark.parametrize("mixup, cutmix", [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_mix_batch_soft_targets_match_the_mixed_images(mixup, cutmix):
    images = torch.stack([torch.full((3, 16, 16), float(i) / 8) for i in range(8)])
    labels = torch.arange(8) % 4
    rng = random.Random(0)
    for _ in range(20):
        mixed, targets = mix_batch(images, labels, 4, mixup, cutmix, rng)
        assert mixed.shape == images.shape and targets.shape == (8, 4)
        assert torch.allclose(targets.sum(1), torch.ones(8))
        # The weight of the image's own class is the fraction of it left in the mix (mixup: the blend factor;
        # cutmix: the area outside the pasted box), recovered here from the constant-valued images.
        own = (mixed[0] - images[-1]) / (images[0] - images[-1])
        lam = own.mean().item()
        assert targets[0, 0].item() == pytest.approx(lam, abs=1e-5)
        assert targets[0, labels[-1]].item() == pytest.approx(1 - lam, abs=1e-5)
    with pytest.raises(ValueError, match="mixup_alpha > 0 or cutmix_alpha > 0"):
        mix_batch(images, labels, 4, 0.0, 0.0, rng)


def test_soft_target_attack_raises_the_soft_loss_and_checks_its_targets(images):
    model = MimirForImageClassification(tiny_config())
    model.classifier.weight.data.normal_(std=0.5)
    targets = torch.softmax(torch.randn(6, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    budget = AttackBudget(8 / 255, 2 / 255, 5)
    adversarial = soft_target_attack(model, images, targets, budget, label_smoothing=0.1)
    assert (adversarial - images).abs().max() <= 8 / 255 + 1e-6

    def loss(x):
        with torch.no_grad():
            return torch.nn.functional.cross_entropy(model(x).logits, targets, label_smoothing=0.1).item()

    assert loss(adversarial) > loss(images)
    with pytest.raises(ValueError, match="shape \\(images, classes\\)"):
        soft_target_attack(model, images, targets[:, :3], budget)
    with pytest.raises(ValueError, match="rows that sum to 1"):
        soft_target_attack(model, images, targets * 2, budget)


def test_adversarial_trainer_on_mixed_batches_attacks_the_soft_targets(tmp_path, monkeypatch):
    import mimir_hf.trainer as trainer_module

    seen = []
    original = trainer_module.soft_target_attack

    def spy(model, images, targets, budget, label_smoothing=0.0, generator=None):
        seen.append((targets.shape, budget.step_size, label_smoothing))
        return original(model, images, targets, budget, label_smoothing, generator)

    monkeypatch.setattr(trainer_module, "soft_target_attack", spy)
    args = arguments(tmp_path, num_train_epochs=2, mixup_alpha=0.8, cutmix_alpha=1.0, logging_steps=1)
    trainer = MimirAdversarialTrainer(
        model=MimirForImageClassification(tiny_config()), args=args, train_dataset=dataset()
    )
    trainer.train()
    assert len(seen) == 2 and all(shape == (8, 4) and smoothing == 0.1 for shape, _, smoothing in seen)
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert all(np.isfinite(entry["loss"]) and "adversarial_accuracy" in entry for entry in logged)
    with pytest.raises(ValueError, match="soft targets, which adversarial_method='trades'"):
        arguments(tmp_path, mixup_alpha=0.8, adversarial_method="trades")


def test_step_size_ramp_follows_the_epoch(tmp_path, monkeypatch):
    """ARES: step x min(epoch, 5) / 5 with 0-based epochs, so epoch 0 only adds the random start."""
    import mimir_hf.trainer as trainer_module

    args = arguments(tmp_path, num_train_epochs=3, adversarial_step_size_ramp_epochs=2)
    assert [args.adversarial_step_size_at(e) for e in (0.0, 0.9, 1.0, 1.5, 2.0, 7.0)] == pytest.approx(
        [0, 0, 2 / 255, 2 / 255, 4 / 255, 4 / 255]
    )
    steps = []
    original = trainer_module.pgd_attack
    monkeypatch.setattr(
        trainer_module,
        "pgd_attack",
        lambda m, x, y, budget: steps.append(budget.step_size) or original(m, x, y, budget),
    )
    trainer = MimirAdversarialTrainer(
        model=MimirForImageClassification(tiny_config()), args=args, train_dataset=dataset()
    )
    trainer.train()
    assert steps == pytest.approx([2 / 255, 4 / 255])  # epoch 0: random start only, no PGD call


# ------------------------------------------------------------------------------------------------------------------
# The shortcut past the resize round trip: the same pixels, bit for bit, as the processor
# ------------------------------------------------------------------------------------------------------------------


def _processor_pixels(images, processor):
    return list(processor(images=images, return_tensors="pt")["pixel_values"])


@pytest.mark.parametrize("channels", [3, 1])
def test_image_tensors_equal_the_processor_bit_for_bit_and_skip_it_at_the_model_s_size(channels, monkeypatch):
    from mimir_hf.image_processing_mimir import image_tensors

    processor = image_processor_for(tiny_config(image_size=16, patch_size=4, num_channels=channels))
    mode = "L" if channels == 1 else "RGB"
    # every 8-bit level once, at the model's size; one image of another size and one with transparency, which the
    # processor itself must handle (resize; compositing on white)
    levels = np.arange(768, dtype=np.uint8).reshape(16, 16, 3)
    images = [PILImage.fromarray(levels).convert(mode), picture(16, 16, mode, seed=1), picture(40, 24, mode, seed=2)]
    images.append(picture(16, 16, "RGBA", seed=3))
    expected = _processor_pixels(images, processor)
    calls = []
    original = type(processor).__call__
    monkeypatch.setattr(type(processor), "__call__", lambda self, *a, **k: calls.append(k) or original(self, *a, **k))
    out = image_tensors(images, processor)
    for mine, theirs in zip(out, expected, strict=True):
        assert mine.dtype == theirs.dtype == torch.float32 and mine.shape == theirs.shape
        assert mine.is_contiguous() and torch.equal(mine, theirs)
    assert [len(call["images"]) for call in calls] == [2]  # only the two images not already at size and mode


def test_image_tensors_leave_a_centre_crop_to_the_processor():
    from mimir_hf.data import image_processor_for as processor_for
    from mimir_hf.image_processing_mimir import image_tensors

    processor = processor_for(tiny_config(image_size=16, patch_size=4), crop_pct=0.875)
    images = [picture(16, 16, seed=4), picture(30, 20, seed=5)]
    for mine, theirs in zip(image_tensors(images, processor), _processor_pixels(images, processor), strict=True):
        assert torch.equal(mine, theirs)


def _previous_transform(augmentation, processor):
    """The training transform as it was before the shortcut: PIL stage (mode converted by a copy), the processor on
    the whole batch, the tensor stage."""

    def transform(images):
        images = [augmentation.augment_image(image) for image in images]
        return [augmentation.augment_tensor(pixels) for pixels in _processor_pixels(images, processor)]

    return transform


def _jpeg_folder_dataset(tmp_path, width, height, suffix, count):
    rng = np.random.RandomState(0)
    paths = []
    for index in range(count):
        path = tmp_path / f"{index}{suffix}"
        PILImage.fromarray(rng.randint(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    features = Features({"image": Image(), "label": ClassLabel(num_classes=2)})
    return Dataset.from_dict({"image": paths, "label": [i % 2 for i in range(count)]}, features=features)


@pytest.mark.parametrize(
    "size, source, settings",
    [
        (32, (32, 32, ".png"), dict(augmentation="crop-flip", random_erasing=0.5)),
        (32, (32, 32, ".png"), dict(randaugment_magnitude=9)),
        (64, (50, 38, ".jpg"), dict(augmentation="resized-crop-flip", resized_crop_scale=0.2)),
        (
            64,
            (50, 38, ".jpg"),
            dict(
                augmentation="resized-crop-flip", resized_crop_scale=0.08, randaugment_magnitude=9, random_erasing=0.25
            ),
        ),  # fmt: skip
    ],
)
def test_training_transform_gives_the_previous_pixels_on_fixed_seeds(tmp_path, size, source, settings):
    from mimir_hf.augmentation import _Randomness

    config = tiny_config(image_size=size, patch_size=8)
    processor = image_processor_for(config)
    augmentation = AugmentationArguments(**settings).build(config.image_size_hw, config.num_channels)
    data = _jpeg_folder_dataset(tmp_path, *source, count=12)
    outputs = []
    for path in ("previous", "now"):
        _Randomness._by_process.clear()
        torch.manual_seed(1234)
        if path == "previous":
            previous = _previous_transform(augmentation, processor)
            outputs.append([p for start in (0, 6) for p in previous(data[start : start + 6]["image"])])
        else:
            transformed = with_pixel_transform(data, "image", "label", processor, augmentation)
            outputs.append([p for start in (0, 6) for p in transformed[start : start + 6]["pixel_values"]])
    for previous, now in zip(*outputs, strict=True):
        assert now.shape == (3, size, size) and torch.equal(previous, now)
    assert not all(torch.equal(outputs[1][0], p) for p in outputs[1][1:])  # the images do differ


def test_augmentation_converts_modes_as_the_processor_does():
    """An image with transparency is composited on white before the random-resized crop, as the processor would."""
    from mimir_hf.augmentation import _Randomness

    rgba = np.zeros((20, 20, 4), dtype=np.uint8)  # fully transparent black: white once composited
    augmentation = AugmentationArguments(augmentation="resized-crop-flip").build((8, 8), 3)
    _Randomness._by_process.clear()
    out = augmentation.augment_image(PILImage.fromarray(rgba, mode="RGBA"))
    assert out.mode == "RGB" and np.asarray(out).min() == 255


def test_a_checkpoint_s_resize_and_centre_crop_apply_to_evaluation_not_after_the_random_resized_crop(tmp_path):
    """The authors train on RandomResizedCrop -> tensor: the crop, at the model's size, is the training image. A
    converted checkpoint's processor (resize the short side to size / 0.875, centre crop) serves evaluation only;
    after the crop it would zoom the image by 1/0.875 and cut its borders."""
    from mimir_hf.augmentation import _Randomness

    config = tiny_config(image_size=32, patch_size=8)
    processor = image_processor_for(config, crop_pct=0.875)  # resize 37, centre crop 32
    plain = image_processor_for(config)
    augmentation = AugmentationArguments(augmentation="resized-crop-flip", resized_crop_scale=0.2).build(
        config.image_size_hw, config.num_channels
    )
    data = _jpeg_folder_dataset(tmp_path, 50, 38, ".jpg", count=6)
    _Randomness._by_process.clear()
    torch.manual_seed(1234)
    images = list(data["image"])
    crops = [augmentation.augment_image(image) for image in images]
    _Randomness._by_process.clear()
    torch.manual_seed(1234)
    training = with_pixel_transform(data, "image", "label", processor, augmentation)[:]["pixel_values"]
    expected = plain(images=crops, return_tensors="pt")["pixel_values"]
    assert all(crop.size == (32, 32) for crop in crops)
    for pixels, crop_pixels in zip(training, expected, strict=True):
        assert torch.equal(pixels, crop_pixels)  # the crop itself: no second resize, no centre crop
    evaluation = with_pixel_transform(data, "image", "label", processor)[:]["pixel_values"]
    resized_and_cropped = processor(images=images, return_tensors="pt")["pixel_values"]
    assert all(torch.equal(a, b) for a, b in zip(evaluation, resized_and_cropped, strict=True))
    squeezed = plain(images=images, return_tensors="pt")["pixel_values"]
    assert not torch.equal(resized_and_cropped, squeezed)  # the evaluation split's centre crop did happen


def test_the_preprocessing_note_says_what_happens_to_each_split(tmp_path, caplog):
    from mimir_hf.commands.common import Data

    config = tiny_config(image_size=32, patch_size=8)
    processor = image_processor_for(config, crop_pct=0.875)
    augmentation = AugmentationArguments(augmentation="resized-crop-flip").build(config.image_size_hw, 3)
    data = _jpeg_folder_dataset(tmp_path, 50, 38, ".jpg", count=4)
    with caplog.at_level(logging.INFO, logger="mimir_hf.commands"):
        Data(data, data, "image", "label", ["a", "b"]).transformed(processor, augmentation=augmentation)
    (message,) = [record.getMessage() for record in caplog.records if "image processor" in record.getMessage()]
    assert message.startswith("The evaluation images are resized and centre-cropped from 50x38 to 32x32")
    assert "training images are cropped and resized to 32x32 by the augmentation's random-resized crop" in message
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mimir_hf.commands"):
        Data(data, data, "image", "label", ["a", "b"]).transformed(processor)  # no augmentation: one processor
    (message,) = [record.getMessage() for record in caplog.records if "image processor" in record.getMessage()]
    assert message.startswith("The images are resized and centre-cropped") and "training" not in message
