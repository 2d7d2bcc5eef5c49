"""The converter on files shaped like the ones the authors' training scripts write (a pickled `args` Namespace
inside, timm's `state_dict` / `state_dict_ema`, DDP prefixes), exact against reference models in the authors' layout;
and one clear error for anything else."""

import argparse
import json
import os
import zipfile

import pytest
import torch
from transformers import AutoModelForImageClassification, pipeline
from transformers.testing_utils import CaptureLogger

from mimir_hf import MimirForImageClassification, MimirForPreTraining
from mimir_hf.commands.cli import main as cli
from mimir_hf.convert import convert_checkpoint, read_checkpoint
from mimir_hf.convert import logger as convert_logger

from .reference_mae import ReferenceMAE, ReferenceViT


def randomised(module):
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.requires_grad:  # keep the fixed sin-cos tables
                parameter.normal_(std=0.2)
    return module.eval()


def training_file(path, state, **args):
    """What the authors' MAE-based scripts save: weights under "model", the optimiser, epoch, scaler and the run's
    argparse.Namespace."""
    torch.save(
        {"model": state, "optimizer": {"state": {}}, "epoch": 799, "scaler": {"scale": 65536.0},
         "args": argparse.Namespace(**args)},
        path,
    )  # fmt: skip
    return str(path)


def test_pretraining_file_with_args_reproduces_loss_and_predictions(tmp_path):
    # 8 heads at width 32: only args.model ("mae_vit_small_ds": the 768-wide, 8-head ViT-S) can tell the head count.
    reference = randomised(ReferenceMAE(heads=8, decoder_dim=32, decoder_heads=16))
    args = dict(model="mae_vit_small_ds", input_size=16, patch_size=4, norm_pix_loss=True, mask_ratio=0.75,
                eps=4 / 255, alpha=5 / 255, mi_train="hsic", mi_xpl=2e-5, use_normalize=False, lr=1.2e-3)  # fmt: skip
    path = training_file(tmp_path / "checkpoint-799.pth", reference.state_dict(), **args)
    converted = convert_checkpoint(path, str(tmp_path / "out"))
    assert isinstance(converted, MimirForPreTraining)
    config = converted.config
    assert (config.num_attention_heads, config.decoder_num_attention_heads) == (8, 16)
    assert (config.attack_epsilon, config.attack_step_size, config.mi_weight) == (4 / 255, 5 / 255, 2e-5)
    images, noise = torch.rand(3, 3, 16, 16), torch.rand(3, 16)
    loss, prediction, mask = reference(images, noise)
    out = converted(images, noise=noise, compute_mi_loss=False)
    torch.testing.assert_close(out.reconstruction_loss, loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.logits, prediction, atol=1e-5, rtol=1e-5)
    assert torch.equal(out.mask, mask)
    reloaded = MimirForPreTraining.from_pretrained(tmp_path / "out").eval()
    again = reloaded(images, noise=noise, compute_mi_loss=False).logits
    torch.testing.assert_close(again, prediction, atol=1e-5, rtol=1e-5)
    card = (tmp_path / "out" / "README.md").read_text()
    assert "mae_vit_small_ds" in card and "Nothing had to be guessed" in card


def test_finetuned_file_with_normalisation_in_args_sees_pixels(tmp_path):
    """A run trained on normalised inputs (`--use_normalize`): the converted model normalises inside, so it takes
    [0, 1] pixels and equals the reference fed normalised inputs."""
    reference = randomised(ReferenceViT(heads=2, dim=32))
    args = dict(model="vit_base", input_size=16, patch_size=4, global_pool=True, nb_classes=4, drop_path=0.1,
                use_normalize=True, dataset="cifar10")  # fmt: skip
    path = training_file(tmp_path / "finetuned.pth", reference.state_dict(), **args)
    converted = convert_checkpoint(path, str(tmp_path / "out"), num_attention_heads=2)  # vit_base says 12: override
    assert converted.config.image_mean == [0.4914, 0.4822, 0.4465] and converted.config.drop_path_rate == 0.1
    images = torch.rand(3, 3, 16, 16)
    mean, std = torch.tensor([0.4914, 0.4822, 0.4465]), torch.tensor([0.2471, 0.2435, 0.2616])
    expected = reference((images - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1))
    torch.testing.assert_close(converted(images).logits, expected, atol=1e-5, rtol=1e-5)


def test_bare_state_dict_without_args_warns_about_the_head_guess_and_records_it(tmp_path):
    reference = randomised(ReferenceViT())  # 32 wide, 4 heads: width / 64 would say 1
    torch.save({f"module.{k}": v for k, v in reference.state_dict().items()}, tmp_path / "bare.pth")
    with CaptureLogger(convert_logger) as captured:
        convert_checkpoint(str(tmp_path / "bare.pth"), str(tmp_path / "guessed"))
    assert "--num_attention_heads" in captured.out and "guess" in captured.out
    assert "--num_attention_heads" in (tmp_path / "guessed" / "README.md").read_text()
    assert cli(["convert", str(tmp_path / "bare.pth"), str(tmp_path / "out"), "--num_attention_heads", "4"]) == 0
    converted = MimirForImageClassification.from_pretrained(tmp_path / "out").eval()
    assert converted.config.classifier_pooling == "mean" and converted.config.num_labels == 4
    images = torch.rand(3, 3, 16, 16)
    torch.testing.assert_close(converted(images).logits, reference(images), atol=1e-5, rtol=1e-5)
    assert (tmp_path / "out" / "preprocessor_config.json").is_file()


def test_timm_checkpoint_saver_layout_and_the_ema_weights(tmp_path):
    plain, ema = randomised(ReferenceViT()), randomised(ReferenceViT())
    torch.save({"epoch": 10, "arch": "vit", "state_dict": plain.state_dict(), "state_dict_ema": ema.state_dict(),
                "args": argparse.Namespace(model="vit_small_patch16")}, tmp_path / "ares.pth")  # fmt: skip
    images = torch.rand(2, 3, 16, 16)
    for use_ema, reference in ((False, plain), (True, ema)):
        model = convert_checkpoint(str(tmp_path / "ares.pth"), use_ema=use_ema, num_attention_heads=4)
        torch.testing.assert_close(model(images).logits, reference(images), atol=1e-5, rtol=1e-5)
    torch.save({"model": plain.state_dict()}, tmp_path / "no_ema.pth")
    with pytest.raises(ValueError, match="no EMA weights"):
        read_checkpoint(str(tmp_path / "no_ema.pth"), use_ema=True)


@pytest.mark.parametrize("image, patch, dim, heads, name", [(32, 2, 192, 3, "vit_ti"), (32, 2, 384, 6, "vit_small"),
                                                             (224, 16, 768, 12, "vit_base_patch16")])  # fmt: skip
def test_paper_shapes_from_args(tmp_path, image, patch, dim, heads, name):
    reference = ReferenceViT(image=image, patch=patch, dim=dim, depth=1, heads=heads, mlp=4 * dim, classes=10)
    path = training_file(tmp_path / "vit.pth", reference.state_dict(), model=name, input_size=image)
    config = convert_checkpoint(path).config
    shape = (config.image_size, config.patch_size, config.hidden_size, config.num_attention_heads)
    assert shape == (image, patch, dim, heads)


def test_unknown_missing_and_unsafe_checkpoints_are_clear_errors(tmp_path):
    state = ReferenceViT().state_dict()
    torch.save({"model": {**state, "blocks.0.ls1.gamma": torch.ones(32)}}, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match="Unknown keys.*blocks.0.ls1.gamma"):
        convert_checkpoint(str(tmp_path / "extra.pth"), num_attention_heads=4)
    torch.save({"model": {k: v for k, v in state.items() if k != "blocks.1.mlp.fc2.bias"}}, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="vit.layers.1.mlp.fc2.bias"):
        convert_checkpoint(str(tmp_path / "missing.pth"), num_attention_heads=4)
    torch.save({"model": state, "path": zipfile.Path}, tmp_path / "pickled.pth")  # an object outside the allow-list
    with pytest.raises(ValueError, match="weights_only=True"):
        convert_checkpoint(str(tmp_path / "pickled.pth"))


def unreadable_files(tmp_path):
    torch.save({"model": ReferenceViT().state_dict()}, tmp_path / "good.pth")
    data = (tmp_path / "good.pth").read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    (tmp_path / "notes.txt").write_text("these are my notes, not weights\n" * 20)
    (tmp_path / "random.pth").write_bytes(os.urandom(4096))
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "folder").mkdir()
    return ["truncated.pth", "notes.txt", "random.pth", "empty.pth", "folder", "absent.pth"]


def test_unreadable_input_is_one_clear_line_naming_the_file(tmp_path, capsys):
    for name in unreadable_files(tmp_path):
        path = str(tmp_path / name)
        with pytest.raises(ValueError, match=f"{path}.*(PyTorch checkpoint|directory)"):
            read_checkpoint(path)
        assert cli(["convert", path, str(tmp_path / "out")]) == 1
        message = capsys.readouterr().err
        assert message.startswith("mimir-hf convert: error: ") and path in message, message
        assert message.count("\n") == 1, message  # one line, no traceback
    assert not (tmp_path / "out").exists()


def test_output_folder_works_with_auto_classes_and_the_pipeline(tmp_path):
    from PIL import Image

    reference = randomised(ReferenceViT(image=32, patch=4, dim=32, heads=4))
    path = training_file(tmp_path / "ft.pth", reference.state_dict(), model="vit_custom")
    convert_checkpoint(path, str(tmp_path / "out"), num_attention_heads=4)
    model = AutoModelForImageClassification.from_pretrained(tmp_path / "out").eval()
    assert isinstance(model, MimirForImageClassification)
    classify = pipeline("image-classification", model=str(tmp_path / "out"), device="cpu")
    picture = Image.new("RGB", (32, 32), (200, 40, 90))
    best = classify(picture, top_k=1)[0]
    pixels = torch.tensor([200, 40, 90], dtype=torch.float32).div(255).view(1, 3, 1, 1).expand(1, 3, 32, 32)
    assert best["label"] == model.config.id2label[int(reference(pixels).argmax())]
    assert json.load(open(tmp_path / "out" / "preprocessor_config.json"))["do_normalize"] is False


@pytest.mark.parametrize("form", ["cifar10", "imagenet", "json list", "json mapping", "comma-separated"])
def test_label_names_set_id2label_and_the_pipeline_shows_them(tmp_path, form):
    from PIL import Image

    from mimir_hf.class_names import CIFAR10_CLASSES

    classes = 1000 if form == "imagenet" else 10
    reference = randomised(ReferenceViT(classes=classes))
    path = training_file(tmp_path / "ft.pth", reference.state_dict(), model="vit_custom")
    own = [f"class {index}" for index in range(10)]
    spec = {
        "cifar10": "cifar10",
        "imagenet": "imagenet",
        "json list": str(tmp_path / "names.json"),
        "json mapping": str(tmp_path / "mapping.json"),
        "comma-separated": ",".join(own),
    }[form]
    (tmp_path / "names.json").write_text(json.dumps(own))
    (tmp_path / "mapping.json").write_text(json.dumps({str(i): name for i, name in reversed(list(enumerate(own)))}))
    out = tmp_path / "out"
    if form == "json mapping":  # the Python API takes the same forms
        convert_checkpoint(path, str(out), num_attention_heads=4, label_names=spec)
    else:
        assert cli(["convert", path, str(out), "--num_attention_heads", "4", "--label_names", spec]) == 0
    expected = {"cifar10": list(CIFAR10_CLASSES)}.get(form, own)
    config = json.loads((out / "config.json").read_text())
    names = [config["id2label"][str(index)] for index in range(classes)]
    if form == "imagenet":  # the standard order: the sorted wnids
        assert names[:2] == ["tench, Tinca tinca", "goldfish, Carassius auratus"] and names[407] == "ambulance"
        assert names[999] == "toilet tissue, toilet paper, bathroom tissue" and len(set(names)) == 1000
        assert names[134] == "crane (n02012849)" and names[517] == "crane (n03126707)"  # distinct for label2id
    else:
        assert names == expected
    assert config["label2id"] == {name: index for index, name in enumerate(names)}
    classify = pipeline("image-classification", model=str(out), device="cpu")
    best = classify(Image.new("RGB", (16, 16), (200, 40, 90)), top_k=1)[0]
    pixels = torch.tensor([200, 40, 90], dtype=torch.float32).div(255).view(1, 3, 1, 1).expand(1, 3, 16, 16)
    assert best["label"] == names[int(reference(pixels).argmax())]


def test_label_names_that_do_not_fit_are_one_clear_error(tmp_path, capsys):
    reference = randomised(ReferenceViT())  # 4 classes
    path = training_file(tmp_path / "ft.pth", reference.state_dict(), model="vit_custom")
    for spec, message in [
        ("cifar10", "10 label names given for a classifier of 4 classes"),
        ("a,b,a,c", "must be distinct.*repeated: \\['a'\\]"),
        ("cats", "expected cifar10, imagenet, a .json file"),
        (str(tmp_path / "absent.json"), "No label-names file"),
    ]:
        with pytest.raises(ValueError, match=message):
            convert_checkpoint(path, num_attention_heads=4, label_names=spec)
        assert cli(["convert", path, str(tmp_path / "out"), "--num_attention_heads", "4", "--label_names", spec]) == 1
        error = capsys.readouterr().err
        assert error.startswith("mimir-hf convert: error: ") and error.count("\n") == 1, error
    assert not (tmp_path / "out").exists()
    (tmp_path / "gap.json").write_text(json.dumps({"0": "a", "1": "b", "3": "d", "4": "e"}))
    with pytest.raises(ValueError, match="cover the indices 0..3; it lacks \\[2\\]"):
        convert_checkpoint(path, num_attention_heads=4, label_names=str(tmp_path / "gap.json"))
    mae = randomised(ReferenceMAE(heads=4, decoder_dim=32, decoder_heads=16))
    pretraining = training_file(tmp_path / "pt.pth", mae.state_dict(), model="mae_vit_custom")
    with pytest.raises(ValueError, match="MimirForPreTraining, which has no classes to name"):
        convert_checkpoint(pretraining, num_attention_heads=4, label_names="a,b")
