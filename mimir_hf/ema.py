"""An exponential moving average of a model's weights (EMA), kept by a `TrainerCallback`.

After every optimizer step, each floating-point parameter and buffer e of the average moves towards the model's w:
e <- decay * e + (1 - decay) * w (timm's `ModelEmaV2`, which the authors' ARES fine-tuning uses with decay 0.9998);
integer buffers are copied. The trainers install `EMACallback` when `ema_decay > 0`; it saves the average next to
each checkpoint (`ema.safetensors`), loads it back on `resume_from_checkpoint`, and `save_ema_model` writes it as a
complete model folder.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import TrainerCallback

EMA_FILE = "ema.safetensors"


class WeightEMA:
    """The average itself: a detached copy of `model.state_dict()`, on the model's devices."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"ema_decay must be in (0, 1), got {decay}.")
        self.decay = decay
        self.weights = {name: value.detach().clone() for name, value in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for name, value in model.state_dict().items():
            average = self.weights[name]
            if average.is_floating_point():
                average.lerp_(value.detach().to(average.dtype), 1.0 - self.decay)
            else:
                average.copy_(value)

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[nn.Module]:
        """`model` holding the averaged weights inside the block, its own weights again after it."""
        own = {name: value.detach().clone() for name, value in model.state_dict().items()}
        model.load_state_dict(self.weights)
        try:
            yield model
        finally:
            model.load_state_dict(own)

    def save(self, path: str) -> None:
        # One contiguous copy per entry: tied weights share storage, which safetensors refuses.
        save_file({name: value.detach().cpu().contiguous().clone() for name, value in self.weights.items()}, path)

    def load(self, path: str) -> None:
        loaded = load_file(path)
        missing = sorted(set(self.weights) - set(loaded))
        if missing:
            raise ValueError(f"{path} misses {len(missing)} EMA weights (e.g. {missing[:3]}); not this model's EMA.")
        for name, average in self.weights.items():
            average.copy_(loaded[name].to(average.device))


class EMACallback(TrainerCallback):
    """Keeps a `WeightEMA` of the trainer's model: created at the start of training (or loaded from the checkpoint
    being resumed), updated after every optimizer step, saved into every checkpoint folder by the main process."""

    def __init__(self, decay: float):
        self.decay = decay
        self.ema: WeightEMA | None = None
        self.resume_from: str | None = None  # set by the trainer's train(resume_from_checkpoint=...)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.ema = WeightEMA(model, self.decay)
        if self.resume_from is not None:
            path = os.path.join(self.resume_from, EMA_FILE)
            if not os.path.isfile(path):
                raise ValueError(
                    f"Resuming from {self.resume_from}, which has no {EMA_FILE}: it was saved without an EMA (or by "
                    "another run); resume it with the same ema_decay it was trained with."
                )
            self.ema.load(path)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.ema.update(model)

    def save_into(self, folder: str) -> None:
        """Write the EMA into a checkpoint folder (the MIMIR trainers call it before the checkpoint's completion
        marker, so a checkpoint is complete with its EMA or not at all)."""
        if self.ema is not None:
            self.ema.save(os.path.join(folder, EMA_FILE))

    def on_save(self, args, state, control, **kwargs):
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if state.is_world_process_zero and os.path.isdir(folder) and not os.path.isfile(os.path.join(folder, EMA_FILE)):
            self.save_into(folder)  # under a plain Trainer


__all__ = ["EMA_FILE", "EMACallback", "WeightEMA"]
