"""The README's every command and every Python block runs as written, on local stand-ins for what it reads (a folder of
photos, a transformers classifier, the demo's outputs, a ViTMAE folder, an authors' checkpoint), with flags appended
that only make the runs tiny. Commands that cannot run here say why in `COMMANDS`."""

import json
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from mimir_hf import MimirForImageClassification, MimirForPreTraining
from mimir_hf.commands.cli import main as cli
from mimir_hf.data import image_processor_for

from .conftest import tiny_config
from .reference_mae import ReferenceViT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]

# Flags appended to the README's commands so that they run in seconds (they change sizes, never behaviour).
REPORT = ["--pgd_steps", "2", "4", "--cw_steps", "2", "--adaptive_steps", "2", "--eps_sweep", "0", "1",
          "--autoattack_max_samples", "4", "--autoattack_iterations", "5", "--disable_tqdm", "true"]  # fmt: skip
SHAPE = ["--hidden_size", "32", "--num_hidden_layers", "1", "--num_attention_heads", "2", "--intermediate_size", "64"]
TRAINING = ["--disable_tqdm", "true", "--report_to", "none", "--save_strategy", "no", "--num_train_epochs", "1"]
RUN = ["--pretrain_epochs", "1", "--finetune_epochs", "1", "--adversarial_steps", "1", "--batch_size", "8"]

# Every command of the README -> what runs it.
COMMANDS = {
    "make demo": "test_wheel.py: the Makefile's demo command (mimir-hf run demo), tiny, from the installed wheel",
    "make test": "CI: .ci/run runs it",
    "mimir-hf run --train_dir photos/train --validation_dir photos/val --image_size 32 --output_dir out/photos": (
        "test_your_own_images_commands"
    ),
    "mimir-hf pretrain --train_dir photos/train --image_size 32 --output_dir out/pretrain": (
        "test_your_own_images_commands"
    ),
    "mimir-hf finetune --model_name_or_path out/pretrain --train_dir photos/train --validation_dir photos/val "
    "--output_dir out/finetune": "test_your_own_images_commands",
    "mimir-hf evaluate --model_name_or_path out/finetune --validation_dir photos/val --output_dir out/report": (
        "test_your_own_images_commands"
    ),
    "mimir-hf evaluate --model_name_or_path my-classifier --validation_dir photos/val --output_dir out/my-report": (
        "test_a_report_for_any_classifier_command"
    ),
    "mimir-hf convert checkpoint-49.pth out/mimir-vit-t-cifar10 --label_names cifar10": "test_convert_command",
    "torchrun --nproc_per_node 4 -m mimir_hf finetune --model_name_or_path out/pretrain --train_dir photos/train "
    "--validation_dir photos/val --output_dir out/finetune --bf16": "test_several_processes_commands (2 CPU processes)",
    "accelerate launch --multi_gpu --num_processes 4 -m mimir_hf pretrain --train_dir photos/train --image_size 32 "
    "--output_dir out/pretrain": "test_several_processes_commands (2 CPU processes)",
}


def readme() -> str:
    return open(README, encoding="utf-8").read()


def bash_commands(text: str) -> list[str]:
    """The commands of the ```bash blocks: continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            command = " ".join(line.split("#")[0].split())
            if command:
                commands.append(command)
    return commands


def section_code(title: str) -> str:
    section = readme().split(f"## {title}")[1].split("\n## ")[0]
    return "\n".join(re.findall(r"```python\n(.*?)```", section, flags=re.S))


def test_every_readme_command_is_run_by_a_test():
    assert sorted(bash_commands(readme())) == sorted(COMMANDS)
    assert len(readme().splitlines()) <= 200  # a newcomer reads it in five minutes


def test_make_demo_is_the_command_the_readme_names():
    makefile = open(os.path.join(ROOT, "Makefile")).read()
    assert "\t$(BIN)/mimir-hf run demo --output_dir outputs/demo --overwrite_output_dir\n" in makefile
    assert "`make demo` is `mimir-hf run demo --output_dir outputs/demo --overwrite_output_dir`" in " ".join(
        readme().split()
    )
    assert "make test" in open(os.path.join(ROOT, ".ci", "run")).read()


def photo_folders(root, size=32):
    """photos/train and photos/val: one sub-folder per class, RGB images of `size` px."""
    rng = np.random.RandomState(0)
    for split, count in (("train", 18), ("val", 9)):
        for i in range(count):
            folder = root / "photos" / split / ("cat", "dog", "owl")[i % 3]
            folder.mkdir(parents=True, exist_ok=True)
            pixels = np.clip(60 + 60 * (i % 3) + rng.randint(-40, 40, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{split}{i}.png")


@pytest.fixture
def in_photos(tmp_path, monkeypatch):
    photo_folders(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def command_with(*words: str) -> str:
    """The one README command holding every word of `words`."""
    (command,) = [c for c in COMMANDS if all(word in c for word in words)]
    return command


def run_readme_command(command: str, *tiny: list[str]) -> None:
    assert command in bash_commands(readme())
    argv = shlex.split(command)
    assert argv[0] == "mimir-hf"
    assert cli(argv[1:] + [flag for flags in tiny for flag in flags]) == 0, command


def test_your_own_images_commands(in_photos):
    run_readme_command(command_with("mimir-hf run", "photos/train"), RUN, SHAPE, REPORT)
    report = json.load(open("out/photos/robustness.json"))
    assert report["num_samples"] == 9 and json.load(open("out/photos/finetune/config.json"))["image_size"] == 32
    run_readme_command(command_with("mimir-hf pretrain"), SHAPE, TRAINING, ["--per_device_train_batch_size", "8"])
    run_readme_command(
        command_with("mimir-hf finetune"), TRAINING, ["--adversarial_steps", "1", "--per_device_train_batch_size", "8"]
    )
    assert json.load(open("out/finetune/config.json"))["id2label"] == {"0": "cat", "1": "dog", "2": "owl"}
    run_readme_command(command_with("mimir-hf evaluate", "out/report"), REPORT)
    assert json.load(open("out/report/robustness.json"))["num_samples"] == 9


def test_a_report_for_any_classifier_command(in_photos):
    torch.manual_seed(0)
    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                    num_attention_heads=2, intermediate_size=64, num_labels=3,
                                    id2label={0: "cat", 1: "dog", 2: "owl"})  # fmt: skip
    transformers.ViTForImageClassification(config).save_pretrained("my-classifier")
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained("my-classifier")
    run_readme_command(command_with("my-classifier"), REPORT)
    report = json.load(open("out/my-report/robustness.json"))
    assert report["num_samples"] == 9 and "inside a wrapper" in report["info"]["preprocessing"]


def test_convert_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    reference = ReferenceViT(image=32, patch=2, dim=192, depth=1, heads=3, mlp=768, classes=10)
    torch.save({"model": reference.state_dict()}, "checkpoint-49.pth")
    run_readme_command(command_with("mimir-hf convert"), ["--num_attention_heads", "3"])
    config = json.load(open("out/mimir-vit-t-cifar10/config.json"))
    assert config["id2label"]["0"] == "airplane" and config["id2label"]["9"] == "truck"


def test_several_processes_commands(in_photos):
    """The README's torchrun and accelerate commands, with 2 processes instead of 4: on this CPU machine they form one
    gloo group without --use_cpu (the run says 2 processes)."""
    run_readme_command(command_with("mimir-hf pretrain"), SHAPE, TRAINING)
    bin_dir = os.path.dirname(sys.executable)
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for launcher in ("torchrun", "accelerate launch"):
        (command,) = [c for c in COMMANDS if c.startswith(launcher)]
        argv = shlex.split(command.replace("--nproc_per_node 4", "--nproc_per_node 2").replace(
            "--num_processes 4", "--num_processes 2"))  # fmt: skip
        argv[0] = os.path.join(bin_dir, argv[0])
        tiny = TRAINING + ["--per_device_train_batch_size", "4"]
        tiny += ["--adversarial_steps", "1"] if " finetune " in command else SHAPE
        output = "out/finetune" if " finetune " in command else "out/pretrain"
        subprocess.run(["rm", "-rf", output], check=True)
        result = subprocess.run(argv + tiny, capture_output=True, text=True, env=environment, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        record = json.load(open(os.path.join(output, "mimir_run.json")))
        assert record["status"] == "complete" and "x 2 processes" in record["effective_settings"]["effective batch"]


def test_your_own_images_python_runs(in_photos):
    namespace: dict = {}
    exec(compile(section_code("Your own images"), "README.md", "exec"), namespace)
    classifier = MimirForImageClassification.from_pretrained("out/finetune/checkpoint-" + _last_step("out/finetune"))
    assert classifier.config.id2label == {0: "cat", 1: "dog", 2: "owl"}
    assert os.path.isfile("out/pretrain/model.safetensors")


def _last_step(folder: str) -> str:
    return str(max(int(name.split("-")[1]) for name in os.listdir(folder) if name.startswith("checkpoint-")))


def test_a_pretrained_mimir_model_python_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    names = [str(d) for d in range(10)]
    config = tiny_config(
        num_channels=1, num_labels=10, id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)}
    )
    MimirForImageClassification(config).save_pretrained("outputs/demo/finetune")
    image_processor_for(config).save_pretrained("outputs/demo/finetune")
    fields = {k: v for k, v in tiny_config().to_dict().items() if k in transformers.ViTMAEConfig().to_dict()}
    transformers.ViTMAEForPreTraining(transformers.ViTMAEConfig(**fields)).save_pretrained("outputs/vit-mae-tiny")
    transformers.ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=IMAGENET_MEAN,
                                   image_std=IMAGENET_STD).save_pretrained("outputs/vit-mae-tiny")  # fmt: skip

    namespace: dict = {}
    exec(compile(section_code("A pre-trained MIMIR model"), "README.md", "exec"), namespace)

    assert namespace["classify"].model.config.model_type == "mimir"
    mae_start = namespace["mae_start"]
    assert isinstance(mae_start, MimirForPreTraining)
    assert list(mae_start.config.image_mean) == IMAGENET_MEAN  # the ViTMAE folder's normalisation came along


def test_released_numbers_agree_in_the_readme_docs_and_the_family_cards():
    """README, docs/checkpoints.md and model_cards/<family>.md quote the authors' numbers from mimir_hf/released.py,
    the one table."""
    from mimir_hf.released import RELEASED

    text = open(os.path.join(ROOT, "docs", "checkpoints.md")).read()
    for checkpoint in RELEASED:
        card = open(os.path.join(ROOT, "model_cards", f"{checkpoint.family}.md")).read()
        pair = f"{checkpoint.natural:.2f} / {checkpoint.robust:.2f} {checkpoint.robust_attack}"
        row = f"| {checkpoint.natural:.2f} | {checkpoint.robust:.2f} ({checkpoint.robust_attack})"
        assert row in card, (checkpoint, "model card")
        assert pair in text, (checkpoint, "docs/checkpoints.md")
    quoted = re.findall(r"(\d+\.\d\d) / (\d+\.\d\d) AutoAttack", readme())
    assert quoted and all(
        any(f"{c.natural:.2f}" == natural and f"{c.robust:.2f}" == robust for c in RELEASED)
        for natural, robust in quoted
    )
