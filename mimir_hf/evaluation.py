"""The robustness report: natural accuracy, a battery of L-inf attacks, an eps sweep, and gradient-masking checks.

`evaluate_robustness` runs every attack of `mimir_hf.attacks` (plus AutoAttack through torchattacks when installed)
on the same images, keeps each image's result per attack, and reports the worst case over all of them as the robust
accuracy. The Carlini et al. (2019) sanity checks come out as pass/fail rows. `write_report` writes
`robustness.json`, `robustness.md` and `robust_accuracy_vs_eps.png`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .attacks import (
    eval_mode,
    feature_objective,
    fgsm_attack,
    logits_of,
    mi_objective,
    pgd_attack,
    projected_gradient_ascent,
)
from .configuration_mimir import check_attack_budget

DEFAULT_SWEEP = (0, 2, 4, 8, 16, 32, 64, 128, 255)  # in 1/255


@dataclass
class RobustnessSettings:
    """What `evaluate_robustness` runs. Budgets are in [0, 1] pixel units."""

    epsilon: float = 8 / 255
    step_size: float = 2 / 255
    pgd_steps: tuple[int, int] = (20, 100)
    cw_steps: int = 30
    adaptive_steps: int = 100
    mi_weight: float = 1e-5
    eps_sweep: tuple[float, ...] = tuple(e / 255 for e in DEFAULT_SWEEP)
    autoattack: bool = True
    autoattack_max_samples: int | None = None  # AutoAttack on the first N images only (it is slow on a CPU)
    batch_size: int = 256
    seed: int = 0
    tolerance: float = 0.5  # points of accuracy allowed by the "never better" checks (random starts differ)

    def __post_init__(self):
        check_attack_budget(self.epsilon, self.step_size, min(self.pgd_steps))
        if any(not 0 <= eps <= 1 for eps in self.eps_sweep):
            raise ValueError(f"eps_sweep values must be in [0, 1], got {list(self.eps_sweep)}.")


def _accuracy(correct: torch.Tensor) -> float:
    return round(100.0 * correct.float().mean().item(), 2)


def _batched(images, labels, batch_size) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(images[i : i + batch_size], labels[i : i + batch_size]) for i in range(0, len(images), batch_size)]


def correct_under_attack(
    model: nn.Module, attack: Callable, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256
) -> torch.Tensor:
    """Per-image correctness (bool, on the CPU) of `model` on `attack(images, labels)`, batch by batch on its device."""
    device = next(model.parameters()).device
    results = []
    for x, y in _batched(images, labels, batch_size):
        x, y = x.to(device), y.to(device)
        adversarial = attack(x, y)
        with torch.no_grad(), eval_mode(model):
            results.append((logits_of(model, adversarial).argmax(1) == y).cpu())
    return torch.cat(results)


def _autoattack(model, images, labels, settings) -> tuple[torch.Tensor | None, str]:
    """Per-image correctness under AutoAttack "standard" (torchattacks' port), or None and why it was skipped."""
    try:
        import torchattacks
    except ImportError:
        return None, "skipped: not installed (pip install --no-deps torchattacks; pip install scipy requests tqdm)"

    class Logits(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return logits_of(self.inner, x)

    num_classes = model.config.num_labels
    wrapped = Logits(model).eval()
    attack = torchattacks.AutoAttack(
        wrapped, norm="Linf", eps=settings.epsilon, version="standard", n_classes=num_classes, seed=settings.seed
    )
    limit = settings.autoattack_max_samples or len(images)

    def run(x, y):
        with eval_mode(model):
            return attack(x, y)

    correct = correct_under_attack(model, run, images[:limit], labels[:limit], settings.batch_size)
    return correct, f"torchattacks {torchattacks.__version__} AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square)"


def evaluate_robustness(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    settings: RobustnessSettings | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Run the whole battery on `images` (in [0, 1]) and `labels`; returns the report as a JSON-ready dict.

    The model is left exactly as it was (weights, train/eval mode, requires_grad); attacks are seeded from
    `settings.seed`, so the same model and data give the same numbers.
    """
    settings = settings or RobustnessSettings()
    say = progress or (lambda message: None)
    eps, alpha, (short, long) = settings.epsilon, settings.step_size, settings.pgd_steps
    torch.manual_seed(settings.seed)
    correct: dict[str, torch.Tensor] = {}

    def run(name: str, attack: Callable) -> None:
        say(name)
        correct[name] = correct_under_attack(model, attack, images, labels, settings.batch_size)

    run("natural", lambda x, y: x)
    run("fgsm", lambda x, y: fgsm_attack(model, x, y, epsilon=eps))
    run(f"pgd{short}", lambda x, y: pgd_attack(model, x, y, eps, alpha, short))
    run(f"pgd{long}", lambda x, y: pgd_attack(model, x, y, eps, alpha, long))
    run("cw_inf", lambda x, y: pgd_attack(model, x, y, eps, alpha, settings.cw_steps, loss="margin"))
    run("uniform_noise", lambda x, y: (x + eps * (2 * torch.randint_like(x, 2) - 1)).clamp(0, 1))
    adaptive = hasattr(model, "features") and hasattr(model, "classifier")
    if adaptive:
        run(
            "pgd_mi",
            lambda x, y: projected_gradient_ascent(
                mi_objective(model, y, weight=settings.mi_weight), x,
                epsilon=eps, step_size=alpha, steps=settings.adaptive_steps, model=model,
            ),
        )

        def feature_attack(x, y):
            with torch.no_grad(), eval_mode(model):
                clean = model.features(x).float()
            return projected_gradient_ascent(
                feature_objective(model, clean), x, epsilon=eps, step_size=alpha, steps=settings.adaptive_steps,
                model=model,
            )

        run("pgd_feature", feature_attack)

    autoattack_status = "skipped: disabled"
    if settings.autoattack:
        say("autoattack")
        aa, autoattack_status = _autoattack(model, images, labels, settings)
        if aa is not None:
            correct["autoattack"] = aa

    sweep = []
    for sweep_eps in settings.eps_sweep:
        say(f"pgd{short} at eps {sweep_eps:.4f}")
        step = max(sweep_eps / 4, 1e-6)
        if sweep_eps == 0:
            sweep_correct = correct["natural"]
        else:
            sweep_correct = correct_under_attack(
                model, lambda x, y, e=sweep_eps, a=step: pgd_attack(model, x, y, e, a, short), images, labels,
                settings.batch_size,
            )
        sweep.append({"epsilon": sweep_eps, "epsilon_255": round(sweep_eps * 255, 2), "accuracy": _accuracy(sweep_correct)})

    # Per-image worst case over every attack; AutoAttack counts on the images it ran on (a prefix of the set).
    attacks = [name for name in correct if name not in ("natural", "uniform_noise")]
    broken = torch.zeros(len(images), dtype=torch.bool)
    for name in attacks:
        broken[: len(correct[name])] |= ~correct[name]
    accuracy = {name: _accuracy(values) for name, values in correct.items()}
    autoattack_reference = None
    if "autoattack" in correct:
        subset = len(correct["autoattack"])
        autoattack_reference = _accuracy(correct[f"pgd{short}"][:subset])
        if subset < len(images):
            autoattack_status += f", on the first {subset} of {len(images)} images (PGD-{short} there: {autoattack_reference}%)"
    report = {
        "num_samples": len(images),
        "natural_accuracy": accuracy["natural"],
        "robust_accuracy": _accuracy(~broken),
        "robust_accuracy_attacks": attacks,
        "accuracy": accuracy,
        "autoattack": autoattack_status,
        "autoattack_samples": len(correct["autoattack"]) if "autoattack" in correct else 0,
        "eps_sweep": sweep,
        "sanity_checks": sanity_checks(accuracy, sweep, settings.tolerance, autoattack_reference),
        "settings": {**asdict(settings), "epsilon_255": round(eps * 255, 2), "step_size_255": round(alpha * 255, 2)},
    }
    return report


def sanity_checks(
    accuracy: dict[str, float], sweep: list[dict], tolerance: float = 0.5, autoattack_reference: float | None = None
) -> list[dict]:
    """Carlini et al. (2019) checks against gradient masking, each `{"check", "passed", "detail"}`.

    `autoattack_reference` is the short PGD's accuracy on the images AutoAttack ran on (all of them by default).
    """
    short = next(name for name in accuracy if name.startswith("pgd") and name[3:].isdigit())
    long = [name for name in accuracy if name.startswith("pgd") and name[3:].isdigit()][-1]
    checks = []

    def check(name: str, passed: bool, detail: str) -> None:
        checks.append({"check": name, "passed": bool(passed), "detail": detail})

    largest = sweep[-1]
    check(
        "accuracy reaches 0 at a large eps",
        largest["accuracy"] == 0.0,
        f"{short.upper()} at eps {largest['epsilon_255']}/255: {largest['accuracy']}%",
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
        checks.append({"check": "AutoAttack at least as strong as PGD", "passed": None, "detail": "AutoAttack skipped"})
    check(
        "random noise of the same eps weaker than PGD",
        accuracy["uniform_noise"] >= accuracy[short],
        f"noise {accuracy['uniform_noise']}% vs {short.upper()} {accuracy[short]}%",
    )
    values = [point["accuracy"] for point in sweep]
    check(
        "accuracy falls monotonically with eps, from the natural accuracy",
        all(b <= a + tolerance for a, b in zip(values, values[1:], strict=False)) and (sweep[0]["epsilon"] > 0 or values[0] == accuracy["natural"]),
        " -> ".join(f"{point['epsilon_255']:g}:{point['accuracy']}" for point in sweep),
    )
    return checks


_ATTACK_NAMES = {
    "natural": "natural (no attack)",
    "fgsm": "FGSM",
    "cw_inf": "CW-inf (PGD on the margin loss)",
    "uniform_noise": "uniform ±eps noise",
    "pgd_mi": "PGD-MI (adaptive: CE + λ·HSIC)",
    "pgd_feature": "PGD-feature (adaptive: feature L2)",
    "autoattack": "AutoAttack standard",
}


def report_markdown(report: dict) -> str:
    """The report as a readable Markdown table (the content of `robustness.md`)."""
    s = report["settings"]
    lines = [
        "# Robustness report",
        "",
        f"L-inf eps = {s['epsilon_255']}/255, PGD step {s['step_size_255']}/255 with random start, "
        f"{report['num_samples']} evaluation images, seed {s['seed']}. "
        f"Robust accuracy is the per-image worst case over: {', '.join(report['robust_accuracy_attacks'])}.",
        "",
        "| attack | accuracy (%) |",
        "| --- | --- |",
    ]
    for name, value in report["accuracy"].items():
        label = _ATTACK_NAMES.get(name, name.upper().replace("PGD", "PGD-") if name.startswith("pgd") else name)
        if name == "autoattack" and report["autoattack_samples"] < report["num_samples"]:
            label += f" (first {report['autoattack_samples']} images)"
        lines.append(f"| {label} | {value:.2f} |")
    lines += [f"| **worst case over all attacks** | **{report['robust_accuracy']:.2f}** |", "", f"AutoAttack: {report['autoattack']}.", ""]
    lines += ["## Robust accuracy vs eps (PGD)", "", "| eps (/255) | accuracy (%) |", "| --- | --- |"]
    lines += [f"| {point['epsilon_255']:g} | {point['accuracy']:.2f} |" for point in report["eps_sweep"]]
    lines += ["", "## Gradient-masking sanity checks (Carlini et al. 2019)", "", "| check | result | detail |", "| --- | --- | --- |"]
    for row in report["sanity_checks"]:
        result = "skipped" if row["passed"] is None else ("pass" if row["passed"] else "**FAIL**")
        lines.append(f"| {row['check']} | {result} | {row['detail']} |")
    return "\n".join(lines) + "\n"


def plot_eps_sweep(report: dict, path: str) -> None:
    """Robust accuracy against eps, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [point["epsilon_255"] for point in report["eps_sweep"]]
    ys = [point["accuracy"] for point in report["eps_sweep"]]
    figure, axis = plt.subplots(figsize=(5, 3.5))
    axis.plot(xs, ys, marker="o")
    axis.set_xscale("symlog", linthresh=1)
    axis.axvline(report["settings"]["epsilon_255"], color="grey", linestyle="--", label="evaluation eps")
    axis.set_xlabel("L-inf eps (/255)")
    axis.set_ylabel(f"accuracy under PGD-{report['settings']['pgd_steps'][0]} (%)")
    axis.set_ylim(-2, 102)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report(report: dict, output_dir: str) -> None:
    """`robustness.json`, `robustness.md` and `robust_accuracy_vs_eps.png` in `output_dir`."""
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "robustness.json"), "w") as f:
        json.dump(report, f, indent=2, default=lambda value: list(value) if isinstance(value, tuple) else str(value))
    with open(os.path.join(output_dir, "robustness.md"), "w") as f:
        f.write(report_markdown(report))
    plot_eps_sweep(report, os.path.join(output_dir, "robust_accuracy_vs_eps.png"))




def plot_reconstructions(model, images: torch.Tensor, path: str, seed: int = 0) -> None:
    """A grid of clean x, adversarial x' (the pre-training attack), masked x', and the reconstruction, one row each.

    With `norm_pix_loss` the model predicts per-patch normalised pixels; the plot un-normalises each predicted patch
    with the mean and variance of the *clean target* patch (as MAE's visualisation does), so it shows shapes, not
    the model's own colour estimate.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .attacks import mae_attack

    device = next(model.parameters()).device
    images = images.to(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    adversarial = mae_attack(model, images, generator=generator)
    noise = torch.rand(images.shape[0], model.config.num_patches, generator=generator, device=device)
    with torch.no_grad(), eval_mode(model):
        out = model(images, adversarial_pixel_values=adversarial, noise=noise, compute_mi_loss=False)
        prediction = out.logits.float()
        if model.config.norm_pix_loss:
            target = model.patchify(images.float())
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            prediction = prediction * (var + 1e-6) ** 0.5 + mean
        mask = out.mask.unsqueeze(-1)
        masked = model.unpatchify(model.patchify(adversarial.float()) * (1 - mask) + 0.5 * mask)
        reconstruction = model.unpatchify(prediction * mask + model.patchify(adversarial.float()) * (1 - mask))
    rows = [("clean x", images), ("adversarial x'", adversarial), ("masked x' (encoder input)", masked),
            ("reconstruction (visible: x')", reconstruction)]
    n = images.shape[0]
    figure, axes = plt.subplots(len(rows), n, figsize=(1.3 * n, 1.45 * len(rows)), squeeze=False)
    for r, (title, batch) in enumerate(rows):
        for c in range(n):
            picture = batch[c].clamp(0, 1).permute(1, 2, 0).cpu().numpy()
            axes[r][c].imshow(picture.squeeze(-1) if picture.shape[-1] == 1 else picture, cmap="gray", vmin=0, vmax=1)
            axes[r][c].axis("off")
        axes[r][0].set_title(title, fontsize=8, loc="left")
    note = " (per-patch normalised predictions shown with each clean patch's mean/var)" if model.config.norm_pix_loss else ""
    figure.suptitle(f"MIMIR reconstructions{note}", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


__all__ = [
    "RobustnessSettings",
    "correct_under_attack",
    "evaluate_robustness",
    "plot_reconstructions",
    "report_markdown",
    "sanity_checks",
    "write_report",
]
