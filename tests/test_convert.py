"""The converter reproduces the original architecture: reference model in the authors' layout -> mimir_hf."""

import pytest
import torch

from mimir_hf import MimirForImageClassification, MimirForPreTraining
from mimir_hf.convert import convert_checkpoint, main

from .reference_mae import ReferenceMAE, ReferenceViT


def randomised(module):
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.requires_grad:  # keep the fixed sin-cos tables
                parameter.normal_(std=0.2)
    return module.eval()


def test_pretraining_checkpoint_reproduces_loss_and_predictions(tmp_path):
    reference = randomised(ReferenceMAE())
    torch.save({"model": reference.state_dict(), "epoch": 799}, tmp_path / "mimir_pretrain.pth")
    converted = convert_checkpoint(
        str(tmp_path / "mimir_pretrain.pth"), str(tmp_path / "out"), num_attention_heads=4, decoder_num_attention_heads=2
    )
    assert isinstance(converted, MimirForPreTraining)
    images, noise = torch.rand(3, 3, 16, 16), torch.rand(3, 16)
    loss, prediction, mask = reference(images, noise)
    out = converted(images, noise=noise, compute_mi_loss=False)
    torch.testing.assert_close(out.reconstruction_loss, loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.logits, prediction, atol=1e-5, rtol=1e-5)
    assert torch.equal(out.mask, mask)
    reloaded = MimirForPreTraining.from_pretrained(tmp_path / "out").eval()
    torch.testing.assert_close(reloaded(images, noise=noise, compute_mi_loss=False).logits, prediction, atol=1e-5, rtol=1e-5)


def test_finetuned_checkpoint_reproduces_logits(tmp_path):
    reference = randomised(ReferenceViT())
    torch.save({"model": reference.state_dict()}, tmp_path / "finetuned.pth")
    main([str(tmp_path / "finetuned.pth"), str(tmp_path / "out"), "--num_attention_heads", "4"])
    converted = MimirForImageClassification.from_pretrained(tmp_path / "out").eval()
    assert converted.config.classifier_pooling == "mean" and converted.config.num_labels == 4
    images = torch.rand(3, 3, 16, 16)
    torch.testing.assert_close(converted(images).logits, reference(images), atol=1e-5, rtol=1e-5)
    assert (tmp_path / "out" / "preprocessor_config.json").is_file()


@pytest.mark.parametrize("image, patch, dim, heads", [(32, 2, 192, 3), (32, 2, 384, 6), (224, 16, 768, 12)])
def test_paper_shapes_are_inferred(tmp_path, image, patch, dim, heads):
    reference = ReferenceViT(image=image, patch=patch, dim=dim, depth=1, heads=heads, mlp=4 * dim, classes=10)
    torch.save({"model": reference.state_dict()}, tmp_path / "vit.pth")
    config = convert_checkpoint(str(tmp_path / "vit.pth")).config
    assert (config.image_size, config.patch_size, config.hidden_size, config.num_attention_heads) == (image, patch, dim, heads)


def test_unknown_missing_and_unsafe_checkpoints_are_clear_errors(tmp_path):
    state = ReferenceViT().state_dict()
    torch.save({"model": {**state, "blocks.0.ls1.gamma": torch.ones(32)}}, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match="Unknown keys.*blocks.0.ls1.gamma"):
        convert_checkpoint(str(tmp_path / "extra.pth"))
    torch.save({"model": {k: v for k, v in state.items() if k != "blocks.1.mlp.fc2.bias"}}, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="missing \\['vit.layers.1.mlp.fc2.bias'\\]"):
        convert_checkpoint(str(tmp_path / "missing.pth"))
    torch.save({"model": state, "args": argparse_namespace()}, tmp_path / "pickled.pth")
    with pytest.raises(ValueError, match="weights_only=True"):
        convert_checkpoint(str(tmp_path / "pickled.pth"))
    (tmp_path / "truncated.pth").write_bytes((tmp_path / "missing.pth").read_bytes()[:200])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        convert_checkpoint(str(tmp_path / "truncated.pth"))


def argparse_namespace():
    import argparse

    return argparse.Namespace(lr=1e-3)  # the reference scripts save their args like this: not weights-only loadable
