"""The package as a user gets it from a wheel: built, installed into a fresh virtual environment outside the source
tree, then a tiny pre-training -> save -> load -> model card from Python, and the installed `mimir-hf` command
running the shipped demo recipe (tiny), all from the installed files."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile

import mimir_hf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The demo recipe at a tiny size: 1 epoch per stage, a 32-wide 1-layer ViT, 64 + 16 images, a short report.
TINY_RUN = ["--pretrain_epochs", "1", "--finetune_epochs", "1", "--adversarial_steps", "1", "--image_size", "8",
            "--patch_size", "2", "--hidden_size", "32", "--num_hidden_layers", "1", "--num_attention_heads", "2",
            "--max_train_samples", "64", "--max_eval_samples", "16", "--pgd_steps", "2", "4", "--cw_steps", "2",
            "--adaptive_steps", "2", "--autoattack_max_samples", "4", "--disable_tqdm", "true"]  # fmt: skip

SCRIPT = textwrap.dedent(
    """
    import os, sys, torch
    from datasets import Dataset
    import mimir_hf
    from mimir_hf import MimirConfig, MimirForPreTraining, MimirForImageClassification
    from mimir_hf.model_card import write_model_card
    from mimir_hf.trainer import MimirPreTrainingArguments, MimirPreTrainingTrainer

    assert mimir_hf.__file__.startswith(sys.prefix), mimir_hf.__file__  # the installed copy, not the source tree
    config = MimirConfig(image_size=8, patch_size=2, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, decoder_hidden_size=16, decoder_num_hidden_layers=1,
                         decoder_num_attention_heads=2, decoder_intermediate_size=32)
    images = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    data = Dataset.from_dict({"pixel_values": images.numpy()}).with_format("torch")
    args = MimirPreTrainingArguments(output_dir="run", max_steps=2, per_device_train_batch_size=4, report_to=[],
                                     use_cpu=True, disable_tqdm=True, save_strategy="no")
    trainer = MimirPreTrainingTrainer(model=MimirForPreTraining(config), args=args, train_dataset=data)
    trainer.train()
    trainer.save_model("run")
    classifier = MimirForImageClassification.from_pretrained("run", num_labels=3)
    assert classifier(images).logits.shape == (8, 3)
    path = write_model_card("run", "pretrained", "random", {"steps": 2}, "A smoke test.")
    card = open(path).read()
    assert "mimir_hf" in card and "arXiv:2312.04960" in card
    from mimir_hf.robustbench import subset_ids
    assert len(subset_ids("robustbench-imagenet-5000")) == 5000  # read from the installed package, sha256 checked
    from mimir_hf.class_names import imagenet_classes
    assert imagenet_classes()[0] == "tench, Tinca tinca"  # the ImageNet-1k names, package data, sha256 checked
    print("WHEEL OK", sorted(os.listdir("run")))
    """
)


def test_wheel_installs_into_a_fresh_venv_and_runs_outside_the_source_tree(tmp_path):
    source = tmp_path / "source"  # build from a copy, so the checkout gets no build/ or egg-info
    shutil.copytree(os.path.join(ROOT, "mimir_hf"), source / "mimir_hf", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), source / name)
    pip = [sys.executable, "-m", "pip", "--quiet", "--disable-pip-version-check"]
    subprocess.run(pip + ["wheel", str(source), "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist")],
                   check=True, capture_output=True)  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("mimir_hf-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "mimir_hf/templates/finetuned.md" in names and "mimir_hf/models/vit/modeling_mimir.py" in names
    assert "mimir_hf/data_files/imagenet_test_image_ids.txt" in names  # RobustBench's ids, package data
    assert "mimir_hf/recipes/demo.yaml" in names and "mimir_hf/recipes/cifar10/finetune_vit_small.yaml" in names
    assert "mimir_hf/data_files/imagenet_classes.txt" in names  # ImageNet-1k's class names, package data

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)  # with pip: it writes the console script
    python = venv / "bin" / "python"
    subprocess.run([python, "-m", "pip", "--quiet", "--disable-pip-version-check", "install", "--no-deps",
                    "--no-index", str(wheel)], check=True, capture_output=True)  # fmt: skip
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    # The dependencies (torch, transformers, ...) come from this environment, appended after the venv's own
    # site-packages; only mimir_hf itself is installed in the new venv.
    with open(os.path.join(site, "dependencies.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    work = tmp_path / "elsewhere"
    work.mkdir()
    result = subprocess.run([python, "-c", SCRIPT], cwd=work, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "WHEEL OK" in result.stdout and "README.md" in result.stdout and "model.safetensors" in result.stdout

    # The command the wheel installs, on the recipe it ships (the demo: digits, offline), at a tiny size.
    command = [str(venv / "bin" / "mimir-hf"), "run", "demo", "--output_dir", "demo", *TINY_RUN]
    result = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.load(open(work / "demo" / "mimir_run.json"))
    assert record["status"] == "complete" and record["environment"]["mimir_hf"] == mimir_hf.__version__
    assert (work / "demo" / "robustness.md").is_file() and (work / "demo" / "finetune" / "model.safetensors").is_file()
    assert "natural (no attack)" in open(work / "demo" / "robustness.md").read()
