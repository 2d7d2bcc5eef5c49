"""One contract, four families: the same forward API and optimizer declarations for ViT, CaiT, ConViT and Swin.

Each family gives a tiny config; the same checks then run over all of them: the encoder (`AutoModel`) sees every patch
unless asked to mask, `return_dict=False` gives transformers' tuples, `output_hidden_states` / `output_attentions`
(eager attention) come back from the encoder and the classifier alike, the classifier's logits are its head on the
encoder's `pooler_output`, and every parameter has a layer id for layer-wise lr decay."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel, AutoModelForImageClassification

from mimir_hf import (
    MimirCaitConfig,
    MimirConfig,
    MimirConvitConfig,
    MimirSwinConfig,
)

SMALL = dict(image_size=16, patch_size=4, hidden_size=32, num_attention_heads=4, num_labels=3)
DECODER = dict(decoder_hidden_size=16, decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
               decoder_intermediate_size=32)  # fmt: skip
TINY_CONFIGS = {
    "vit": lambda: MimirConfig(**SMALL, **DECODER, num_hidden_layers=2, intermediate_size=64),
    "vit-cls": lambda: MimirConfig(**SMALL, **DECODER, num_hidden_layers=2, classifier_pooling="cls"),
    "cait": lambda: MimirCaitConfig(**SMALL, **DECODER, num_hidden_layers=2, num_class_attention_layers=2),
    "convit": lambda: MimirConvitConfig(**SMALL, **DECODER, num_hidden_layers=3, local_up_to_layer=2),
    "swin": lambda: MimirSwinConfig(
        image_size=16, patch_size=2, embed_dim=8, depths=[1, 2], num_heads=[2, 2], window_size=4, num_labels=3
    ),  # fmt: skip
}


def expected_layers(config) -> tuple[int, int]:
    """(hidden states, attention maps) an encoder returns: every layer's input and the last output; one map per
    attention layer (CaiT's class-attention layers included), per stage for Swin (transformers' Swin)."""
    if config.model_type == "mimir_swin":
        return len(config.depths) + 1, len(config.depths)
    extra = getattr(config, "num_class_attention_layers", 0) if config.model_type == "mimir_cait" else 0
    return config.num_hidden_layers + 1, config.num_hidden_layers + extra


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module", params=sorted(TINY_CONFIGS))
def family(request):
    torch.manual_seed(0)
    config = TINY_CONFIGS[request.param]()
    classifier = AutoModelForImageClassification.from_config(config, attn_implementation="eager").eval()
    encoder = AutoModel.from_config(config, attn_implementation="eager").eval()
    encoder.load_state_dict(classifier.base_model.state_dict(), strict=False)
    return request.param, config, encoder, classifier


def test_the_encoder_sees_every_patch_by_default_and_pools(family, pixels):
    name, config, encoder, classifier = family
    with torch.no_grad():
        first, second = encoder(pixels), encoder(pixels)
    torch.testing.assert_close(first.last_hidden_state, second.last_hidden_state, rtol=0, atol=0)
    if name != "swin":
        assert first.mask is None and first.last_hidden_state.shape[1] == 1 + config.num_patches
    hidden = config.hidden_size
    assert first.pooler_output.shape == (2, hidden)


def test_logits_are_the_head_on_the_pooled_feature(family, pixels):
    _, _, _, classifier = family
    with torch.no_grad():
        pooled = classifier.base_model(pixels).pooler_output
        torch.testing.assert_close(classifier(pixels).logits, classifier.classifier(classifier.head_input(pooled)))
        torch.testing.assert_close(classifier.features(pixels), classifier.head_input(pooled))


def test_return_dict_false_gives_tuples(family, pixels):
    _, _, encoder, classifier = family
    labels = torch.tensor([0, 2])
    with torch.no_grad():
        as_tuple = encoder(pixels, return_dict=False)
        assert isinstance(as_tuple, tuple)
        torch.testing.assert_close(as_tuple[0], encoder(pixels).last_hidden_state)
        loss, logits = classifier(pixels, labels=labels, return_dict=False)
        expected = classifier(pixels, labels=labels)
    torch.testing.assert_close(logits, expected.logits)
    torch.testing.assert_close(loss, expected.loss)


def test_hidden_states_and_attentions_from_encoder_and_classifier(family, pixels):
    _, config, encoder, classifier = family
    states, maps = expected_layers(config)
    with torch.no_grad():
        out = encoder(pixels, output_hidden_states=True, output_attentions=True)
        logits_out = classifier(pixels, output_hidden_states=True, output_attentions=True)
        plain = encoder(pixels)
    assert len(out.hidden_states) == states and len(logits_out.hidden_states) == states
    assert len(out.attentions) == maps and len(logits_out.attentions) == maps
    mixed = config.num_hidden_layers if config.model_type == "mimir_cait" else 0  # talking heads: mixed after softmax
    for index, attention in enumerate(out.attentions):
        assert attention.dim() == 4 and attention.shape[0] % 2 == 0  # the batch (x windows for Swin)
        if index >= mixed:
            torch.testing.assert_close(attention.sum(-1), torch.ones_like(attention.sum(-1)))
    assert plain.hidden_states is None and plain.attentions is None
    config.output_hidden_states = True  # unset flags follow the config, as in transformers
    try:
        with torch.no_grad():
            assert len(encoder(pixels).hidden_states) == states
    finally:
        config.output_hidden_states = False


def test_fused_attention_cannot_give_attentions_and_says_so(pixels):
    config = TINY_CONFIGS["vit"]()
    encoder = AutoModel.from_config(config, attn_implementation="sdpa").eval()
    with pytest.raises(ValueError, match="attn_implementation='eager'"):
        encoder(pixels, output_attentions=True)


def test_every_parameter_has_a_layer_id_and_the_head_is_on_top(family):
    _, _, _, classifier = family
    top = classifier.num_layer_ids() - 1
    ids = {name: classifier.layer_id(name) for name, _ in classifier.named_parameters()}
    assert set(ids.values()) == set(range(top + 1))  # every id is used, none beyond
    assert ids["classifier.weight"] == top
    embeddings = [name for name in ids if ".embeddings." in name]
    assert embeddings and all(ids[name] == 0 for name in embeddings)
    assert classifier.no_weight_decay() <= set(ids)


def test_one_registry_drives_auto_classes_conversion_and_the_scripts():
    """`mimir_hf.models.FAMILIES` is the one list of families: the Auto classes, `mimir-hf convert --family` and the
    scripts' classes all come from it."""
    from transformers import AutoConfig, AutoModelForPreTraining

    from mimir_hf import convert
    from mimir_hf.commands import common
    from mimir_hf.models import FAMILIES, family_of

    assert sorted(FAMILIES) == ["cait", "convit", "swin", "vit"]
    for family in FAMILIES.values():
        assert family_of(family.model_type) is family
        assert type(AutoConfig.for_model(family.model_type)) is family.config_class
        assert AutoModel._model_mapping[family.config_class] is family.model_class
        assert AutoModelForImageClassification._model_mapping[family.config_class] is family.classifier_class
        assert common.CLASSIFIER_CLASSES[family.model_type] is family.classifier_class
        if family.pretraining_class is None:
            assert family.config_class not in AutoModelForPreTraining._model_mapping
            assert family.model_type not in common.PRETRAINING_CLASSES
        else:
            assert AutoModelForPreTraining._model_mapping[family.config_class] is family.pretraining_class
            assert common.PRETRAINING_CLASSES[family.model_type] is family.pretraining_class
            assert set(family.presets) <= set(common.NEW_MODEL_PRESETS)
    assert convert.FAMILIES is FAMILIES
    # Each class is named once, by the base's `_auto_classes`: the family's own classes, in its modelling module.
    for family in FAMILIES.values():
        base = family.base_class
        for cls in (family.model_class, family.classifier_class, family.pretraining_class):
            assert cls is None or (issubclass(cls, base) and cls.__module__ == base.__module__)
    assert FAMILIES["swin"].pretraining_class is None
    assert FAMILIES["convit"].classifier_class.__name__ == "MimirConvitForImageClassification"
    assert FAMILIES["vit"].pretraining_class.__name__ == "MimirForPreTraining"


def test_swin_refuses_interpolation_by_name(pixels):
    classifier = AutoModelForImageClassification.from_config(TINY_CONFIGS["swin"]()).eval()
    with pytest.raises(ValueError, match=r"config.image_size \(16\) only.*Resize the images"):
        classifier(pixels, interpolate_pos_encoding=True)
