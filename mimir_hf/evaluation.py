"""The robustness report: natural accuracy, a registry of L-inf attacks, the worst case, an eps sweep, and
gradient-masking sanity checks, streamed batch by batch.

`evaluate_robustness` iterates the evaluation data one batch at a time (never the whole split in memory), runs every
attack of `attack_registry` on the images the model classifies correctly (an image misclassified when clean counts as
broken under every attack, AutoAttack's convention), keeps one bit per image and attack, and reports the per-image
worst case over all of them as the robust accuracy. Each batch's attacks draw from a generator seeded by
(`eval_seed`, batch index), so results do not depend on batch order, resumption or the number of processes. Under
`torchrun` / `accelerate launch` each process evaluates its own contiguous shard of whole batches (the same batches
as one process would make) and the counts are summed. With a `resume_file`, finished batches are appended to it and
skipped when the same evaluation runs again. The Carlini et al. (2019) checks come out as pass/fail rows;
`write_report` writes `robustness.json`, `robustness.md` and `robust_accuracy_vs_eps.png`.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from transformers import default_data_collator

from .attacks import (
    eval_mode,
    feature_objective,
    fgsm_attack,
    frozen_parameters,
    logits_of,
    mi_objective,
    misclassified,
    pgd_attack,
    projected_gradient_ascent,
)
from .autoattack import IMPLEMENTATIONS, AutoAttackRunner, plan_autoattack
from .checkpoints import disk_full_reported
from .progress import ReportProgress
from .threat_model import EVALUATION_ATTACK, AttackBudget, check_budget, check_pixel_range

DEFAULT_SWEEP_255 = (0, 2, 4, 8, 16, 32, 64, 128, 255)  # eps values of the sweep, in 1/255
_FORWARD = 1 / 3  # a forward pass alone, in forward-and-backward passes (the time estimate's unit)


@dataclass
class RobustnessSettings:
    """What `evaluate_robustness` runs. Budgets are in [0, 1] pixel units; the fields are command-line arguments of
    `mimir-hf evaluate` and `mimir-hf run` (parsed by `HfArgumentParser`)."""

    epsilon: float = field(
        default=EVALUATION_ATTACK.epsilon, metadata={"help": "L-inf eps of every attack, in [0, 1]."}
    )
    step_size: float = field(default=EVALUATION_ATTACK.step_size, metadata={"help": "PGD step size, in [0, 1]."})
    pgd_steps: list[int] = field(
        default_factory=lambda: [EVALUATION_ATTACK.steps, 5 * EVALUATION_ATTACK.steps],
        metadata={"help": "Steps of the PGD attacks (one row each), e.g. 20 100."},
    )
    cw_steps: int = field(default=30, metadata={"help": "Steps of CW-inf (PGD on the margin loss)."})
    adaptive_steps: int = field(default=100, metadata={"help": "Steps of the adaptive PGD-MI and PGD-feature."})
    pgd_mi_weight: float | None = field(
        default=None, metadata={"help": "PGD-MI's HSIC weight (default: the model's config.mi_weight)."}
    )
    pgd_mi_sigma: float | None = field(
        default=None, metadata={"help": "PGD-MI's kernel width (default: the model's config.mi_sigma)."}
    )
    eps_sweep: list[float] = field(
        default_factory=lambda: [e / 255 for e in DEFAULT_SWEEP_255],
        metadata={"help": "eps values (in [0, 1]) of the PGD sweep."},
    )
    autoattack: bool = field(default=True, metadata={"help": "Run AutoAttack (standard version)."})
    autoattack_max_samples: int = field(
        default=-1, metadata={"help": "AutoAttack on the first N images only: -1 = all, 0 = none."}
    )
    autoattack_implementation: str = field(
        default="reference",
        metadata={"help": "'reference': Croce and Hein's code (pyautoattack); 'torchattacks': its re-implementation "
                  "(pip install --no-deps torchattacks), whose numbers differ (docs/autoattack.md)."},
    )  # fmt: skip
    autoattack_iterations: int = field(
        default=100,
        metadata={"help": "Iterations of AutoAttack's APGD-CE, APGD-T and FAB-T: 100 is the reference's standard "
                  "version (Square always makes 5000 queries); fewer is cheaper and weaker, and the report says so."},
    )  # fmt: skip
    eval_batch_size: int = field(default=256, metadata={"help": "Images per evaluation batch (per process)."})
    eval_seed: int = field(default=0, metadata={"help": "Seed of the attacks' random starts."})
    tolerance: float = field(
        default=0.5, metadata={"help": "Points of accuracy the 'never better' sanity checks allow (random starts)."}
    )

    def __post_init__(self):
        check_budget(self.epsilon, self.step_size, min(self.pgd_steps, default=0))
        for name in ("cw_steps", "adaptive_steps"):
            check_budget(self.epsilon, self.step_size, getattr(self, name), prefix=f"{name}: ")
        if any(not 0 <= eps <= 1 for eps in self.eps_sweep):
            raise ValueError(f"eps_sweep values must be in [0, 1] (pixel units), got {list(self.eps_sweep)}.")
        if self.autoattack_max_samples < -1:
            raise ValueError(
                f"autoattack_max_samples must be -1 (all images), 0 (none) or a positive count, got "
                f"{self.autoattack_max_samples}."
            )
        if self.eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be >= 1, got {self.eval_batch_size}.")
        if self.autoattack_iterations < 1:
            raise ValueError(
                f"autoattack_iterations must be >= 1 (100: the reference's standard version), got "
                f"{self.autoattack_iterations}."
            )
        if self.autoattack_implementation not in IMPLEMENTATIONS:
            raise ValueError(
                f"autoattack_implementation must be one of {IMPLEMENTATIONS}, got {self.autoattack_implementation!r}."
            )

    def budget(self, steps: int, epsilon: float | None = None) -> AttackBudget:
        """The PGD budget with `steps` steps (at `epsilon`, default the settings' eps; step eps/4 for other eps)."""
        if epsilon is None or epsilon == self.epsilon:
            return AttackBudget(self.epsilon, self.step_size, steps)
        return AttackBudget(epsilon, max(epsilon / 4, 1e-6), steps)


# ----------------------------------------------------------------------------------------------------------------
# The attack registry
# ----------------------------------------------------------------------------------------------------------------

AttackFunction = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class Attack:
    """One row of the report: `run(model, images, labels, generator)` returns adversarial images."""

    name: str
    title: str
    run: AttackFunction
    in_worst_case: bool = True  # False for the noise baseline
    max_samples: int = -1  # attack only the first N images of the set (-1: all)
    whole_batch: bool = False  # the objective is a batch statistic (PGD-MI's HSIC): attack every image of the batch
    same_as: str | None = None  # the very same attack as another row (same budget): its result is reused
    passes: float = 1.0  # forward-and-backward passes per image, at most: the unit of the report's time estimate


def _feature_attack(budget: AttackBudget) -> AttackFunction:
    def run(model, x, y, generator):
        with torch.no_grad(), eval_mode(model):
            clean = model.features(x).float()
        objective = feature_objective(model, clean)
        return projected_gradient_ascent(
            objective, x, budget, model=model, generator=generator, stop_when=misclassified(y)
        )

    return run


def _uniform_noise(epsilon: float) -> AttackFunction:
    def run(model, x, y, generator):
        signs = torch.randint(0, 2, x.shape, generator=generator, device=x.device).to(x.dtype) * 2 - 1
        return (x + epsilon * signs).clamp(0, 1)

    return run


def autoattack_status(settings: RobustnessSettings) -> str:
    """Why AutoAttack will not run ("skipped: disabled"), or "" when it will."""
    return "skipped: disabled" if not settings.autoattack or settings.autoattack_max_samples == 0 else ""


def attack_registry(model: nn.Module, settings: RobustnessSettings) -> list[Attack]:
    """Every attack of the report, in order: FGSM, PGD-k for each k, CW-inf, noise, the adaptive PGD-MI and
    PGD-feature (for models with `features` and `classifier`), AutoAttack (when enabled: `mimir_hf.autoattack`
    plans it, and refuses what cannot run before any attack does).

    The iterative attacks stop attacking an image at its first misclassified iterate (AutoAttack's convention: each
    image counts as broken if any iterate broke it), except PGD-MI, whose HSIC term needs the whole batch."""
    eps = settings.epsilon
    attacks = [Attack("fgsm", "FGSM", lambda m, x, y, g: fgsm_attack(m, x, y, eps), passes=1)]
    for steps in settings.pgd_steps:
        budget = settings.budget(steps)
        attacks.append(
            Attack(
                f"pgd{steps}", f"PGD-{steps}", lambda m, x, y, g, b=budget: pgd_attack(m, x, y, b, "ce", g, True),
                passes=steps,
            )
        )  # fmt: skip
    cw = settings.budget(settings.cw_steps)
    attacks.append(
        Attack(
            "cw_inf",
            "CW-inf (PGD on the margin loss)",
            lambda m, x, y, g: pgd_attack(m, x, y, cw, "margin", g, True),
            passes=settings.cw_steps,
        )
    )
    attacks.append(
        Attack("uniform_noise", "uniform ±eps noise", _uniform_noise(eps), in_worst_case=False, passes=_FORWARD)
    )
    if hasattr(model, "features") and hasattr(model, "classifier"):
        adaptive = settings.budget(settings.adaptive_steps)
        attacks.append(
            Attack(
                "pgd_mi",
                "PGD-MI (adaptive: CE + λ·HSIC)",
                lambda m, x, y, g: projected_gradient_ascent(
                    mi_objective(m, y, settings.pgd_mi_weight, settings.pgd_mi_sigma), x, adaptive, model=m, generator=g
                ),
                whole_batch=True,
                passes=settings.adaptive_steps,
            )
        )
        attacks.append(
            Attack(
                "pgd_feature", "PGD-feature (adaptive: feature L2)", _feature_attack(adaptive),
                passes=settings.adaptive_steps + _FORWARD,
            )
        )  # fmt: skip
    if not autoattack_status(settings):
        plan = plan_autoattack(
            model.config.num_labels, eps, settings.eval_seed, settings.autoattack_implementation,
            settings.autoattack_iterations,
        )  # fmt: skip
        attacks.append(
            Attack(
                "autoattack",
                "AutoAttack standard" if plan.standard else "AutoAttack (" + ", ".join(plan.attacks).upper() + ")",
                AutoAttackRunner(plan),
                max_samples=settings.autoattack_max_samples,
                passes=plan.passes,
            )
        )
    return attacks


def sweep_attacks(settings: RobustnessSettings) -> list[Attack]:
    """PGD with the first `pgd_steps` at every eps of the sweep (step eps/4, early stopping; eps = 0 is the clean
    image). The point whose budget equals the report's own PGD row's reuses that row's result."""
    steps = settings.pgd_steps[0]
    attacks = []
    for eps in settings.eps_sweep:
        same = None
        if eps == 0:
            run = lambda m, x, y, g: x
        else:
            budget = settings.budget(steps, epsilon=eps)
            run = lambda m, x, y, g, b=budget: pgd_attack(m, x, y, b, "ce", g, True)
            same = f"pgd{steps}" if budget == settings.budget(steps) else None
        passes = 0 if eps == 0 or same else steps
        attacks.append(
            Attack(f"sweep_{eps:.6f}", f"PGD-{steps} at eps {eps * 255:g}/255", run, same_as=same, passes=passes)
        )
    return attacks


# ----------------------------------------------------------------------------------------------------------------
# Running attacks, batch by batch
# ----------------------------------------------------------------------------------------------------------------


def _predicts(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), eval_mode(model):
        return logits_of(model, images).argmax(1) == labels


def evaluate_batch(
    model: nn.Module,
    attacks: list[Attack],
    images: torch.Tensor,
    labels: torch.Tensor,
    generator: torch.Generator,
    first_index: int = 0,
    seconds: dict[str, float] | None = None,
    cost: dict[str, dict[str, int]] | None = None,
    watch=None,
) -> dict[str, torch.Tensor]:
    """Per-image correctness (bool, on the CPU) of `model` on one batch, clean ("natural") and under each attack.

    Attacks run only on the images classified correctly when clean (a `whole_batch` attack, whose objective is a
    batch statistic, runs on all of them); the others count as broken. An attack with
    `max_samples` covers only images whose index in the whole set (`first_index` + position) is below it; its result
    holds just those. `seconds`, if given, accumulates each attack's wall time, and `cost` the images it attacked and
    the images its forward passes (and backward passes) carried. `watch` (a `mimir_hf.progress.ReportProgress`) shows
    each attack's progress.
    """
    check_pixel_range(images, "images")
    with frozen_parameters(model):  # the attacks differentiate the images only
        return _evaluate_batch(model, attacks, images, labels, generator, first_index, seconds, cost, watch)


def _evaluate_batch(
    model, attacks, images, labels, generator, first_index, seconds, cost, watch
) -> dict[str, torch.Tensor]:
    natural = _predicts(model, images, labels)
    results = {"natural": natural.cpu()}
    counter = _PassCounter(model) if cost is not None else None
    for attack in attacks:
        count = len(images) if attack.max_samples < 0 else max(0, min(len(images), attack.max_samples - first_index))
        if count == 0:
            continue
        if attack.same_as in results:
            results[attack.name] = results[attack.same_as].clone()
            continue
        start = time.perf_counter()
        if counter is not None:
            counter.reset()
        correct = torch.zeros(count, dtype=torch.bool, device=images.device)
        with watch.attack(attack, count) if watch is not None and attack.passes else contextlib.nullcontext():
            if attack.whole_batch:
                adversarial = attack.run(model, images[:count], labels[:count], generator)
                correct = natural[:count] & _predicts(model, adversarial, labels[:count])
            elif (todo := natural[:count].nonzero().squeeze(1)).numel():
                adversarial = attack.run(model, images[todo], labels[todo], generator)
                correct[todo] = _predicts(model, adversarial, labels[todo])
        results[attack.name] = correct.cpu()
        if seconds is not None:
            seconds[attack.name] = seconds.get(attack.name, 0.0) + time.perf_counter() - start
        if counter is not None:
            entry = cost.setdefault(attack.name, {"images": 0, "forward": 0, "backward": 0})
            entry["images"] += count
            entry["forward"] += counter.forward
            entry["backward"] += counter.backward
    if counter is not None:
        counter.remove()
    return results


class _PassCounter:
    """Counts the images that go through the model's trunk, forward only (no grad) or forward and backward (grad
    enabled: the attacks differentiate them), to report what each attack costs per image."""

    def __init__(self, model: nn.Module):
        trunk = getattr(model, "base_model", model)
        self.handle = trunk.register_forward_pre_hook(self._count, with_kwargs=True)
        self.reset()

    def reset(self) -> None:
        self.forward = self.backward = 0

    def _count(self, module, args, kwargs) -> None:
        images = args[0] if args else kwargs.get("pixel_values")
        if isinstance(images, torch.Tensor):
            if torch.is_grad_enabled() and images.requires_grad:
                self.backward += len(images)
            self.forward += len(images)

    def remove(self) -> None:
        self.handle.remove()


def correct_under_attack(
    model: nn.Module,
    attack: AttackFunction,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 256,
    seed: int = 0,
) -> torch.Tensor:
    """Per-image correctness (bool, CPU) of `model` under one attack function, over in-memory tensors."""
    device = next(model.parameters()).device
    results = []
    for start in range(0, len(images), batch_size):
        x, y = images[start : start + batch_size].to(device), labels[start : start + batch_size].to(device)
        generator = _batch_generator(device, seed, start // batch_size)
        results.append(evaluate_batch(model, [Attack("attack", "attack", attack)], x, y, generator)["attack"])
    return torch.cat(results)


def _check_outputs(model: nn.Module, images: torch.Tensor) -> None:
    """Before the first attack: the model gives one logit per class of its config (AutoAttack's targets and the
    labels' range depend on it), and the images are pixels in [0, 1]."""
    check_pixel_range(images, "the evaluation images")
    num_labels = getattr(getattr(model, "config", None), "num_labels", None)
    with torch.no_grad(), eval_mode(model):
        width = logits_of(model, images).shape[-1]
    if num_labels is not None and width != num_labels:
        raise ValueError(
            f"The model gives {width} logits per image but its config says num_labels={num_labels}; fix the config "
            "(or the head) so that both say the number of classes."
        )


def _seconds_per_pass(model: nn.Module, images: torch.Tensor) -> float:
    """Seconds of one image's forward and backward pass (input gradient only), timed on `images` after one warm-up:
    the unit of the report's time estimate."""
    timings = []
    with frozen_parameters(model), eval_mode(model), torch.enable_grad():
        for _ in range(2):
            start = time.perf_counter()
            x = images.detach().clone().requires_grad_(True)
            torch.autograd.grad(logits_of(model, x).sum(), x)
            if x.device.type == "cuda":
                torch.cuda.synchronize(x.device)
            timings.append(time.perf_counter() - start)
    return timings[-1] / len(images)


def _batch_generator(device: torch.device, seed: int, batch_index: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + batch_index)


# ----------------------------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class SweepPoint:
    epsilon: float
    epsilon_255: float
    accuracy: float


@dataclass
class SanityCheck:
    check: str
    passed: bool | None  # None: skipped
    detail: str


@dataclass
class RobustnessReport:
    """What `evaluate_robustness` returns; `to_dict()` is `robustness.json`. Accuracies in %."""

    num_samples: int
    natural_accuracy: float
    robust_accuracy: float
    robust_accuracy_attacks: list[str]
    accuracy: dict[str, float]
    attack_samples: dict[str, int]
    titles: dict[str, str]
    autoattack: str
    eps_sweep: list[SweepPoint]
    sanity_checks: list[SanityCheck]
    settings: dict
    seconds: dict[str, float] = field(default_factory=dict)  # wall time of each attack (this process)
    # per attack: seconds, forward passes and backward passes per image attacked (an image of a batch of B counts
    # 1/B of a batch's pass), to predict the report's cost on other hardware (see examples/benchmark.py)
    cost: dict[str, dict[str, float]] = field(default_factory=dict)
    info: dict = field(default_factory=dict)  # model, device, ... (set by the caller)

    def to_dict(self) -> dict:
        return asdict(self)


def worst_case(results: dict[str, torch.Tensor], attack_names: list[str]) -> torch.Tensor:
    """Per image: still correct after every attack in `attack_names` (an attack that covered only a prefix of the
    images counts on that prefix)."""
    survived = results["natural"].clone()
    for name in attack_names:
        if name in results:  # absent: the attack's images ended in an earlier batch
            survived[: len(results[name])] &= results[name]
    return survived


def _percent(correct: torch.Tensor | int, total: int | None = None) -> float:
    if isinstance(correct, torch.Tensor):
        correct, total = int(correct.sum()), len(correct)
    return round(100.0 * correct / total, 2) if total else 0.0


def _sum_over_processes(values: list[int]) -> list[int]:
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return values
    backend = torch.distributed.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    tensor = torch.tensor(values, dtype=torch.int64, device=device)
    torch.distributed.all_reduce(tensor)
    return tensor.tolist()


def _shard(dataset: Dataset, batch_size: int) -> tuple[Dataset, int]:
    """This process's contiguous share of `dataset` (no padding, no duplicates) and its first global batch index.

    Shards are made of whole batches of the unsharded evaluation (the batches are split among the processes), so every
    batch holds the same images, and draws from the same generator, whatever the number of processes."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return dataset, 0
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    batches = -(-len(dataset) // batch_size)
    first, last = rank * batches // world, (rank + 1) * batches // world
    return Subset(dataset, range(first * batch_size, min(last * batch_size, len(dataset)))), first


def _batches(data, settings: RobustnessSettings, num_workers: int) -> tuple[Iterable, int]:
    """(batches of {"pixel_values", "labels"}, global index of the first batch) from tensors, a Dataset or a
    DataLoader (a DataLoader is taken as it is: no sharding)."""
    if isinstance(data, DataLoader):
        return data, 0
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        images, labels = data
        data = [{"pixel_values": image, "labels": label} for image, label in zip(images, labels, strict=True)]
    dataset, offset = _shard(data, settings.eval_batch_size)
    loader = DataLoader(
        dataset, batch_size=settings.eval_batch_size, shuffle=False, collate_fn=default_data_collator,
        num_workers=num_workers, generator=torch.Generator(),  # its own: iterating must not draw from the global RNG
    )  # fmt: skip
    return loader, offset


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def tensors_digest(tensors) -> str:
    """A short sha256 of tensors' values, shapes and dtypes (weights, or a batch of images)."""
    digest = hashlib.sha256()
    for tensor in tensors:
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:16]


def model_identity(model: nn.Module) -> dict:
    """What makes a model's numbers its own: its weights and buffers (the normalisation of a pixel-space wrapper
    included), its config and its class."""
    config = getattr(model, "config", None)
    config = config.to_dict() if hasattr(config, "to_dict") else None
    return {
        "model weights": tensors_digest([*model.state_dict().values()]),
        "model config": _digest(config),
        "model class": type(model).__name__,
    }


class _ResumeFile:
    """Finished batches, one JSON line each, under a header that identifies what produced them (the model's weights,
    config and class, the data's first batch and size, the settings); a file written for anything else is refused,
    naming what differs, rather than mixed in."""

    def __init__(self, path: str | None, identity: dict):
        self.path, self.done = path, {}
        if path is None:
            return
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        self.path = f"{path}.rank{rank}" if torch.distributed.is_initialized() else path
        parts = {name: _digest(value) for name, value in identity.items()}
        if os.path.isfile(self.path):
            lines, complete = [], True
            with open(self.path) as f:
                for line in f:
                    try:
                        lines.append(json.loads(line))
                    except json.JSONDecodeError:  # the last line of a run killed while writing it
                        complete = False
                        break
            recorded = lines[0].get("identity") if lines else None
            if not isinstance(recorded, dict) or recorded != parts:
                differ = [name for name in parts if not isinstance(recorded, dict) or recorded.get(name) != parts[name]]
                raise ValueError(
                    f"{self.path} holds results of another evaluation (its {', '.join(differ)} differ from this "
                    "one's): they are not this model's numbers. Delete or move that file to start afresh, or choose "
                    "another --resume_file."
                )
            if not complete:  # drop the partial line, so that the next batch starts a line of its own
                with open(self.path, "w") as f:
                    f.writelines(json.dumps(line) + "\n" for line in lines)
            self.done = {line["batch"]: line for line in lines[1:]}
        else:
            with open(self.path, "w") as f:
                f.write(json.dumps({"identity": parts}) + "\n")

    def get(self, index: int):
        line = self.done.get(index)
        if line is None:
            return None
        results = {name: torch.tensor(bits, dtype=torch.bool) for name, bits in line["results"].items()}
        return results, line["seconds"], line.get("cost", {})

    def add(self, index: int, results: dict[str, torch.Tensor], seconds: dict[str, float], cost: dict) -> None:
        if self.path is None:
            return
        line = {"batch": index, "results": {k: v.int().tolist() for k, v in results.items()}, "seconds": seconds,
                "cost": cost}  # fmt: skip
        with open(self.path, "a") as f:
            f.write(json.dumps(line) + "\n")
            f.flush()
            os.fsync(f.fileno())


def evaluate_robustness(
    model: nn.Module,
    data,
    settings: RobustnessSettings | None = None,
    progress: Callable[[str], None] | None = None,
    resume_file: str | None = None,
    num_workers: int = 0,
    show_progress: bool = False,
    resume_identity: dict | None = None,
) -> RobustnessReport:
    """Run the whole battery on `data`: a map-style dataset of {"pixel_values" in [0, 1], "labels"}, a DataLoader
    of such batches, or an `(images, labels)` pair of tensors. Returns the report (accuracies in %).

    `progress` receives the stage list with a time estimate up front, then a line per attack and batch (images per
    second) and per batch; `show_progress` adds bars: the report's, whose remaining time is its ETA, and each
    attack's, advancing step by step.

    `resume_identity` adds what else the resume file must have come from (the image processor, a label mapping).

    The model is left exactly as it was (weights, train/eval mode, requires_grad, the global RNG); the same model,
    data and settings give the same numbers.
    """
    settings = settings or RobustnessSettings()
    say = progress or (lambda message: None)
    device = next(model.parameters()).device
    attacks = attack_registry(model, settings)
    sweep = sweep_attacks(settings)
    loader, first_batch = _batches(data, settings, num_workers)
    first_image = first_batch * settings.eval_batch_size
    # A resumed evaluation must see the same shard: same settings, first batch and number of images.
    shard = getattr(loader, "dataset", None)
    shard_size = len(shard) if hasattr(shard, "__len__") else None
    batches = iter(loader)
    first = next(batches, None)
    identity = {}
    if resume_file is not None:  # what the resume file's results must have come from
        data_identity = {"first image": first_image, "images": shard_size}
        if first is not None:
            data_identity["first batch"] = tensors_digest([first["pixel_values"], first["labels"]])
        identity = {**model_identity(model), "data": data_identity, "settings": asdict(settings)}
        identity.update(resume_identity or {})  # the caller's parts: e.g. the image processor and the label mapping
    resume = _ResumeFile(resume_file, identity)

    names = ["natural"] + [a.name for a in attacks] + [a.name for a in sweep]
    correct_counts, totals = dict.fromkeys(names, 0), dict.fromkeys(names, 0)
    worst_names = [a.name for a in attacks if a.in_worst_case]
    robust = num_samples = 0
    aa_reference = 0  # short PGD's correct count on the images AutoAttack ran on
    seconds: dict[str, float] = {}
    cost: dict[str, dict[str, int]] = {}
    short = f"pgd{settings.pgd_steps[0]}"
    resumed_batches = 0  # batches whose results came from the resume file
    if first is not None:
        _check_outputs(model, first["pixel_values"][:2].to(device))
    watch = None
    if (progress is not None or show_progress) and first is not None and shard_size:
        covered = {
            a.name: shard_size if a.max_samples < 0 else max(0, min(shard_size, a.max_samples - first_image))
            for a in attacks + sweep
        }
        count = -(-shard_size // settings.eval_batch_size)
        pace = _seconds_per_pass(model, first["pixel_values"][:8].to(device))
        watch = ReportProgress(attacks + sweep, covered, count, pace, say, disable=not show_progress)
        say(watch.plan())
        watch.start()
    start_time = time.time()
    for index, batch in enumerate(itertools.chain([first] if first is not None else [], batches)):
        if watch is not None:
            watch.batch = index
        x = batch["pixel_values"].to(device)
        y = batch["labels"].to(device)
        cached = resume.get(index)
        if cached is None:
            batch_seconds: dict[str, float] = {}
            batch_cost: dict[str, dict[str, int]] = {}
            generator = _batch_generator(device, settings.eval_seed, first_batch + index)
            results = evaluate_batch(
                model, attacks + sweep, x, y, generator, first_image + num_samples, batch_seconds, batch_cost, watch
            )
            resume.add(index, results, batch_seconds, batch_cost)
        else:
            results, batch_seconds, batch_cost = cached
            resumed_batches += 1
        for name, value in batch_seconds.items():
            seconds[name] = seconds.get(name, 0.0) + value
        for name, counts in batch_cost.items():
            total = cost.setdefault(name, dict.fromkeys(counts, 0))
            for key, value in counts.items():
                total[key] += value
        for name, bits in results.items():
            correct_counts[name] += int(bits.sum())
            totals[name] += len(bits)
        robust += int(worst_case(results, worst_names).sum())
        if "autoattack" in results:
            aa_reference += int(results[short][: len(results["autoattack"])].sum())
        num_samples += len(x)
        say(f"batch {index + 1}: {num_samples} images, {time.time() - start_time:.1f} s")
    if watch is not None:
        watch.close()

    # Sum over processes (one process: unchanged); costs and seconds stay this process's (per image they compare).
    flat = _sum_over_processes(
        [correct_counts[n] for n in names] + [totals[n] for n in names] + [robust, num_samples, aa_reference]
    )
    k = len(names)
    correct_counts = dict(zip(names, flat[:k], strict=True))
    totals = dict(zip(names, flat[k : 2 * k], strict=True))
    robust, num_samples, aa_reference = flat[2 * k :]

    ran = [n for n in names if totals[n] > 0]
    accuracy = {n: _percent(correct_counts[n], totals[n]) for n in ran if not n.startswith("sweep_")}
    titles = {"natural": "natural (no attack)", **{a.name: a.title for a in attacks + sweep}}
    sweep_points = [
        SweepPoint(eps, round(eps * 255, 2), _percent(correct_counts[a.name], totals[a.name]))
        for eps, a in zip(settings.eps_sweep, sweep, strict=True)
    ]
    status = autoattack_status(settings)
    reference = None
    if "autoattack" in accuracy:
        status = next(a.run.description for a in attacks if a.name == "autoattack")
        reference = _percent(aa_reference, totals["autoattack"])
        if totals["autoattack"] < num_samples:
            status += (
                f", on the first {totals['autoattack']} of {num_samples} images "
                f"(PGD-{settings.pgd_steps[0]} there: {reference}%)"
            )
    return RobustnessReport(
        num_samples=num_samples,
        natural_accuracy=accuracy["natural"],
        robust_accuracy=_percent(robust, num_samples),
        robust_accuracy_attacks=[n for n in worst_names if n in accuracy],
        accuracy=accuracy,
        attack_samples={n: totals[n] for n in accuracy},
        titles={n: titles[n] for n in ran},
        autoattack=status,
        eps_sweep=sweep_points,
        sanity_checks=sanity_checks(accuracy, sweep_points, settings.tolerance, reference),
        settings={
            **asdict(settings),
            "epsilon_255": round(settings.epsilon * 255, 2),
            "step_size_255": round(settings.step_size * 255, 2),
        },
        seconds={name: round(value, 2) for name, value in seconds.items()},
        info={"resumed": {"batches": resumed_batches, "file": resume.path}} if resumed_batches else {},
        cost={
            name: {
                "seconds_per_image": round(seconds.get(name, 0.0) / max(c["images"], 1), 5),
                "forward_passes_per_image": round(c["forward"] / max(c["images"], 1), 2),
                "backward_passes_per_image": round(c["backward"] / max(c["images"], 1), 2),
            }
            for name, c in cost.items()
        },
    )


# ----------------------------------------------------------------------------------------------------------------
# Sanity checks
# ----------------------------------------------------------------------------------------------------------------


def sanity_checks(
    accuracy: dict[str, float],
    sweep: list[SweepPoint],
    tolerance: float = 0.5,
    autoattack_reference: float | None = None,
) -> list[SanityCheck]:
    """Carlini et al. (2019) checks against gradient masking.

    `autoattack_reference` is the short PGD's accuracy on the images AutoAttack ran on (all of them by default).
    """
    pgd = [name for name in accuracy if name.startswith("pgd") and name[3:].isdigit()]
    short, long = pgd[0], pgd[-1]
    checks = []

    def check(name: str, passed: bool | None, detail: str) -> None:
        checks.append(SanityCheck(name, None if passed is None else bool(passed), detail))

    largest = sweep[-1]
    check(
        "accuracy reaches 0 at a large eps",
        largest.accuracy == 0.0,
        f"{short.upper()} at eps {largest.epsilon_255:g}/255: {largest.accuracy}%",
    )
    check(
        "more PGD steps never help the model",
        accuracy[long] <= accuracy[short] + tolerance,
        f"{long.upper()} {accuracy[long]}% vs {short.upper()} {accuracy[short]}% (tolerance {tolerance} pt)",
    )
    check(
        "multi-step PGD at least as strong as FGSM",
        accuracy[short] <= accuracy["fgsm"] + tolerance,
        f"{short.upper()} {accuracy[short]}% vs FGSM {accuracy['fgsm']}%",
    )
    if "autoattack" in accuracy:
        reference = accuracy[short] if autoattack_reference is None else autoattack_reference
        check(
            "AutoAttack at least as strong as PGD",
            accuracy["autoattack"] <= reference + tolerance,
            f"AutoAttack {accuracy['autoattack']}% vs {short.upper()} {reference}% on the same images",
        )
    else:
        check("AutoAttack at least as strong as PGD", None, "AutoAttack skipped")
    check(
        "random noise of the same eps weaker than PGD",
        accuracy["uniform_noise"] >= accuracy[short],
        f"noise {accuracy['uniform_noise']}% vs {short.upper()} {accuracy[short]}%",
    )
    values = [point.accuracy for point in sweep]
    starts_clean = sweep[0].epsilon > 0 or values[0] == accuracy["natural"]
    check(
        "accuracy falls monotonically with eps, from the natural accuracy",
        all(b <= a + tolerance for a, b in zip(values, values[1:], strict=False)) and starts_clean,
        " -> ".join(f"{point.epsilon_255:g}:{point.accuracy}" for point in sweep),
    )
    return checks


# ----------------------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------------------


def report_notes(info: dict) -> list[str]:
    """What a reader must know about how the numbers were made, when it is out of the ordinary: an untrained head,
    labels mapped between the data's classes and the model's, results read back from a resume file."""
    notes = []
    if info.get("untrained_head"):
        notes.append(
            f"the classification head ({', '.join(info['untrained_head'][:4])}) was not in the checkpoint and was "
            "initialised at random (--allow_new_head): these are the accuracies of an untrained head."
        )
    if info.get("label_mapping"):
        pairs = ", ".join(f"{data} -> {model}" for data, model in list(info["label_mapping"].items())[:10])
        notes.append(f"the data's classes were mapped onto the model's (data -> model: {pairs}).")
    if info.get("resumed"):
        resumed = info["resumed"]
        notes.append(
            f"{resumed['batches']} batches were read back from the resume file {resumed['file']}, written by an "
            "earlier run of this same evaluation (same model weights, data and settings)."
        )
    return notes


def report_markdown(report: RobustnessReport) -> str:
    """The report as a readable Markdown table (the content of `robustness.md`)."""
    s = report.settings
    lines = [
        "# Robustness report",
        "",
        f"L-inf eps = {s['epsilon_255']:g}/255, PGD step {s['step_size_255']:g}/255 with random start, "
        f"{report.num_samples} evaluation images, seed {s['eval_seed']}. Attacks start from the images classified "
        "correctly; the others count as broken. Robust accuracy is the per-image worst case over: "
        f"{', '.join(report.robust_accuracy_attacks)}.",
        "",
    ]
    if report.info.get("preprocessing"):
        lines += [f"Model input: {report.info['preprocessing']}.", ""]
    lines += [f"**Note:** {note}" for note in report_notes(report.info)]
    if report_notes(report.info):
        lines.append("")
    lines += [
        "| attack | accuracy (%) |",
        "| --- | --- |",
    ]
    for name, value in report.accuracy.items():
        label = report.titles.get(name, name)
        if report.attack_samples[name] < report.num_samples:
            label += f" (first {report.attack_samples[name]} images)"
        lines.append(f"| {label} | {value:.2f} |")
    lines += [
        f"| **worst case over all attacks** | **{report.robust_accuracy:.2f}** |",
        "",
        f"AutoAttack: {report.autoattack}.",
        "",
        "## Robust accuracy vs eps (PGD)",
        "",
        "| eps (/255) | accuracy (%) |",
        "| --- | --- |",
    ]
    lines += [f"| {point.epsilon_255:g} | {point.accuracy:.2f} |" for point in report.eps_sweep]
    lines += [
        "",
        "## Gradient-masking sanity checks (Carlini et al. 2019)",
        "",
        "| check | result | detail |",
        "| --- | --- | --- |",
    ]
    for row in report.sanity_checks:
        result = "skipped" if row.passed is None else ("pass" if row.passed else "**FAIL**")
        lines.append(f"| {row.check} | {result} | {row.detail} |")
    return "\n".join(lines) + "\n"


def plot_eps_sweep(report: RobustnessReport, path: str) -> None:
    """Robust accuracy against eps, as a PNG (matplotlib's object API: no global backend or state is changed)."""
    from matplotlib.figure import Figure

    xs = [point.epsilon_255 for point in report.eps_sweep]
    ys = [point.accuracy for point in report.eps_sweep]
    figure = Figure(figsize=(5, 3.5))
    axis = figure.subplots()
    axis.plot(xs, ys, marker="o")
    axis.set_xscale("symlog", linthresh=1)
    axis.axvline(report.settings["epsilon_255"], color="grey", linestyle="--", label="evaluation eps")
    axis.set_xlabel("L-inf eps (/255)")
    axis.set_ylabel(f"accuracy under PGD-{report.settings['pgd_steps'][0]} (%)")
    axis.set_ylim(-2, 102)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def write_report(report: RobustnessReport, output_dir: str) -> None:
    """`robustness.json`, `robustness.md` and `robust_accuracy_vs_eps.png` in `output_dir`."""
    os.makedirs(output_dir, exist_ok=True)
    with disk_full_reported(output_dir, 2**20, "the report"):  # its three files take well under 1 MiB
        with open(os.path.join(output_dir, "robustness.json"), "w") as f:
            json.dump(report.to_dict(), f, indent=2, default=str)
        with open(os.path.join(output_dir, "robustness.md"), "w") as f:
            f.write(report_markdown(report))
        plot_eps_sweep(report, os.path.join(output_dir, "robust_accuracy_vs_eps.png"))


__all__ = [
    "Attack",
    "RobustnessReport",
    "RobustnessSettings",
    "attack_registry",
    "correct_under_attack",
    "evaluate_batch",
    "evaluate_robustness",
    "report_markdown",
    "sanity_checks",
    "sweep_attacks",
    "worst_case",
    "write_report",
]
