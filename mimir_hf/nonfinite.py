"""The trainers' non-finite-loss guard: a NaN or infinite loss skips its batch instead of ruining the weights, and too
many in a row stop training with a message."""

from __future__ import annotations

import torch
from torch import nn
from transformers.utils import logging

logger = logging.get_logger(__name__)


class NonfiniteGuard:
    """A finite loss passes. A non-finite one must not update any parameter; after `limit` (the trainer's
    `max_consecutive_nonfinite`, read at each check) in a row, training stops with a message in `stop_reason`.

    Under data parallelism the processes first agree (one all-reduce of a flag): if any has a non-finite loss,
    all skip the batch and count it, so they stop together and none waits for the others' gradients forever.
    A skipped batch contributes no gradient: its loss is replaced by a zero tied to every trainable parameter
    (zero gradients, which DDP's reducer needs to see on each process), and when every micro-batch of an optimizer
    step was skipped the gradients are dropped so that AdamW leaves the weights as they are. With fp16's grad
    scaler the loss goes through unchanged instead: its non-finite gradients (shared by DDP's all-reduce) make the
    scaler skip the step and lower its scale, fp16's own remedy.

    The trainer calls `check` on every training micro-batch's loss and `before_optimizer_step` after the last
    micro-batch of each optimizer step, before the optimizer steps."""

    def __init__(self):
        self.in_a_row = 0  # non-finite losses in a row
        self.window_has_finite_loss = False  # in the micro-batches of the current optimizer step
        self.stop_reason: str | None = None  # why training stopped early, if it did

    def check(
        self,
        loss: torch.Tensor,
        model: nn.Module,
        *,
        limit: int,
        step: int,
        world_size: int = 1,
        scaler: torch.amp.GradScaler | None = None,
        control=None,
    ) -> torch.Tensor:
        """The loss to back-propagate for this micro-batch's `loss` at global step `step`, with at most `limit`
        non-finite losses in a row: `loss` itself when it is
        finite on every one of the `world_size` processes (or under an fp16 grad `scaler`), else a zero tied to every
        trainable parameter of `model`. At the limit, `stop_reason` is set and so is `control.should_training_stop`
        (`control`: Trainer's `TrainerControl`)."""
        finite = torch.isfinite(loss.detach())
        if world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            flag = (~finite).to(torch.int32).reshape(1)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            finite = flag.item() == 0
        if bool(finite):
            self.in_a_row = 0
            self.window_has_finite_loss = True
            return loss
        self.in_a_row += 1
        where = f" on at least one of the {world_size} processes" if world_size > 1 else ""
        logger.warning(
            f"Non-finite loss{where} at step {step} (here: {loss.item()}): this batch is skipped, no "
            f"parameter is updated from it{' (the fp16 grad scaler skips the step)' if scaler is not None else ''} "
            f"({self.in_a_row} in a row; training stops at {limit})."
        )
        if self.in_a_row >= limit:
            self.stop_reason = (
                f"Training stopped at step {step} after {self.in_a_row} non-finite "
                "losses in a row (try a lower learning rate, fp32/bf16 instead of fp16, or check the data)."
            )
            logger.error(self.stop_reason)
            if control is not None:
                control.should_training_stop = True
        if scaler is not None:
            return loss
        return sum((parameter * 0).sum() for parameter in model.parameters() if parameter.requires_grad)

    def before_optimizer_step(self, model: nn.Module, scaler: torch.amp.GradScaler | None = None) -> None:
        """When every micro-batch of this optimizer step was skipped, drop the gradients (no update at all; under an
        fp16 `scaler` the scaler skips the step itself); then start the next step's count of finite losses."""
        if not self.window_has_finite_loss and scaler is None:
            for parameter in model.parameters():
                parameter.grad = None
        self.window_has_finite_loss = False


__all__ = ["NonfiniteGuard"]
