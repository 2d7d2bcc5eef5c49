"""The loss parts and accuracies a trainer logs beside Trainer's `loss`: kept per mode (training, evaluation) as each
batch computes them, and logged as their mean since the last log, averaged over the processes of a distributed run."""

from __future__ import annotations

from collections import defaultdict

import torch

MODES = ("train", "eval")


class StepMetrics:
    """Per-mode lists of a batch's values (`store`), turned into means and cleared when logged (`pop_means`)."""

    def __init__(self):
        self._values: dict[str, dict[str, list[torch.Tensor]]] = {mode: defaultdict(list) for mode in MODES}

    def store(self, training: bool, **values: torch.Tensor | None) -> None:
        """Keep each value (a 0-d tensor; None: not computed for this batch) under `"train"` or `"eval"`."""
        metrics = self._values["train" if training else "eval"]
        for name, value in values.items():
            if value is not None:
                metrics[name].append(value.detach().float())

    def pop_means(self, mode: str, accelerator=None) -> dict[str, float]:
        """The mean of each value stored in `mode` since the last call, rounded to 6 digits, then forgotten. With an
        Accelerate `accelerator` over several processes, each mean is the mean of the processes' means."""
        means = {}
        for name, values in self._values[mode].items():
            mean = torch.stack(values).mean()
            if accelerator is not None and accelerator.num_processes > 1:
                mean = accelerator.reduce(mean.to(accelerator.device), reduction="mean")
            means[name] = round(mean.item(), 6)
        self._values[mode].clear()
        return means


__all__ = ["StepMetrics"]
