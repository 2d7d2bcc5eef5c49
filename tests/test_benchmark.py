"""The benchmark script: its memory counter is exact on known allocations, and a tiny run reports every case."""

import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples"))

import benchmark


def test_live_tensor_bytes_counts_held_created_and_freed_tensors():
    held = torch.zeros(256)  # 1 KiB
    with benchmark.LiveTensorBytes([held, held[:10]]) as counter:  # a view is not counted twice
        assert counter.current == 1024
        big = torch.ones(1024, 1024)  # 4 MiB
        doubled = big * 2  # another 4 MiB
        big.add_(1)  # in place: no new storage
        del big, doubled
        assert counter.current == 1024
        kept = torch.ones(512)
    assert counter.peak == 1024 + 2 * 4 * 2**20
    assert counter.current == 1024 + 2048 and kept.numel() == 512


def test_tiny_benchmark_reports_every_case_with_ratios_and_memory(tmp_path):
    output = tmp_path / "bench.json"
    result = benchmark.main(["--batch_size", "8", "--warmup", "1", "--repeats", "1", "--output", str(output)])
    assert json.loads(output.read_text()) == result
    assert len(result["median_seconds"]) == 4 and all(t > 0 for t in result["median_seconds"].values())
    memory = result["peak_memory_mib"]
    assert memory is not None
    mimir, mae = memory["b) MIMIR pre-training step (k=1)"], memory["a) ViTMAE step (transformers)"]
    assert abs(result["memory_b_over_a"] - mimir / mae) < 0.01
    # an AdamW step holds at least weights, gradients and two moment buffers: 4x the parameter bytes
    classifier = benchmark.MimirForImageClassification(benchmark.MimirConfig(**benchmark.DEFAULT_SHAPE, num_labels=10))
    parameter_mib = sum(p.numel() * p.element_size() for p in classifier.parameters()) / 2**20
    assert memory["c) clean classifier step"] >= 4 * parameter_mib and memory["d) PGD-3 AT step"] >= 4 * parameter_mib
    assert 0 < result["mi_share_of_b"] < 1 and (result["floor_b"], result["floor_d"]) == (2, 4)


def test_the_report_s_peak_memory_stays_flat_with_ten_times_the_images():
    """Streaming evaluation: over 10x more images the report holds no more live tensor memory (weights included)."""
    from mimir_hf.evaluation import RobustnessSettings

    settings = RobustnessSettings(
        pgd_steps=[1], cw_steps=1, adaptive_steps=1, eps_sweep=[1.0], autoattack=False, eval_batch_size=4
    )
    shape = dict(image_size=8, patch_size=2, hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    result = benchmark.evaluation_memory(images=[4, 40], shape=shape, settings=settings)
    small, large = result["peak_bytes"]
    assert result["images"] == [4, 40] and large <= 1.02 * small, result
    model = benchmark.MimirForImageClassification(benchmark.MimirConfig(**shape, num_labels=10))
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    assert small > weights  # the counter sees the weights and the batches' tensors


def test_what_bounds_a_run_and_its_ideal_rate():
    # 0 workers: the step and the data path take turns; with workers: the slower of the step and the workers' sum
    assert benchmark.bound_by(model_rate=100, data_rate=50, workers=0) == "data"
    assert benchmark.bound_by(model_rate=100, data_rate=50, workers=2) == "model step"
    assert benchmark.bound_by(model_rate=100, data_rate=40, workers=2) == "data"
    assert abs(benchmark.ideal_rate(100, 100, 0) - 50) < 1e-9
    assert benchmark.ideal_rate(100, 40, 2) == 80 and benchmark.ideal_rate(100, 40, 3) == 100


def test_end_to_end_runs_a_recipe_s_trainer_from_files_at_each_worker_count(tmp_path, capsys):
    output = tmp_path / "e2e.json"
    argv = ["--end_to_end", "--tiny", "--cases", "cifar10/pretrain_vit_small_edm", "--workers", "0", "1"]
    argv += [
        "--batch_size",
        "4",
        "--warmup",
        "1",
        "--steps",
        "2",
        "--feed_rate",
        "4019",
        "100",
        "--output",
        str(output),
    ]
    result = benchmark.main(argv)
    assert json.loads(output.read_text()) == result
    rows = result["cases"]
    assert [row["workers"] for row in rows] == [0, 1] and all(row["batch_size"] == 4 for row in rows)
    assert "32x32 .png" in rows[0]["data"] and "aux 0.7" in rows[0]["data"]
    for row in rows:
        assert row["end_to_end"] > 0 and row["model_step"] > 0 and row["augmentation_per_worker"] > 0
        assert row["bound"] == benchmark.bound_by(row["model_step"], row["augmentation_per_worker"], row["workers"])
    entry = result["recipes"]["cifar10/pretrain_vit_small_edm"]
    per_worker = entry["augmentation_per_worker"]
    assert entry["workers_needed"] == {"4019": -(-4019 // per_worker), "100": -(-100 // per_worker)}
    capsys.readouterr()
    assert benchmark.main(["--tabulate", str(output)]) == result
    table = capsys.readouterr().out
    assert "| cifar10/pretrain_vit_small_edm |" in table and "workers for 4019 img/s" in table


def test_end_to_end_arguments_keep_the_recipe_and_bring_their_own_files_and_model(tmp_path):
    args = benchmark.parse_args(["--end_to_end", "--tiny", "--batch_size", "2", "--warmup", "1", "--steps", "1"])
    recipe = "imagenet/finetune_swin_base"
    argv = benchmark.case_arguments(recipe, args, 3, str(tmp_path))
    values = benchmark.load_recipe(argv[0])
    shipped = benchmark.load_recipe(benchmark.resolve_recipe(recipe))
    assert values["randaugment_magnitude"] == shipped["randaugment_magnitude"] and values["mixup_alpha"] == 0.8
    assert argv[1:] == ["--dataloader_num_workers", "3"]  # given, so never capped to this machine's CPUs
    assert values["max_steps"] == 2 and "model_name_or_path" not in values
    assert values["adversarial_step_size_ramp_epochs"] == 0  # the full attack from the first step
    first = next((tmp_path / f"images_500x375_{2 * 2}" / "train" / "class_0").iterdir())
    with benchmark.Image.open(first) as f:
        assert f.size == (500, 375) and f.format == "JPEG"
    finetune = benchmark.load_recipe(benchmark.case_arguments("cifar10/finetune_vit_small", args, 0, str(tmp_path))[0])
    assert finetune["model_preset"] == "vit-small-patch2-32" and finetune["hidden_size"] == 32


GPU_PARTS = ("steps_vit_s2_32", "steps_vit_b16_224", "e2e_cifar10", "e2e_imagenet", "compiled_vit_s2_32",
             "compiled_vit_b16_224")  # fmt: skip


def test_the_gpu_script_runs_every_part_tiny_on_the_cpu_and_writes_the_tables(tmp_path):
    """`bash examples/gpu_benchmark.sh OUT --tiny`, as docs/benchmarks.md documents the GPU command: every part ends
    (the script exits non-zero on a failed or skipped one) and leaves its JSON and its markdown tables."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    command = "bash examples/gpu_benchmark.sh"
    assert f"{command} gpu_results" in open(os.path.join(root, "docs", "benchmarks.md")).read()
    environment = {**os.environ, "PYTHON": sys.executable}
    run = subprocess.run([*command.split(), str(tmp_path), "--tiny"], cwd=root, env=environment, capture_output=True,
                         text=True, timeout=900)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    tables = (tmp_path / "tables.md").read_text()
    for name in GPU_PARTS:
        result = json.loads((tmp_path / f"{name}.json").read_text())
        assert f"## {name}" in tables and (tmp_path / f"{name}.md").read_text().strip() in tables
        header = "| recipe | data | batch | workers |" if name.startswith("e2e") else "| case | median step (ms) |"
        assert header in tables.split(f"## {name}")[1]
        assert result["mode"] == ("end_to_end" if name.startswith("e2e") else "steps")
    compiled = json.loads((tmp_path / "compiled_vit_s2_32.json").read_text())
    assert compiled["compile"] == "eager" and len(compiled["median_seconds"]) == 3  # a, b and d
    assert "## Skipped\n\nnothing" in tables
