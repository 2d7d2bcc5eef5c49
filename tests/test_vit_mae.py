"""Starting from a transformers ViTMAE checkpoint (`facebook/vit-mae-*` style: a ViTImageProcessor that normalises with
ImageNet's mean/std), and the commands keeping the image processor of any checkpoint they start from."""

import json

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from transformers import AutoImageProcessor
from transformers.testing_utils import CaptureLogger

from mimir_hf import MimirForImageClassification, MimirForPreTraining, MimirImageProcessor
from mimir_hf.commands import finetune as run_finetuning
from mimir_hf.commands import pretrain as run_pretraining
from mimir_hf.commands.cli import main as cli
from mimir_hf.data import checkpoint_image_processor, image_processor_for
from mimir_hf.models.vit.configuration_mimir import logger as config_logger

from .conftest import tiny_config

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
SHAPE = dict(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
             intermediate_size=64, decoder_hidden_size=16, decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
             decoder_intermediate_size=32)  # fmt: skip
QUIET = ["--use_cpu", "true", "--disable_tqdm", "true", "--report_to", "none", "--save_strategy", "no"]
TINY_RUN = ["--max_train_samples", "8", "--max_eval_samples", "8", "--num_train_epochs", "1", *QUIET]


def vit_mae_folder(path, **processor):
    """A tiny `ViTMAEForPreTraining` with random weights (ViTMAEConfig's defaults: layer_norm_eps 1e-12,
    norm_pix_loss False) and a ViTImageProcessor: bilinear resize to 16x16, ImageNet mean/std (or `processor`)."""
    model = transformers.ViTMAEForPreTraining(transformers.ViTMAEConfig(**SHAPE))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "position" not in name and "pos_embed" not in name:  # keep the fixed sin-cos tables
                parameter.normal_(std=0.2)
    model.eval().save_pretrained(path)
    settings = dict(size={"height": 16, "width": 16}, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
    transformers.ViTImageProcessorPil(**{**settings, **processor}).save_pretrained(path)
    return model


def pictures(count=3):
    """RGB images of other sizes than the model's, so that the resize filter matters."""
    return [
        Image.fromarray(np.random.RandomState(seed).randint(0, 256, (40 + 3 * seed, 30, 3), dtype=np.uint8))
        for seed in range(count)
    ]


def test_mimir_encoder_equals_vit_mae_on_the_same_images(tmp_path):
    """Each model through its own processor: ViTMAE's normalises the pixels, MIMIR's gives [0, 1] pixels and the
    model normalises inside with the carried mean/std; the encoders' outputs agree (same masking noise)."""
    reference = vit_mae_folder(tmp_path)
    with CaptureLogger(config_logger) as captured:
        model = MimirForPreTraining.from_pretrained(tmp_path).eval()
    config = model.config
    assert (config.image_mean, config.image_std) == (IMAGENET_MEAN, IMAGENET_STD)
    for name in ("layer_norm_eps", "norm_pix_loss", "mask_ratio", "qkv_bias", "hidden_act", "decoder_hidden_size"):
        assert getattr(config, name) == getattr(reference.config, name), name
    assert (config.layer_norm_eps, config.norm_pix_loss) == (1e-12, False)  # ViTMAE's, not MimirConfig's defaults
    line = captured.out.strip()
    assert "\n" not in line and "is a ViTMAE checkpoint" in line and "layer_norm_eps=1e-12" in line
    assert f"image_mean={IMAGENET_MEAN}" in line and "resize to 16x16 (bilinear)" in line

    processor = checkpoint_image_processor(str(tmp_path), config)
    assert isinstance(processor, MimirImageProcessor) and processor.resample == Image.Resampling.BILINEAR
    ours = processor(pictures(), return_tensors="pt")["pixel_values"]
    theirs = AutoImageProcessor.from_pretrained(tmp_path, backend="pil")(pictures(), return_tensors="pt")
    theirs = theirs["pixel_values"]
    assert ours.min() >= 0 and ours.max() <= 1 and theirs.min() < 0  # normalisation moved into the model
    noise = torch.rand(3, config.num_patches)
    with torch.no_grad():
        expected = reference.vit(theirs, noise=noise).last_hidden_state
        torch.testing.assert_close(
            model.vit(ours, noise=noise, apply_masking=True).last_hidden_state, expected, atol=1e-5, rtol=0
        )
        bicubic = image_processor_for(config)(pictures(), return_tensors="pt")["pixel_values"]
        assert (
            model.vit(bicubic, noise=noise, apply_masking=True).last_hidden_state - expected
        ).abs().max() > 1e-3  # the filter matters

    classifier = MimirForImageClassification.from_pretrained(tmp_path, num_labels=3)
    assert classifier.config.image_mean == IMAGENET_MEAN and classifier.config.layer_norm_eps == 1e-12
    encoder = dict(model.vit.named_parameters())
    for name, parameter in classifier.vit.named_parameters():
        assert torch.equal(parameter, encoder[name]), name


def test_given_normalisation_wins_and_a_folder_without_processor_says_so(tmp_path):
    vit_mae_folder(tmp_path / "with")
    model = MimirForPreTraining.from_pretrained(tmp_path / "with", image_mean=[0.5] * 3, image_std=[0.25] * 3)
    assert (model.config.image_mean, model.config.image_std) == ([0.5] * 3, [0.25] * 3)
    with pytest.raises(ValueError, match="normalises with mean .*0.485.* image_mean=\\[0.5, 0.5, 0.5\\]"):
        checkpoint_image_processor(str(tmp_path / "with"), model.config)  # its processor and the model disagree

    transformers.ViTMAEForPreTraining(transformers.ViTMAEConfig(**SHAPE)).save_pretrained(tmp_path / "without")
    with CaptureLogger(config_logger) as captured:
        model = MimirForPreTraining.from_pretrained(tmp_path / "without")
    assert model.config.image_mean is None and "no image processor" in captured.out
    assert checkpoint_image_processor(str(tmp_path / "without"), model.config).to_dict() == (
        image_processor_for(model.config).to_dict()
    )


@pytest.mark.parametrize(
    "processor, reason",
    [
        (dict(do_rescale=False), "does not rescale 8-bit pixels to \\[0, 1\\]"),
        (dict(size={"shortest_edge": 16}), "without a centre crop, so its images have no fixed size"),
        (dict(do_resize=False), "does not resize"),
    ],
)
def test_a_processor_mimir_cannot_reproduce_is_refused_with_the_fix(tmp_path, capsys, processor, reason):
    vit_mae_folder(tmp_path / "mae", **processor)
    fix = "Save a ViTImageProcessor .* as its preprocessor_config.json, or remove that file"
    with pytest.raises(ValueError, match=f"{reason}.*{fix}"):
        MimirForPreTraining.from_pretrained(tmp_path / "mae")
    capsys.readouterr()
    status = cli(["pretrain", "--model_name_or_path", str(tmp_path / "mae"), "--output_dir", str(tmp_path / "out"),
                  *TINY_RUN])  # fmt: skip
    error = capsys.readouterr().err
    assert status == 1 and error.count("\n") == 1 and "preprocessor_config.json" in error, error


def test_pretrain_and_finetune_from_a_vit_mae_folder_keep_its_normalisation_and_resize(tmp_path):
    vit_mae_folder(tmp_path / "mae")
    pretrained, finetuned = tmp_path / "pretrain", tmp_path / "finetune"
    run_pretraining.main(["--model_name_or_path", str(tmp_path / "mae"), "--output_dir", str(pretrained), *TINY_RUN])
    run_finetuning.main(["--model_name_or_path", str(tmp_path / "mae"), "--output_dir", str(finetuned), *TINY_RUN,
                         "--adversarial_steps", "1"])  # fmt: skip
    for folder in (pretrained, finetuned):
        config = json.loads((folder / "config.json").read_text())
        assert (config["image_mean"], config["image_std"], config["layer_norm_eps"]) == (
            IMAGENET_MEAN, IMAGENET_STD, 1e-12,
        ), folder  # fmt: skip
        processor = json.loads((folder / "preprocessor_config.json").read_text())
        assert processor["size"] == {"height": 16, "width": 16} and processor["resample"] == 2, processor  # bilinear
        assert processor["do_normalize"] is False and not processor.get("do_center_crop")


def test_finetune_keeps_the_resize_and_crop_of_a_mimir_checkpoint(tmp_path):
    """A converted ImageNet-style checkpoint saves resize-256 / crop-224 (here: short side 18, crop 16); fine-tuning
    it trains with and saves that processor, not a plain resize to the model's size."""
    config = tiny_config(num_labels=10, num_channels=1)
    MimirForImageClassification(config).save_pretrained(tmp_path / "converted")
    image_processor_for(config, crop_pct=0.875).save_pretrained(tmp_path / "converted")
    run_finetuning.main(["--model_name_or_path", str(tmp_path / "converted"), "--output_dir", str(tmp_path / "out"),
                         *TINY_RUN, "--adversarial_steps", "1"])  # fmt: skip
    processor = json.loads((tmp_path / "out" / "preprocessor_config.json").read_text())
    assert processor["size"] == {"shortest_edge": 18} and processor["do_center_crop"] is True
    assert processor["crop_size"] == {"height": 16, "width": 16} and processor["resample"] == 3


def test_a_processor_of_another_size_is_scaled_to_the_model_and_said(tmp_path, caplog):
    MimirForImageClassification(tiny_config(image_size=32)).save_pretrained(tmp_path)
    image_processor_for(tiny_config(image_size=32), crop_pct=0.8).save_pretrained(tmp_path)  # 40 -> crop 32
    config = tiny_config()  # e.g. fine-tuned at --image_size 16
    with caplog.at_level("WARNING", logger="mimir_hf.data"):
        processor = checkpoint_image_processor(str(tmp_path), config)
    assert processor.size == {"shortest_edge": 20} and processor.crop_size == {"height": 16, "width": 16}
    assert "makes 32x32 images but the model takes 16x16" in caplog.text and "crop fraction 0.8" in caplog.text
    assert checkpoint_image_processor(None, config).to_dict() == image_processor_for(config).to_dict()
    with pytest.raises(ValueError, match="serves MIMIR models.*ViTMAEConfig is not one"):
        checkpoint_image_processor(str(tmp_path), transformers.ViTMAEConfig())


def test_a_legacy_feature_extractor_file_carries_over_too(tmp_path):
    """Older facebook/vit-mae-* folders save a `ViTFeatureExtractor` file with an integer size."""
    vit_mae_folder(tmp_path)
    legacy = dict(feature_extractor_type="ViTFeatureExtractor", do_resize=True, size=16, resample=2, do_normalize=True,
                  image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)  # fmt: skip
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(legacy))
    model = MimirForPreTraining.from_pretrained(tmp_path)
    assert (model.config.image_mean, model.config.image_std) == (IMAGENET_MEAN, IMAGENET_STD)
    processor = checkpoint_image_processor(str(tmp_path), model.config)
    assert processor.size == {"height": 16, "width": 16} and processor.resample == 2 and not processor.do_normalize
