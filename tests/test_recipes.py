"""The paper recipes (mimir_hf/recipes/<data>/*.yaml): each loads, its effective settings equal docs/recipes.md's table
(which cites the authors' scripts), and `--max_steps 2` runs its code path end to end on tiny data with a tiny model."""

import logging
import os
import re

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
from PIL import Image as PILImage

from mimir_hf import MimirForPreTraining, MimirSwinConfig, MimirSwinForImageClassification
from mimir_hf.augmentation import AugmentationArguments
from mimir_hf.commands import common
from mimir_hf.commands import finetune as run_finetuning
from mimir_hf.commands import pretrain as run_pretraining
from mimir_hf.trainer import MimirAdversarialTrainingArguments, MimirPreTrainingArguments

from .conftest import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


RECIPES = [name for name in common.recipe_names() if "/" in name]  # every paper recipe (demo: test_examples.py)
DOC = os.path.join(ROOT, "docs", "recipes.md")


def readme_table() -> dict[str, dict]:
    """docs/recipes.md's "Paper recipes" table, one dict per recipe."""
    text = open(DOC, encoding="utf-8").read()
    section = text.split("## Paper recipes")[1].split("\n## ")[0]
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows, previous = {}, ""
    for line in lines[2:]:
        cells = dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")), strict=True))
        match = re.fullmatch(r"`(\w+/\w+)`", cells["recipe"])
        if match:
            extras = cells["augmentation and the rest"]
            if extras.startswith("same"):  # "same ..." = the row above's, then what follows (later values win)
                extras = previous + extras[len("same") :]
            cells["augmentation and the rest"] = previous = extras
            rows[match.group(1)] = cells
        else:
            assert cells["recipe"] == "NOT FOUND", cells  # rows without a published script say so
    return rows


def fraction(cell: str) -> float:
    numerator, _, denominator = cell.partition("/")
    return float(numerator) / float(denominator or 1)


def load(recipe: str):
    """The parsed arguments of a recipe, as its script parses them on one process of this CPU machine: with `--bf16`
    for the recipe's fp16 (which needs a GPU) and no effective-batch check (the recipe's values stay as they are)."""
    if os.path.basename(recipe).startswith("pretrain_"):
        classes = (common.ModelArguments, common.DataArguments, MimirPreTrainingArguments, common.RunArguments)
    else:
        classes = (common.ModelArguments, common.DataArguments, MimirAdversarialTrainingArguments, common.RunArguments)
    return common.parse((*classes, AugmentationArguments), [recipe, "--bf16", "--reference_effective_batch", "0"])


def test_the_table_lists_every_recipe_and_the_scripts_not_found():
    rows = readme_table()
    assert sorted(rows) == RECIPES and len(RECIPES) == 16
    text = open(DOC, encoding="utf-8").read()
    assert "2/255, 74.60 / 54.56" in text and "CaiT-XXS24 / CaiT-S36" in text  # eps-2 and CaiT rows: NOT FOUND


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_effective_settings_match_the_readme_table(recipe):
    row = readme_table()[recipe]
    model_args, data_args, args, _, augmentation = load(recipe)
    per_gpu, gpus = re.match(r"(\d+) x (\d+|\?)", row["batch"]).groups()
    assert args.per_device_train_batch_size == int(per_gpu)
    lr = float(row["lr"].split()[0])
    if gpus == "?":  # the GPU count is not in the authors' files: the table gives lr per GPU
        assert "x GPUs" in row["lr"] and args.scaled_learning_rate(world_size=1) == pytest.approx(lr)
    else:
        assert args.scaled_learning_rate(world_size=int(gpus)) == pytest.approx(lr)
    assert args.num_train_epochs == int(row["epochs"])
    # the authors' run: fp16 autocast with a grad scaler, no gradient clipping, the effective batch of their GPUs
    values = common.load_recipe(common.resolve_recipe(recipe))
    assert values["fp16"] is True and "bf16" not in values and args.max_grad_norm == 0
    assert values["reference_effective_batch"] == (0 if gpus == "?" else int(per_gpu) * int(gpus))
    assert args.warmup_steps * args.num_train_epochs == pytest.approx(int(row["warm-up"]))
    if isinstance(args, MimirAdversarialTrainingArguments):
        budget, ramp = args.adversarial_budget, args.adversarial_step_size_ramp_epochs
        assert args.adversarial_method == "pgd" and budget.random_start
    else:
        budget, ramp = common.new_config(model_args, 3).attack_budget, 0
    assert budget.epsilon * 255 == pytest.approx(fraction(row["eps"]), rel=1e-6)
    assert budget.step_size * 255 == pytest.approx(fraction(row["step"]), rel=1e-6)
    assert budget.steps == int(row["steps"]) and ramp == int(row["ramp"])

    extras = row["augmentation and the rest"]
    expected = (
        "crop-flip" if "pad-4 crop + flip" in extras else "resized-crop-flip" if "resized crop" in extras else None
    )
    assert augmentation.augmentation == expected, extras
    if "resized crop 0.08" in extras:
        assert augmentation.resized_crop_scale == 0.08
    elif augmentation.augmentation == "resized-crop-flip":
        assert augmentation.resized_crop_scale == 0.2
    if "RandAugment m9 mstd0.5" in extras:
        assert (augmentation.randaugment_magnitude, augmentation.randaugment_magnitude_std) == (9, 0.5)
        assert augmentation.random_erasing == 0.25 and (args.mixup_alpha, args.cutmix_alpha) == (0.8, 1.0)
        assert args.ema_decay == 0.9998 and args.base_batch_size == 512 and args.layer_decay == 1.0
        assert model_args.drop_path_rate == 0.0 and model_args.label_smoothing == 0.1
    else:
        assert augmentation.randaugment_magnitude is None and augmentation.random_erasing == 0
        assert args.ema_decay == 0 and args.base_batch_size == 256
    assert (data_args.aux_data_file is not None) == ("EDM" in extras or "EDM" in row["paper row (natural / robust)"])
    if data_args.aux_data_file:
        assert args.aux_fraction == 0.7
    if isinstance(args, MimirAdversarialTrainingArguments):
        min_lr = re.findall(r"min lr ([\d.e-]+\d)", extras)[-1]  # the last one: "same, min lr 1e-6" overrides
        assert args.lr_scheduler_type == "cosine_with_min_lr" and args.lr_scheduler_kwargs["min_lr"] == float(min_lr)
    if "layer decay 0.65" in extras:
        assert args.layer_decay == 0.65 and model_args.drop_path_rate == 0.1 and model_args.label_smoothing == 0.1
    if isinstance(args, MimirPreTrainingArguments):
        assert args.adam_beta2 == 0.95 and args.weight_decay == 0.05 and args.lr_scheduler_type == "cosine"


# ----------------------------------------------------------------------------------------------------------------
# --max_steps 2 on tiny data
# ----------------------------------------------------------------------------------------------------------------

TINY_VIT = [
    "--image_size", "16", "--patch_size", "4", "--hidden_size", "32", "--num_hidden_layers", "1",
    "--num_attention_heads", "2", "--intermediate_size", "64", "--decoder_hidden_size", "16",
    "--decoder_num_hidden_layers", "1", "--decoder_num_attention_heads", "2", "--decoder_intermediate_size", "32",
]  # fmt: skip
QUIET = ["--disable_tqdm", "true", "--report_to", "none", "--use_cpu", "true", "--save_strategy", "no"]


def fake_image_dataset(dataset_name=None, dataset_config_name=None, train_dir=None, validation_dir=None, **kwargs):
    """Stands in for CIFAR-10 (32 px, column `img`) or ImageNet (non-square photos, column `image`)."""
    cifar = dataset_name is not None and "cifar" in dataset_name
    column = "img" if cifar else "image"
    size = (32, 32) if cifar else (48, 40)
    rng = np.random.RandomState(0)
    features = Features({column: Image(), "label": ClassLabel(names=[f"c{i}" for i in range(10)])})

    def split(n):
        images = [PILImage.fromarray(rng.randint(0, 256, (*size, 3), dtype=np.uint8)) for _ in range(n)]
        return Dataset.from_dict({column: images, "label": [i % 10 for i in range(n)]}, features=features)

    return DatasetDict(train=split(16), test=split(4))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A tiny MIMIR ViT pre-training folder, a tiny Swin classifier folder (a converted GreenMIM checkpoint stands
    here), and a tiny auxiliary .npz."""
    folder = tmp_path_factory.mktemp("checkpoints")
    MimirForPreTraining(tiny_config(num_labels=10)).save_pretrained(folder / "vit")
    swin = MimirSwinConfig(
        image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4, num_labels=10
    )
    MimirSwinForImageClassification(swin).save_pretrained(folder / "swin")
    rng = np.random.RandomState(1)
    np.savez(folder / "aux.npz", image=rng.randint(0, 256, (12, 32, 32, 3), dtype=np.uint8), label=np.arange(12) % 10)
    return {"vit": str(folder / "vit"), "swin": str(folder / "swin"), "aux": str(folder / "aux.npz")}


def code_paths() -> dict[str, list[str]]:
    """One recipe per code path: recipes that differ only in the model's size (`model_preset`, and the folders
    named after it) run the same code once the test shrinks the model, so one of them stands for all."""
    groups: dict[str, list[str]] = {}
    for recipe in RECIPES:
        values = common.load_recipe(common.resolve_recipe(recipe))
        for name in ("model_preset", "model_name_or_path", "output_dir"):
            values.pop(name, None)
        key = os.path.dirname(recipe) + os.path.basename(recipe).split("_")[0] + repr(sorted(values.items()))
        groups.setdefault(key, []).append(recipe)
    return {members[0]: members for members in groups.values()}


CODE_PATHS = code_paths()


def test_every_recipe_has_its_code_path_run():
    assert sorted(r for members in CODE_PATHS.values() for r in members) == RECIPES
    assert len(CODE_PATHS) == 8  # CIFAR-10 / +EDM / ImageNet pre-training; CIFAR-10 / +EDM / ImageNet ViT / Swin-B / -L


@pytest.mark.parametrize("recipe", sorted(CODE_PATHS))
def test_recipe_code_path_runs_two_steps_on_tiny_data(recipe, checkpoints, tmp_path, monkeypatch, caplog):
    """`--max_steps 2` with the recipe's values, a tiny model of its family and tiny data (for the recipes in
    `CODE_PATHS[recipe]`, which differ from it only in the model's size)."""
    monkeypatch.setattr(common, "load_image_dataset", fake_image_dataset)
    _, data_args, args, _, _ = load(recipe)
    argv = [recipe, "--max_steps", "2", "--per_device_train_batch_size", "4", "--reference_effective_batch", "0"]
    argv += ["--bf16"]  # the recipes' fp16 needs a GPU; --bf16 replaces it
    argv += ["--max_eval_samples", "4", "--output_dir", str(tmp_path / "out"), *QUIET]
    if data_args.aux_data_file:
        argv += ["--aux_data_file", checkpoints["aux"]]
    pretraining = os.path.basename(recipe).startswith("pretrain_")
    if pretraining:
        argv += TINY_VIT
    else:
        argv += ["--model_name_or_path", checkpoints["swin" if "swin" in recipe else "vit"]]
    caplog.set_level(logging.INFO, logger="mimir_hf.examples")
    metrics = (run_pretraining if pretraining else run_finetuning).main(argv)

    record = __import__("json").load(open(tmp_path / "out" / "mimir_run.json"))
    assert record["status"] == "complete"
    settings = record["effective_settings"]
    assert settings["learning rate"] == pytest.approx(
        args.scaled_learning_rate(world_size=1) * 4 / args.per_device_train_batch_size
    )
    assert "Effective settings" in caplog.text and f"learning rate: {settings['learning rate']}" in caplog.text
    assert settings["epochs"] == "max_steps 2"
    assert settings["precision"] == "bf16 mixed" and settings["gradient clipping"] == "off"
    if data_args.aux_data_file:
        assert checkpoints["aux"] in settings["auxiliary data"]
    if args.ema_decay > 0:
        assert os.path.isfile(tmp_path / "out" / "ema" / "model.safetensors") and "ema_pgd20_accuracy" in metrics
    if not pretraining:
        assert 0 <= metrics["pgd20_accuracy"] <= metrics["natural_accuracy"] <= 100


def test_a_recipe_run_at_another_batch_or_in_fp16_on_a_cpu_stops_at_once_naming_the_flags():
    recipe = "cifar10/finetune_vit_small"  # 32 per GPU x 4 GPUs in the authors' run
    with pytest.raises(ValueError) as error:
        load_with(recipe, "--bf16")
    assert "effective batch of 128" in str(error.value) and "--gradient_accumulation_steps 4" in str(error.value)
    with pytest.raises(ValueError, match="fp16 mixed precision needs a GPU.*--bf16 true"):
        load_with(recipe, "--gradient_accumulation_steps", "4")
    args = load_with(recipe, "--gradient_accumulation_steps", "4", "--bf16")[2]
    assert args.bf16 and not args.fp16 and args.scaled_learning_rate() == pytest.approx(0.025)  # the authors' lr
    args = load_with(recipe, "--reference_effective_batch", "0", "--fp16", "false")[2]
    assert not args.fp16 and args.scaled_learning_rate() == pytest.approx(0.00625)  # 0.05 x 32 / 256, said so


def load_with(recipe: str, *flags: str):
    return common.parse(
        (common.ModelArguments, common.DataArguments, MimirAdversarialTrainingArguments, common.RunArguments,
         AugmentationArguments),
        [recipe, "--output_dir", "unused", *flags],
    )  # fmt: skip


def test_the_documented_recipe_commands_train_at_the_authors_effective_batch():
    """docs/recipes.md's example commands, parsed as their processes would parse them (`--nproc_per_node` of them)."""
    text = open(DOC, encoding="utf-8").read()
    block = text.split("## Paper recipes")[1].split("```bash\n")[1].split("```")[0]
    commands = [line.split("#")[0].split() for line in block.splitlines() if line.strip()]
    assert len(commands) == 3
    for words in commands:
        processes = int(words[words.index("--nproc_per_node") + 1]) if words[0] == "torchrun" else 1
        stage = words.index("pretrain") if "pretrain" in words else words.index("finetune")
        recipe, flags = words[stage + 1], words[stage + 2 :]
        arguments_class = MimirPreTrainingArguments if words[stage] == "pretrain" else MimirAdversarialTrainingArguments
        classes = (common.ModelArguments, common.DataArguments, arguments_class, common.RunArguments)
        on_this_cpu = ["--reference_effective_batch", "0"] + ([] if "--bf16" in flags else ["--fp16", "false"])
        parsed = common.parse((*classes, AugmentationArguments), [recipe, *flags, *on_this_cpu])
        args = parsed[2]
        args.reference_effective_batch = common.load_recipe(common.resolve_recipe(recipe))["reference_effective_batch"]
        assert args.reference_effective_batch > 0
        args.check_effective_batch(world_size=processes)  # raises if the command trains at another batch


def test_the_cpus_a_process_may_use_are_its_affinity_set_not_the_machine_s(monkeypatch):
    """In a container or a Slurm / taskset allocation the machine has more CPUs than the process may use."""
    monkeypatch.setattr(common.os, "cpu_count", lambda: 64)
    monkeypatch.setattr(common.os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert common.usable_cpus() == 3
    monkeypatch.delattr(common.os, "sched_getaffinity")  # macOS, Windows: the machine's count
    assert common.usable_cpus() == 64


def test_recipes_set_the_data_loader_workers_their_data_path_needs(monkeypatch):
    """docs/benchmarks.md: one worker turns 4000-9000 CIFAR images/s into batches, 215-265 ImageNet JPEGs/s."""
    monkeypatch.setattr(common, "usable_cpus", lambda: 64)
    for recipe in RECIPES:
        args = load(recipe)[2]
        assert args.dataloader_num_workers == (2 if recipe.startswith("cifar10/") else 8), recipe


def test_the_command_line_s_workers_win_and_are_never_capped(monkeypatch, caplog):
    monkeypatch.setattr(common, "usable_cpus", lambda: 2)
    classes = (common.ModelArguments, common.DataArguments, MimirPreTrainingArguments, common.RunArguments)
    for flags in (["--dataloader_num_workers", "12"], ["--dataloader_num_workers=12"]):
        with caplog.at_level(logging.INFO, logger="mimir_hf.commands"):
            parsed = common.parse(
                (*classes, AugmentationArguments),
                ["imagenet/pretrain_vit_base", "--bf16", "--reference_effective_batch", "0", *flags],
            )
        assert parsed[2].dataloader_num_workers == 12 and "dataloader_num_workers" not in caplog.text


def test_a_recipe_s_workers_come_down_to_the_cpu_count_with_a_message(monkeypatch, caplog):
    monkeypatch.setattr(common, "usable_cpus", lambda: 3)
    with caplog.at_level(logging.INFO, logger="mimir_hf.commands"):
        imagenet, cifar = load("imagenet/finetune_swin_base")[2], load("cifar10/pretrain_vit_small")[2]
    assert imagenet.dataloader_num_workers == 3 and cifar.dataloader_num_workers == 2  # 2 <= 3: kept
    (line,) = [record.getMessage() for record in caplog.records if "dataloader_num_workers" in record.getMessage()]
    assert "dataloader_num_workers 8" in line and "3 CPUs" in line and "--dataloader_num_workers N" in line
