"""The example scripts on a tiny budget (seconds each): outputs, model cards, the output-dir guard, bad input."""

import json
import os

import pytest
import transformers
from huggingface_hub import ModelCard

import mimir_hf
from mimir_hf.commands import evaluate as run_evaluation
from mimir_hf.commands import finetune as run_finetuning
from mimir_hf.commands import pretrain as run_pretraining
from mimir_hf.commands import run as run_mimir

TINY_MODEL = [
    "--image_size",
    "8",
    "--patch_size",
    "2",
    "--hidden_size",
    "32",
    "--num_hidden_layers",
    "1",
    "--num_attention_heads",
    "2",
]
TINY_DATA = ["--max_train_samples", "64", "--max_eval_samples", "16"]
QUIET = ["--disable_tqdm", "true", "--report_to", "none", "--use_cpu", "true", "--save_strategy", "no"]


def card_metadata(folder):
    card = ModelCard.load(os.path.join(folder, "README.md"))
    return card.data.to_dict(), card.text


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("runs") / "pretrain")
    run_pretraining.main(TINY_MODEL + TINY_DATA + QUIET + ["--num_train_epochs", "1", "--output_dir", out])
    return out


def test_pretraining_script_outputs(pretrained):
    for name in ("model.safetensors", "config.json", "reconstructions.png", "README.md", "mimir_run.json"):
        assert os.path.isfile(os.path.join(pretrained, name)), name
    metadata, text = card_metadata(pretrained)
    assert "mimir" in metadata["tags"] and "sklearn-digits" in metadata["datasets"]
    assert "eps 8/255, step 10/255, 1 step" in text and "arXiv:2312.04960" in text
    assert json.load(open(os.path.join(pretrained, "mimir_run.json")))["status"] == "complete"


def test_finetuning_then_evaluation_scripts(pretrained, tmp_path):
    finetuned = str(tmp_path / "finetune")
    metrics = run_finetuning.main(
        TINY_DATA
        + QUIET
        + [
            "--model_name_or_path",
            pretrained,
            "--num_train_epochs",
            "1",
            "--adversarial_steps",
            "2",
            "--output_dir",
            finetuned,
        ]
    )
    assert 0 <= metrics["pgd20_accuracy"] <= metrics["natural_accuracy"] + 1e-9 <= 100 + 1e-9
    config = json.load(open(os.path.join(finetuned, "config.json")))
    assert config["id2label"]["3"] == "3" and len(config["id2label"]) == 10 and config["drop_path_rate"] == 0.1
    metadata, _ = card_metadata(finetuned)
    values = {m["name"]: m["value"] for m in metadata["model-index"][0]["results"][0]["metrics"]}
    assert values["natural accuracy"] == metrics["natural_accuracy"]

    report_dir = str(tmp_path / "report")
    report = run_evaluation.main(
        [
            "--model_name_or_path",
            finetuned,
            "--output_dir",
            report_dir,
            "--pgd_steps",
            "2",
            "10",
            "--adaptive_steps",
            "2",
            "--autoattack",
            "false",
            "--max_eval_samples",
            "16",
            "--use_cpu",
            "true",
        ]
    )
    for name in ("robustness.json", "robustness.md", "robust_accuracy_vs_eps.png"):
        assert os.path.isfile(os.path.join(report_dir, name)), name
    assert report.num_samples == 16 and report.settings["pgd_steps"] == [2, 10]
    metadata, text = card_metadata(finetuned)  # the card now carries the full report
    names = {m["name"] for m in metadata["model-index"][0]["results"][0]["metrics"]}
    assert any(name.startswith("robust accuracy, worst case") for name in names)
    assert "Gradient-masking sanity checks" in text


def test_run_mimir_end_to_end_tiny(tmp_path):
    out = str(tmp_path / "mimir")
    result = run_mimir.main(
        [
            "--output_dir",
            out,
            "--pretrain_epochs",
            "1",
            "--finetune_epochs",
            "1",
            "--adversarial_steps",
            "1",
            "--use_cpu",
            "true",
            "--disable_tqdm",
            "true",
            "--autoattack_max_samples",
            "4",
            "--pgd_steps",
            "2",
            "4",
            "--adaptive_steps",
            "2",
            "--cw_steps",
            "2",
        ]
        + TINY_MODEL
        + TINY_DATA
    )
    for name in ("robustness.json", "robustness.md", "robust_accuracy_vs_eps.png", "reconstructions.png"):
        assert os.path.isfile(os.path.join(out, name)), name
    assert os.path.isfile(os.path.join(out, "finetune", "model.safetensors"))
    assert json.load(open(os.path.join(out, "mimir_run.json")))["status"] == "complete"
    assert result["robust_accuracy"] <= result["natural_accuracy"]
    environment = json.load(open(os.path.join(out, "robustness.json")))["info"]["environment"]
    assert environment["transformers"] == transformers.__version__ and environment["threads"] >= 1
    assert environment["mimir_hf"] == mimir_hf.__version__
    # natural and PGD-20 accuracy are measured once, by the report, which writes them into the model card
    assert "pgd20_accuracy" not in result["finetune"]
    metadata, _ = card_metadata(os.path.join(out, "finetune"))
    names = {m["name"] for m in metadata["model-index"][0]["results"][0]["metrics"]}
    assert any(name.startswith("robust accuracy, worst case") for name in names)


def test_output_dir_holding_another_run_is_refused(pretrained, tmp_path):
    other = str(tmp_path / "other")
    run_pretraining.main(TINY_MODEL + TINY_DATA + QUIET + ["--num_train_epochs", "1", "--output_dir", other])
    with pytest.raises(ValueError, match="already holds.*run_pretraining"):
        run_finetuning.main(TINY_DATA + QUIET + ["--model_name_or_path", pretrained, "--output_dir", other])
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("do not delete")
    with pytest.raises(ValueError, match="already holds.*something else"):
        run_pretraining.main(TINY_MODEL + TINY_DATA + QUIET + ["--output_dir", str(foreign)])
    assert (foreign / "thesis.tex").read_text() == "do not delete"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model_preset", "vit-huge"], "--model_preset 'vit-huge' is unknown"),
        (["--attack_epsilon", "2"], "attack_epsilon must be in \\[0, 1\\]"),
        (["--attack_steps", "0"], "attack_steps must be an integer >= 1"),
        (["--label_column_name", "target"], "No label column 'target'"),
        (["--image_column_name", "photo"], "No image column 'photo'"),
    ],
)
def test_bad_input_is_a_clear_error_naming_the_argument(tmp_path, argv, message):
    with pytest.raises(Exception, match=message):
        run_pretraining.main(TINY_MODEL + TINY_DATA + QUIET + argv + ["--output_dir", str(tmp_path / "out")])


def test_bad_adversarial_budget_is_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="adversarial_epsilon.*\\[0, 1\\]"):
        run_finetuning.main(
            TINY_MODEL + TINY_DATA + QUIET + ["--adversarial_epsilon", "-0.1", "--output_dir", str(tmp_path / "out")]
        )
    assert not (tmp_path / "out").exists()


def test_arguments_from_a_json_file(tmp_path):
    out = tmp_path / "from_json"
    arguments = {
        "output_dir": str(out),
        "num_train_epochs": 1,
        "max_train_samples": 32,
        "max_eval_samples": 8,
        "image_size": 8,
        "patch_size": 2,
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "disable_tqdm": True,
        "report_to": "none",
        "use_cpu": True,
        "save_strategy": "no",
    }
    path = tmp_path / "args.json"
    path.write_text(json.dumps(arguments))
    run_pretraining.main([str(path)])
    assert json.load(open(out / "mimir_run.json"))["status"] == "complete"


def test_evaluation_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="epsilon must be in \\[0, 1\\]"):
        run_evaluation.main(["--model_name_or_path", "x", "--output_dir", str(tmp_path), "--epsilon", "8"])


TINY_FAMILY = {
    "cait-xxs24-224": ["--num_hidden_layers", "2", "--num_attention_heads", "2"],
    "convit-tiny-patch16-224": ["--num_hidden_layers", "3", "--local_up_to_layer", "2", "--num_attention_heads", "2"],
}


@pytest.mark.parametrize(
    "preset, expected", [("cait-xxs24-224", "mimir_cait"), ("convit-tiny-patch16-224", "mimir_convit")]
)
def test_run_mimir_builds_new_cait_and_convit_models_from_their_presets(tmp_path, preset, expected):
    """--model_preset names the family: pre-training, fine-tuning and the report run on a new CaiT / ConViT."""
    out = str(tmp_path / "mimir")
    shape = ["--image_size", "16", "--patch_size", "4", "--hidden_size", "32", "--intermediate_size", "64"]
    result = run_mimir.main(
        ["--output_dir", out, "--model_preset", preset, "--pretrain_epochs", "1", "--finetune_epochs", "1",
         "--adversarial_steps", "1", "--use_cpu", "true", "--disable_tqdm", "true", "--autoattack_max_samples", "0",
         "--pgd_steps", "2", "4", "--adaptive_steps", "2", "--cw_steps", "2"]
        + shape + TINY_FAMILY[preset] + TINY_DATA
    )  # fmt: skip
    for stage in ("pretrain", "finetune"):
        config = json.load(open(os.path.join(out, stage, "config.json")))
        assert config["model_type"] == expected and config["hidden_size"] == 32, stage
    assert json.load(open(os.path.join(out, "finetune", "config.json")))["architectures"][0].endswith(
        "ForImageClassification"
    )
    _, text = card_metadata(os.path.join(out, "finetune"))
    assert ("CaiT 32 wide" if expected == "mimir_cait" else "ConViT 32 wide") in text
    assert result["robust_accuracy"] <= result["natural_accuracy"]


def test_an_override_the_family_lacks_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="--classifier_pooling does not apply to MimirCaitConfig models"):
        run_pretraining.main(
            ["--output_dir", str(tmp_path / "p"), "--model_preset", "cait-xxs24-224", "--classifier_pooling", "mean"]
            + QUIET
        )
    with pytest.raises(ValueError, match="--local_up_to_layer does not apply to MimirConfig models"):
        run_pretraining.main(["--output_dir", str(tmp_path / "q"), "--local_up_to_layer", "2"] + QUIET)
    with pytest.raises(ValueError, match="--model_preset 'cait-tiny' is unknown"):
        run_pretraining.main(["--output_dir", str(tmp_path / "r"), "--model_preset", "cait-tiny"] + QUIET)


def test_a_missing_checkpoint_is_one_clear_error(tmp_path):
    missing = str(tmp_path / "no_such_model")
    for main in (run_pretraining.main, run_finetuning.main):
        with pytest.raises(ValueError, match="Cannot read a model config from .*no_such_model"):
            main(["--output_dir", str(tmp_path / main.__module__), "--model_name_or_path", missing] + QUIET)


def rgb_folder(root, count=12, size=32, classes=3):
    """Image folders of `size` px RGB images, one sub-folder per class."""
    import numpy as np
    from PIL import Image

    rng = np.random.RandomState(0)
    for i in range(count):
        folder = root / f"class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.randint(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return str(root)


def test_a_processor_that_changes_size_or_channels_says_so_with_the_numbers(pretrained, tmp_path, caplog):
    """The digits checkpoint takes 8x8 grey images: fine-tuning it on 32x32 RGB images warns once, with the numbers
    and how to keep them."""
    train, val = rgb_folder(tmp_path / "train"), rgb_folder(tmp_path / "val", count=6)
    caplog.set_level("WARNING", logger="mimir_hf.commands")
    run_finetuning.main(QUIET + ["--model_name_or_path", pretrained, "--train_dir", train, "--validation_dir", val,
                                 "--num_train_epochs", "1", "--adversarial_steps", "1", "--output_dir",
                                 str(tmp_path / "ft")])  # fmt: skip
    warnings = [r.getMessage() for r in caplog.records if "image processor" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "resized from 32x32 to 8x8" in warnings[0] and "converted from RGB to grey" in warnings[0]
    assert "--image_size 32 --num_channels 3" in warnings[0]


def test_the_held_out_share_is_logged_and_train_val_split_0_trains_on_every_image(tmp_path, caplog):
    """A folder without an evaluation split: pre-training says how many images it holds out; with
    --train_val_split 0 it trains on all of them (a new model of the images' own size and channels: no warning)."""
    folder = rgb_folder(tmp_path / "photos", count=20, size=8)
    caplog.set_level("INFO")
    common_args = TINY_MODEL + QUIET + ["--train_dir", folder, "--num_train_epochs", "1",
                                        "--per_device_train_batch_size", "4", "--num_channels", "3"]  # fmt: skip
    run_pretraining.main(common_args + ["--output_dir", str(tmp_path / "a")])
    held = [r.getMessage() for r in caplog.records if "held out for evaluation" in r.getMessage()]
    assert len(held) == 1 and "3 of its 20 images (15%" in held[0] and "17 are trained on" in held[0]
    assert "17 images at 8x8" in open(tmp_path / "a" / "README.md").read()
    # one process, no DataLoader workers, no augmentation: the training images are decoded once, not every epoch
    assert any("The 17 training images are decoded and processed once" in r.getMessage() for r in caplog.records)
    caplog.clear()
    run_pretraining.main(common_args + ["--train_val_split", "0", "--output_dir", str(tmp_path / "b")])
    assert not any("held out" in r.getMessage() for r in caplog.records)
    assert not any("image processor" in r.getMessage() for r in caplog.records)  # 8x8 RGB in, 8x8 RGB model
    assert "20 images at 8x8" in open(tmp_path / "b" / "README.md").read()
    with pytest.raises(ValueError, match="no evaluation split and --train_val_split 0"):
        run_finetuning.main(common_args + ["--train_val_split", "0", "--output_dir", str(tmp_path / "c")])


def test_a_rerun_removes_only_what_the_earlier_run_wrote(tmp_path):
    """Files a user saves into a finished run's folder survive the identical rerun and --overwrite_output_dir; a run
    that stopped before listing its files has only the names these scripts write removed."""
    out = tmp_path / "out"
    argv = TINY_MODEL + TINY_DATA + QUIET + ["--num_train_epochs", "1", "--output_dir", str(out)]
    run_pretraining.main(argv)
    assert "model.safetensors" in json.load(open(out / "mimir_run.json"))["written"]
    (out / "notes.txt").write_text("mine")
    (out / "my_eval_images").mkdir()
    (out / "my_eval_images" / "a.png").write_bytes(b"png")
    run_pretraining.main(argv)  # the same, complete run: again
    run_pretraining.main(argv + ["--seed", "3", "--overwrite_output_dir"])  # another run over it
    assert (out / "notes.txt").read_text() == "mine" and (out / "my_eval_images" / "a.png").read_bytes() == b"png"
    record = json.load(open(out / "mimir_run.json"))
    assert {"notes.txt", "my_eval_images"} <= set(record["preexisting"]) and "notes.txt" not in record["written"]

    record.pop("written")  # as if killed before the end: only the scripts' own names may go
    record["status"] = "running"
    json.dump(record, open(out / "mimir_run.json", "w"))
    (out / "thesis.tex").write_text("keep")
    run_pretraining.main(argv + ["--seed", "4", "--overwrite_output_dir"])
    assert (out / "thesis.tex").read_text() == "keep" and (out / "notes.txt").exists()


def test_an_input_inside_the_output_folder_is_refused_before_anything_is_removed(tmp_path, pretrained):
    """A --label_mapping kept inside a previous report's folder: refused in one line, the file still there."""
    from mimir_hf.commands import evaluate as run_evaluation

    out = tmp_path / "report"
    out.mkdir()
    (out / "mimir_run.json").write_text(json.dumps({"script": "run_evaluation", "arguments": {}, "status": "complete"}))
    mapping = out / "labels.json"
    mapping.write_text('{"0": 0}')
    argv = ["--model_name_or_path", pretrained, "--output_dir", str(out), "--label_mapping", str(mapping)]
    with pytest.raises(ValueError, match=f"--output_dir {out} contains the input {mapping}"):
        run_evaluation.main(argv + ["--overwrite_output_dir", "--disable_tqdm"])
    assert mapping.read_text() == '{"0": 0}'
