"""The converter on files shaped like the ones the authors' training scripts write (a pickled `args` Namespace
inside, timm's `state_dict` / `state_dict_ema`, DDP prefixes), exact against reference models in the authors' layout;
and one clear error for anything else."""

import argparse
import json
import os
import re
import zipfile

import pytest
import torch
from transformers import AutoModelForImageClassification, pipeline
from transformers.testing_utils import CaptureLogger

from mimir_hf import MimirForImageClassification, MimirForPreTraining
from mimir_hf.commands.cli import main as cli
from mimir_hf.convert import MANIFEST, convert_checkpoint, read_checkpoint
from mimir_hf.convert import logger as convert_logger
from mimir_hf.models.vit.convert_vit import infer_config

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
    # The authors' ViT-Ti encoder (192 wide, 12 blocks): args.model ("mae_vit_ti") tells the head count, 3.
    reference = randomised(ReferenceMAE(dim=192, depth=12, heads=3, mlp=768, decoder_dim=32, decoder_heads=16))
    args = dict(model="mae_vit_ti", input_size=16, patch_size=4, norm_pix_loss=True, mask_ratio=0.75,
                eps=4 / 255, alpha=5 / 255, mi_train="hsic", mi_xpl=2e-5, use_normalize=False, lr=1.2e-3)  # fmt: skip
    path = training_file(tmp_path / "checkpoint-799.pth", reference.state_dict(), **args)
    converted = convert_checkpoint(path, str(tmp_path / "out"))
    assert isinstance(converted, MimirForPreTraining)
    config = converted.config
    assert (config.num_attention_heads, config.decoder_num_attention_heads) == (3, 16)
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
    assert "mae_vit_ti" in card and "Nothing had to be guessed" in card


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


@pytest.mark.parametrize("image, patch, dim, depth, heads, name", [
    (32, 2, 192, 12, 3, "vit_ti"), (32, 2, 384, 12, 6, "vit_small"), (32, 2, 768, 8, 8, "mae_vit_small_ds"),
    (224, 16, 768, 12, 12, "vit_base_patch16"), (224, 16, 1024, 24, 16, "vit_large_patch16"),
])  # fmt: skip
def test_paper_shapes_from_args(image, patch, dim, depth, heads, name):
    with torch.device("meta"):  # the full-size shapes, without allocating them
        state = ReferenceViT(image=image, patch=patch, dim=dim, depth=depth, heads=heads, mlp=4 * dim).state_dict()
    config, notes = infer_config(state, dict(model=name, input_size=image))
    shape = (config.image_size, config.patch_size, config.hidden_size, config.num_hidden_layers)
    assert shape + (config.num_attention_heads,) == (image, patch, dim, depth, heads) and notes == []


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


def test_a_file_without_its_last_block_is_refused_by_name(tmp_path, capsys):
    # ViT-S (args.model = vit_small_patch16: 384 wide, 12 blocks, 6 heads) without any blocks.11.* key.
    state = ReferenceViT(dim=384, depth=12, heads=6, mlp=1536).state_dict()
    state = {key: value for key, value in state.items() if not key.startswith("blocks.11.")}
    path = training_file(tmp_path / "checkpoint-49.pth", state, model="vit_small_patch16", input_size=16)
    assert cli(["convert", path, str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err
    expected = "The file has blocks 0..10 but args.model=vit_small_patch16 (ViT-S) has 12; blocks.11 is missing."
    assert error.startswith(f"mimir-hf convert: error: {expected}") and error.count("\n") == 1, error
    assert not (tmp_path / "out").exists()


def family_states():
    """Meta-device state dicts of one full-size model per family (shapes only), with its args.model, the key prefix
    of its last block, and a name of another width."""
    from .reference_cait import Cait
    from .reference_convit import ConVit
    from .reference_swin import ReferenceSwin

    with torch.device("meta"):
        yield "vit", ReferenceViT(dim=384, depth=12, heads=6, mlp=1536).state_dict(), "vit_small", "blocks.11.", None
        yield (
            "cait", Cait(img_size=224, patch_size=16, num_classes=1000, embed_dim=192, depth=24).state_dict(),
            "cait_xxs24", "blocks_token_only.1.", "cait_s36",
        )  # fmt: skip
        yield (
            "convit", ConVit(patch_size=2, embed_dim=432, depth=12, num_heads=9, local_up_to_layer=10).state_dict(),
            "convit_small", "blocks.11.", "convit_base",
        )  # fmt: skip
        yield (
            "swin", ReferenceSwin(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)).state_dict(),
            "swin_base_patch4_window7_224", "layers.2.blocks.17.", "swin_large_patch4_window14",
        )  # fmt: skip


@pytest.mark.parametrize("family", ["vit", "cait", "convit", "swin"])
def test_every_family_checks_the_depths_its_args_model_names(family):
    from mimir_hf.convert import FAMILIES

    _, state, name, last, other = next(entry for entry in family_states() if entry[0] == family)
    convert = FAMILIES[family].convert
    assert convert(state, {"model": name}).notes == []
    truncated = {key: value for key, value in state.items() if not key.startswith(last)}
    stack, index = last.rstrip(".").rsplit(".", 1)
    message = (
        f"The file has {stack} 0..{int(index) - 1} but args.model={name} (*) has {int(index) + 1}; {stack}.{index}"
    )
    with pytest.raises(ValueError, match=re.escape(message).replace(r"\*", ".*") + " is missing"):
        convert(truncated, {"model": name})
    if other:  # the tensors give every shape: a name of another width is said, and the weights are followed
        (note,) = convert(state, {"model": other}).notes
        assert f"args.model={other} names" in note and "the model follows the weights" in note


def test_a_width_that_contradicts_args_model_is_refused_or_the_choice_is_said(tmp_path, capsys):
    # 768 wide, args.model = vit_small_patch16 (384 wide, 6 heads): ViT-B (12 heads) or ViT-S ds (8 heads)?
    wide = randomised(ReferenceViT(dim=768, depth=1, heads=12, mlp=64))
    path = training_file(tmp_path / "wide.pth", wide.state_dict(), model="vit_small_patch16", input_size=16)
    assert cli(["convert", path, str(tmp_path / "refused")]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and not (tmp_path / "refused").exists()
    assert (
        "args.model=vit_small_patch16 names ViT-S: 384 wide, 12 blocks, 6 heads, but the weights are 768 wide" in error
    )
    assert "ViT-S ds (8 heads) and ViT-B (12 heads): the head count cannot be told. Pass --num_attention_heads" in error
    assert cli(["convert", path, str(tmp_path / "given"), "--num_attention_heads", "12"]) == 0
    given = MimirForImageClassification.from_pretrained(tmp_path / "given").eval()
    images = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(given(images).logits, wide(images), atol=1e-5, rtol=1e-5)
    card = (tmp_path / "given" / "README.md").read_text()
    assert "num_attention_heads = 12 as given" in card and "Nothing had to be guessed" not in card

    # 384 wide, args.model = vit_base: only ViT-S is 384 wide, so its 6 heads, said in a warning and the card.
    small = randomised(ReferenceViT(dim=384, depth=12, heads=6, mlp=64))
    path = training_file(tmp_path / "small.pth", small.state_dict(), model="vit_base", input_size=16)
    with CaptureLogger(convert_logger) as captured:
        model = convert_checkpoint(path, str(tmp_path / "chosen"))
    assert model.config.num_attention_heads == 6
    torch.testing.assert_close(model(images).logits, small(images), atol=1e-5, rtol=1e-5)
    chosen = "num_attention_heads = 6 is ViT-S's: args.model=vit_base names ViT-B: 768 wide, 12 blocks, 12 heads, but "
    assert captured.out.count(chosen) == 1
    card = (tmp_path / "chosen" / "README.md").read_text()
    assert chosen in card and "Nothing had to be guessed" not in card


@pytest.mark.parametrize("entries", [("model", "model_ema"), ("model", "state_dict_ema"),
                                     ("state_dict", "state_dict_ema")])  # fmt: skip
def test_ema_weights_follow_one_rule_in_every_layout(tmp_path, entries):
    plain, ema = randomised(ReferenceViT()), randomised(ReferenceViT())
    weights, averaged = entries
    torch.save({weights: plain.state_dict(), averaged: ema.state_dict(), "epoch": 10,
                "args": argparse.Namespace(model="vit_custom")}, tmp_path / "run.pth")  # fmt: skip
    path, images = str(tmp_path / "run.pth"), torch.rand(2, 3, 16, 16)
    with CaptureLogger(convert_logger) as captured:
        model = convert_checkpoint(path, str(tmp_path / "out"), num_attention_heads=4)
    torch.testing.assert_close(model(images).logits, plain(images), atol=1e-5, rtol=1e-5)
    assert captured.out.count(f"holds EMA weights ({averaged})") == 1 and captured.out.count("--use_ema") == 1
    assert (
        f"the file also holds EMA weights, {averaged}: `--use_ema` converts those"
        in (tmp_path / "out" / "README.md").read_text()
    )
    with CaptureLogger(convert_logger) as captured:
        model = convert_checkpoint(path, use_ema=True, num_attention_heads=4)
    torch.testing.assert_close(model(images).logits, ema(images), atol=1e-5, rtol=1e-5)
    assert "EMA" not in captured.out
    torch.save({averaged: ema.state_dict()}, tmp_path / "ema_only.pth")
    with pytest.raises(
        ValueError, match=f"holds no state dict of tensors .*; pass --use_ema to convert its {averaged}"
    ):
        read_checkpoint(str(tmp_path / "ema_only.pth"))


def converted_files(folder) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


def test_a_folder_the_converter_did_not_write_is_refused_then_only_its_files_are_replaced(tmp_path, capsys):
    reference = randomised(ReferenceViT())
    path = training_file(tmp_path / "ft.pth", reference.state_dict(), model="vit_custom")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"my": "own config"}')
    (mine / "notes.txt").write_text("my notes")
    assert cli(["convert", path, str(mine), "--num_attention_heads", "4"]) == 1
    error = capsys.readouterr().err
    assert error.startswith(f"mimir-hf convert: error: {mine} is not empty") and error.count("\n") == 1, error
    assert "--overwrite_output_dir" in error and "config.json, notes.txt" in error
    assert converted_files(mine) == {"config.json": b'{"my": "own config"}', "notes.txt": b"my notes"}
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(ValueError, match="a_file is a file; expected a folder"):
        convert_checkpoint(path, str(tmp_path / "a_file"), num_attention_heads=4, overwrite_output_dir=True)

    assert cli(["convert", path, str(mine), "--num_attention_heads", "4", "--overwrite_output_dir"]) == 0
    assert (mine / "notes.txt").read_text() == "my notes"  # kept
    assert json.loads((mine / "config.json").read_text())["model_type"] == "mimir"  # the converter's file, replaced
    manifest = json.loads((mine / MANIFEST).read_text())
    assert "notes.txt" not in manifest["files"] and {"config.json", "model.safetensors", "README.md"} <= set(
        manifest["files"]
    )
    assert set(converted_files(mine)) == {*manifest["files"], "notes.txt"} and manifest["source"] == "ft.pth"
    images = torch.rand(2, 3, 16, 16)
    model = MimirForImageClassification.from_pretrained(mine).eval()
    torch.testing.assert_close(model(images).logits, reference(images), atol=1e-5, rtol=1e-5)


def test_an_earlier_conversion_is_converted_into_again_only_when_asked(tmp_path, capsys):
    from .reference_cait import Cait, randomise

    vit, cait = randomised(ReferenceViT()), randomise(Cait(img_size=16, embed_dim=32, num_classes=4)).eval()
    vit_file = training_file(tmp_path / "vit.pth", vit.state_dict(), model="vit_custom")
    cait_file = training_file(tmp_path / "cait.pth", cait.state_dict(), model="cait_custom")
    out = tmp_path / "out"
    convert_checkpoint(vit_file, str(out), num_attention_heads=4)
    (out / "eval_report.json").write_text("{}")  # the user's, written after the conversion
    before, _ = converted_files(out), capsys.readouterr()
    assert cli(["convert", cait_file, str(out)]) == 1
    error = capsys.readouterr().err
    assert f"{out} holds an earlier conversion; pass --overwrite_output_dir" in error and error.count("\n") == 1
    assert converted_files(out) == before

    assert cli(["convert", cait_file, str(out), "--overwrite_output_dir"]) == 0
    files = set(converted_files(out))
    assert "modeling_mimir_cait.py" in files and "modeling_mimir.py" not in files  # the ViT's code, no longer written
    assert "eval_report.json" in files and files == {
        *json.loads((out / MANIFEST).read_text())["files"],
        "eval_report.json",
    }
    model = AutoModelForImageClassification.from_pretrained(out).eval()
    images = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(model(images).logits, cait(images), atol=1e-5, rtol=1e-5)
    (out / MANIFEST).unlink()  # a folder converted before the manifest existed: its card says so
    with pytest.raises(ValueError, match="holds an earlier conversion"):
        convert_checkpoint(vit_file, str(out), num_attention_heads=4)


def test_a_conversion_that_fails_while_writing_leaves_the_folder_as_it_was(tmp_path, monkeypatch):
    import mimir_hf.convert

    path = training_file(tmp_path / "ft.pth", randomised(ReferenceViT()).state_dict(), model="vit_custom")
    out = tmp_path / "out"
    convert_checkpoint(path, str(out), num_attention_heads=4)
    before = converted_files(out)
    other = training_file(tmp_path / "other.pth", randomised(ReferenceViT(classes=7)).state_dict(), model="vit_custom")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mimir_hf.convert, "write_conversion_card", disk_full)  # after the weights are written
    with pytest.raises(OSError, match="No space left"):
        convert_checkpoint(other, str(out), num_attention_heads=4, overwrite_output_dir=True)
    assert converted_files(out) == before and sorted(p.name for p in out.iterdir()) == sorted(before)
