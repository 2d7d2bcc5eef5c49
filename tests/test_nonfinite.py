"""The non-finite-loss guard alone, without a Trainer (tests/test_trainer.py and tests/test_distributed.py train with
it)."""

import pytest
import torch
from torch import nn
from transformers import TrainerControl
from transformers.testing_utils import CaptureLogger

from mimir_hf.nonfinite import NonfiniteGuard
from mimir_hf.nonfinite import logger as nonfinite_logger


def small_model() -> nn.Module:
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    model[0].bias.requires_grad_(False)  # a frozen parameter: no gradient, tied or not
    return model


def nan_loss(model: nn.Module) -> torch.Tensor:
    return model(torch.ones(1, 3)).sum() * float("nan")


def finite_loss(model: nn.Module) -> torch.Tensor:
    return model(torch.ones(1, 3)).sum()


def test_a_finite_loss_passes_through_unchanged():
    model, guard = small_model(), NonfiniteGuard()
    loss = finite_loss(model)
    assert guard.check(loss, model, step=0, limit=3) is loss
    assert guard.in_a_row == 0 and guard.window_has_finite_loss and guard.stop_reason is None


def test_a_nan_loss_becomes_a_zero_tied_to_every_trainable_parameter():
    model, guard = small_model(), NonfiniteGuard()
    with CaptureLogger(nonfinite_logger) as captured:
        loss = guard.check(nan_loss(model), model, step=4, limit=3)
    assert loss.item() == 0.0 and guard.in_a_row == 1 and guard.stop_reason is None
    assert "Non-finite loss at step 4" in captured.out and "1 in a row; training stops at 3" in captured.out
    loss.backward()
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:  # each gets a gradient (DDP's reducer waits for every one), all zeros
            assert parameter.grad is not None and torch.equal(parameter.grad, torch.zeros_like(parameter)), name
        else:
            assert parameter.grad is None, name


def test_the_count_restarts_after_a_finite_loss():
    model, guard = small_model(), NonfiniteGuard()
    control = TrainerControl()
    guard.check(nan_loss(model), model, step=0, control=control, limit=2)
    guard.check(finite_loss(model), model, step=1, control=control, limit=2)
    assert guard.in_a_row == 0
    guard.check(nan_loss(model), model, step=2, control=control, limit=2)
    assert guard.in_a_row == 1 and guard.stop_reason is None and not control.should_training_stop


def test_the_limit_in_a_row_sets_the_stop_reason_and_stops_training():
    model, guard = small_model(), NonfiniteGuard()
    control = TrainerControl()
    guard.check(nan_loss(model), model, step=6, control=control, limit=2)
    assert guard.stop_reason is None and not control.should_training_stop
    guard.check(nan_loss(model), model, step=7, control=control, limit=2)
    assert guard.stop_reason.startswith("Training stopped at step 7 after 2 non-finite losses in a row")
    assert control.should_training_stop


def test_under_an_fp16_scaler_the_nonfinite_loss_goes_through_and_the_gradients_stay():
    model, guard = small_model(), NonfiniteGuard()
    scaler = object()  # only its presence matters: the scaler skips the step on non-finite gradients
    loss = nan_loss(model)
    assert guard.check(loss, model, step=0, scaler=scaler, limit=3) is loss
    loss.backward()
    guard.before_optimizer_step(model, scaler)
    assert model[1].weight.grad is not None and not torch.isfinite(model[1].weight.grad).all()


def test_gradients_are_dropped_only_when_every_micro_batch_of_the_step_was_skipped():
    model, guard = small_model(), NonfiniteGuard()
    guard.check(finite_loss(model), model, step=0, limit=5).backward()
    guard.check(nan_loss(model), model, step=0, limit=5).backward()
    guard.before_optimizer_step(model)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert not guard.window_has_finite_loss  # the next step counts afresh
    guard.check(nan_loss(model), model, step=1, limit=5).backward()
    guard.before_optimizer_step(model)
    assert all(p.grad is None for p in model.parameters())


def test_the_processes_agree_through_one_max_all_reduce_of_a_flag(monkeypatch):
    """A finite loss here is skipped when another process's is not: the all-reduce (MAX) of the flag says so."""
    calls = []

    def all_reduce(tensor, op=None):
        calls.append(op)
        tensor.fill_(1)  # the other process had a non-finite loss

    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)
    model, guard = small_model(), NonfiniteGuard()
    with CaptureLogger(nonfinite_logger) as captured:
        loss = guard.check(finite_loss(model), model, step=2, world_size=2, limit=3)
    assert calls == [torch.distributed.ReduceOp.MAX]
    assert loss.item() == 0.0 and guard.in_a_row == 1
    assert "on at least one of the 2 processes" in captured.out


@pytest.mark.parametrize("world_size", [1, 2])
def test_no_all_reduce_without_a_process_group(monkeypatch, world_size):
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda *a, **k: pytest.fail("all_reduce without a group"))
    model = small_model()
    loss = finite_loss(model)
    assert NonfiniteGuard().check(loss, model, step=0, world_size=world_size, limit=3) is loss
