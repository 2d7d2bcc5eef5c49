"""AutoAttack in the report: the reference implementation by default, equal to calling it directly; torchattacks'
as the alternative, equal to its own AutoAttack; 2- and 3-class models planned as the reference allows; every
precondition checked before the first attack."""

import logging

import pytest
import torch
from torch import nn
from transformers import PretrainedConfig

from mimir_hf import MimirForImageClassification
from mimir_hf.autoattack import AutoAttackRunner, plan_autoattack
from mimir_hf.evaluation import RobustnessSettings, evaluate_robustness

from .conftest import tiny_config

NO_OTHER_ATTACKS = dict(pgd_steps=[2], cw_steps=2, adaptive_steps=2, eps_sweep=[0.0, 1.0])


class Logits(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, images):
        return self.inner(pixel_values=images).logits


def classifier(num_labels, seed=0):
    torch.manual_seed(seed)
    model = MimirForImageClassification(tiny_config(num_labels=num_labels)).eval()
    model.classifier.weight.data.normal_(std=0.5)  # confident enough that some images survive a few attacks
    return model


def test_the_reports_autoattack_is_the_reference_called_directly(images, labels):
    """Per-image results of the report's AutoAttack row equal pyautoattack's own `run_standard_evaluation` on the
    same model, images and seed."""
    from pyautoattack import AutoAttack

    model = classifier(4)
    settings = RobustnessSettings(autoattack_iterations=5, eval_batch_size=6, **NO_OTHER_ATTACKS)
    report = evaluate_robustness(model, (images, labels), settings)
    assert report.autoattack.startswith("reference implementation (pyautoattack 0.2.0")
    assert "APGD-CE 5 iterations, APGD-T 5 iterations x 3 target classes" in report.autoattack

    with torch.random.fork_rng():
        direct = AutoAttack(Logits(model).eval(), norm="Linf", eps=8 / 255, seed=0, device="cpu")
        for component in (direct.apgd, direct.apgd_targeted, direct.fab):
            component.n_iter = 5
        direct.apgd_targeted.n_target_classes = direct.fab.n_target_classes = 3
        adversarial, _ = direct.run_standard_evaluation(images, labels, batch_size=6)
    with torch.no_grad():
        robust = (Logits(model)(adversarial).argmax(1) == labels).float().mean().item()
    assert report.accuracy["autoattack"] == round(100 * robust, 2)


def test_the_torchattacks_alternative_is_its_own_autoattack(images, labels):
    torchattacks = pytest.importorskip("torchattacks")
    model = classifier(4)
    plan = plan_autoattack(4, 8 / 255, seed=0, implementation="torchattacks", iterations=10)
    x, y = images[:4], labels[:4]
    with torch.random.fork_rng():
        expected = torchattacks.AutoAttack(
            Logits(model).eval(), norm="Linf", eps=8 / 255, version="standard", n_classes=4, seed=0
        )(x, y)
    torch.testing.assert_close(AutoAttackRunner(plan)(model, x, y), expected, rtol=0, atol=0)
    assert plan.describe().startswith("torchattacks") and "APGD-CE 10 iterations" in plan.describe()


@pytest.mark.parametrize("num_labels", [2, 3])
def test_two_and_three_classes_get_a_full_report_without_apgd_t(images, labels, num_labels):
    """APGD-T's targeted DLR loss reads the 4th largest logit: it is left out, FAB-T takes C - 1 targets, and the
    report says so, instead of an IndexError minutes in."""
    model = classifier(num_labels)
    settings = RobustnessSettings(eval_batch_size=3, **NO_OTHER_ATTACKS)  # the reference's 100 iterations
    report = evaluate_robustness(model, (images, labels % num_labels), settings)
    assert "autoattack" in report.accuracy and report.robust_accuracy <= report.accuracy["autoattack"]
    assert "APGD-T left out: its targeted DLR loss needs at least 4 classes" in report.autoattack
    assert f"FAB-T 100 iterations x {num_labels - 1} target class" in report.autoattack
    assert "APGD-T 100" not in report.autoattack


def test_preconditions_are_checked_before_the_first_attack(images, labels, monkeypatch):
    from mimir_hf.evaluation import runner

    attacked = []
    monkeypatch.setattr(runner, "evaluate_batch", lambda *args, **kwargs: attacked.append(1))
    narrow = classifier(4)
    narrow.config.num_labels = 5  # a config that disagrees with its head
    with pytest.raises(ValueError, match="gives 4 logits per image but its config says num_labels=5"):
        evaluate_robustness(narrow, (images, labels), RobustnessSettings(**NO_OTHER_ATTACKS))
    with pytest.raises(ValueError, match="at least 2 classes"):
        plan_autoattack(1, 8 / 255, seed=0)
    real_version = plan_autoattack.__globals__["importlib"].metadata.version

    def missing(name):
        if name == "torchattacks":
            raise plan_autoattack.__globals__["importlib"].metadata.PackageNotFoundError(name)
        return real_version(name)

    monkeypatch.setattr("importlib.metadata.version", missing)
    settings = RobustnessSettings(autoattack_implementation="torchattacks", **NO_OTHER_ATTACKS)
    with pytest.raises(ValueError, match="needs the torchattacks package, which is not installed"):
        evaluate_robustness(classifier(4), (images, labels), settings)
    assert attacked == []  # nothing ran
    with pytest.raises(ValueError, match="autoattack_implementation must be one of"):
        RobustnessSettings(autoattack_implementation="robustbench")
    with pytest.raises(ValueError, match="autoattack_iterations"):
        RobustnessSettings(autoattack_iterations=0)


class Probabilities(nn.Module):
    """A 'classifier' that outputs softmax probabilities: the reference warns that AutoAttack wants logits."""

    def __init__(self):
        super().__init__()
        self.config = PretrainedConfig(num_labels=4)
        self.linear = nn.Linear(3 * 16 * 16, 4)

    def forward(self, pixel_values):
        return self.linear(pixel_values.flatten(1)).softmax(-1)


def test_the_references_warnings_come_once_and_its_progress_lines_reach_the_bar(images, labels, caplog):
    from mimir_hf.progress import _status

    caplog.set_level(logging.WARNING)
    statuses = []
    plan = plan_autoattack(4, 8 / 255, seed=0, iterations=3)
    runner = AutoAttackRunner(plan)
    model = Probabilities()
    rng = torch.get_rng_state()
    token = _status.set(statuses.append)
    try:
        for _ in range(2):  # two batches
            runner(model, images, labels % 4)
    finally:
        _status.reset(token)
    assert torch.equal(torch.get_rng_state(), rng)  # the reference reseeds torch: the global RNG is restored
    warned = [r.getMessage() for r in caplog.records if "probability distribution" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("AutoAttack (reference):")
    assert any(s.startswith("running apgd-ce") for s in statuses)  # what the bar's postfix shows
