"""MIMIR's trainers: `transformers.Trainer` subclasses that put adversarial examples and the MI loss in `compute_loss`.

The loop, gradient accumulation, mixed precision, checkpointing, distributed training and logging stay Trainer's.
`MimirPreTrainingTrainer` runs MIMIR pre-training (MAE-objective attack -> reconstruction + MI loss);
`MimirAdversarialTrainer` runs adversarial fine-tuning (PGD-AT, TRADES, MART, or clean; optionally on mixup / cutmix
batches with soft targets). Both build AdamW with layer-wise lr decay and no weight decay on biases, norms, tokens and
position embeddings, and both take a base learning rate scaled by the effective batch (`base_learning_rate`), an EMA
of the weights (`ema_decay`) and auxiliary training data mixed into every batch (`aux_dataset=`, `aux_fraction`).
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass, field
from typing import ClassVar

import huggingface_hub
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from transformers import PreTrainedModel, Trainer, TrainingArguments
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.trainer_utils import TrainOutput, rotate_checkpoints
from transformers.utils import logging

from .attacks import (
    logits_of,
    mae_attack,
    mart_loss,
    pgd_attack,
    random_start,
    soft_target_attack,
    trades_attack,
    trades_loss,
)
from .augmentation import mix_batch
from .auxiliary_data import AUX_FRACTION, mixed_batches_loader
from .checkpoints import (
    COMPLETE_MARKER,
    check_resume_checkpoint,
    disk_full_reported,
    last_complete_checkpoint,
    read_marker,
    resume_needs,
    write_marker,
)
from .ema import EMACallback
from .hub import hub_errors
from .nonfinite import NonfiniteGuard
from .optimizer_groups import parameter_groups
from .step_metrics import StepMetrics
from .threat_model import ADVERSARIAL_TRAINING_ATTACK, AttackBudget, check_budget, check_pixel_range

logger = logging.get_logger(__name__)

ADVERSARIAL_METHODS = ("pgd", "trades", "mart", "none")


def _accelerator_available() -> bool:
    accelerator = getattr(torch, "accelerator", None)
    return bool(accelerator.is_available()) if accelerator is not None else torch.cuda.is_available()


@dataclass
class _MimirArguments(TrainingArguments):
    """What both MIMIR trainers share: the paper's optimiser defaults (AdamW, weight decay 0.05 on what the model's
    `no_weight_decay()` leaves, warm-up then cosine, no gradient clipping), layer-wise lr decay, the effective batch
    check of a recipe, and the non-finite-loss guard."""

    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay (MIMIR: 0.05)."})
    max_grad_norm: float = field(
        default=0.0, metadata={"help": "Clip the gradient norm to this value (0: no clipping, as the authors train)."}
    )
    reference_effective_batch: int = field(
        default=0,
        metadata={
            "help": "The effective batch (per-device batch x accumulation steps x processes) this run must train at, "
            "as a recipe states its authors' (0: no check). A run at another effective batch stops at once, naming "
            "the flags that restore it; pass --reference_effective_batch 0 to train at your own effective batch, the "
            "learning rate following base_learning_rate's rule."
        },
    )
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule after warm-up."})
    layer_decay: float = field(
        default=1.0, metadata={"help": "Layer-wise lr decay (MIMIR fine-tuning: 0.65; 1.0 = none)."}
    )
    max_consecutive_nonfinite: int = field(
        default=5, metadata={"help": "Stop after this many non-finite losses in a row (each one's batch is skipped)."}
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep dataset columns (lazy image transforms read the image column)."}
    )
    learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "The learning rate itself (of the head, with layer decay). Unset: base_learning_rate's rule. "
            "Give one of the two."
        },
    )
    base_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Base learning rate (the papers' blr): learning_rate = base_learning_rate x effective batch / "
            "base_batch_size, the effective batch being per-device batch x accumulation x processes. Unset, with "
            "learning_rate unset too: the class's default (MIMIR pre-training 1.5e-4, fine-tuning 1e-3)."
        },
    )
    base_batch_size: int = field(
        default=256, metadata={"help": "Batch size at which learning_rate = base_learning_rate (MAE: 256; ARES: 512)."}
    )
    ema_decay: float = field(
        default=0.0,
        metadata={"help": "Keep an EMA of the weights with this decay, e.g. 0.9998 (0: none); saved as <output>/ema."},
    )
    aux_fraction: float = field(
        default=AUX_FRACTION,
        metadata={"help": "Fraction of every batch drawn from the trainer's aux_dataset, when it has one."},
    )

    # The base learning rate used when neither rate is given, and where it comes from (set by each subclass).
    default_base_learning_rate: ClassVar[float] = 1e-3
    default_base_learning_rate_source: ClassVar[str] = "MAE fine-tuning's blr"

    def __post_init__(self):
        if not _accelerator_available():  # pinning needs an accelerator; without one torch warns on every loader
            self.dataloader_pin_memory = False
            if not self.use_cpu:  # else transformers sets up one non-distributed process per rank and refuses bf16
                self.use_cpu = True
                logger.info("No GPU or other accelerator here: training on the CPU (use_cpu=True).")
        if self.learning_rate is not None and self.base_learning_rate is not None:
            raise ValueError(
                f"Both learning_rate ({self.learning_rate:g}) and base_learning_rate ({self.base_learning_rate:g}) are "
                "set; give one: learning_rate is the rate itself, base_learning_rate the rate per base_batch_size "
                "images, scaled by the effective batch (to override a recipe's base rate, pass --base_learning_rate)."
            )
        self.base_learning_rate_is_default = self.learning_rate is None and self.base_learning_rate is None
        if self.base_learning_rate_is_default:
            self.base_learning_rate = self.default_base_learning_rate
        if self.push_to_hub and huggingface_hub.constants.HF_HUB_OFFLINE:
            raise ValueError(
                "push_to_hub is set but HF_HUB_OFFLINE=1 keeps the Hugging Face Hub out of reach; train without "
                "--push_to_hub (the model is saved in --output_dir) and push it later, online, with `hf upload`."
            )
        if self.fp16 and self.use_cpu:
            raise ValueError(
                "fp16 mixed precision needs a GPU and this run is on the CPU, where it would train in fp32. Pass "
                "--fp16 false to train in fp32, or --bf16 true for bfloat16 mixed precision on the CPU."
            )
        super().__post_init__()
        if self.max_grad_norm is None or self.max_grad_norm < 0:
            raise ValueError(f"max_grad_norm must be >= 0 (0: no clipping), got {self.max_grad_norm}.")
        if self.reference_effective_batch < 0:
            raise ValueError(
                f"reference_effective_batch must be >= 0 (0: no check), got {self.reference_effective_batch}."
            )
        if not 0 < self.layer_decay <= 1:
            raise ValueError(f"layer_decay must be in (0, 1], got {self.layer_decay}.")
        if self.max_consecutive_nonfinite < 1:
            raise ValueError(f"max_consecutive_nonfinite must be >= 1, got {self.max_consecutive_nonfinite}.")
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.base_learning_rate is not None and not self.base_learning_rate > 0:
            raise ValueError(f"base_learning_rate must be > 0, got {self.base_learning_rate}.")
        if self.base_batch_size < 1:
            raise ValueError(f"base_batch_size must be >= 1, got {self.base_batch_size}.")
        if not (self.ema_decay == 0 or 0 < self.ema_decay < 1):
            raise ValueError(f"ema_decay must be 0 (no EMA) or in (0, 1), got {self.ema_decay}.")
        if not 0 <= self.aux_fraction < 1:
            raise ValueError(f"aux_fraction must be in [0, 1), got {self.aux_fraction}.")
        self.check_effective_batch()

    def check_effective_batch(self, world_size: int | None = None) -> None:
        """A `ValueError` naming the flags that restore `reference_effective_batch` when this run's differs."""
        reference = self.reference_effective_batch
        processes = self.world_size if world_size is None else world_size
        actual = self.effective_batch_size(processes)
        if not reference or actual == reference:
            return
        per_device, accumulation = self.per_device_train_batch_size, self.gradient_accumulation_steps
        fixes = []
        if reference % (per_device * processes) == 0:
            fixes.append(f"--gradient_accumulation_steps {reference // (per_device * processes)}")
        if reference % (accumulation * processes) == 0:
            fixes.append(f"--per_device_train_batch_size {reference // (accumulation * processes)}")
        restore = " or ".join(fixes) if fixes else "a per-device batch and accumulation steps whose product is that"
        lr = (
            f"learning rate {self.scaled_learning_rate(processes):g} by {self.learning_rate_rule(processes)}"
            if self.base_learning_rate is not None
            else f"learning rate {self.learning_rate:g} as given"
        )
        raise ValueError(
            f"This recipe trains at an effective batch of {reference} (reference_effective_batch: the authors' run); "
            f"this run's is {actual} (per device {per_device} x accumulation {accumulation} x {processes} "
            f"processes). Pass {restore} to train as they did, or --reference_effective_batch 0 to train at {actual} "
            f"({lr})."
        )

    def effective_batch_size(self, world_size: int | None = None) -> int:
        """Per-device batch x gradient accumulation x processes (`world_size`, default this run's)."""
        processes = self.world_size if world_size is None else world_size
        return self.per_device_train_batch_size * self.gradient_accumulation_steps * processes

    def scaled_learning_rate(self, world_size: int | None = None) -> float:
        """The learning rate the run uses: base_learning_rate x effective batch / base_batch_size when
        `base_learning_rate` is set (given, or the class's default), `learning_rate` otherwise."""
        if self.base_learning_rate is None:
            return self.learning_rate
        return self.base_learning_rate * self.effective_batch_size(world_size) / self.base_batch_size

    def learning_rate_rule(self, world_size: int | None = None) -> str:
        """Where the run's learning rate comes from, in words with the numbers."""
        if self.base_learning_rate is None:
            return "learning_rate, as given"
        source = (
            f" ({type(self).__name__}'s default: {self.default_base_learning_rate_source})"
            if getattr(self, "base_learning_rate_is_default", False)
            else ""
        )
        return (
            f"base_learning_rate {self.base_learning_rate:g}{source} x effective batch "
            f"{self.effective_batch_size(world_size)} / base_batch_size {self.base_batch_size}"
        )


@dataclass
class MimirPreTrainingArguments(_MimirArguments):
    """`TrainingArguments` of `MimirPreTrainingTrainer`, with MIMIR pre-training's optimiser defaults (AdamW betas
    (0.9, 0.95), weight decay 0.05, 5% warm-up then cosine).

    The pre-training attack and the MI term are part of the method and live in the model's config
    (`attack_epsilon`, ..., `mi_weight`); this class has no adversarial-training fields, so none can be set and
    silently ignored.
    """

    default_base_learning_rate: ClassVar[float] = 1.5e-4
    default_base_learning_rate_source: ClassVar[str] = "MIMIR and MAE pre-training's blr"

    adam_beta2: float = field(default=0.95, metadata={"help": "AdamW beta2 (MAE/MIMIR pre-training: 0.95)."})
    warmup_steps: float = field(
        default=0.05, metadata={"help": "Warm-up steps, or a fraction of training if < 1 (MIMIR: 40 of 800 epochs)."}
    )
    dataloader_drop_last: bool = field(
        default=True,
        metadata={"help": "Drop the last incomplete batch (the MI term is a batch statistic: a batch of 1 has none)."},
    )


@dataclass
class AdversarialRecipe:
    """The adversarial fine-tuning recipe (the paper's CIFAR-10 PGD-AT by default); a mixin of
    `MimirAdversarialTrainingArguments`, also parsed on its own by scripts that build the training arguments."""

    adversarial_method: str = field(
        default="pgd", metadata={"help": f"Adversarial fine-tuning recipe, one of {ADVERSARIAL_METHODS}."}
    )
    adversarial_epsilon: float = field(
        default=ADVERSARIAL_TRAINING_ATTACK.epsilon, metadata={"help": "L-inf radius of training attacks, pixel units."}
    )
    adversarial_step_size: float = field(
        default=ADVERSARIAL_TRAINING_ATTACK.step_size, metadata={"help": "PGD step size of training attacks."}
    )
    adversarial_steps: int = field(
        default=ADVERSARIAL_TRAINING_ATTACK.steps, metadata={"help": "PGD steps of training attacks."}
    )
    adversarial_random_start: bool = field(
        default=ADVERSARIAL_TRAINING_ATTACK.random_start, metadata={"help": "Random start of training attacks."}
    )
    adversarial_step_size_ramp_epochs: int = field(
        default=0,
        metadata={
            "help": "Ramp the training attack's step size by min(epoch, N) / N over the first N epochs (0-based "
            "epochs, so epoch 0 only adds the random start), as the authors' ARES fine-tuning does with N = 5; 0: "
            "no ramp."
        },
    )
    trades_beta: float = field(default=6.0, metadata={"help": "Weight of TRADES' KL term."})
    mart_beta: float = field(default=6.0, metadata={"help": "Weight of MART's misclassification-aware KL term."})

    def __post_init__(self):
        self.check_recipe()

    def check_recipe(self) -> None:
        if self.adversarial_method not in ADVERSARIAL_METHODS:
            raise ValueError(
                f"adversarial_method must be one of {ADVERSARIAL_METHODS}, got {self.adversarial_method!r}."
            )
        check_budget(
            self.adversarial_epsilon, self.adversarial_step_size, self.adversarial_steps, prefix="adversarial_"
        )
        if self.adversarial_step_size_ramp_epochs < 0:
            raise ValueError(
                f"adversarial_step_size_ramp_epochs must be >= 0, got {self.adversarial_step_size_ramp_epochs}."
            )

    @property
    def adversarial_budget(self) -> AttackBudget:
        return AttackBudget(
            self.adversarial_epsilon, self.adversarial_step_size, self.adversarial_steps, self.adversarial_random_start
        )

    def adversarial_step_size_at(self, epoch: float) -> float:
        """The training attack's step size during (0-based, possibly fractional) `epoch`, after the ramp."""
        ramp = self.adversarial_step_size_ramp_epochs
        if ramp == 0:
            return self.adversarial_step_size
        return self.adversarial_step_size * min(math.floor(epoch), ramp) / ramp


@dataclass
class MimirAdversarialTrainingArguments(_MimirArguments, AdversarialRecipe):
    """`TrainingArguments` of `MimirAdversarialTrainer`: the adversarial recipe (`AdversarialRecipe`'s fields) plus
    MIMIR fine-tuning's optimiser defaults (layer decay 0.65, weight decay 0.05, 10% warm-up then cosine)."""

    default_base_learning_rate: ClassVar[float] = 1e-3
    default_base_learning_rate_source: ClassVar[str] = "MAE and MIMIR fine-tuning's blr"

    layer_decay: float = field(
        default=0.65, metadata={"help": "Layer-wise lr decay (MIMIR fine-tuning: 0.65; 1.0 = none)."}
    )
    warmup_steps: float = field(
        default=0.1, metadata={"help": "Warm-up steps, or a fraction of training if < 1 (MIMIR CIFAR: 5 of 50 epochs)."}
    )
    mixup_alpha: float = field(
        default=0.0, metadata={"help": "Mixup of training batches, lambda ~ Beta(alpha, alpha) (ARES: 0.8; 0: off)."}
    )
    cutmix_alpha: float = field(
        default=0.0,
        metadata={"help": "CutMix of training batches (ARES: 1.0; 0: off); with mixup too, half the batches each."},
    )

    def __post_init__(self):
        _MimirArguments.__post_init__(self)
        self.check_recipe()
        if self.mixup_alpha < 0 or self.cutmix_alpha < 0:
            raise ValueError(f"mixup_alpha and cutmix_alpha must be >= 0, got {self.mixup_alpha}, {self.cutmix_alpha}.")
        if self.mixes_batches and self.adversarial_method not in ("pgd", "none"):
            raise ValueError(
                f"mixup / cutmix train with soft targets, which adversarial_method={self.adversarial_method!r} does "
                "not define; use 'pgd' (PGD on the soft-target cross-entropy, as the authors' ARES runs) or 'none'."
            )

    @property
    def mixes_batches(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0


class _MimirTrainerBase(Trainer):
    """Shared by both trainers: the optimizer, the non-finite-loss guard, and the logging of the loss parts."""

    arguments_class: type[_MimirArguments] = _MimirArguments

    def __init__(self, model=None, args=None, *positional, aux_dataset=None, **kwargs):
        """Trainer's arguments, plus `aux_dataset`: auxiliary training examples (e.g. `AuxiliaryImages`, the EDM
        data) of which every training batch takes `int(batch * args.aux_fraction)`, drawn with replacement."""
        if args is None:
            args = self.arguments_class(output_dir="trainer_output")
        if not isinstance(args, self.arguments_class):
            refused = [name for name in AdversarialRecipe.__dataclass_fields__ if hasattr(args, name)]
            ignored = f" (its fields {', '.join(refused[:3])}, ... would be silently ignored)" if refused else ""
            raise TypeError(
                f"{type(self).__name__} takes {self.arguments_class.__name__}, got {type(args).__name__}{ignored}."
            )
        if args.base_learning_rate is not None:  # lr = blr x effective batch / base batch, before any optimizer
            args.learning_rate = args.scaled_learning_rate()
        super().__init__(model, args, *positional, **kwargs)
        self.aux_dataset = aux_dataset
        self.ema_callback = EMACallback(args.ema_decay) if args.ema_decay > 0 else None
        if self.ema_callback is not None:
            self.add_callback(self.ema_callback)
        # compute_loss returns batch means: Trainer must scale them for gradient accumulation itself.
        self.model_accepts_loss_kwargs = False
        self._metrics = StepMetrics()  # the loss parts and accuracies logged beside Trainer's loss
        self._nonfinite = NonfiniteGuard()
        self._first_batch_checked = False
        self._previous_loss_sum = 0.0  # summed step losses of the run before the checkpoint it resumed from

    @property
    def nonfinite_stop(self) -> str | None:
        """Why training stopped early on non-finite losses (`max_consecutive_nonfinite` in a row), or None."""
        return self._nonfinite.stop_reason

    @property
    def ema(self):
        """The `WeightEMA` of the weights (None without `ema_decay`, or before training starts)."""
        return None if self.ema_callback is None else self.ema_callback.ema

    def save_ema_model(self, output_dir: str | None = None) -> str:
        """Save the EMA weights as a complete model folder (default `<output_dir>/ema`); returns the folder."""
        if self.ema is None:
            raise ValueError("No EMA to save: train with ema_decay > 0 first.")
        output_dir = output_dir or os.path.join(self.args.output_dir, "ema")
        with self.ema.applied(self.accelerator.unwrap_model(self.model)):
            self.save_model(output_dir)
        return output_dir

    def get_train_dataloader(self) -> DataLoader:
        """Trainer's loader, or with `aux_dataset`: batches of real + auxiliary examples (`mixed_batches_loader`)."""
        if self.aux_dataset is None:
            return super().get_train_dataloader()
        if self.train_dataset is None:
            raise ValueError("Trainer: training requires a train_dataset.")
        return mixed_batches_loader(
            self.train_dataset,
            self.aux_dataset,
            self._train_batch_size,
            self.args,
            self.data_collator,
            self.accelerator,
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not self._first_batch_checked:  # the data boundary: [0, 1] pixels (the attacks check every batch)
            check_pixel_range(inputs["pixel_values"], "pixel_values of the first batch")
            self._first_batch_checked = True
        loss, outputs = self.mimir_loss(model, inputs)
        if model.training:
            args = self.args  # read each step: a changed max_consecutive_nonfinite takes effect
            loss = self._nonfinite.check(
                loss, model, limit=args.max_consecutive_nonfinite, step=self.state.global_step,
                world_size=args.world_size, scaler=self.accelerator.scaler, control=self.control,
            )  # fmt: skip
        return (loss, outputs) if return_outputs else loss

    def mimir_loss(self, model, inputs) -> tuple[torch.Tensor, object]:
        raise NotImplementedError

    def bare_model(self, model: nn.Module) -> nn.Module:
        """The model without DDP / compile wrappers, for the attacks (which must not trigger DDP's gradient sync). A
        `PreTrainedModel` is never a wrapper: it is returned as it is, sparing Accelerate's unwrapping each step."""
        return model if isinstance(model, PreTrainedModel) else self.accelerator.unwrap_model(model)

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.accelerator.sync_gradients:  # the optimizer steps next
            self._nonfinite.before_optimizer_step(model, self.accelerator.scaler)
        return loss

    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, **kwargs):
        """`Trainer.train`, resuming only from complete checkpoints and reporting the loss of the whole run.

        `resume_from_checkpoint=True` picks the newest *complete* checkpoint of `output_dir` (an incomplete one, left
        by a crash during its write, is skipped with a warning); a path is checked first (a truncated file or another
        model's checkpoint is a `ValueError` naming the file). After a resume, `train_loss` covers every step of the
        run, not only the resumed ones.
        """
        needs = resume_needs(self.args)
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir, needs)
            if resume_from_checkpoint is None:
                raise ValueError(f"No complete checkpoint to resume from in {self.args.output_dir}.")
        if isinstance(resume_from_checkpoint, str):
            model = self.accelerator.unwrap_model(self.model)
            mimir_written = read_marker(resume_from_checkpoint) is not None or os.path.isfile(
                os.path.join(resume_from_checkpoint, COMPLETE_MARKER + ".tmp")
            )  # a plain Trainer's checkpoint has no marker: only its weights and state must read back
            check_resume_checkpoint(resume_from_checkpoint, model, needs if mimir_written else ())
        if self.ema_callback is not None:  # the EMA of a resumed run comes back from its checkpoint
            self.ema_callback.resume_from = resume_from_checkpoint or None
        previous = read_marker(resume_from_checkpoint) if isinstance(resume_from_checkpoint, str) else None
        self._previous_loss_sum = previous.get("loss_sum", 0.0) if previous else 0.0
        initial_step = previous.get("global_step", 0) if previous else 0
        output = super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial, **kwargs)
        if previous and output.global_step > 0:
            this_run = output.training_loss * (output.global_step - initial_step)
            loss = (self._previous_loss_sum + this_run) / output.global_step
            metrics = {**output.metrics, "train_loss": loss}
            output = TrainOutput(output.global_step, loss, metrics)
        return output

    def _save_checkpoint(self, model, trial):
        """Trainer's checkpoint, then the EMA, then the completion marker, and only then the rotation of older
        checkpoints (`save_total_limit`): the previous complete checkpoint is never deleted before this one is
        complete (Trainer rotates right after its own files, before a full disk could be noticed)."""
        run_dir = self._get_output_dir(trial=trial)
        folder = os.path.join(run_dir, f"checkpoint-{self.state.global_step}")
        parameters = sum(p.numel() * p.element_size() for p in self.model.parameters())
        limit, self.args.save_total_limit = self.args.save_total_limit, None
        try:
            with disk_full_reported(folder, 3 * parameters):  # weights + two AdamW moments (+ the EMA's weights)
                super()._save_checkpoint(model, trial)
                self.accelerator.wait_for_everyone()  # every process's RNG state is written
                if self.args.should_save and os.path.isdir(folder) and self.ema_callback is not None:
                    self.ema_callback.save_into(folder)
                if self.args.should_save and os.path.isdir(folder):  # the marker last: the checkpoint is complete
                    loss_so_far = self._previous_loss_sum + self._total_loss_scalar + self._tr_loss.item()
                    write_marker(folder, {"global_step": self.state.global_step, "loss_sum": loss_so_far})
        finally:
            self.args.save_total_limit = limit
        if self.args.should_save:
            rotate_checkpoints(run_dir, limit, self.state.best_model_checkpoint, use_mtime=True)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Trainer's, without its upload of each saved model: with `push_to_hub`, the folder is uploaded once, by
        `push_to_hub()`, after everything it holds (the MIMIR model card too) is written; a Hub failure then never
        costs the training (checkpoint uploads during training, `hub_strategy`, are Trainer's as usual)."""
        folder = output_dir or self.args.output_dir
        parameters = sum(p.numel() * p.element_size() for p in self.model.parameters())
        with disk_full_reported(folder, parameters, "the model"):
            super().save_model(output_dir, _internal_call=True)

    def init_hf_repo(self, *args, **kwargs) -> None:
        """Trainer's, with a Hub failure as one line (at construction, before any training)."""
        with hub_errors(self.args, trained=False):
            super().init_hf_repo(*args, **kwargs)

    def push_to_hub(self, *args, **kwargs):
        """Trainer's, with a Hub failure as one line naming the Hub, the repository and the way to push later."""
        with hub_errors(self.args, trained=True):
            return super().push_to_hub(*args, **kwargs)

    def create_model_card(self, *args, **kwargs):
        """Keep a model card written by mimir_hf (e.g. by the example scripts); otherwise Trainer's generic one."""
        card = os.path.join(self.args.output_dir, "README.md")
        if os.path.isfile(card):
            with open(card, encoding="utf-8") as f:
                if "mimir_hf" in f.read():
                    return
        super().create_model_card(*args, **kwargs)

    def create_optimizer(self, model=None):
        opt_model = self.model if model is None else model
        if self.optimizer is None:
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            groups = parameter_groups(opt_model, self.args.learning_rate, self.args.weight_decay, self.args.layer_decay)
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        mode = "eval" if any(key.startswith("eval_") for key in logs) else "train"
        prefix = "eval_" if mode == "eval" else ""
        for name, mean in self._metrics.pop_means(mode, self.accelerator).items():
            logs[prefix + name] = mean
        super().log(logs, *args, **kwargs)


class MimirPreTrainingTrainer(_MimirTrainerBase):
    """MIMIR pre-training: each step attacks the batch (MAE objective, model in eval mode, fresh mask), then
    minimises `reconstruction(x | encoder(x')) + mi_weight * I(X'; Z)` under another fresh mask.

    Logs `reconstruction_loss` and `mi_loss` beside Trainer's `loss`. The attack budget comes from the model's
    config (`config.attack_budget`); its arguments are `MimirPreTrainingArguments`.
    """

    arguments_class = MimirPreTrainingArguments

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.can_return_loss = True  # evaluation computes the loss through compute_loss, with or without labels

    def get_train_dataloader(self):
        loader = super().get_train_dataloader()
        if len(loader) == 0:
            batch = self.args.per_device_train_batch_size * max(self.args.world_size, 1)
            raise ValueError(
                f"The training set ({len(self.train_dataset)} images) is smaller than one batch ({batch} images over "
                "all processes), and pre-training drops incomplete batches: lower per_device_train_batch_size."
            )
        return loader

    def get_eval_dataloader(self, eval_dataset=None):
        drop_last, self.args.dataloader_drop_last = self.args.dataloader_drop_last, False  # evaluate every image
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.args.dataloader_drop_last = drop_last

    def mimir_loss(self, model, inputs):
        images = inputs["pixel_values"]
        adversarial = mae_attack(self.bare_model(model), images)
        # The MI term compares the images of a batch: an evaluation batch of one has none (training drops such).
        compute_mi = None if images.shape[0] > 1 else False
        outputs = model(pixel_values=images, adversarial_pixel_values=adversarial, compute_mi_loss=compute_mi)
        self._metrics.store(model.training, reconstruction_loss=outputs.reconstruction_loss, mi_loss=outputs.mi_loss)
        return outputs.loss, outputs


class MimirAdversarialTrainer(_MimirTrainerBase):
    """Adversarial fine-tuning of an image classifier (any model returning `.logits` for `pixel_values` in [0, 1]).

    `args.adversarial_method`: `"pgd"` (Madry PGD-AT: cross-entropy on PGD examples), `"trades"` (clean CE +
    beta KL(p(x) || p(x'))), `"mart"` (boosted CE on x' + beta KL weighted by 1 - p_y(x)), or `"none"` (clean
    training). Attacks run with the model in eval mode. Logs `adversarial_accuracy` (accuracy on the training
    attack's examples) and, where the clean logits are computed, `natural_accuracy`. In evaluation the same loss is
    computed, so `eval_loss` and `eval_adversarial_accuracy` are under the training attack. Accuracies are logged
    in %, like every accuracy mimir_hf reports. Its arguments are `MimirAdversarialTrainingArguments`.
    """

    arguments_class = MimirAdversarialTrainingArguments

    def __init__(self, *positional, **kwargs):
        super().__init__(*positional, **kwargs)
        self._mixing_calls = (-1, 0)  # (global step, micro-batches mixed in it)
        config = getattr(self.model, "config", None)
        smoothing = self.args.label_smoothing_factor
        if hasattr(config, "label_smoothing") and smoothing and smoothing != config.label_smoothing:
            raise ValueError(
                f"label_smoothing_factor={smoothing:g} is not what this trainer smooths with: a MIMIR model's label "
                f"smoothing is its config's label_smoothing ({config.label_smoothing:g} here). Set that instead "
                "(--label_smoothing on mimir-hf finetune, or config.label_smoothing) and leave label_smoothing_factor "
                "at 0."
            )

    def _mixing_rng(self) -> random.Random:
        """The mixup / cutmix draws of this micro-batch: seeded by (seed, process, global step, micro-batch), so each
        process mixes its own batch and a resumed run mixes as the uninterrupted one did."""
        step, calls = self._mixing_calls
        calls = calls + 1 if step == self.state.global_step else 0
        self._mixing_calls = (self.state.global_step, calls)
        key = ((self.args.seed * 1_000_003 + self.args.process_index) * 1_000_003 + self.state.global_step) * 1_009
        return random.Random(key + calls)

    @property
    def label_smoothing(self) -> float:
        config = getattr(self.accelerator.unwrap_model(self.model), "config", None)
        return getattr(config, "label_smoothing", self.args.label_smoothing_factor)

    def _attack(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, training: bool = True
    ) -> torch.Tensor:
        """The training attack: on soft targets (2-D float `labels`) the soft-target cross-entropy, else the recipe's.
        In training the step size follows the ramp (`adversarial_step_size_ramp_epochs`); a ramp at 0 leaves only the
        random start, as in the authors' ARES epoch 0."""
        args, budget = self.args, self.args.adversarial_budget
        if training and args.adversarial_step_size_ramp_epochs > 0:
            step_size = args.adversarial_step_size_at(self.state.epoch or 0.0)
            if step_size == 0:
                return random_start(images, budget.epsilon) if budget.random_start else images.detach().clone()
            budget = AttackBudget(budget.epsilon, step_size, budget.steps, budget.random_start)
        if labels.dim() == 2:
            return soft_target_attack(model, images, labels, budget, self.label_smoothing)
        if args.adversarial_method == "trades":
            return trades_attack(model, images, budget)
        return pgd_attack(model, images, labels, budget)

    def mimir_loss(self, model, inputs):
        images, labels = inputs["pixel_values"], inputs["labels"]
        args, batch_size = self.args, images.shape[0]
        method = args.adversarial_method
        if model.training and args.mixes_batches:
            # Mixup / cutmix: soft targets [B, classes]; the attack and the loss both use the soft-target CE.
            classes = self.bare_model(model).config.num_labels
            images, labels = mix_batch(images, labels, classes, args.mixup_alpha, args.cutmix_alpha, self._mixing_rng())

        if method == "none":
            logits = logits_of(model, images)
            loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
            self._metrics.store(model.training, natural_accuracy=_percent_correct(logits, labels))
            return loss, ImageClassifierOutput(loss=loss, logits=logits)

        adversarial = self._attack(self.bare_model(model), images, labels, training=model.training)
        if method == "pgd":
            clean_logits, adversarial_logits = None, logits_of(model, adversarial)
            loss = F.cross_entropy(adversarial_logits, labels, label_smoothing=self.label_smoothing)
        else:
            # One forward pass over [clean; adversarial]: ViTs have no batch statistics, so this is exact.
            clean_logits, adversarial_logits = logits_of(model, torch.cat([images, adversarial])).split(batch_size)
            if method == "trades":
                loss = trades_loss(clean_logits, adversarial_logits, labels, args.trades_beta, self.label_smoothing)
            else:
                loss = mart_loss(clean_logits, adversarial_logits, labels, args.mart_beta)
            self._metrics.store(model.training, natural_accuracy=_percent_correct(clean_logits, labels))
        self._metrics.store(model.training, adversarial_accuracy=_percent_correct(adversarial_logits, labels))
        return loss, ImageClassifierOutput(loss=loss, logits=adversarial_logits)


def _percent_correct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """% of argmax predictions equal to the labels (for soft targets: to each row's largest target)."""
    if labels.dim() == 2:
        labels = labels.argmax(1)
    return 100.0 * (logits.argmax(1) == labels).float().mean()


__all__ = [
    "ADVERSARIAL_METHODS",
    "AdversarialRecipe",
    "MimirAdversarialTrainer",
    "MimirAdversarialTrainingArguments",
    "MimirPreTrainingArguments",
    "MimirPreTrainingTrainer",
    "parameter_groups",
]
