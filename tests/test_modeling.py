"""Model tests in the spirit of transformers' ModelTester: tiny config, round trips, Auto classes, exact loading."""

import os

import pytest
import torch
import transformers
from huggingface_hub.errors import StrictDataclassError
from safetensors import safe_open
from transformers import AutoConfig, AutoModel, AutoModelForImageClassification, AutoModelForPreTraining
from transformers.testing_utils import CaptureLogger

import mimir_hf  # noqa: F401  (registers the Auto classes)
from mimir_hf import MimirConfig, MimirForImageClassification, MimirForPreTraining, MimirModel
from mimir_hf.modeling_common import logger as modeling_logger
from mimir_hf.mutual_information import hsic, mutual_information

from .conftest import tiny_config


def test_presets_and_unknown_preset():
    config = MimirConfig.from_preset("vit-small-patch2-32", num_labels=10)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (384, 12, 6)
    assert config.grid_size == (16, 16) and config.layer_norm_eps == 1e-6 and config.num_labels == 10
    assert MimirConfig.from_preset("vit-large-patch16-224").num_patches == 196
    with pytest.raises(ValueError, match="preset.*vit-huge.*vit-base-patch16-224"):
        MimirConfig.from_preset("vit-huge")


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(hidden_size=30), "hidden_size \\(30\\) must be divisible by num_attention_heads"),
        (dict(mask_ratio=1.0), "mask_ratio must be in \\[0, 1\\)"),
        (dict(attack_epsilon=-0.1), "attack_epsilon must be in \\[0, 1\\]"),
        (dict(attack_steps=0), "attack_steps must be an integer >= 1"),
        (dict(attack_step_size=0.0), "attack_step_size must be > 0"),
        (dict(mi_estimator="kde"), "mi_estimator must be one of"),
        (dict(classifier_pooling="max"), "classifier_pooling must be one of"),
        (dict(image_size=18), "divisible by patch_size"),
        (dict(image_mean=[0.5, 0.5, 0.5]), "set together"),
    ],
)
def test_config_rejects_bad_values_with_a_message(bad, message):
    # transformers' @strict configs wrap the ValueError of validate_architecture, keeping its message
    with pytest.raises((ValueError, StrictDataclassError), match=message):
        tiny_config(**bad)


def test_every_class_builds_from_auto_config():
    fields = tiny_config().to_diff_dict()
    fields.pop("model_type")
    config = AutoConfig.for_model("mimir", **fields)
    assert isinstance(config, MimirConfig)
    assert type(AutoModel.from_config(config)) is MimirModel
    assert type(AutoModelForPreTraining.from_config(config)) is MimirForPreTraining
    assert type(AutoModelForImageClassification.from_config(config)) is MimirForImageClassification


def test_sincos_positions_and_tokens_are_initialised(config):
    model = MimirForPreTraining(config)
    positions = model.vit.embeddings.position_embeddings
    assert not positions.requires_grad and positions[0, 0].abs().sum() == 0 and positions[0, 1:].abs().sum() > 0
    assert model.decoder.decoder_pos_embed[0, 1:].abs().sum() > 0
    assert model.decoder.mask_token.abs().sum() > 0 and model.vit.embeddings.cls_token.abs().sum() > 0


def test_pretraining_outputs_and_mimir_loss(config, images):
    model = MimirForPreTraining(config).eval()
    noise = torch.rand(6, config.num_patches)
    adversarial = (images + 0.03 * torch.randn_like(images)).clamp(0, 1)
    out = model(images, adversarial_pixel_values=adversarial, noise=noise)
    kept = int(config.num_patches * (1 - config.mask_ratio))
    assert out.logits.shape == (6, config.num_patches, config.patch_size**2 * 3)
    assert out.mask.shape == (6, config.num_patches) and out.mask.sum(1).eq(config.num_patches - kept).all()
    assert out.latent.shape == (6, 1 + kept, config.hidden_size)
    # loss = reconstruction + lambda * HSIC(Z, X'), Z the encoder tokens, X' what the encoder read
    torch.testing.assert_close(out.mi_loss, hsic(out.latent, adversarial))
    torch.testing.assert_close(out.loss, out.reconstruction_loss + config.mi_weight * out.mi_loss)
    # the encoder reads X', the target is the clean X
    encoder_only = model.vit(adversarial, noise=noise, apply_masking=True).last_hidden_state
    torch.testing.assert_close(out.latent, encoder_only)
    target = model.patchify(images)
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    expected = (((out.logits - target) ** 2).mean(-1) * out.mask).sum() / out.mask.sum()
    torch.testing.assert_close(out.reconstruction_loss, expected)
    assert not torch.allclose(out.reconstruction_loss, model(adversarial, noise=noise).reconstruction_loss)


def test_mi_estimator_none_and_renyi(images):
    noise = torch.rand(6, 16)
    plain = MimirForPreTraining(tiny_config(mi_estimator="none")).eval()
    out = plain(images, noise=noise)
    assert out.mi_loss is None and torch.equal(out.loss, out.reconstruction_loss)
    renyi = MimirForPreTraining(tiny_config(mi_estimator="renyi", mi_weight=0.1)).eval()
    out = renyi(images, noise=noise)
    torch.testing.assert_close(out.loss, out.reconstruction_loss + 0.1 * out.mi_loss)


def test_fixed_noise_is_deterministic_and_fresh_masks_differ(config, images):
    model = MimirForPreTraining(config).eval()
    noise = torch.rand(6, config.num_patches)
    assert torch.equal(model(images, noise=noise).loss, model(images, noise=noise).loss)
    assert not torch.equal(model(images).mask, model(images).mask)


def test_save_load_round_trip_gives_equal_outputs(tmp_path, config, images, labels):
    noise = torch.rand(6, config.num_patches)
    model = MimirForPreTraining(config).eval()
    model.save_pretrained(tmp_path / "pt")
    assert sorted(os.listdir(tmp_path / "pt")) == [
        "config.json", "configuration_common.py", "configuration_mimir.py", "image_processing_mimir.py",
        "model.safetensors", "modeling_common.py", "modeling_heads.py", "modeling_mimir.py", "mutual_information.py",
        "threat_model.py",
    ]  # fmt: skip
    reloaded = MimirForPreTraining.from_pretrained(tmp_path / "pt").eval()
    for name in ("loss", "logits", "latent"):
        torch.testing.assert_close(
            getattr(model(images, noise=noise), name), getattr(reloaded(images, noise=noise), name)
        )

    classifier = MimirForImageClassification(config).eval()
    classifier.save_pretrained(tmp_path / "clf")
    reloaded = MimirForImageClassification.from_pretrained(tmp_path / "clf").eval()
    torch.testing.assert_close(classifier(images).logits, reloaded(images).logits)


def test_saved_keys_are_the_module_names_of_transformers_vit_mae(tmp_path, config):
    """Checkpoints hold the module names, so a plain load_state_dict (Trainer's resume) restores every weight."""
    model = MimirForPreTraining(config)
    model.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert keys == set(model.state_dict())
    fields = {k: v for k, v in config.to_dict().items() if k in transformers.ViTMAEConfig().to_dict()}
    vit_mae = transformers.ViTMAEForPreTraining(transformers.ViTMAEConfig(**fields))
    assert keys == set(vit_mae.state_dict())
    assert "vit.layers.0.attention.q_proj.weight" in keys


def test_pretraining_initialises_from_a_transformers_vit_mae_checkpoint(tmp_path, config, images):
    fields = {k: v for k, v in config.to_dict().items() if k in transformers.ViTMAEConfig().to_dict()}
    vit_mae = transformers.ViTMAEForPreTraining(transformers.ViTMAEConfig(**fields)).eval()
    vit_mae.save_pretrained(tmp_path)
    model = MimirForPreTraining.from_pretrained(tmp_path).eval()  # its config carries over
    assert isinstance(model.config, MimirConfig)
    for field in (
        "hidden_size",
        "num_hidden_layers",
        "decoder_hidden_size",
        "image_size",
        "patch_size",
        "layer_norm_eps",
    ):
        assert getattr(model.config, field) == getattr(vit_mae.config, field), field
    theirs = dict(vit_mae.named_parameters())
    for name, parameter in model.named_parameters():
        assert torch.equal(parameter, theirs[name]), name
    noise = torch.rand(6, config.num_patches)
    with torch.no_grad():
        torch.testing.assert_close(
            model(images, noise=noise, compute_mi_loss=False).reconstruction_loss, vit_mae(images, noise=noise).loss
        )


def test_classifier_loads_every_encoder_weight_of_a_pretraining_checkpoint(tmp_path, config, images):
    pretrained = MimirForPreTraining(config)
    pretrained.save_pretrained(tmp_path)
    with CaptureLogger(modeling_logger) as captured:
        classifier, info = MimirForImageClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert "newly initialised classifier, fc_norm" in captured.out and "decoder" in captured.out
    assert info["missing_keys"] == {"classifier.weight", "classifier.bias", "fc_norm.weight", "fc_norm.bias"}
    encoder = dict(pretrained.vit.named_parameters())
    for name, parameter in classifier.vit.named_parameters():
        assert torch.equal(parameter, encoder[name]), name
    assert len(list(classifier.vit.parameters())) == len(encoder) - 2  # all but the unused final norm


def test_classifier_sees_every_patch_in_order_and_is_deterministic(config, images, labels):
    model = MimirForImageClassification(config).eval()
    tokens = model.vit(images, apply_masking=False).last_hidden_state
    assert tokens.shape == (6, 1 + config.num_patches, config.hidden_size)
    out = model(images, labels=labels)
    assert out.logits.shape == (6, config.num_labels) and torch.equal(out.logits, model(images).logits)
    expected = torch.nn.functional.cross_entropy(out.logits, labels, label_smoothing=config.label_smoothing)
    torch.testing.assert_close(out.loss, expected)
    # a patch's output depends on where it is: the pooled feature is not permutation-blind to the image
    assert not torch.allclose(model(images.flip(-1)).logits, out.logits)


def test_cls_pooling_uses_the_final_norm(images):
    model = MimirForImageClassification(tiny_config(classifier_pooling="cls")).eval()
    assert isinstance(model.fc_norm, torch.nn.Identity) and isinstance(model.vit.layernorm, torch.nn.LayerNorm)
    assert model(images).logits.shape == (6, 4)


def test_normalisation_inside_the_model_equals_normalised_inputs(images):
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    normalising = MimirForImageClassification(tiny_config(image_mean=mean, image_std=std)).eval()
    plain = MimirForImageClassification(tiny_config()).eval()
    plain.load_state_dict(normalising.state_dict())
    normalised = (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(normalising(images).logits, plain(normalised).logits)


def test_interpolate_pos_encoding_and_size_errors(config, images):
    model = MimirForImageClassification(config).eval()
    bigger = torch.rand(2, 3, 24, 32)
    assert model(bigger, interpolate_pos_encoding=True).logits.shape == (2, 4)
    with pytest.raises(ValueError, match="24x32.*16x16"):
        model(bigger)
    with pytest.raises(ValueError, match="1 channels.*expects 3"):
        model(torch.rand(2, 1, 16, 16))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 4\)"):
        model(images, labels=torch.tensor([0, 1, 2, 3, 4, 9]))


def test_non_square_images(images):
    config = tiny_config(image_size=[16, 24])
    model = MimirForPreTraining(config).eval()
    x = torch.rand(3, 3, 16, 24)
    out = model(x)
    assert out.logits.shape == (3, 24, 48)
    torch.testing.assert_close(model.unpatchify(model.patchify(x)), x)


def test_gradient_checkpointing_gives_the_same_gradients(config, images):
    model = MimirForPreTraining(config)
    noise = torch.rand(6, config.num_patches)
    model(images, noise=noise).loss.backward()
    expected = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    model.gradient_checkpointing_enable()
    model.train()
    model(images, noise=noise).loss.backward()
    got = [p.grad for p in model.parameters() if p.grad is not None]
    assert len(expected) == len(got)
    for a, b in zip(expected, got, strict=True):
        torch.testing.assert_close(a, b)


def test_forward_checks_shapes_without_a_device_sync(images):
    """The [0, 1] range is checked where images enter (processor, attacks), not in forward: forward reads no value
    of the input, so a training step never waits on the device for a check."""
    model = MimirForImageClassification(tiny_config()).eval()
    calls = []
    original = torch.Tensor.item
    torch.Tensor.item = lambda self: calls.append(1) or original(self)
    try:
        model(images)
    finally:
        torch.Tensor.item = original
    assert calls == []
    with pytest.raises(ValueError, match="empty batch"):
        model(images[:0])


def test_from_pretrained_refuses_other_architectures_corrupt_files_and_half_loads(tmp_path, config):
    bert = transformers.BertModel(
        transformers.BertConfig(
            hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=50
        )
    )
    bert.save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match="'bert'.*'mimir'.*'vit_mae'"):
        MimirForImageClassification.from_pretrained(tmp_path / "bert")

    MimirForImageClassification(config).save_pretrained(tmp_path / "truncated")
    weights = tmp_path / "truncated" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        MimirForImageClassification.from_pretrained(tmp_path / "truncated")

    from safetensors.torch import load_file, save_file

    MimirForImageClassification(config).save_pretrained(tmp_path / "partial")
    state = load_file(tmp_path / "partial" / "model.safetensors")
    del state["vit.layers.1.mlp.fc2.weight"]
    save_file(state, tmp_path / "partial" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="vit.layers.1.mlp.fc2.weight.*half-loaded"):
        MimirForImageClassification.from_pretrained(tmp_path / "partial")


@pytest.mark.parametrize("family", ["vit", "cait", "convit"])
@pytest.mark.parametrize("estimator", ["hsic", "renyi"])
def test_every_family_takes_the_mi_term_on_the_authors_inputs(family, estimator):
    """HSIC(Z, X') on the adversarial view the encoder read, the Renyi MI I(X; Z) on the clean images (the authors'
    pretrain.py): one loss for every family."""
    from mimir_hf import MimirCaitConfig, MimirCaitForPreTraining, MimirConvitConfig, MimirConvitForPreTraining

    shape = dict(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 decoder_hidden_size=16, decoder_num_attention_heads=4, decoder_intermediate_size=32, num_labels=4,
                 mi_estimator=estimator, mi_weight=0.1)  # fmt: skip
    model = {
        "vit": lambda: MimirForPreTraining(tiny_config(mi_estimator=estimator, mi_weight=0.1)),
        "cait": lambda: MimirCaitForPreTraining(MimirCaitConfig(**shape)),
        "convit": lambda: MimirConvitForPreTraining(MimirConvitConfig(**shape, local_up_to_layer=1)),
    }[family]().eval()
    generator = torch.Generator().manual_seed(0)
    # near-identical clean images, scattered adversarial ones: their Gram matrices, hence the two MI choices, differ
    clean = (0.5 + 0.02 * torch.randn(6, 3, 16, 16, generator=generator)).clamp(0, 1)
    adversarial = torch.rand(6, 3, 16, 16, generator=generator)
    out = model(clean, adversarial_pixel_values=adversarial, noise=torch.rand(6, 16, generator=generator))
    inputs = clean if estimator == "renyi" else adversarial
    config = model.config
    expected = mutual_information(estimator, out.latent, inputs, sigma=config.mi_sigma, alpha=config.mi_alpha)
    torch.testing.assert_close(out.mi_loss, expected)
    other = mutual_information(estimator, out.latent, adversarial if estimator == "renyi" else clean,
                               sigma=config.mi_sigma, alpha=config.mi_alpha)  # fmt: skip
    assert not torch.allclose(out.mi_loss, other)  # the two choices are told apart
    torch.testing.assert_close(out.loss, out.reconstruction_loss + 0.1 * out.mi_loss)


@pytest.mark.parametrize("family", ["vit", "cait", "convit"])
def test_every_family_refuses_a_mask_ratio_that_leaves_no_patch_visible(family):
    """One check for every family (the shared config mixin): 16 patches at 0.95 leave 0 visible."""
    from mimir_hf import MimirCaitConfig, MimirConvitConfig

    config_class = {"vit": MimirConfig, "cait": MimirCaitConfig, "convit": MimirConvitConfig}[family]
    shape = dict(image_size=16, patch_size=4, hidden_size=32, num_attention_heads=4, decoder_hidden_size=16,
                 decoder_num_attention_heads=4)  # fmt: skip
    with pytest.raises(StrictDataclassError, match="leaves 0 of 16 patches visible"):
        config_class(**shape, mask_ratio=0.95)
    assert config_class(**shape, mask_ratio=0.75).num_visible_patches == 4


def _classifier_and_head(family: str):
    """A tiny classifier of `family` with random weights, and how its head reads the base model's output."""
    from mimir_hf import (
        MimirCaitForImageClassification,
        MimirConvitForImageClassification,
        MimirSwinConfig,
        MimirSwinForImageClassification,
    )

    from .test_cait import tiny_config as tiny_cait_config
    from .test_convit import tiny_config as tiny_convit_config

    swin = MimirSwinConfig(image_size=16, patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[2, 2], window_size=2,
                           num_labels=4)  # fmt: skip
    classifier = {
        "vit-mean": lambda: MimirForImageClassification(tiny_config()),
        "vit-cls": lambda: MimirForImageClassification(tiny_config(classifier_pooling="cls")),
        "swin": lambda: MimirSwinForImageClassification(swin),
        "cait": lambda: MimirCaitForImageClassification(tiny_cait_config()),
        "convit": lambda: MimirConvitForImageClassification(tiny_convit_config()),
    }[family]()
    with torch.no_grad():
        for parameter in classifier.parameters():
            parameter.normal_(std=0.2)
    head = {
        "vit-mean": lambda base, x: classifier.classifier(
            classifier.fc_norm(base(x, apply_masking=False).last_hidden_state[:, 1:].mean(dim=1))
        ),
        "vit-cls": lambda base, x: classifier.classifier(base(x, apply_masking=False).last_hidden_state[:, 0]),
    }.get(family, lambda base, x: classifier.classifier(base(x).pooler_output))
    return classifier.eval(), head


@pytest.mark.parametrize("family", ["vit-mean", "vit-cls", "swin", "cait", "convit"])
def test_auto_model_on_a_classifier_folder_gives_its_encoder(tmp_path, images, family):
    """AutoModel on a saved classifier gives the family's base model holding the classifier's encoder, exactly: its
    head on the base model's output reproduces the classifier's logits. A mean-pooling ViT classifier has no final
    encoder norm (fc_norm normalises the pooled feature), so its MimirModel is built without one, said in a log line,
    and that encoder saves and loads again."""
    from mimir_hf.models.vit.modeling_mimir import logger as vit_logger

    classifier, head = _classifier_and_head(family)
    classifier.save_pretrained(tmp_path / "classifier")
    with CaptureLogger(vit_logger) as captured:
        base = AutoModel.from_pretrained(tmp_path / "classifier").eval()
    assert type(base).__name__ == type(classifier).__name__.replace("ForImageClassification", "Model")
    with torch.no_grad():
        expected = classifier(images).logits
        torch.testing.assert_close(head(base, images), expected)
    no_final_norm = family == "vit-mean"
    assert ("use_final_norm=False" in captured.out) == no_final_norm
    if no_final_norm:
        assert isinstance(base.layernorm, torch.nn.Identity)
        assert (
            "mean-pooling MimirForImageClassification" in captured.out
            and "before the classifier's fc_norm" in captured.out
        )
        base.save_pretrained(tmp_path / "encoder")
        with CaptureLogger(vit_logger) as captured:
            again = AutoModel.from_pretrained(tmp_path / "encoder").eval()
        assert "an encoder saved without a final norm" in captured.out
        with torch.no_grad():
            torch.testing.assert_close(head(again, images), expected)


def test_loading_a_classifier_as_a_pretraining_model_names_the_class_to_use(tmp_path):
    """A mean-pooling classifier has no final encoder norm, which MimirForPreTraining needs: refused, naming the
    class the checkpoint is."""
    MimirForImageClassification(tiny_config()).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"vit\.layernorm.*half-loaded.*load it with MimirForImageClassification\.$"):
        MimirForPreTraining.from_pretrained(tmp_path)
