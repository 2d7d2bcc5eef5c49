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
