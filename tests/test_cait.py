"""The MIMIR CaiT family against independent timm-layout references (tests/reference_cait.py): the authors' classifier
and pre-training files through `python -m mimir_hf.convert`, exact; and the shared machinery on both models (save /
load, remote code, pipeline, the MAE attack, both trainers, the robustness report).

Tiny shape: 16 px images, patch 4 (16 patches, 4 visible in pre-training), width 32, 2 talking-heads layers + 2
class-attention layers, 4 heads; decoder 16 wide, 2 layers, 4 heads.
"""

from __future__ import annotations

import argparse
import json

import pytest
import torch
import torch.nn.functional as F
from huggingface_hub.errors import StrictDataclassClassValidationError
from transformers import AutoModelForImageClassification, AutoModelForPreTraining, pipeline

from mimir_hf import AttackBudget, MimirCaitConfig, MimirCaitForImageClassification, MimirCaitForPreTraining
from mimir_hf.attacks import mae_attack, pgd_attack
from mimir_hf.convert import convert_checkpoint, main
from mimir_hf.evaluation import evaluate_robustness
from mimir_hf.models.cait.convert_cait import convert_cait_checkpoint
from mimir_hf.optimizer_groups import parameter_groups
from mimir_hf.trainer import (
    MimirAdversarialTrainer,
    MimirPreTrainingTrainer,
)

from .family_checks import outputs_match_without_mimir_hf
from .reference_cait import Cait, MaeCait, randomise
from .test_convert import training_file
from .test_evaluation import QUICK
from .test_trainer import arguments, dataset, fixed_batch

TOLERANCE = 1e-5
SHAPE = dict(img_size=16, patch_size=4, embed_dim=32, num_heads=4)
PRETRAINING_ARGS = dict(model="mae_cait_xxs24", input_size=16, patch_size=4, norm_pix_loss=True, mask_ratio=0.75,
                        eps=4 / 255, alpha=5 / 255, mi_train="hsic", mi_xpl=2e-5, use_normalize=False)  # fmt: skip


def reference_classifier(qkv_bias: bool = True, seed: int = 0) -> Cait:
    return randomise(Cait(**SHAPE, depth=2, depth_token_only=2, num_classes=4, qkv_bias=qkv_bias), seed).eval()


def tiny_config(**overrides) -> MimirCaitConfig:
    fields = dict(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  decoder_hidden_size=16, decoder_num_attention_heads=4, decoder_intermediate_size=64,
                  num_labels=4)  # fmt: skip
    return MimirCaitConfig(**{**fields, **overrides})


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def noise() -> torch.Tensor:
    return torch.rand(4, 16, generator=torch.Generator().manual_seed(2))


@pytest.fixture(scope="module")
def classifier_folder(tmp_path_factory):
    """A fine-tuned classifier file as the authors' finetune.py writes it, converted by the command line."""
    folder = tmp_path_factory.mktemp("cait-classifier")
    reference = reference_classifier()
    path = training_file(folder / "checkpoint-99.pth", reference.state_dict(), model="cait_xxs24", input_size=16,
                         nb_classes=4, drop_path=0.1, use_normalize=False)  # fmt: skip
    main([path, str(folder / "out")])
    return reference, folder / "out"


@pytest.fixture(scope="module")
def pretraining_folder(tmp_path_factory):
    """A pre-training file as the authors' pretrain.py writes it (weights, optimiser, args), converted."""
    folder = tmp_path_factory.mktemp("cait-pretraining")
    reference = randomise(MaeCait(**SHAPE)).eval()
    path = training_file(folder / "checkpoint-799.pth", reference.state_dict(), **PRETRAINING_ARGS)
    main([path, str(folder / "out")])
    return reference, folder / "out"


def test_presets_build_with_the_auto_classes_at_timm_sizes():
    for name, millions in (("cait-xxs24-224", 12.0), ("cait-s36-224", 68.2)):  # timm's published sizes
        config = MimirCaitConfig.from_preset(name, num_labels=1000)
        with torch.device("meta"):  # the full-size shapes, without allocating them
            model = AutoModelForImageClassification.from_config(config)
            pretraining = AutoModelForPreTraining.from_config(config)
        count = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"{name}: {count:.2f}M parameters")
        assert type(model) is MimirCaitForImageClassification and type(pretraining) is MimirCaitForPreTraining
        assert abs(count - millions) / millions < 0.01
    xxs, s36 = MimirCaitConfig.from_preset("cait-xxs24-224"), MimirCaitConfig.from_preset("cait-s36-224")
    assert (xxs.hidden_size, xxs.num_hidden_layers, xxs.num_attention_heads, xxs.layer_scale_init) == (192, 24, 4, 1e-5)
    assert (s36.hidden_size, s36.num_hidden_layers, s36.num_attention_heads, s36.layer_scale_init) == (384, 36, 8, 1e-6)
    assert (xxs.decoder_hidden_size, xxs.decoder_num_hidden_layers, xxs.decoder_num_attention_heads) == (128, 2, 16)
    assert xxs.to_dict() == MimirCaitConfig().to_dict() and xxs.num_visible_patches == 49
    with pytest.raises(ValueError, match="cait-s36-224"):
        MimirCaitConfig.from_preset("cait-m48")


@torch.no_grad()
def test_the_smallest_released_shape_runs_at_full_size():
    config = MimirCaitConfig.from_preset("cait-xxs24-224", num_labels=1000)
    classifier = AutoModelForImageClassification.from_config(config).eval()
    pretraining = AutoModelForPreTraining.from_config(config).eval()
    images = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    assert classifier(images).logits.shape == (2, 1000)
    out = pretraining(images)  # 49 of 196 patches visible
    assert out.logits.shape == (2, 196, 768) and out.latent.shape == (2, 50, 192) and torch.isfinite(out.loss)
    assert pretraining.decoder.decoder_layers[1].layer_scale2.lambda1[0] == pytest.approx(1e-5)
    positions = pretraining.cait.embeddings.position_embeddings  # MAE's init: sin-cos (sin 0, cos 0 for patch 0)
    assert positions.requires_grad and torch.equal(positions[0, 0], torch.tensor(([0.0] * 48 + [1.0] * 48) * 2))


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(hidden_size=30), "divisible by num_attention_heads"),
        (dict(decoder_num_attention_heads=5), "decoder_hidden_size"),
        (dict(num_class_attention_layers=0), "num_class_attention_layers"),
        (dict(image_mean=[0.5]), "image_mean and image_std"),
        (dict(mask_ratio=1.0), "mask_ratio"),
    ],
)
def test_config_refuses_bad_values_with_a_message(bad, message):
    with pytest.raises(StrictDataclassClassValidationError, match=message):
        MimirCaitConfig(**bad)


@torch.no_grad()
def test_classifier_file_converts_exactly(classifier_folder, pixels):
    reference, folder = classifier_folder
    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    assert type(model) is MimirCaitForImageClassification
    config = model.config
    assert (config.num_hidden_layers, config.num_class_attention_layers, config.num_attention_heads) == (2, 2, 4)
    assert (config.qkv_bias, config.layer_scale_init, config.drop_path_rate, config.num_labels) == (True, 1e-5, 0.1, 4)
    expected = reference(pixels)
    logits = model(pixels).logits
    diff = (logits - expected).abs().max().item()
    print(f"CaiT classifier: max |logits - reference| = {diff:.2e} (logits std {expected.std():.2f})")
    assert expected.std() > 0.5 and diff <= TOLERANCE
    assert torch.equal(model.classifier(model.features(pixels)), logits)  # the adaptive attacks' path
    card = (folder / "README.md").read_text()
    assert "cait_xxs24" in card and "53.39" in card and "Every tensor of the file was carried over" in card


@torch.no_grad()
def test_pretraining_file_converts_exactly(pretraining_folder, pixels, noise):
    reference, folder = pretraining_folder
    model = AutoModelForPreTraining.from_pretrained(folder).eval()
    assert type(model) is MimirCaitForPreTraining
    config = model.config
    assert (config.decoder_hidden_size, config.decoder_num_hidden_layers, config.decoder_num_attention_heads) == (
        16,
        2,
        4,
    )
    assert (config.attack_epsilon, config.attack_step_size, config.mi_weight, config.mask_ratio) == (
        4 / 255,
        5 / 255,
        2e-5,
        0.75,
    )
    loss, prediction, mask, latent = reference(pixels, noise)
    out = model(pixels, noise=noise, compute_mi_loss=False)
    diffs = {
        "logits": (out.logits - prediction).abs().max().item(),
        "reconstruction loss": (out.reconstruction_loss - loss).abs().item(),
        "latent": (out.latent - latent).abs().max().item(),
    }
    print("CaiT pre-training: max |ours - reference|:", {k: f"{v:.2e}" for k, v in diffs.items()})
    assert max(diffs.values()) <= TOLERANCE and torch.equal(out.mask, mask)
    assert prediction.std() > 0.5 and out.logits.shape == (4, 16, 48) and out.latent.shape == (4, 5, 32)
    with_mi = model(pixels, noise=noise)
    assert with_mi.loss == pytest.approx((with_mi.reconstruction_loss + 2e-5 * with_mi.mi_loss).item(), rel=1e-6)


@torch.no_grad()
def test_qkv_biases_into_a_bias_free_config_are_reported(tmp_path, pixels):
    reference = reference_classifier(qkv_bias=True)
    path = training_file(tmp_path / "biased.pth", reference.state_dict(), model="cait_xxs24")
    main([path, str(tmp_path / "out"), "--qkv_bias", "false"])
    biases = {f"blocks.{i}.attn.qkv.bias" for i in range(2)} | {
        f"blocks_token_only.{i}.attn.{name}.bias" for i in range(2) for name in "qkv"
    }
    card = (tmp_path / "out" / "README.md").read_text()
    assert all(f"`{key}`: query/key/value bias" in card for key in biases)
    conversion = convert_cait_checkpoint(reference.state_dict(), qkv_bias=False)
    assert set(conversion.ignored) == biases and not conversion.new_keys
    model = MimirCaitForImageClassification.from_pretrained(tmp_path / "out").eval()
    for block in reference.blocks:  # dropping the biases is the only change
        block.attn.qkv.bias.zero_()
    for block in reference.blocks_token_only:
        for name in "qkv":
            getattr(block.attn, name).bias.zero_()
    assert (model(pixels).logits - reference(pixels)).abs().max() <= TOLERANCE


def test_unknown_keys_are_refused_and_a_headless_encoder_gets_a_new_head():
    state = reference_classifier().state_dict()
    with pytest.raises(ValueError, match="fc_norm.weight"):
        convert_cait_checkpoint({**state, "fc_norm.weight": torch.ones(32)})
    encoder = {key: value for key, value in state.items() if not key.startswith("head.")}
    conversion = convert_cait_checkpoint({f"module.{k}": v for k, v in encoder.items()}, num_labels=7)
    assert conversion.new_keys == ["classifier.bias", "classifier.weight"] and conversion.config.num_labels == 7
    assert any("newly initialised" in note for note in conversion.notes)


@torch.no_grad()
def test_a_bare_state_dict_is_recognised_by_its_keys(tmp_path, pixels):
    reference = reference_classifier()
    torch.save({f"module.{key}": value for key, value in reference.state_dict().items()}, tmp_path / "bare.pth")
    model = convert_checkpoint(str(tmp_path / "bare.pth"))  # no args: family and shape from the keys and tensors
    assert type(model) is MimirCaitForImageClassification
    assert (model(pixels).logits - reference(pixels)).abs().max() <= TOLERANCE


@torch.no_grad()
def test_save_load_round_trips_are_exact(tmp_path, pixels, noise):
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    for model_class in (MimirCaitForImageClassification, MimirCaitForPreTraining):
        model = model_class(tiny_config(image_mean=mean, image_std=std)).eval()
        model.save_pretrained(tmp_path / model_class.__name__)
        loaded = model_class.from_pretrained(tmp_path / model_class.__name__).eval()
        assert all(torch.equal(value, loaded.state_dict()[key]) for key, value in model.state_dict().items())
        kwargs = {"noise": noise, "compute_mi_loss": False} if model_class is MimirCaitForPreTraining else {}
        assert torch.equal(loaded(pixels, **kwargs).logits, model(pixels, **kwargs).logits)
    config = json.loads((tmp_path / "MimirCaitForPreTraining" / "config.json").read_text())
    assert config["auto_map"]["AutoModelForPreTraining"] == "modeling_mimir_cait.MimirCaitForPreTraining"
    # The normalisation is inside: on pixels, the model equals the same weights without it on normalised inputs.
    normalising = MimirCaitForImageClassification.from_pretrained(tmp_path / "MimirCaitForImageClassification").eval()
    plain = MimirCaitForImageClassification(tiny_config()).eval()
    plain.load_state_dict(normalising.state_dict())
    normalised = (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert (normalising(pixels).logits - plain(normalised).logits).abs().max() <= TOLERANCE


@torch.no_grad()
def test_a_classifier_starts_from_a_pretraining_folder(pretraining_folder, pixels):
    _, folder = pretraining_folder
    pretrained = MimirCaitForPreTraining.from_pretrained(folder).eval()
    classifier = MimirCaitForImageClassification.from_pretrained(folder, num_labels=10).eval()
    assert classifier.classifier.out_features == 10
    expected = pretrained.cait(pixels).last_hidden_state  # the encoder on every patch, unmasked
    assert torch.equal(classifier.cait(pixels).last_hidden_state, expected)


def test_saved_folders_load_without_mimir_hf(classifier_folder, pretraining_folder, pixels, noise, tmp_path):
    with torch.no_grad():
        classifier = MimirCaitForImageClassification.from_pretrained(classifier_folder[1]).eval()
        pretraining = MimirCaitForPreTraining.from_pretrained(pretraining_folder[1]).eval()
        expected_logits = classifier(pixels).logits
        expected_prediction = pretraining(pixels, noise=noise, compute_mi_loss=False).logits
    outputs_match_without_mimir_hf(
        tmp_path,
        [
            ("AutoModelForImageClassification", str(classifier_folder[1]), pixels, expected_logits),
            ("AutoModelForPreTraining", str(pretraining_folder[1]), (pixels, noise), expected_prediction),
        ],
    )


@torch.no_grad()
def test_batching_equivalence(classifier_folder, pretraining_folder, pixels, noise):
    classifier = MimirCaitForImageClassification.from_pretrained(classifier_folder[1]).eval()
    batched = classifier(pixels).logits
    one_by_one = torch.cat([classifier(image[None]).logits for image in pixels])
    assert (batched - one_by_one).abs().max() <= TOLERANCE
    pretraining = MimirCaitForPreTraining.from_pretrained(pretraining_folder[1]).eval()
    batched = pretraining(pixels, noise=noise, compute_mi_loss=False).logits
    pairs = zip(pixels, noise, strict=True)
    one_by_one = torch.cat([pretraining(x[None], noise=row[None], compute_mi_loss=False).logits for x, row in pairs])
    assert (batched - one_by_one).abs().max() <= TOLERANCE


def test_pipeline_on_a_converted_folder(classifier_folder):
    from PIL import Image

    reference, folder = classifier_folder
    classify = pipeline("image-classification", model=str(folder), device="cpu")
    best = classify(Image.new("RGB", (16, 16), (200, 40, 90)), top_k=1)[0]
    pixels = torch.tensor([200, 40, 90], dtype=torch.float32).div(255).view(1, 3, 1, 1).expand(1, 3, 16, 16)
    with torch.no_grad():
        assert best["label"] == classify.model.config.id2label[int(reference(pixels).argmax())]


def test_eager_and_sdpa_class_attention_agree(classifier_folder, pixels):
    sdpa = MimirCaitForImageClassification.from_pretrained(classifier_folder[1]).eval()
    eager = MimirCaitForImageClassification.from_pretrained(classifier_folder[1], attn_implementation="eager").eval()
    assert (sdpa.config._attn_implementation, eager.config._attn_implementation) == ("sdpa", "eager")
    with torch.no_grad():
        assert (sdpa(pixels).logits - eager(pixels).logits).abs().max() <= TOLERANCE


def test_mae_attack_raises_the_reconstruction_loss(pixels, noise):
    model = MimirCaitForPreTraining(tiny_config()).eval()
    budget = AttackBudget(epsilon=8 / 255, step_size=2 / 255, steps=5)
    adversarial = mae_attack(model, pixels, budget, generator=torch.Generator().manual_seed(0))
    assert (adversarial - pixels).abs().max() <= 8 / 255 + 1e-6
    with torch.no_grad():  # x' against itself, under a fixed mask
        clean = model(pixels, noise=noise, compute_mi_loss=False).reconstruction_loss
        attacked = model(adversarial, noise=noise, compute_mi_loss=False).reconstruction_loss
    assert attacked > clean
    assert model.config.attack_budget == AttackBudget(8 / 255, 10 / 255, 1)


def test_pretraining_trainer_lowers_the_loss(tmp_path):
    model = MimirCaitForPreTraining(tiny_config())
    images, _ = fixed_batch()
    noise = torch.rand(8, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model.eval()(images, noise=noise).reconstruction_loss
    trainer = MimirPreTrainingTrainer(
        model=model, args=arguments(tmp_path, True, num_train_epochs=15), train_dataset=dataset()
    )
    trainer.train()
    with torch.no_grad():
        after = model.eval()(images, noise=noise).reconstruction_loss
    assert after < 0.8 * before
    assert all("mi_loss" in entry for entry in trainer.state.log_history if "loss" in entry)


def test_adversarial_trainer_lowers_the_robust_loss(tmp_path):
    # LayerScale at CaiT's init for shallow models (0.1): at 1e-5 the class token barely sees the image yet.
    model = MimirCaitForImageClassification(tiny_config(layer_scale_init=0.1))
    images, labels = fixed_batch()

    def robust_loss():
        adversarial = pgd_attack(
            model, images, labels, AttackBudget(8 / 255, 4 / 255, 3), generator=torch.Generator().manual_seed(2)
        )
        with torch.no_grad():
            return F.cross_entropy(model.eval()(adversarial).logits, labels)

    before = robust_loss()
    args = arguments(tmp_path, num_train_epochs=15, learning_rate=1e-2)
    MimirAdversarialTrainer(model=model, args=args, train_dataset=dataset()).train()
    assert robust_loss() < 0.8 * before


def test_robustness_report_runs(classifier_folder):
    model = MimirCaitForImageClassification.from_pretrained(classifier_folder[1])
    images, labels = fixed_batch()
    report = evaluate_robustness(model, (images, labels), QUICK)
    assert {"natural", "pgd3", "pgd_mi", "pgd_feature"} <= set(report.accuracy)
    assert report.robust_accuracy <= report.natural_accuracy


def test_layer_decay_counts_the_self_attention_layers():
    model = MimirCaitForImageClassification(tiny_config())  # ids 0 (embeddings, class token), 1, 2, 3 (the rest)
    groups = parameter_groups(model, learning_rate=1.0, weight_decay=0.05, layer_decay=0.5)
    by_parameter = {id(p): g for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    lr = {name: by_parameter[id(named[name])]["lr"] for name in named}
    decay = {name: by_parameter[id(named[name])]["weight_decay"] for name in named}
    assert lr["cait.embeddings.cls_token"] == lr["cait.embeddings.position_embeddings"] == 0.125
    assert lr["cait.layers.0.attention.logits_mix.weight"] == 0.25 and lr["cait.layers.1.mlp.fc1.weight"] == 0.5
    assert lr["cait.class_attention_layers.0.attention.q_proj.weight"] == lr["classifier.weight"] == 1.0
    assert decay["cait.embeddings.cls_token"] == decay["cait.embeddings.position_embeddings"] == 0.0
    assert decay["cait.layers.0.layer_scale1.lambda1"] == 0.0 and decay["cait.layers.0.mlp.fc1.weight"] == 0.05


def test_other_input_sizes_interpolate_the_positions(classifier_folder, pixels):
    model = MimirCaitForImageClassification.from_pretrained(classifier_folder[1]).eval()
    with pytest.raises(ValueError, match="does not match the model's 16x16"):
        model(torch.rand(1, 3, 24, 24))
    with torch.no_grad():
        assert model(torch.rand(2, 3, 24, 32), interpolate_pos_encoding=True).logits.shape == (2, 4)
        assert torch.equal(model(pixels, interpolate_pos_encoding=True).logits, model(pixels).logits)


def test_gradient_checkpointing_gives_the_same_gradients(pixels):
    model = MimirCaitForPreTraining(tiny_config())
    noise = torch.rand(4, 16, generator=torch.Generator().manual_seed(3))
    model.train()
    model(pixels, noise=noise).loss.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.gradient_checkpointing_enable()
    model(pixels, noise=noise).loss.backward()
    for name, grad in expected.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, atol=1e-6, rtol=1e-5)


def test_training_args_file_of_another_shape_is_refused(tmp_path):
    state = reference_classifier().state_dict()
    state["blocks.1.mlp.fc1.weight"] = torch.zeros(64, 32)
    torch.save({"model": state, "args": argparse.Namespace(model="cait_xxs24")}, tmp_path / "odd.pth")
    with pytest.raises(ValueError, match="blocks.1.mlp.fc1.weight"):
        convert_checkpoint(str(tmp_path / "odd.pth"))


def test_talking_heads_attention_keeps_its_parameter_order():
    """The order decides the seeded initialisation and the layout of saved optimizer states (a resumed run's AdamW
    moments are matched by position): the shared attention base must not move o_proj before the mixers."""
    from mimir_hf.models.cait.modeling_mimir_cait import MimirCaitTalkingHeadsAttention

    attention = MimirCaitTalkingHeadsAttention(MimirCaitConfig(hidden_size=32, num_attention_heads=4))
    modules = [name for name, _ in attention.named_children()]
    assert modules == ["q_proj", "k_proj", "v_proj", "logits_mix", "weights_mix", "o_proj"]
