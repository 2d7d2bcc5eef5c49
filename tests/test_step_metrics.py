"""The trainers' step metrics alone, without a Trainer; and the parts moved out of mimir_hf/trainer.py still reachable
from it."""

import torch

import mimir_hf.trainer as trainer_module
from mimir_hf.optimizer_groups import parameter_groups
from mimir_hf.step_metrics import StepMetrics


def test_means_are_kept_per_mode_and_cleared_when_popped():
    metrics = StepMetrics()
    metrics.store(True, adversarial_accuracy=torch.tensor(50.0), natural_accuracy=None)  # None: not computed
    metrics.store(True, adversarial_accuracy=torch.tensor(100.0), natural_accuracy=torch.tensor(1.0 / 3))
    metrics.store(False, adversarial_accuracy=torch.tensor(10.0))
    assert metrics.pop_means("train") == {"adversarial_accuracy": 75.0, "natural_accuracy": 0.333333}
    assert metrics.pop_means("train") == {}
    assert metrics.pop_means("eval") == {"adversarial_accuracy": 10.0}
    assert metrics.pop_means("eval") == {}


def test_a_stored_value_is_kept_detached_in_float32():
    """A kept value must not hold its batch's autograd graph until the next log."""
    metrics = StepMetrics()
    weight = torch.tensor(2.0, dtype=torch.float16, requires_grad=True)
    metrics.store(True, loss_part=weight * 2)
    (kept,) = metrics._values["train"]["loss_part"]
    assert not kept.requires_grad and kept.grad_fn is None and kept.dtype == torch.float32
    assert metrics.pop_means("train") == {"loss_part": 4.0}


class FakeAccelerator:
    def __init__(self, num_processes):
        self.num_processes, self.device, self.reduced = num_processes, torch.device("cpu"), []

    def reduce(self, tensor, reduction):
        self.reduced.append((tensor.item(), reduction))
        return (tensor + 2.0) / 2  # the mean with another process whose mean is 2.0


def test_over_several_processes_each_mean_is_the_mean_of_the_processes_means():
    metrics, accelerator = StepMetrics(), FakeAccelerator(num_processes=2)
    metrics.store(False, mi_loss=torch.tensor(4.0))
    metrics.store(False, mi_loss=torch.tensor(6.0))
    assert metrics.pop_means("eval", accelerator) == {"mi_loss": 3.5}
    assert accelerator.reduced == [(5.0, "mean")]


def test_in_one_process_nothing_is_reduced():
    metrics, accelerator = StepMetrics(), FakeAccelerator(num_processes=1)
    metrics.store(True, mi_loss=torch.tensor(4.0))
    assert metrics.pop_means("train", accelerator) == {"mi_loss": 4.0} and accelerator.reduced == []


def test_parameter_groups_is_still_importable_from_the_trainer_module():
    assert trainer_module.parameter_groups is parameter_groups and "parameter_groups" in trainer_module.__all__
