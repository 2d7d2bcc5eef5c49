"""Tests of the MIMIR Swin family against an independent Microsoft-layout reference (tests/reference_swin.py).

Two tiny shapes mirror the released models at 128 px with 4x4 patches (token grids 32, 16, 8, 4):
- "B-style": window 4 tiles every stage (Swin-B: window 7 on 56, 28, 14, 7): shifted stages 0-2, last one not.
- "L-style": window 8, larger than the last grid (Swin-L: window 14 on 56, 28, 14, 7): the last stage is clamped to
  window 4 and a 7x7 relative-position table.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError
from safetensors.torch import load_file
from transformers import SwinConfig, SwinForImageClassification

from mimir_hf.models.swin import MimirSwinConfig, MimirSwinForImageClassification
from mimir_hf.models.swin.convert_swin import convert_swin_checkpoint, convert_swin_state_dict, infer_swin_config
from mimir_hf.models.swin.modeling_mimir_swin import MimirSwinMLPWithDropPath

from .reference_swin import ReferenceSwin

TOLERANCE = 1e-5
SHAPE = dict(image_size=128, patch_size=4, embed_dim=16, depths=(2, 2, 2, 2), num_heads=(2, 2, 4, 4), num_classes=10)
STYLES = {"B-style": 4, "L-style": 8}  # window size


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights that make every part matter: large relative-position biases, non-unit norms, small patch
    embedding (so that LayerNorm's eps is visible, as with trained weights)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "relative_position_bias_table" in name:
                std, mean = 1.0, 0.0
            elif "norm" in name and name.endswith("weight"):
                std, mean = 0.2, 1.0
            elif "patch_embed" in name or param.dim() == 1:
                std, mean = 0.02, 0.0
            else:
                std, mean = param.shape[-1] ** -0.5, 0.0
            param.copy_(torch.randn(param.shape, generator=generator) * std + mean)
    return model.eval()


def reference(style: str, num_classes: int = 10, seed: int = 0) -> ReferenceSwin:
    return randomize_(ReferenceSwin(**{**SHAPE, "num_classes": num_classes}, window_size=STYLES[style]), seed).eval()


def converted(ref: ReferenceSwin, **overrides) -> MimirSwinForImageClassification:
    conversion = convert_swin_checkpoint(ref.state_dict(), **overrides)
    model = MimirSwinForImageClassification(conversion.config).eval()
    model.load_state_dict(conversion.state_dict, strict=True)
    return model


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.rand(4, 3, 128, 128, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module", params=list(STYLES))
def pair(request):
    ref = reference(request.param)
    return request.param, ref, converted(ref)


@torch.no_grad()
def test_logits_match_reference(pair, pixels):
    style, ref, model = pair
    expected = ref(pixels)
    logits = model(pixels).logits
    diff = (logits - expected).abs().max().item()
    print(f"{style}: max |logits - reference| = {diff:.2e} (logits up to {expected.abs().max():.2f})")
    assert diff <= TOLERANCE
    # The attack library's path for adaptive attacks is the same computation.
    assert torch.equal(model.classifier(model.features(pixels)), logits)
    assert (model.features(pixels) - ref.forward_features(pixels)).abs().max() <= TOLERANCE


def test_inferred_config(pair):
    style, _, model = pair
    config = model.config
    assert (config.image_size, config.patch_size, config.embed_dim) == (128, 4, 16)
    assert (config.depths, config.num_heads, config.window_size) == ([2, 2, 2, 2], [2, 2, 4, 4], STYLES[style])
    assert (config.num_labels, config.layer_norm_eps, config.mlp_ratio, config.qkv_bias) == (10, 1e-6, 4.0, True)
    assert config.use_absolute_embeddings is False


def test_every_layernorm_uses_the_config_eps(pair):
    _, _, model = pair
    norms = [module for module in model.modules() if isinstance(module, torch.nn.LayerNorm)]
    assert len(norms) == 1 + 3 + 2 * 8 + 1  # patch embedding, 3 mergings, 2 per block, final
    assert {norm.eps for norm in norms} == {1e-6}


@torch.no_grad()
def test_transformers_defaults_differ_from_reference(pixels):
    """Plain `SwinForImageClassification` (eps 1e-5 in patch embedding/merging, no build-time clamp) differs."""
    for style in STYLES:
        ref = reference(style)
        conversion = convert_swin_checkpoint(ref.state_dict())
        fields = ("image_size", "patch_size", "embed_dim", "depths", "num_heads", "window_size", "layer_norm_eps")
        plain = SwinForImageClassification(
            SwinConfig(**{name: getattr(conversion.config, name) for name in fields}, num_labels=10, drop_path_rate=0.0)
        ).eval()
        if style == "B-style":  # loads, but the two 1e-5 norms change the logits
            plain.load_state_dict(conversion.state_dict, strict=True)
            diff = (plain(pixels).logits - ref(pixels)).abs().max().item()
            print(f"transformers' SwinForImageClassification, B-style: max |logits - reference| = {diff:.2e}")
            assert diff > 10 * TOLERANCE
        else:  # a 15x15 table where the checkpoint has 7x7, and a forward pass that fails
            with pytest.raises(RuntimeError, match="relative_position_bias_table"):
                plain.load_state_dict(conversion.state_dict, strict=True)
            with pytest.raises(RuntimeError):
                plain(pixels)


def test_clamped_stage_has_a_small_table():
    model = converted(reference("L-style"))
    assert model.config.stage_window_sizes == [8, 8, 8, 4]
    for stage, window, shifted in zip(model.swin.encoder.layers, [8, 8, 8, 4], [True, True, False, False], strict=True):
        for index, block in enumerate(stage.blocks):
            table = block.attention.relative_position_bias.relative_position_bias_table
            assert table.shape[0] == (2 * window - 1) ** 2
            assert block.window_size == window
            assert block.shift_size == (window // 2 if shifted and index % 2 else 0)
    assert model.swin.encoder.layers[3].blocks[
        0
    ].attention.relative_position_bias.relative_position_bias_table.shape == (49, 4)


@torch.no_grad()
@pytest.mark.parametrize("style", list(STYLES))
def test_greenmim_encoder_converts_to_a_backbone_with_a_new_head(style, pixels):
    ref = reference(style, num_classes=0)
    # A GreenMIM pre-training file: encoder under `encoder.`, MAE decoder, no head, no attn_mask buffers.
    state = {f"encoder.{key}": value for key, value in ref.state_dict().items() if not key.endswith("attn_mask")}
    decoder = {
        "mask_token": torch.zeros(1, 1, 32),
        "decoder_embed.weight": torch.zeros(32, 128),
        "decoder_pos_embed": torch.zeros(1, 16, 32),
        "decoder_blocks.0.attn.qkv.weight": torch.zeros(96, 32),
        "decoder_norm.weight": torch.zeros(32),
        "decoder_pred.weight": torch.zeros(48, 32),
    }
    # B-style tables do not tell the image size (no attn_mask, no clamped stage): it must be given.
    overrides = {"num_labels": 7} | ({"image_size": 128} if style == "B-style" else {})
    conversion = convert_swin_checkpoint({**state, **decoder}, **overrides)
    assert conversion.config.image_size == 128 and conversion.config.num_labels == 7
    assert conversion.new_keys == ["classifier.bias", "classifier.weight"]
    assert set(decoder) <= set(conversion.ignored)
    assert {key for key in conversion.ignored if key not in decoder} == {
        key.removeprefix("encoder.") for key in state if key.endswith("relative_position_index")
    }
    model = MimirSwinForImageClassification(conversion.config).eval()
    result = model.load_state_dict(conversion.state_dict, strict=False)
    assert sorted(result.missing_keys) == conversion.new_keys and not result.unexpected_keys
    assert (model.features(pixels) - ref.forward_features(pixels)).abs().max() <= TOLERANCE
    assert model(pixels).logits.shape == (4, 7)


def test_unknown_keys_are_reported():
    state = reference("B-style").state_dict()
    with pytest.raises(ValueError, match=r"layers\.0\.blocks\.0\.attn\.q_norm\.weight"):
        convert_swin_state_dict(
            {**state, "layers.0.blocks.0.attn.q_norm.weight": torch.ones(8)}, infer_swin_config(state)
        )
    with pytest.raises(ValueError, match="stray"):
        convert_swin_checkpoint({**{f"encoder.{k}": v for k, v in state.items()}, "stray.weight": torch.ones(1)})


def test_ddp_prefix_is_stripped():
    state = reference("B-style").state_dict()
    plain, ddp = convert_swin_checkpoint(state), convert_swin_checkpoint({f"module.{k}": v for k, v in state.items()})
    assert plain.config.to_dict() == ddp.config.to_dict()
    assert all(torch.equal(value, ddp.state_dict[key]) for key, value in plain.state_dict.items())


def test_image_size_that_does_not_fit_the_tables_is_refused():
    state = reference("L-style").state_dict()
    assert infer_swin_config(state).image_size == 128  # from the attn_mask buffers
    with pytest.raises(ValueError, match="image_size"):
        infer_swin_config(state, image_size=256)  # would make the last stage 8x8, window 8, but its table is 7x7


@torch.no_grad()
def test_save_and_load_round_trip(tmp_path, pixels):
    ref = reference("L-style")
    model = converted(ref, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    model.save_pretrained(tmp_path)
    loaded = MimirSwinForImageClassification.from_pretrained(tmp_path).eval()
    assert {**loaded.config.to_dict(), "_name_or_path": ""} == model.config.to_dict()
    assert loaded.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(value, loaded.state_dict()[key]) for key, value in model.state_dict().items())
    assert torch.equal(loaded(pixels).logits, model(pixels).logits)
    assert torch.equal(loaded.swin.pixel_normalization.std, model.swin.pixel_normalization.std)
    saved = load_file(tmp_path / "model.safetensors")
    assert set(saved) == set(model.state_dict())  # our names on disk; no rebuilt buffers stored
    assert saved[
        "swin.encoder.layers.3.blocks.1.attention.relative_position_bias.relative_position_bias_table"
    ].shape == (49, 4)


def test_saved_folder_loads_without_this_package(tmp_path, pixels):
    model = converted(reference("L-style"))
    model.save_pretrained(tmp_path)
    torch.save(pixels[:2], tmp_path / "pixels.pt")
    with torch.no_grad():
        expected = model(pixels[:2]).logits
    torch.save(expected, tmp_path / "expected.pt")
    script = (
        "import sys, importlib.abc, torch\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'mimir_hf':\n"
        "            raise ImportError('mimir_hf is not installed here')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from transformers import AutoModelForImageClassification\n"
        f"model = AutoModelForImageClassification.from_pretrained({str(tmp_path)!r}, trust_remote_code=True).eval()\n"
        "assert 'mimir_hf' not in sys.modules, 'the package was imported'\n"
        f"logits = model(torch.load({str(tmp_path / 'pixels.pt')!r})).logits\n"
        f"diff = (logits - torch.load({str(tmp_path / 'expected.pt')!r})).abs().max()\n"
        "assert diff <= 1e-5, f'different logits: {diff}'\n"  # a fresh process may pick other CPU kernels
    )
    env = {**os.environ, "PYTHONPATH": "", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], check=False, cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_input_gradients_are_finite_and_nonzero(pair, pixels):
    _, _, model = pair
    x = pixels.clone().requires_grad_(True)
    loss = model(x, labels=torch.tensor([0, 1, 2, 3])).loss
    (gradient,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(gradient).all()
    assert (gradient.flatten(1).abs().sum(dim=1) > 0).all()  # every image of the batch


@torch.no_grad()
def test_batching_equivalence(pair, pixels):
    _, _, model = pair
    batched = model(pixels).logits
    one_by_one = torch.cat([model(image[None]).logits for image in pixels])
    assert (batched - one_by_one).abs().max() <= TOLERANCE


@torch.no_grad()
def test_normalisation_inside_the_model(pixels):
    ref = reference("B-style")
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    normalising = converted(ref, image_mean=mean, image_std=std)
    plain = converted(ref)
    normalised = (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert (normalising(pixels).logits - plain(normalised).logits).abs().max() <= TOLERANCE


def test_loss_is_label_smoothed_cross_entropy(pixels):
    model = converted(reference("B-style"), label_smoothing=0.1)
    labels = torch.tensor([3, 1, 4, 1])
    out = model(pixels, labels=labels)
    expected = torch.nn.functional.cross_entropy(out.logits, labels, label_smoothing=0.1)
    assert torch.allclose(out.loss, expected)
    soft = torch.nn.functional.one_hot(labels, 10).float()
    assert torch.allclose(model(pixels, labels=soft).loss, expected)
    with pytest.raises(ValueError, match="labels must be in"):
        model(pixels, labels=torch.tensor([0, 1, 2, 10]))


def test_other_image_sizes_are_refused(pixels):
    model = converted(reference("B-style"))
    with pytest.raises(ValueError, match="64x64.*128x128"):
        model(pixels[:, :, :64, :64])


def test_presets():
    base, large = MimirSwinConfig.from_preset("swin-base-224"), MimirSwinConfig.from_preset("swin-large-224")
    assert base.to_dict() == MimirSwinConfig(num_labels=1000).to_dict()  # the defaults are the released Swin-B
    assert (base.stage_window_sizes, base.stage_shifts) == ([7, 7, 7, 7], [True, True, True, False])
    assert (large.stage_window_sizes, large.stage_shifts) == ([14, 14, 14, 7], [True, True, False, False])
    assert (large.embed_dim, large.num_heads, large.hidden_size, large.num_labels) == (192, [6, 12, 24, 48], 1536, 1000)
    assert MimirSwinConfig.from_dict(large.to_dict()).to_dict() == large.to_dict()
    assert MimirSwinConfig.from_preset("swin-large-224", num_labels=10).num_labels == 10
    with pytest.raises(ValueError, match="Available presets"):
        MimirSwinConfig.from_preset("swin-huge-224")
    with pytest.raises(StrictDataclassClassValidationError, match="image_mean and image_std"):
        MimirSwinConfig(image_mean=[0.5, 0.5, 0.5])


def test_mlp_branch_has_stochastic_depth(pixels):
    config = MimirSwinConfig(
        **{k: v for k, v in SHAPE.items() if k != "num_classes"}, window_size=4, drop_path_rate=0.5
    )
    model = MimirSwinForImageClassification(config)
    blocks = [block for stage in model.swin.encoder.layers for block in stage.blocks]
    rates = torch.linspace(0, 0.5, len(blocks)).tolist()
    for block, rate in zip(blocks[1:], rates[1:], strict=True):
        assert isinstance(block.mlp, MimirSwinMLPWithDropPath)
        assert block.mlp.drop_path.drop_prob == pytest.approx(rate) == block.drop_path.drop_prob
    plain = MimirSwinForImageClassification(MimirSwinConfig.from_dict({**config.to_dict(), "drop_path_rate": 0.0}))
    assert model.state_dict().keys() == plain.state_dict().keys()  # parameter names unchanged
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(pixels).logits, model(pixels).logits)


def test_released_style_swin_files_convert_through_the_cli_and_load_in_a_pipeline(tmp_path, pixels):
    """An ARES-style file (timm's checkpoint saver: state_dict and state_dict_ema, args inside) of an L-style Swin:
    `python -m mimir_hf.convert` picks the family, the EMA weights on request, and writes a folder that the Auto
    classes and pipeline() load, with the resize-then-crop pre-processing of ImageNet models."""
    import argparse

    from PIL import Image
    from transformers import AutoModelForImageClassification, pipeline

    from mimir_hf.convert import main

    plain, ema = reference("L-style"), reference("L-style", seed=1)
    torch.save(
        {"epoch": 99, "arch": "swin_large", "state_dict": plain.state_dict(), "state_dict_ema": ema.state_dict(),
         "args": argparse.Namespace(model="swin_large_patch4_window14")},
        tmp_path / "swin.pth",
    )  # fmt: skip
    main([str(tmp_path / "swin.pth"), str(tmp_path / "out"), "--use_ema"])
    model = AutoModelForImageClassification.from_pretrained(tmp_path / "out").eval()
    assert isinstance(model, MimirSwinForImageClassification)
    with torch.no_grad():
        assert (model(pixels).logits - ema(pixels)).abs().max() <= TOLERANCE
    processor = json.loads((tmp_path / "out" / "preprocessor_config.json").read_text())
    assert processor["do_center_crop"] is True and processor["crop_size"] == {"height": 128, "width": 128}
    classify = pipeline("image-classification", model=str(tmp_path / "out"), device="cpu")
    assert len(classify(Image.new("RGB", (160, 150), (10, 200, 30)), top_k=3)) == 3
    card = (tmp_path / "out" / "README.md").read_text()
    assert "Swin-L" in card and "59.68" in card and "state_dict_ema" in card


def small_swin(num_labels=4) -> MimirSwinForImageClassification:
    config = MimirSwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[2, 2],
                             window_size=4, num_labels=num_labels)  # fmt: skip
    model = MimirSwinForImageClassification(config)
    model.classifier.weight.data.normal_(std=0.5)
    return model


def test_the_adversarial_trainer_and_the_report_work_on_swin(tmp_path):
    """The method is family-agnostic: attacks need only logits (and features / classifier for the adaptive ones)."""
    from datasets import Dataset

    from mimir_hf.attacks import pgd_attack
    from mimir_hf.evaluation import RobustnessSettings, evaluate_robustness
    from mimir_hf.threat_model import AttackBudget
    from mimir_hf.trainer import MimirAdversarialTrainer, MimirAdversarialTrainingArguments

    torch.manual_seed(0)
    labels = torch.arange(8) % 4
    images = 0.2 + 0.2 * labels.view(-1, 1, 1, 1) + 0.1 * torch.rand(8, 3, 32, 32, generator=torch.Generator())
    model = small_swin()

    def robust_loss():
        budget = AttackBudget(8 / 255, 4 / 255, 3)
        adversarial = pgd_attack(model, images, labels, budget, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            return torch.nn.functional.cross_entropy(model.eval()(adversarial).logits, labels)

    before = robust_loss()
    data = Dataset.from_dict({"pixel_values": images.numpy(), "labels": labels.numpy()}).with_format("torch")
    args = MimirAdversarialTrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=8, num_train_epochs=25, learning_rate=3e-3,
        adversarial_steps=3, adversarial_step_size=4 / 255, warmup_steps=0, report_to=[], use_cpu=True,
        disable_tqdm=True, save_strategy="no",
    )  # fmt: skip
    MimirAdversarialTrainer(model=model, args=args, train_dataset=data).train()
    assert robust_loss() < 0.8 * before
    settings = RobustnessSettings(pgd_steps=[3, 6], cw_steps=3, adaptive_steps=3, eps_sweep=[0.0, 1.0],
                                  autoattack=False, eval_batch_size=4)  # fmt: skip
    report = evaluate_robustness(model, (images, labels), settings)
    assert {"pgd_mi", "pgd_feature", "cw_inf"} <= set(report.accuracy)
    assert report.robust_accuracy <= min(report.accuracy[name] for name in report.robust_accuracy_attacks)
    assert report.eps_sweep[-1].accuracy == 0.0


def test_run_evaluation_on_a_converted_swin_folder(tmp_path):

    from PIL import Image

    from mimir_hf.commands import evaluate as run_evaluation

    small_swin(num_labels=2).save_pretrained(tmp_path / "swin")
    from mimir_hf.data import image_processor_for

    image_processor_for(MimirSwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[2, 2],
                                        window_size=4), crop_pct=0.875).save_pretrained(tmp_path / "swin")  # fmt: skip
    for index, name in enumerate(("a", "b")):
        (tmp_path / "val" / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40, 36), (60 + 120 * index, 80, 20 * i)).save(tmp_path / "val" / name / f"{i}.png")
    report = run_evaluation.main(
        ["--model_name_or_path", str(tmp_path / "swin"), "--validation_dir", str(tmp_path / "val"),
         "--output_dir", str(tmp_path / "report"), "--pgd_steps", "2", "4", "--cw_steps", "2", "--adaptive_steps",
         "2", "--autoattack", "false", "--eps_sweep", "0", "1", "--use_cpu", "true"]
    )  # fmt: skip
    assert report.num_samples == 6 and (tmp_path / "report" / "robustness.md").is_file()
