"""Nothing a user owns is lost and every run can be resumed: faults and careless input around training (issue 13).
Each test names the case of docs/reliability.md it covers."""

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import TrainerCallback
from transformers.testing_utils import CaptureLogger

import mimir_hf.trainer as trainer_module
from mimir_hf import MimirForImageClassification, MimirForPreTraining
from mimir_hf.checkpoints import COMPLETE_MARKER, last_complete_checkpoint
from mimir_hf.checkpoints import logger as checkpoint_logger
from mimir_hf.trainer import (
    MimirAdversarialTrainer,
    MimirAdversarialTrainingArguments,
    MimirPreTrainingArguments,
    MimirPreTrainingTrainer,
)

from .conftest import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def images_dataset(n=16, labels=False):
    images = torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    columns = {"pixel_values": images.numpy()}
    if labels:
        columns["labels"] = (torch.arange(n) % 4).numpy()
    return Dataset.from_dict(columns).with_format("torch")


def pretraining_args(output_dir, **overrides):
    fields = dict(output_dir=str(output_dir), per_device_train_batch_size=4, max_steps=6, report_to=[], use_cpu=True,
                  disable_tqdm=True, seed=0, save_strategy="no", learning_rate=1e-3)  # fmt: skip
    return MimirPreTrainingArguments(**{**fields, **overrides})


def run_worker(output_dir, result, kill_at=None, resume=False):
    command = [sys.executable, os.path.join(ROOT, "tests", "checkpoint_worker.py"), str(output_dir), str(result)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **({"RESUME": "1"} if resume else {})}
    return subprocess.run(command + ([str(kill_at)] if kill_at else []), capture_output=True, text=True, env=env,
                          timeout=300)  # fmt: skip


def test_sigkill_during_a_checkpoint_write_then_a_rerun_ends_with_the_same_weights(tmp_path):
    """Killed half-way through writing checkpoint-4, the run leaves a checkpoint that cannot be resumed from; the rerun
    skips it (saying so), resumes from checkpoint-2 and ends with the weights of an uninterrupted run."""
    straight = run_worker(tmp_path / "straight", tmp_path / "straight.pt")
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = run_worker(tmp_path / "run", tmp_path / "unused.pt", kill_at=4)
    assert killed.returncode == -signal.SIGKILL
    assert (tmp_path / "run" / "checkpoint-4").is_dir() and not (
        tmp_path / "run" / "checkpoint-4" / COMPLETE_MARKER
    ).exists()
    assert last_complete_checkpoint(str(tmp_path / "run")).endswith("checkpoint-2")
    rerun = run_worker(tmp_path / "run", tmp_path / "resumed.pt", resume=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "Not resuming from" in rerun.stderr and "checkpoint-4" in rerun.stderr
    expected, resumed = torch.load(tmp_path / "straight.pt"), torch.load(tmp_path / "resumed.pt")
    for name, value in expected["state"].items():
        torch.testing.assert_close(resumed["state"][name], value, msg=name)
    # the reported loss is the whole run's, not only the resumed steps'
    assert resumed["train_loss"] == pytest.approx(expected["train_loss"], rel=1e-4)


def test_a_full_disk_is_one_clear_line_naming_the_path_and_the_size(tmp_path, monkeypatch):
    trainer = MimirPreTrainingTrainer(
        model=MimirForPreTraining(tiny_config()), train_dataset=images_dataset(),
        args=pretraining_args(tmp_path, max_steps=2, save_strategy="steps", save_steps=2),
    )  # fmt: skip

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    with pytest.raises(OSError, match=r"No space left on the device while writing .*checkpoint-2.*MiB.*free") as error:
        trainer.train()
    assert "\n" not in str(error.value)


def test_torch_saves_own_disk_full_error_is_the_same_one_line(tmp_path, monkeypatch):
    """What torch.save really raises on a full disk (a RuntimeError from its zip writer, no errno) is recognised by
    the free space left, and becomes the same line."""
    trainer = MimirPreTrainingTrainer(
        model=MimirForPreTraining(tiny_config()), train_dataset=images_dataset(),
        args=pretraining_args(tmp_path, max_steps=2, save_strategy="steps", save_steps=2),
    )  # fmt: skip

    def zip_writer_fails(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    monkeypatch.setattr(torch, "save", zip_writer_fails)
    monkeypatch.setattr("shutil.disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(OSError, match=r"No space left on the device while writing .*checkpoint-2.*MiB.*free"):
        trainer.train()


def test_a_full_disk_with_save_total_limit_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """With save_total_limit=1, Trainer deletes the older checkpoints right after writing its own files; here the
    rotation waits for the new checkpoint's marker, so a full disk in checkpoint-4 leaves checkpoint-2 complete."""
    from mimir_hf.checkpoints import resume_needs

    args = pretraining_args(tmp_path, max_steps=4, save_strategy="steps", save_steps=2, save_total_limit=1)
    trainer = MimirPreTrainingTrainer(model=MimirForPreTraining(tiny_config()), train_dataset=images_dataset(),
                                      args=args)  # fmt: skip
    real_marker = trainer_module.write_marker

    def full_at_step_4(folder, info):
        if info["global_step"] == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_marker(folder, info)

    monkeypatch.setattr(trainer_module, "write_marker", full_at_step_4)
    with pytest.raises(OSError, match="No space left on the device while writing .*checkpoint-4"):
        trainer.train()
    assert last_complete_checkpoint(str(tmp_path), resume_needs(args)) == str(tmp_path / "checkpoint-2")


@pytest.fixture
def small_filesystem(tmp_path):
    """A 2 MiB tmpfs (root only: mount needs CAP_SYS_ADMIN); skipped where the machine does not allow it."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.strip()}): the faked full disks cover it")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_a_really_full_disk_is_one_line_and_the_previous_checkpoint_stays_usable(small_filesystem, capsys):
    """Training into a 2 MiB file system: the checkpoints fill it; the run stops with the one line (through the
    command too), and the last complete checkpoint is still complete and resumable."""
    from mimir_hf.checkpoints import checkpoint_problem, resume_needs
    from mimir_hf.commands.cli import main as cli

    out = small_filesystem / "run"
    args = pretraining_args(out, max_steps=40, save_strategy="steps", save_steps=2, save_total_limit=None)
    trainer = MimirPreTrainingTrainer(model=MimirForPreTraining(tiny_config()), train_dataset=images_dataset(),
                                      args=args)  # fmt: skip
    with pytest.raises(OSError, match=r"No space left on the device while writing .*checkpoint-\d+.*MiB are free"):
        trainer.train()
    complete = last_complete_checkpoint(str(out), resume_needs(args))
    assert complete is not None and checkpoint_problem(complete, resume_needs(args)) is None
    shutil.rmtree(out)  # room again, for the command's own run

    argv = ["pretrain", "--output_dir", str(small_filesystem / "cli"), "--max_train_samples", "64", "--max_steps",
            "40", "--save_strategy", "steps", "--save_steps", "2", "--disable_tqdm", "true", "--report_to", "none",
            "--image_size", "16", "--patch_size", "4", "--hidden_size", "32", "--num_hidden_layers", "2",
            "--num_attention_heads", "2", "--intermediate_size", "64"]  # fmt: skip
    assert cli(argv) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]  # (progress bars aside)
    assert len(errors) == 1 and errors[0].startswith("mimir-hf pretrain: error: No space left on the device while")


def test_resuming_from_a_truncated_or_foreign_checkpoint_names_the_file(tmp_path):
    MimirPreTrainingTrainer(
        model=MimirForPreTraining(tiny_config()), train_dataset=images_dataset(),
        args=pretraining_args(tmp_path / "pre", max_steps=2, save_strategy="steps", save_steps=2),
    ).train()  # fmt: skip
    checkpoint = tmp_path / "pre" / "checkpoint-2"
    other = MimirAdversarialTrainer(
        model=MimirForImageClassification(tiny_config()), train_dataset=images_dataset(labels=True),
        args=MimirAdversarialTrainingArguments(output_dir=str(tmp_path / "clf"), per_device_train_batch_size=4,
                                               max_steps=1, report_to=[], use_cpu=True, adversarial_steps=1),
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"checkpoint-2.*config.json.*'mimir'.*MimirForPreTraining.*not one of this"):
        other.train(resume_from_checkpoint=str(checkpoint))
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    fresh = MimirPreTrainingTrainer(model=MimirForPreTraining(tiny_config()), train_dataset=images_dataset(),
                                    args=pretraining_args(tmp_path / "pre"))  # fmt: skip
    with pytest.raises(ValueError, match=r"model.safetensors.*truncated or corrupt"):
        fresh.train(resume_from_checkpoint=str(checkpoint))
    with CaptureLogger(checkpoint_logger) as captured, pytest.raises(ValueError, match="No complete checkpoint"):
        fresh.train(resume_from_checkpoint=True)
    assert "checkpoint-2" in captured.out


def test_train_loss_after_a_resume_covers_the_whole_run(tmp_path):
    class StopAt4(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 4:
                control.should_training_stop = True

    def run(output_dir, callbacks=(), resume=None):
        torch.manual_seed(0)
        trainer = MimirPreTrainingTrainer(
            model=MimirForPreTraining(tiny_config()), train_dataset=images_dataset(), callbacks=list(callbacks),
            args=pretraining_args(output_dir, save_strategy="steps", save_steps=2),
        )  # fmt: skip
        return trainer.train(resume_from_checkpoint=resume)

    straight = run(tmp_path / "a")
    run(tmp_path / "b", callbacks=[StopAt4()])
    resumed = run(tmp_path / "b", resume=True)
    assert resumed.global_step == 6
    assert resumed.metrics["train_loss"] == pytest.approx(straight.metrics["train_loss"], rel=1e-4)


def test_pretraining_drops_an_incomplete_last_batch_and_refuses_a_set_smaller_than_a_batch(tmp_path):
    """9 images at batch 4 would end each epoch on a batch of 1, for which the MI term does not exist."""
    args = pretraining_args(tmp_path, max_steps=-1, num_train_epochs=2)
    trainer = MimirPreTrainingTrainer(model=MimirForPreTraining(tiny_config()), args=args,
                                      train_dataset=images_dataset(9))  # fmt: skip
    assert trainer.train().global_step == 4  # 2 full batches per epoch
    small = MimirPreTrainingTrainer(model=MimirForPreTraining(tiny_config()), args=args,
                                    train_dataset=images_dataset(3))  # fmt: skip
    with pytest.raises(ValueError, match="smaller than one batch.*per_device_train_batch_size"):
        small.train()


def test_pretraining_trainer_evaluates_a_labelled_set(tmp_path):
    """`run_pretraining --do_eval` used to crash after training: the labels reached the pre-training forward."""
    trainer = MimirPreTrainingTrainer(model=MimirForPreTraining(tiny_config()), args=pretraining_args(tmp_path),
                                      eval_dataset=images_dataset(8, labels=True))  # fmt: skip
    metrics = trainer.evaluate()
    assert metrics["eval_loss"] > 0 and "eval_mi_loss" in metrics


@pytest.mark.parametrize("field", ["per_device_train_batch_size", "gradient_accumulation_steps"])
def test_a_batch_size_of_zero_is_refused(tmp_path, field):
    with pytest.raises(ValueError, match=f"{field} must be >= 1"):
        pretraining_args(tmp_path, **{field: 0})


# ----------------------------------------------------------------------------------------------------------------
# The example scripts: output folders, images, labels, evaluation
# ----------------------------------------------------------------------------------------------------------------

from PIL import Image  # noqa: E402

from mimir_hf import run_record  # noqa: E402
from mimir_hf.commands import common  # noqa: E402
from mimir_hf.commands import evaluate as run_evaluation  # noqa: E402
from mimir_hf.commands import finetune as run_finetuning  # noqa: E402
from mimir_hf.commands import pretrain as run_pretraining  # noqa: E402
from mimir_hf.commands import run as run_mimir  # noqa: E402

TINY_MODEL = ["--image_size", "8", "--patch_size", "2", "--hidden_size", "32", "--num_hidden_layers", "1",
              "--num_attention_heads", "2"]  # fmt: skip
QUIET = ["--disable_tqdm", "true", "--report_to", "none", "--use_cpu", "true", "--save_strategy", "no"]
TINY_TRAIN = TINY_MODEL + QUIET + ["--max_train_samples", "32", "--max_eval_samples", "8", "--num_train_epochs", "1",
                                   "--per_device_train_batch_size", "8"]  # fmt: skip
TINY_REPORT = ["--pgd_steps", "2", "4", "--cw_steps", "2", "--adaptive_steps", "2", "--autoattack", "false",
               "--eps_sweep", "0", "1", "--use_cpu", "true"]  # fmt: skip


def image_folder(root, classes=("cat", "dog"), per_class=6, size=12, flat=False):
    generator = torch.Generator().manual_seed(0)
    for index, name in enumerate(classes):
        folder = root if flat else root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = (torch.rand(size, size, 3, generator=generator) * 120 + 100 * index).clamp(0, 255).byte().numpy()
            Image.fromarray(pixels).save(folder / f"{name}_{i}.png")
    return root


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("where", ["is", "contains", "is inside"])
def test_an_output_folder_that_overlaps_the_data_is_refused_and_the_data_kept(tmp_path, where):
    data = image_folder(tmp_path / "data" / "train")
    before = snapshot(tmp_path / "data")
    output = {"is": data, "contains": tmp_path / "data", "is inside": data / "cat" / "run"}[where]
    with pytest.raises(ValueError, match=f"{where} the input") as error:
        run_pretraining.main(TINY_TRAIN + ["--train_dir", str(data), "--output_dir", str(output),
                                           "--overwrite_output_dir", "true"])  # fmt: skip
    assert "--overwrite_output_dir" not in str(error.value)  # never suggest the flag that would destroy data
    assert snapshot(tmp_path / "data") == before


def test_the_input_model_folder_is_never_the_output(tmp_path):
    run_pretraining.main(TINY_TRAIN + ["--output_dir", str(tmp_path / "pre")])
    before = snapshot(tmp_path / "pre")
    with pytest.raises(ValueError, match="is the input"):
        run_finetuning.main(TINY_TRAIN + ["--model_name_or_path", str(tmp_path / "pre"), "--output_dir",
                                          str(tmp_path / "pre"), "--overwrite_output_dir", "true"])  # fmt: skip
    assert {k: v for k, v in snapshot(tmp_path / "pre").items() if k != run_record.LOCK_FILE} == {
        k: v for k, v in before.items() if k != run_record.LOCK_FILE
    }


def test_overwrite_deletes_only_what_a_previous_run_wrote(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("do not delete")
    with pytest.raises(ValueError, match="something else.*Nothing in it was changed"):
        run_pretraining.main(TINY_TRAIN + ["--output_dir", str(folder)])
    run_pretraining.main(TINY_TRAIN + ["--output_dir", str(folder), "--overwrite_output_dir", "true"])
    assert (folder / "model.safetensors").is_file() and (folder / "thesis.tex").read_text() == "do not delete"
    (folder / "notes.txt").write_text("added later, by hand")  # not written by the run: still not the run's to delete
    run_pretraining.main(TINY_TRAIN + ["--output_dir", str(folder), "--overwrite_output_dir", "true", "--seed", "3"])
    assert (folder / "thesis.tex").read_text() == "do not delete" and (folder / "model.safetensors").is_file()
    assert (folder / "notes.txt").read_text() == "added later, by hand"
    record = json.loads((folder / run_record.RUN_FILE).read_text())
    assert record["status"] == "complete" and record["preexisting"] == ["notes.txt", "thesis.tex"]
    environment = record["environment"]  # what else produced the numbers: another CPU can train other weights
    assert environment["torch"] == torch.__version__ and environment["threads"] == torch.get_num_threads()
    assert environment["cpu"] and environment["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    clash = tmp_path / "clash"
    clash.mkdir()
    (clash / "README.md").write_text("my readme")
    with pytest.raises(ValueError, match="would replace.*README.md"):
        run_pretraining.main(TINY_TRAIN + ["--output_dir", str(clash), "--overwrite_output_dir", "true"])
    assert (clash / "README.md").read_text() == "my readme"


def test_a_second_run_on_a_folder_in_use_stops_with_a_clear_message(tmp_path):
    folder = tmp_path / "busy"
    folder.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from mimir_hf import run_record; "
         "run_record.lock_output_dir(sys.argv[1]); print('locked', flush=True); time.sleep(60)",
         str(folder)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ValueError, match=f"in use by another run \\(pid {holder.pid}"):
            run_pretraining.main(TINY_TRAIN + ["--output_dir", str(folder)])
    finally:
        holder.kill()
        holder.wait()
    run_pretraining.main(TINY_TRAIN + ["--output_dir", str(folder)])  # the lock went with its process


def test_images_beyond_8_bits_keep_their_content():
    import numpy as np

    from mimir_hf.image_processing_mimir import MimirImageProcessor

    grey, rgb = (
        MimirImageProcessor(num_channels=1, size={"height": 8, "width": 8}),
        MimirImageProcessor(size={"height": 8, "width": 8}),
    )
    sixteen = np.full((8, 8), int(0.3 * 65535), dtype=np.uint16)
    assert grey(images=Image.fromarray(sixteen), return_tensors="pt")["pixel_values"].mean() == pytest.approx(
        0.3, abs=0.01
    )
    floats = np.full((8, 8), 0.3, dtype=np.float32)
    assert grey(images=Image.fromarray(floats), return_tensors="pt")["pixel_values"].mean() == pytest.approx(
        0.3, abs=0.01
    )
    drawn_in_alpha = np.zeros((8, 8, 4), dtype=np.uint8)
    drawn_in_alpha[2:6, 2:6, 3] = 255  # black strokes on a transparent background
    pixels = rgb(images=Image.fromarray(drawn_in_alpha, "RGBA"), return_tensors="pt")["pixel_values"]
    assert pixels.min() == 0 and pixels.max() == 1  # the strokes are visible on white
    strange = Image.fromarray(np.full((8, 8), -5.0, dtype=np.float32))
    strange.filename = "scan_0042.tif"
    with pytest.raises(ValueError, match="scan_0042.tif.*-5"):
        grey(images=strange, return_tensors="pt")


def test_unreadable_images_are_skipped_before_training_and_named(tmp_path, monkeypatch, caplog):
    data = image_folder(tmp_path / "train", per_class=8)
    (data / "cat" / "empty.png").write_bytes(b"")
    (data / "cat" / "notes.png").write_text("not an image")
    good = (data / "dog" / "dog_0.png").read_bytes()
    (data / "dog" / "truncated.png").write_bytes(good[: len(good) // 2])
    Image.new("RGB", (40, 40)).save(data / "dog" / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 40x40 = 1600 pixels: a "decompression bomb" here
    with caplog.at_level("WARNING", logger="mimir_hf.data"):
        run_pretraining.main(TINY_TRAIN + ["--train_dir", str(data), "--output_dir", str(tmp_path / "out")])
    text = caplog.text
    for name in ("empty.png", "notes.png", "truncated.png", "huge.png"):
        assert name in text, name
    import re

    assert sum(int(n) for n in re.findall(r"Skipped (\d+) unreadable image", text)) == 4  # over the train/test split
    assert json.loads((tmp_path / "out" / run_record.RUN_FILE).read_text())["status"] == "complete"


def test_evaluation_labels_outside_the_training_classes_are_refused_before_training(tmp_path):
    train = image_folder(tmp_path / "train", ("cat", "dog"))
    validation = image_folder(tmp_path / "val", ("cat", "dog", "owl"))
    with pytest.raises(ValueError, match="'owl'.*not in training"):
        run_finetuning.main(TINY_TRAIN + ["--train_dir", str(train), "--validation_dir", str(validation),
                                          "--output_dir", str(tmp_path / "out")])  # fmt: skip
    assert not (tmp_path / "out" / "model.safetensors").exists()
    from datasets import ClassLabel, Dataset

    from mimir_hf.data import check_labels_fit

    unlabelled = Dataset.from_dict({"label": [0, 1, -1]})
    with pytest.raises(ValueError, match=r"labels \[-1\] outside the 2 classes"):
        check_labels_fit({"test": unlabelled}, "label", ["a", "b"])
    named = Dataset.from_dict({"label": [0, 1]}).cast_column("label", ClassLabel(names=["a", "b"]))
    check_labels_fit({"train": named}, "label", ["a", "b"])


def test_pretraining_takes_a_flat_folder_and_evaluates_with_do_eval(tmp_path):
    data = image_folder(tmp_path / "flat", ("img",), per_class=20, flat=True)
    metrics = run_pretraining.main(TINY_TRAIN + ["--train_dir", str(data), "--do_eval", "true",
                                                 "--output_dir", str(tmp_path / "out")])  # fmt: skip
    assert metrics["eval_loss"] > 0


def test_mask_ratio_that_leaves_nothing_to_see_or_to_reconstruct_is_refused(tmp_path):
    for ratio in ("0", "0.999"):
        with pytest.raises(Exception, match="mask_ratio"):
            run_pretraining.main(TINY_TRAIN + ["--mask_ratio", ratio, "--output_dir", str(tmp_path / ratio)])


@pytest.fixture(scope="module")
def pretrained_and_finetuned(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    run_pretraining.main(TINY_TRAIN + ["--output_dir", str(root / "pre")])
    run_finetuning.main(TINY_TRAIN + ["--model_name_or_path", str(root / "pre"), "--adversarial_steps", "1",
                                      "--output_dir", str(root / "ft")])  # fmt: skip
    return root / "pre", root / "ft"


def test_evaluating_an_untrained_head_or_other_classes_is_refused(tmp_path, pretrained_and_finetuned):
    pre, ft = pretrained_and_finetuned
    with pytest.raises(ValueError, match="no trained classification head.*--allow_new_head"):
        run_evaluation.main(["--model_name_or_path", str(pre), "--output_dir", str(tmp_path / "r1")] + TINY_REPORT)
    report = run_evaluation.main(["--model_name_or_path", str(pre), "--output_dir", str(tmp_path / "r2"),
                                  "--allow_new_head", "true", "--max_eval_samples", "8"] + TINY_REPORT)  # fmt: skip
    assert report.num_samples == 8
    written = json.load(open(tmp_path / "r2" / "robustness.json"))["info"]
    assert written["untrained_head"] and "untrained head" in (tmp_path / "r2" / "robustness.md").read_text()
    folder = image_folder(tmp_path / "animals", ("cat", "dog"), per_class=4)
    args = ["--model_name_or_path", str(ft), "--validation_dir", str(folder)] + TINY_REPORT
    with pytest.raises(ValueError, match="'cat', 'dog'.*not classes of the model.*--label_mapping"):
        run_evaluation.main(args + ["--output_dir", str(tmp_path / "r3")])
    mapped = run_evaluation.main(args + ["--output_dir", str(tmp_path / "r4"), "--label_mapping",
                                         '{"cat": "3", "dog": "8"}'])  # fmt: skip
    assert mapped.num_samples == 8  # --validation_dir alone is enough to evaluate
    markdown = (tmp_path / "r4" / "robustness.md").read_text()
    assert "the data's classes were mapped onto the model's (data -> model: 0 -> 3, 1 -> 8)" in markdown
    assert json.load(open(tmp_path / "r4" / "robustness.json"))["info"]["label_mapping"] == {"0": 3, "1": 8}


def test_evaluation_uses_the_saved_image_processor_and_spares_a_read_only_model_folder(
    tmp_path, monkeypatch, pretrained_and_finetuned
):
    _, ft = pretrained_and_finetuned
    card = (ft / "README.md").read_text()

    def no_guessing(*args, **kwargs):
        raise AssertionError("the saved preprocessor_config.json must be used")

    monkeypatch.setattr("mimir_hf.data.image_processor_for", no_guessing)  # used when no processor was saved
    real_access = os.access
    monkeypatch.setattr(run_evaluation.os, "access", lambda path, mode: False if str(path) == str(ft) else
                        real_access(path, mode))  # fmt: skip
    report = run_evaluation.main(["--model_name_or_path", str(ft), "--output_dir", str(tmp_path / "report"),
                                  "--max_eval_samples", "8"] + TINY_REPORT)  # fmt: skip
    assert (tmp_path / "report" / "robustness.md").is_file() and report.num_samples == 8
    assert (ft / "README.md").read_text() == card  # the read-only model folder was left alone


def test_fine_tuning_on_other_classes_offers_ignore_mismatched_sizes(tmp_path, pretrained_and_finetuned):
    _, ft = pretrained_and_finetuned
    folder = image_folder(tmp_path / "three", ("a", "b", "c"), per_class=6, size=8)
    args = TINY_TRAIN + ["--model_name_or_path", str(ft), "--train_dir", str(folder), "--adversarial_steps", "1"]
    with pytest.raises(ValueError, match="other shapes.*--ignore_mismatched_sizes"):
        run_finetuning.main(args + ["--output_dir", str(tmp_path / "o1")])
    metrics = run_finetuning.main(args + ["--output_dir", str(tmp_path / "o2"), "--ignore_mismatched_sizes", "true"])
    assert "natural_accuracy" in metrics


def test_run_mimir_starts_pre_training_from_the_given_model(tmp_path, pretrained_and_finetuned):
    pre, _ = pretrained_and_finetuned
    run_mimir.main(["--output_dir", str(tmp_path / "m"), "--model_name_or_path", str(pre), "--pretrain_epochs", "1",
                    "--finetune_epochs", "1", "--adversarial_steps", "1", "--use_cpu", "true", "--disable_tqdm",
                    "true", "--max_train_samples", "32", "--max_eval_samples", "8", "--batch_size", "8"]
                   + TINY_REPORT[:-2])  # fmt: skip
    card = (tmp_path / "m" / "pretrain" / "README.md").read_text()
    assert f"| initialisation | {pre} |" in card


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--max_train_samples", "0"], "max_train_samples must be >= 1"),
        (["--image_size", "0"], "image_size 0"),
        (["--per_device_train_batch_size", "0"], "per_device_train_batch_size must be >= 1"),
        (["--image_column_name", "label", "--label_column_name", "label"], "two different columns"),
    ],
)
def test_small_mistakes_are_one_clear_error(tmp_path, argv, message):
    with pytest.raises(Exception, match=message):
        run_finetuning.main(TINY_TRAIN + argv + ["--output_dir", str(tmp_path / "out")])


def test_a_classifier_needs_two_classes_and_autoattack_0_means_none():
    from mimir_hf.evaluation import RobustnessSettings, attack_registry

    with pytest.raises(ValueError, match="num_labels >= 2"):
        MimirForImageClassification(tiny_config(num_labels=1))
    model = MimirForImageClassification(tiny_config())
    assert "autoattack" not in [a.name for a in attack_registry(model, RobustnessSettings(autoattack_max_samples=0))]
    with pytest.raises(ValueError, match="-1 \\(all images\\), 0 \\(none\\)"):
        RobustnessSettings(autoattack_max_samples=-2)


def test_image_folders_behave_like_imagefolder(tmp_path, caplog, monkeypatch):
    """Non-image files in the class folders are skipped with a count (the labels stay), a 0-byte image is skipped by
    name, a flat or one-class folder says what layout is expected, and a split that orders its classes otherwise is
    mapped by name."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features
    from datasets import Image as ImageFeature

    folder = image_folder(tmp_path / "animals", ("cat", "dog"), per_class=4)
    for extra in ("cat/notes.txt", "dog/.DS_Store", "labels.csv"):
        (folder / extra).write_text("not an image")
    (folder / "dog" / "empty.png").write_bytes(b"")
    caplog.set_level(logging.INFO)
    data = common.read_data(common.DataArguments(train_dir=str(folder), validation_dir=str(folder)))
    assert data.names == ["cat", "dog"] and len(data.train) == 8
    assert "skipped 3 file(s) that are not images (labels.csv, cat/notes.txt, dog/.DS_Store)" in caplog.text
    assert "empty.png: empty (0 bytes)" in caplog.text

    flat = image_folder(tmp_path / "flat", ("cat",), per_class=3, flat=True)
    with pytest.raises(ValueError, match=r"holds 3 image\(s\) directly, not in class folders; expected one sub-folder"):
        common.read_data(common.DataArguments(train_dir=str(flat)))
    one = image_folder(tmp_path / "one", ("cat",), per_class=3)
    with pytest.raises(
        ValueError, match="has only the class folder 'cat'; expected one sub-folder per class, at least"
    ):
        common.read_data(common.DataArguments(train_dir=str(one)))
    assert common.read_data(common.DataArguments(train_dir=str(flat)), need_labels=False).names is None  # pre-training
    (flat / "metadata.csv").write_text("file_name,label\n" + "".join(f"cat_{i}.png,{i % 2}\n" for i in range(3)))
    labelled = common.read_data(common.DataArguments(train_dir=str(flat), validation_dir=str(flat)))
    assert labelled.names == ["0", "1"] and sorted(labelled.train["label"]) == [0, 0, 1]  # imagefolder's metadata

    pictures = [Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)) for i in range(4)]

    def split(names, labels):
        features = Features({"image": ImageFeature(), "label": ClassLabel(names=names)})
        return Dataset.from_dict({"image": pictures, "label": labels}, features=features)

    reordered = DatasetDict(train=split(["a", "b"], [0, 1, 0, 1]), test=split(["b", "a"], [1, 0, 1, 0]))
    monkeypatch.setattr(common, "load_image_dataset", lambda *args, **kwargs: reordered)
    data = common.read_data(common.DataArguments(dataset_name="fake/reordered"))
    assert data.test["label"] == [0, 1, 0, 1] and "mapped onto the training classes by name" in caplog.text


def test_label_errors_say_what_is_wrong(tmp_path, monkeypatch, caplog):
    """Float labels 0.0/1.0/2.0 are class indices (a fractional one is named); --label_mapping: a missing file, a
    JSON list or null, a key the data lacks, and a target the model lacks are each one sentence naming it."""
    from datasets import DatasetDict, Features, Value
    from datasets import Image as ImageFeature

    pictures = [Image.fromarray(np.full((8, 8, 3), 30 * i, dtype=np.uint8)) for i in range(6)]
    features = Features({"image": ImageFeature(), "label": Value("float64")})

    def with_labels(labels):
        part = Dataset.from_dict({"image": pictures, "label": labels}, features=features)
        return DatasetDict(train=part, test=part)

    caplog.set_level(logging.INFO)
    monkeypatch.setattr(common, "load_image_dataset", lambda *a, **k: with_labels([0.0, 1.0, 2.0, 0.0, 1.0, 2.0]))
    data = common.read_data(common.DataArguments(dataset_name="fake/floats"))
    assert data.names == ["0", "1", "2"] and data.test["label"] == [0, 1, 2, 0, 1, 2]
    assert "labels are floats" in caplog.text
    monkeypatch.setattr(common, "load_image_dataset", lambda *a, **k: with_labels([0.0, 0.5, 1.0, 2.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match=r"labels \[0.5\] are not class indices"):
        common.read_data(common.DataArguments(dataset_name="fake/fractions"))

    config = MimirForImageClassification(tiny_config(num_labels=3)).config
    config.id2label = {0: "cat", 1: "dog", 2: "fox"}
    names = ["kitten", "puppy", "fox"]
    cases = {
        str(tmp_path / "missing.json"): "no such file; expected a JSON object",
        "[1, 2]": "holds a JSON list; expected a JSON object",
        "null": "holds null; expected a JSON object",
        '{"kitten": "cat", "cow": "dog"}': r"names \['cow'\], which are not classes of the data",
        '{"kitten": "tiger", "puppy": "dog"}': "maps 'kitten' onto 'tiger', which is not a class of the model",
    }
    for mapping, message in cases.items():
        with pytest.raises(ValueError, match=message):
            run_evaluation.label_map_for(names, config, mapping)
    assert run_evaluation.label_map_for(names, config, '{"kitten": "cat", "puppy": 1}') == {0: 0, 1: 1, 2: 2}
