"""The robustness report: numbers, worst case, sanity rows, files; and evaluation leaves the model untouched."""

import json

import pytest
import torch

from mimir_hf import MimirForImageClassification
from mimir_hf.evaluation import (
    RobustnessSettings,
    SweepPoint,
    evaluate_robustness,
    report_markdown,
    sanity_checks,
    write_report,
)

from .conftest import tiny_config

QUICK = RobustnessSettings(
    pgd_steps=[3, 6], cw_steps=3, adaptive_steps=3, eps_sweep=[0.0, 8 / 255, 1.0], autoattack=False, eval_batch_size=4
)


@pytest.fixture
def model():
    model = MimirForImageClassification(tiny_config())
    model.classifier.weight.data.normal_(std=0.5)
    return model


def test_report_numbers_and_worst_case(model, images, labels):
    report = evaluate_robustness(model, (images, labels), QUICK)
    accuracy = report.accuracy
    assert set(accuracy) == {"natural", "fgsm", "pgd3", "pgd6", "cw_inf", "uniform_noise", "pgd_mi", "pgd_feature"}
    assert report.natural_accuracy == accuracy["natural"]
    attacked = [accuracy[name] for name in report.robust_accuracy_attacks]
    assert report.robust_accuracy <= min(attacked)
    assert all(value <= accuracy["natural"] for value in accuracy.values())  # attacks start from correct images
    assert report.eps_sweep[0].accuracy == accuracy["natural"]
    assert report.eps_sweep[-1].accuracy == 0.0  # eps = 1 can turn any image into any other
    assert report.autoattack == "skipped: disabled"
    assert {row.check for row in report.sanity_checks} >= {
        "accuracy reaches 0 at a large eps",
        "more PGD steps never help the model",
        "multi-step PGD at least as strong as FGSM",
        "random noise of the same eps weaker than PGD",
    }


def test_evaluation_is_deterministic_and_leaves_the_model_untouched(model, images, labels):
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    requires = {n: p.requires_grad for n, p in model.named_parameters()}
    rng = torch.get_rng_state()
    first = evaluate_robustness(model, (images, labels), QUICK)
    assert torch.equal(torch.get_rng_state(), rng)  # attacks draw from their own generators
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == requires
    assert all(p.grad is None for p in model.parameters())
    assert evaluate_robustness(model, (images, labels), QUICK).accuracy == first.accuracy


def test_sanity_checks_catch_gradient_masking():
    sweep = [SweepPoint(0.0, 0, 90.0), SweepPoint(1.0, 255, 0.0)]
    honest = {"natural": 90.0, "fgsm": 50.0, "pgd20": 40.0, "pgd100": 39.0, "uniform_noise": 88.0, "autoattack": 38.0}
    assert all(row.passed for row in sanity_checks(honest, sweep))
    masked = {"natural": 90.0, "fgsm": 30.0, "pgd20": 60.0, "pgd100": 70.0, "uniform_noise": 40.0, "autoattack": 65.0}
    rising = [sweep[0], SweepPoint(8 / 255, 8, 10.0), SweepPoint(1.0, 255, 20.0)]
    failed = {row.check for row in sanity_checks(masked, rising) if not row.passed}
    assert failed == {
        "accuracy reaches 0 at a large eps",
        "more PGD steps never help the model",
        "multi-step PGD at least as strong as FGSM",
        "AutoAttack at least as strong as PGD",
        "random noise of the same eps weaker than PGD",
        "accuracy falls monotonically with eps, from the natural accuracy",
    }
    no_autoattack = {k: v for k, v in honest.items() if k != "autoattack"}
    rows = {row.check: row.passed for row in sanity_checks(no_autoattack, sweep)}
    assert rows["AutoAttack at least as strong as PGD"] is None


def test_report_files(tmp_path, model, images, labels):
    report = evaluate_robustness(model, (images, labels), QUICK)
    write_report(report, str(tmp_path))
    assert json.loads((tmp_path / "robustness.json").read_text())["robust_accuracy"] == report.robust_accuracy
    markdown = (tmp_path / "robustness.md").read_text()
    assert markdown == report_markdown(report)
    assert "worst case over all attacks" in markdown and "| PGD-3 |" in markdown and "FGSM" in markdown
    assert (tmp_path / "robust_accuracy_vs_eps.png").read_bytes()[:4] == b"\x89PNG"


def test_an_attack_on_a_prefix_counts_on_its_images_across_batches(model, images, labels):
    """AutoAttack on the first N images only: batches past N carry no AutoAttack result, and the worst case counts it
    on the images it covered (here with a stand-in for AutoAttack: torchattacks is optional)."""
    from mimir_hf.evaluation import Attack, evaluate_batch, worst_case

    strong = Attack("autoattack", "prefix attack", lambda m, x, y, g: torch.zeros_like(x), max_samples=3)
    generator = torch.Generator().manual_seed(0)
    first = evaluate_batch(model, [strong], images[:4], labels[:4], generator, first_index=0)
    second = evaluate_batch(model, [strong], images[4:], labels[4:], generator, first_index=4)
    assert len(first["autoattack"]) == 3 and "autoattack" not in second
    assert torch.equal(worst_case(second, ["autoattack"]), second["natural"])
    expected = first["natural"].clone()
    expected[:3] &= first["autoattack"]
    assert torch.equal(worst_case(first, ["autoattack"]), expected)


def test_sanity_checks_hold_on_a_trained_model(tmp_path):
    """A tiny ViT trained on digits for a few seconds passes every gradient-masking check."""
    from datasets import Dataset

    from mimir_hf.data import image_processor_for, load_digits_dataset, tensors, with_pixel_transform
    from mimir_hf.trainer import MimirAdversarialTrainer, MimirAdversarialTrainingArguments

    digits = load_digits_dataset()
    config = tiny_config(image_size=8, patch_size=2, num_channels=1, num_labels=10)
    processor = image_processor_for(config)
    train_images, train_labels = tensors(with_pixel_transform(digits["train"], "image", "label", processor), limit=768)
    images, labels = tensors(with_pixel_transform(digits["test"], "image", "label", processor), limit=120)
    train = Dataset.from_dict({"pixel_values": train_images.numpy(), "labels": train_labels.numpy()}).with_format(
        "torch"
    )
    torch.manual_seed(0)
    model = MimirForImageClassification(config)
    args = MimirAdversarialTrainingArguments(
        output_dir=str(tmp_path),
        num_train_epochs=8,
        per_device_train_batch_size=32,
        learning_rate=3e-3,
        adversarial_method="none",
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        weight_decay=0.0,
        lr_scheduler_type="linear",
        warmup_steps=0,
        layer_decay=1.0,
    )
    MimirAdversarialTrainer(model=model, args=args, train_dataset=train).train()
    settings = RobustnessSettings(
        pgd_steps=[20, 100],
        cw_steps=20,
        adaptive_steps=10,
        eps_sweep=[0.0, 8 / 255, 1.0],
        autoattack_max_samples=24,
        eval_batch_size=120,
    )
    report = evaluate_robustness(model, (images, labels), settings)
    accuracy = report.accuracy
    assert accuracy["natural"] > 50  # it learned something, so the checks are not vacuous
    failed = [row for row in report.sanity_checks if row.passed is False]
    assert not failed, failed
    assert report.eps_sweep[-1].accuracy == 0.0
    assert accuracy["pgd100"] <= accuracy["pgd20"] + 0.5 and accuracy["pgd20"] <= accuracy["fgsm"] + 0.5
    assert accuracy["cw_inf"] <= accuracy["pgd20"] + 1.0
    assert accuracy["uniform_noise"] >= accuracy["pgd20"]
    checks = {row.check: row.passed for row in report.sanity_checks}
    if "autoattack" in accuracy:  # AutoAttack <= PGD-20 (+ tolerance) on the images it ran on
        assert checks["AutoAttack at least as strong as PGD"] is True


def test_early_stopping_breaks_as_many_images_with_fewer_passes(model, images, labels):
    """Evaluation attacks stop on an image at its first misclassified iterate: each image's path is the same until
    then (samples do not interact in an eval-mode ViT), so nothing that plain PGD breaks survives, and the images
    already broken cost no more passes."""
    from mimir_hf.attacks import pgd_attack
    from mimir_hf.threat_model import AttackBudget

    budget = AttackBudget(32 / 255, 8 / 255, 10)
    images, labels = images.repeat(4, 1, 1, 1), labels.repeat(4)
    passes = []
    model.vit.register_forward_pre_hook(lambda module, args, kwargs: passes.append(len(args[0])), with_kwargs=True)
    results = {}
    for early in (False, True):
        passes.clear()
        adversarial = pgd_attack(model, images, labels, budget, generator=torch.Generator().manual_seed(0),
                                 early_stop=early)  # fmt: skip
        with torch.no_grad():
            results[early] = (model.eval()(adversarial).logits.argmax(1) == labels, sum(passes))
    (plain, plain_passes), (stopped, stopped_passes) = results[False], results[True]
    assert not (stopped & ~plain).any()  # broken by plain PGD -> broken with early stopping
    assert stopped.sum() < len(labels) and stopped_passes < plain_passes


def test_report_records_each_attacks_cost_and_reuses_an_identical_sweep_point(model, images, labels):
    settings = RobustnessSettings(pgd_steps=[3, 6], cw_steps=3, adaptive_steps=3, autoattack=False, eval_batch_size=6,
                                  eps_sweep=[0.0, 8 / 255, 1.0], step_size=2 / 255)  # fmt: skip
    report = evaluate_robustness(model, (images, labels), settings)
    assert report.eps_sweep[1].accuracy == report.accuracy["pgd3"]  # eps 8/255, step eps/4 = 2/255: the PGD-3 row
    pgd6 = report.cost["pgd6"]
    assert (
        0 < pgd6["backward_passes_per_image"] <= 6
        and pgd6["forward_passes_per_image"] >= pgd6["backward_passes_per_image"]
    )
    assert report.cost["pgd_mi"]["backward_passes_per_image"] == 3  # the whole batch, every step
    assert report.cost["fgsm"]["backward_passes_per_image"] <= 1 and report.cost["pgd6"]["seconds_per_image"] > 0


def test_resume_file_skips_finished_batches_and_refuses_another_evaluation(model, images, labels, tmp_path):
    from mimir_hf.evaluation import runner

    path = str(tmp_path / "progress.jsonl")
    first = evaluate_robustness(model, (images, labels), QUICK, resume_file=path)
    assert len(open(path).read().splitlines()) == 1 + 2  # the settings line, then one line per batch of 4 and 2
    with open(path, "a") as f:
        f.write('{"batch": 9, "resul')  # a run killed while writing its last line
    calls = []
    original = runner.evaluate_batch
    runner.evaluate_batch = lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs)
    try:
        again = evaluate_robustness(model, (images, labels), QUICK, resume_file=path)
    finally:
        runner.evaluate_batch = original
    assert calls == [] and again.accuracy == first.accuracy and again.robust_accuracy == first.robust_accuracy
    assert again.info["resumed"] == {"batches": 2, "file": path} and "resumed" not in first.info
    assert f"2 batches were read back from the resume file {path}" in report_markdown(again)
    assert len(open(path).read().splitlines()) == 3  # the partial line is gone
    other = RobustnessSettings(**{**QUICK.__dict__, "epsilon": 4 / 255})
    with pytest.raises(ValueError, match="holds results of another evaluation \\(its settings differ"):
        evaluate_robustness(model, (images, labels), other, resume_file=path)


def test_a_resume_file_of_another_share_of_the_batches_is_refused(model, images, labels, tmp_path, monkeypatch):
    """Written by process 1 of 2 (the second of 2 batches): refused by one process evaluating both, naming both
    shares; a file without a recorded share (an earlier version's split) is refused by a process of a group."""
    from mimir_hf.evaluation import processes, runner

    path = tmp_path / "progress.jsonl"
    second = processes.Share(1, 2, 2, process=1, processes=2, grouped=True)
    monkeypatch.setattr(runner, "batch_share", lambda count, split=True: second)
    evaluate_robustness(model, (images, labels), QUICK, resume_file=str(path))
    monkeypatch.undo()
    lines = open(f"{path}.rank1").read().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["share"] == "batches 1-1 of 2 (process 1 of 2)"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"written for batches 1-1 of 2 \(process 1 of 2\), while this process "
                       r"evaluates batches 0-1 of 2 \(one process\)"):  # fmt: skip
        evaluate_robustness(model, (images, labels), QUICK, resume_file=str(path))

    first = processes.Share(0, 1, 2, process=0, processes=2, grouped=True)
    header = {"identity": json.loads(lines[0])["identity"]}  # no share: written before shares were recorded
    (tmp_path / "progress.jsonl.rank0").write_text(json.dumps(header) + "\n")
    monkeypatch.setattr(runner, "batch_share", lambda count, split=True: first)
    with pytest.raises(ValueError, match="written for another share of the batches, while this process evaluates "
                       r"batches 0-0 of 2 \(process 0 of 2\)"):  # fmt: skip
        evaluate_robustness(model, (images, labels), QUICK, resume_file=str(path))


def test_a_data_loader_not_split_among_several_processes_is_refused(model, images, labels, monkeypatch):
    """Under 2 processes a plain DataLoader would be evaluated whole by each and every image counted twice: refused,
    naming the fix. A loader over a DistributedSampler or prepared by Accelerate gives each process its part."""
    from accelerate.data_loader import prepare_data_loader, skip_first_batches
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler
    from transformers import default_data_collator

    from mimir_hf.evaluation import processes, runner

    def two_processes(count, split=True):
        return processes.Share(0, count, count, process=0, processes=2, grouped=True)

    monkeypatch.setattr(runner, "batch_share", two_processes)
    dataset = [{"pixel_values": image, "labels": label} for image, label in zip(images, labels, strict=True)]
    whole = DataLoader(dataset, batch_size=4, collate_fn=default_data_collator)
    with pytest.raises(ValueError, match="not split among the 2 processes .* count each image 2 times. Pass the "
                       r"dataset itself .* or the loader from accelerator.prepare\(loader\)"):  # fmt: skip
        evaluate_robustness(model, whole, QUICK)
    half = len(dataset) // 2
    distributed = DistributedSampler(dataset, num_replicas=2, rank=0, shuffle=False)
    loader = DataLoader(dataset, batch_size=4, sampler=distributed, collate_fn=default_data_collator)
    assert evaluate_robustness(model, loader, QUICK).num_samples == half
    prepared = prepare_data_loader(whole, num_processes=2, process_index=0, put_on_device=False)
    part = sum(len(batch["labels"]) for batch in prepared)
    assert part < len(dataset) and evaluate_robustness(model, prepared, QUICK).num_samples == part
    # resumed past its first batch (accelerate wraps the sharded batch sampler in a SkipBatchSampler): still split
    twice = dataset + dataset
    sampler = DistributedSampler(twice, num_replicas=2, rank=0, shuffle=False)
    resumed = skip_first_batches(DataLoader(twice, batch_size=2, sampler=sampler, collate_fn=default_data_collator), 1)
    assert evaluate_robustness(model, resumed, QUICK).num_samples == len(dataset) - 2
    # a dataset the caller sharded by rank: undetectable, so vouched for
    shard = DataLoader(dataset[:half], batch_size=4, collate_fn=default_data_collator)
    with pytest.raises(ValueError, match="pass split_loader=True"):
        evaluate_robustness(model, shard, QUICK)
    assert evaluate_robustness(model, shard, QUICK, split_loader=True).num_samples == half


def test_tally_merges_processes_and_counts_each_attack_and_the_worst_case():
    """Two processes' tallies merge into the tally of one process that saw both batches: each row's accuracy over
    the images it covered (AutoAttack: a prefix), the per-image worst case, AutoAttack's PGD reference."""
    from mimir_hf.evaluation import Tally

    def bits(*values):
        return torch.tensor(values, dtype=torch.bool)

    names, worst = ["natural", "pgd3", "autoattack", "uniform_noise"], ["pgd3", "autoattack"]
    batch0 = {"natural": bits(1, 1, 1, 0), "pgd3": bits(1, 0, 1, 0), "autoattack": bits(0, 0, 1, 0),
              "uniform_noise": bits(1, 1, 1, 0)}  # fmt: skip
    batch1 = {"natural": bits(1, 1, 0), "pgd3": bits(1, 1, 0), "uniform_noise": bits(0, 1, 0)}  # AutoAttack: 4 images
    rank0, rank1, one = Tally.for_rows(names), Tally.for_rows(names), Tally.for_rows(names)
    rank0.add(batch0, worst, "pgd3")
    rank1.add(batch1, worst, "pgd3")
    for batch in (batch0, batch1):
        one.add(batch, worst, "pgd3")
    merged = rank0.merge(rank1)
    assert merged == one and Tally.for_rows(names).merge(merged) == merged  # a process without batches adds nothing
    assert merged.images == 7 and merged.total == {"natural": 7, "pgd3": 7, "autoattack": 4, "uniform_noise": 7}
    assert merged.rows() == names and Tally.for_rows(names).rows() == []
    assert [merged.accuracy(name) for name in names] == [71.43, 57.14, 25.0, 57.14]
    assert merged.robust == 3 and merged.robust_accuracy() == 42.86  # noise is not part of the worst case
    assert merged.autoattack_reference == 2  # PGD-3's correct images among AutoAttack's 4


def test_a_resume_file_is_refused_for_another_model_or_other_images(model, images, labels, tmp_path):
    """Written for model A: refused for model B of the same class, data and settings (whose own numbers differ),
    and for other images, naming what differs; nothing is taken from it."""
    path = str(tmp_path / "progress.jsonl")
    evaluate_robustness(model, (images, labels), QUICK, resume_file=path)
    other_model = MimirForImageClassification(tiny_config())
    other_model.classifier.weight.data.normal_(std=0.5, generator=torch.Generator().manual_seed(7))
    with pytest.raises(ValueError, match="its model weights differ from this one's.*Delete or move that file"):
        evaluate_robustness(other_model, (images, labels), QUICK, resume_file=path)
    with pytest.raises(ValueError, match="its data differ"):
        evaluate_robustness(model, (images.flip(0), labels.flip(0)), QUICK, resume_file=path)
    evaluate_robustness(other_model, (images, labels), QUICK, resume_file=str(tmp_path / "fresh.jsonl"))
    resize = {"image processor": {"size": 16, "resample": "bicubic"}}
    evaluate_robustness(model, (images, labels), QUICK, resume_file=str(tmp_path / "p.jsonl"), resume_identity=resize)
    with pytest.raises(ValueError, match="its image processor differ"):
        evaluate_robustness(model, (images, labels), QUICK, resume_file=str(tmp_path / "p.jsonl"),
                            resume_identity={"image processor": {"size": 16, "resample": "bilinear"}})  # fmt: skip
