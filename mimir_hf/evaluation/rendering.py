"""The report as files: `robustness.md` (a Markdown table with its notes), `robust_accuracy_vs_eps.png` and
`robustness.json` (`write_report`)."""

from __future__ import annotations

import json
import os

from ..checkpoints import disk_full_reported
from .report import RobustnessReport


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
