"""Two processes with torchrun (gloo, CPU): the Trainers and the example scripts run data-parallel."""

import json
import os
import socket
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


FATAL = ("terminate called", "what():", "Fatal Python error", "Aborted", "Segmentation fault", "Error:")


def why(result) -> str:
    """What a failed torchrun printed: each rank's fatal lines (a C++ abort's reason, faulthandler's stacks), the
    first traceback (the rank that died first), then the tail."""
    text = result.stdout + result.stderr
    fatal = [line for line in text.splitlines() if any(marker in line for marker in FATAL)][:40]
    start = text.find("Traceback")
    head = text[max(start - 200, 0) : start + 3000] if start >= 0 else ""
    return "\n".join(fatal) + f"\n...\n{head}\n...\n{text[-2000:]}"


def torchrun(args, env=None, timeout=300):
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
    ] + args
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=environment, timeout=timeout)


def test_two_ranks_agree_on_the_weights_and_only_rank_0_writes(tmp_path):
    checksums = tmp_path / "checksums"
    checksums.mkdir()
    result = torchrun(
        [os.path.join(ROOT, "tests", "distributed_worker.py"), str(tmp_path / "out")],
        env={"CHECKSUM_DIR": str(checksums)},
    )
    assert result.returncode == 0, why(result)
    ranks = [json.load(open(checksums / f"rank{r}.json")) for r in (0, 1)]
    assert ranks[0]["world_size"] == ranks[1]["world_size"] == 2
    assert ranks[0]["checksum"] == ranks[1]["checksum"] and ranks[0]["norm"] == ranks[1]["norm"]
    assert {"config.json", "model.safetensors"} <= set(os.listdir(tmp_path / "out" / "rank0"))
    rank1 = tmp_path / "out" / "rank1"
    assert not rank1.exists() or not any(path.is_file() for path in rank1.rglob("*"))
    # The MI term is computed on each device's own batch (4 images): normalised HSIC is at most m - 1 = 3.
    assert ranks[0]["mi_losses"] and max(ranks[0]["mi_losses"]) <= 3.0 + 1e-3


@pytest.mark.parametrize("nan_steps, max_nonfinite", [("2", "5"), ("1,2", "2")])
def test_a_nonfinite_loss_on_one_rank_is_skipped_or_stops_on_every_rank(tmp_path, nan_steps, max_nonfinite):
    """Rank 1 alone gets NaN losses: both ranks skip those steps (no hang waiting for gradients), keep equal weights,
    and stop together once the limit is reached."""
    checksums = tmp_path / "checksums"
    checksums.mkdir()
    result = torchrun(
        [os.path.join(ROOT, "tests", "distributed_worker.py"), str(tmp_path / "out")],
        timeout=240,
        env={"CHECKSUM_DIR": str(checksums), "NAN_ON_RANK1_AT_STEPS": nan_steps, "MAX_NONFINITE": max_nonfinite},
    )
    assert result.returncode == 0, why(result)
    ranks = [json.load(open(checksums / f"rank{r}.json")) for r in (0, 1)]
    assert ranks[0]["checksum"] == ranks[1]["checksum"] and ranks[0]["snapshots"] == ranks[1]["snapshots"]
    snapshots = ranks[0]["snapshots"]
    if nan_steps == "2":  # the update computed at global step 2 (ending step 3) is skipped, the others are not
        assert all(rank["steps"] == 4 and rank["nonfinite_stop"] is None for rank in ranks)
        assert snapshots["2"] == snapshots["3"] and snapshots["1"] != snapshots["2"] != snapshots["4"]
    else:  # NaN at global steps 1 and 2 with a limit of 2: both ranks stop after step 3, weights as after step 1
        assert all(rank["steps"] == 3 and "2 non-finite losses in a row" in rank["nonfinite_stop"] for rank in ranks)
        assert snapshots["1"] == snapshots["2"] == snapshots["3"]


@pytest.mark.parametrize("script", ["run_pretraining.py", "run_finetuning.py"])
def test_example_scripts_run_under_torchrun(tmp_path, script):
    out = tmp_path / "out"
    result = torchrun(
        [
            os.path.join(ROOT, "examples", script),
            "--output_dir",
            str(out),
            "--max_train_samples",
            "32",
            "--max_eval_samples",
            "8",
            "--num_train_epochs",
            "1",
            "--per_device_train_batch_size",
            "8",
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
            "--disable_tqdm",
            "true",
            "--report_to",
            "none",
            "--use_cpu",
            "true",
            "--save_strategy",
            "no",
            "--ddp_backend",
            "gloo",
            "--log_level",
            "info",
        ]
        + (["--adversarial_steps", "1"] if script == "run_finetuning.py" else [])
    )
    assert result.returncode == 0, why(result)
    assert json.load(open(out / "mimir_run.json"))["status"] == "complete"
    assert (out / "model.safetensors").is_file() and (out / "README.md").is_file()
    # 8 images per device on 2 processes: Trainer's global batch is 16
    assert "Total train batch size (w. parallel, distributed & accumulation) = 16" in result.stdout + result.stderr


def tiny_cifar_folders(root, train=16, evaluation=8, classes=4):
    """CIFAR-shaped image folders (32x32 RGB, one sub-folder per class) and a small auxiliary .npz."""
    import numpy as np
    from PIL import Image

    rng = np.random.RandomState(0)
    for split, count in (("train", train), ("val", evaluation)):
        for i in range(count):
            folder = root / split / f"class{i % classes}"
            folder.mkdir(parents=True, exist_ok=True)
            shade = 40 + 50 * (i % classes)  # classes differ in brightness, so the model can learn something
            pixels = np.clip(shade + rng.randint(-20, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")
    images = rng.randint(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    np.savez(root / "aux.npz", image=images, label=np.arange(20) % classes)
    return str(root / "train"), str(root / "val"), str(root / "aux.npz")


def test_cifar_shaped_run_with_augmentation_ema_aux_data_and_the_report_under_torchrun(tmp_path):
    """The issue's CI check: augmentation + EMA + auxiliary data in a 2-process fine-tuning run, then the robustness
    report of its EMA weights under 2 processes (each its shard, rank 0 writes, resumable), equal to 1 process's."""
    train_dir, val_dir, aux = tiny_cifar_folders(tmp_path)
    out = tmp_path / "finetune"
    tiny = ["--image_size", "32", "--patch_size", "8", "--hidden_size", "32", "--num_hidden_layers", "1"]
    tiny += ["--num_attention_heads", "2", "--intermediate_size", "64"]
    quiet = ["--disable_tqdm", "true", "--report_to", "none", "--use_cpu", "true"]
    result = torchrun(
        [os.path.join(ROOT, "examples", "run_finetuning.py"), "--train_dir", train_dir, "--validation_dir", val_dir]
        + ["--augmentation", "crop-flip", "--random_erasing", "0.25", "--mixup_alpha", "0.8", "--cutmix_alpha", "1.0"]
        + ["--ema_decay", "0.9", "--aux_data_file", aux, "--aux_fraction", "0.5", "--base_learning_rate", "0.05"]
        + ["--num_train_epochs", "2", "--per_device_train_batch_size", "4", "--adversarial_steps", "2"]
        + ["--save_strategy", "no", "--ddp_backend", "gloo", "--log_level", "info", "--output_dir", str(out)]
        + tiny
        + quiet
    )
    assert result.returncode == 0, why(result)
    record = json.load(open(out / "mimir_run.json"))
    assert record["status"] == "complete"
    settings = record["effective_settings"]
    assert settings["effective batch"].startswith("8 (per device 4 x accumulation 1 x 2 processes)")
    assert settings["learning rate"] == 0.05 * 8 / 256
    assert settings["augmentation"] == "pad-4 random crop + horizontal flip, random erasing 0.25"
    assert "ema_pgd20_accuracy" in record["metrics"] and (out / "ema" / "model.safetensors").is_file()
    # 16 real images, 4 per device and process, 2 processes: 2 batches per epoch (half of each auxiliary), 2 epochs
    assert record["metrics"]["epoch"] == 2 and "Total optimization steps = 4" in result.stdout + result.stderr

    report_args = [os.path.join(ROOT, "examples", "run_evaluation.py"), "--model_name_or_path", str(out / "ema")]
    report_args += ["--validation_dir", val_dir, "--pgd_steps", "2", "4", "--cw_steps", "2", "--adaptive_steps", "2"]
    report_args += ["--eps_sweep", "0", "0.0313725", "1", "--autoattack", "false", "--eval_batch_size", "3"]
    report_args += ["--use_cpu", "true"]
    resume = tmp_path / "progress.jsonl"
    two = torchrun(report_args + ["--output_dir", str(tmp_path / "report2"), "--resume_file", str(resume)])
    assert two.returncode == 0, why(two)
    first = json.load(open(tmp_path / "report2" / "robustness.json"))
    assert first["num_samples"] == 8 and first["info"]["processes"] == 2
    lines = [open(f"{resume}.rank{rank}").read().splitlines() for rank in (0, 1)]
    assert [len(rank) - 1 for rank in lines] == [2, 1]  # 3 batches of 3, 3, 2 images: 2 to rank 0, 1 to rank 1
    assert sorted(os.listdir(tmp_path / "report2")) == [
        "mimir_run.json", "robust_accuracy_vs_eps.png", "robustness.json", "robustness.md",
    ]  # fmt: skip

    again = torchrun(report_args + ["--output_dir", str(tmp_path / "report2"), "--resume_file", str(resume)])
    assert again.returncode == 0, why(again)
    assert json.load(open(tmp_path / "report2" / "robustness.json"))["accuracy"] == first["accuracy"]
    assert [len(open(f"{resume}.rank{rank}").read().splitlines()) for rank in (0, 1)] == [3, 2]  # nothing re-run
    from mimir_hf.commands import evaluate as run_evaluation

    single = run_evaluation.main(report_args[1:] + ["--output_dir", str(tmp_path / "report1")])
    assert single.accuracy == first["accuracy"] and single.robust_accuracy == first["robust_accuracy"]


def test_accelerate_launch_that_starts_one_process_for_several_is_refused_at_once(tmp_path, monkeypatch, capsys):
    """`accelerate launch --num_processes 2` (or `--cpu --num_processes 2`) without GPUs starts one process (its
    simple launcher wants mpirun for several): refused before any work, naming the launches that work. Once for
    real, once with the launcher's environment on this process (and not refused under torchrun's)."""
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    out = tmp_path / "out"
    result = subprocess.run(
        [accelerate, "launch", "--cpu", "--num_processes", "2", "-m", "mimir_hf", "pretrain", "--output_dir", str(out)],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert result.returncode != 0 and not out.exists()
    assert "mimir-hf pretrain: error: accelerate launch asked for several processes but started only this one" in (
        result.stderr
    ), result.stderr[-2000:]
    assert "--multi_gpu --num_processes N" in result.stderr and "torchrun --nproc_per_node N" in result.stderr

    from mimir_hf.commands.cli import main as cli

    monkeypatch.setenv("ACCELERATE_USE_CPU", "False")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert cli(["evaluate", "--model_name_or_path", "x", "--output_dir", str(out)]) == 1
    assert "accelerate launch asked for several processes" in capsys.readouterr().err and not out.exists()
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun's environment: the launch formed its group
    from mimir_hf.commands.common import check_launch

    check_launch()


def test_the_output_lock_never_blames_a_sibling_process_of_the_same_launch(tmp_path, monkeypatch):
    from mimir_hf import run_record

    folder = tmp_path / "busy"
    folder.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from mimir_hf import run_record; "
         "run_record.lock_output_dir(sys.argv[1]); print('locked', flush=True); time.sleep(60)", str(folder)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "TORCHELASTIC_RUN_ID": "launch-7", "RANK": "1"},
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", "launch-7")
        with pytest.raises(ValueError, match="held by another process of this same launch .*rank 1.*did not form one"):
            run_record.lock_output_dir(str(folder))
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", "launch-8")  # another launch: another run
        with pytest.raises(ValueError, match="is in use by another run"):
            run_record.lock_output_dir(str(folder))
    finally:
        holder.kill()
        holder.wait()
