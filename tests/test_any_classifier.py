"""`mimir-hf evaluate` on plain transformers classifiers (a ViT and a ResNet saved locally with their own image
processors): attacks act on [0, 1] pixels, the processor's normalisation runs inside a wrapper, the report names the
preprocessing, and its numbers agree with an independent attack library on the same model and images."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoImageProcessor,
    AutoModelForImageClassification,
    ConvNextImageProcessor,
    ResNetConfig,
    ResNetForImageClassification,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
)

from mimir_hf.commands.cli import main as cli
from mimir_hf.pixel_space import PixelSpaceClassifier, pixel_space_classifier

NAMES = ["cat", "dog", "owl"]
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
EPSILON = 8 / 255  # the report's default (step 2/255 = eps / 4): PGD-20 breaks some of these images, not all
REPORT = ["--autoattack_iterations", "10", "--pgd_steps", "20", "--cw_steps", "2", "--adaptive_steps", "2",
          "--eps_sweep", "0", "1"]  # fmt: skip


def image_folder(root, count=24, size=40):
    """Three classes of RGB images that differ in brightness and texture; PNGs of `size` px (not the model's size:
    the processor resizes them)."""
    rng = np.random.RandomState(0)
    for i in range(count):
        label = i % 3
        folder = root / NAMES[label]
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.clip(60 + 65 * label + rng.randint(-50, 50, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
    return str(root)


def train_briefly(model, processor, folder, steps=60):
    """A few steps of plain training on the folder's images, so the model is right on most of them and PGD at a
    small eps breaks some, not all: a test of agreement that could fail."""
    images, labels = load_images(folder)
    pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        loss = model(pixel_values=pixel_values, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def load_images(folder):
    images, labels = [], []
    for label, name in enumerate(NAMES):
        for file in sorted(os.listdir(os.path.join(folder, name)), key=lambda f: int(f.split(".")[0])):
            images.append(Image.open(os.path.join(folder, name, file)).convert("RGB"))
            labels.append(label)
    return images, torch.tensor(labels)


def saved_classifier(kind, path, folder):
    torch.manual_seed(0)
    labels = dict(num_labels=3, id2label=dict(enumerate(NAMES)), label2id={n: i for i, n in enumerate(NAMES)})
    if kind == "vit":
        config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, **labels)  # fmt: skip
        model = ViTForImageClassification(config)
        processor = ViTImageProcessor(
            size={"height": 32, "width": 32}, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD
        )
    else:
        model = ResNetForImageClassification(
            ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], **labels)
        )
        processor = ConvNextImageProcessor(
            size={"shortest_edge": 32}, crop_pct=0.875, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD
        )
    train_briefly(model, processor, folder)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return image_folder(tmp_path_factory.mktemp("photos") / "val")


def independent_pgd20(path, folder):
    """torchattacks' PGD-20 (random start, step eps/4) on the plain transformers model and the processor's own
    normalised tensors, with torchattacks' normalisation support (`set_normalization_used`: it maps the normalised
    inputs back to [0, 1] pixels, attacks there and returns normalised adversarial inputs): correct predictions
    per image, clean and under attack."""
    torchattacks = pytest.importorskip("torchattacks")
    model = AutoModelForImageClassification.from_pretrained(path).eval()
    processor = AutoImageProcessor.from_pretrained(path)
    images, labels = load_images(folder)
    normalised = processor(images=images, return_tensors="pt")["pixel_values"]

    class Logits(torch.nn.Module):
        def forward(self, x):
            return model(pixel_values=x).logits

    attack = torchattacks.PGD(Logits(), eps=EPSILON, alpha=EPSILON / 4, steps=20, random_start=True)
    attack.set_normalization_used(mean=processor.image_mean, std=processor.image_std)
    torch.manual_seed(0)
    adversarial = attack(normalised, labels)
    with torch.no_grad():
        natural = Logits()(normalised).argmax(1) == labels
        robust = Logits()(adversarial).argmax(1) == labels
    return natural, robust


def independent_autoattack(path, folder):
    """Croce and Hein's AutoAttack called directly on the plain model behind a normalisation written here, at the
    report's settings (10 iterations; 3 classes: APGD-T left out, FAB-T with 2 targets): correct predictions."""
    from pyautoattack import AutoAttack

    model = AutoModelForImageClassification.from_pretrained(path).eval()
    processor = AutoImageProcessor.from_pretrained(path)
    images, labels = load_images(folder)
    pixels = processor(images=images, do_normalize=False, return_tensors="pt")["pixel_values"].clamp(0, 1)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    class Normalised(torch.nn.Module):
        def forward(self, x):
            return model(pixel_values=(x - mean) / std).logits

    attack = AutoAttack(Normalised(), norm="Linf", eps=EPSILON, seed=0, device="cpu")
    for component in (attack.apgd, attack.apgd_targeted, attack.fab):
        component.n_iter = 10
    attack.fab.n_target_classes = 2
    attack.attacks_to_run = ["apgd-ce", "fab-t", "square"]
    with torch.random.fork_rng():
        adversarial, _ = attack.run_standard_evaluation(pixels, labels, batch_size=len(labels))
    with torch.no_grad():
        return Normalised()(adversarial).argmax(1) == labels


@pytest.mark.parametrize("kind", ["vit", "resnet"])
def test_report_of_a_plain_transformers_classifier_agrees_with_an_independent_library(tmp_path, folder, kind):
    path = saved_classifier(kind, tmp_path / kind, folder)
    out = tmp_path / "report"
    assert cli(["evaluate", "--model_name_or_path", path, "--validation_dir", folder, "--output_dir", str(out)]
               + REPORT) == 0  # fmt: skip
    report = json.load(open(out / "robustness.json"))
    natural, robust = independent_pgd20(path, folder)
    images = len(natural)
    assert report["num_samples"] == images == 24
    # The processor's geometry ran in the data loader and its normalisation inside the wrapper: the clean
    # predictions are exactly the plain model's on the processor's normalised tensors.
    assert report["accuracy"]["natural"] == round(100 * natural.float().mean().item(), 2)
    # The model must be neither broken by everything nor unbreakable at this eps, else agreement means nothing.
    assert 0 < robust.sum() < natural.sum()
    ours = report["accuracy"]["pgd20"] * images / 100
    assert abs(ours - robust.sum().item()) <= 1, (ours, robust.sum().item())  # within one image
    # AutoAttack: the reference implementation, at the settings the report names, agrees with it called directly
    assert report["autoattack"].startswith("reference implementation (pyautoattack")
    assert "APGD-CE 10 iterations, FAB-T 10 iterations x 2 target classes, Square 5000 queries" in report["autoattack"]
    direct = independent_autoattack(path, folder).sum().item()
    assert 0 < direct < natural.sum() and abs(report["accuracy"]["autoattack"] * images / 100 - direct) <= 1
    preprocessing = report["info"]["preprocessing"]
    assert type(AutoImageProcessor.from_pretrained(path)).__name__.split("Pil")[0] in preprocessing
    assert str(IMAGENET_MEAN) in preprocessing and "inside a wrapper" in preprocessing
    assert str(IMAGENET_MEAN) in open(out / "robustness.md").read()  # named in the report itself


def test_the_wrapper_normalises_inside_and_passes_gradients_to_pixels(tmp_path, folder):
    path = saved_classifier("vit", tmp_path / "vit", folder)
    model = AutoModelForImageClassification.from_pretrained(path).eval()
    processor = AutoImageProcessor.from_pretrained(path)
    wrapped, preprocessor, _ = pixel_space_classifier(model, processor)
    assert isinstance(wrapped, PixelSpaceClassifier) and wrapped.config is model.config
    images, _ = load_images(folder)
    pixels = preprocessor(images=images[:4])["pixel_values"]
    assert pixels.min() >= 0 and pixels.max() <= 1 and pixels.shape == (4, 3, 32, 32)
    expected = model(pixel_values=processor(images=images[:4], return_tensors="pt")["pixel_values"]).logits
    pixels.requires_grad_(True)
    logits = wrapped(pixel_values=pixels).logits
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    (gradient,) = torch.autograd.grad(logits.sum(), pixels)
    assert gradient.abs().sum() > 0


def refusal(capsys, argv) -> str:
    """The one error line of a refused `mimir-hf` command (exit status 1, no traceback)."""
    capsys.readouterr()
    assert cli(argv) == 1
    errors = capsys.readouterr().err
    lines = [line for line in errors.splitlines() if line.startswith("mimir-hf evaluate: error: ")]
    assert len(lines) == 1 and "Traceback" not in errors, errors
    return lines[0]


def test_a_processor_that_does_not_make_pixels_or_none_is_refused_in_one_line(tmp_path, folder, capsys):
    path = saved_classifier("vit", tmp_path / "vit", folder)
    ViTImageProcessor(size={"height": 32, "width": 32}, do_rescale=False).save_pretrained(path)
    argv = ["evaluate", "--model_name_or_path", path, "--validation_dir", folder, "--output_dir"]
    error = refusal(capsys, argv + [str(tmp_path / "r")] + REPORT)
    assert "does not rescale 8-bit pixels by 1/255" in error and "save a processor" in error
    os.remove(os.path.join(path, "preprocessor_config.json"))
    error = refusal(capsys, argv + [str(tmp_path / "s")] + REPORT)
    assert "has no image processor" in error and "save_pretrained(folder)" in error
