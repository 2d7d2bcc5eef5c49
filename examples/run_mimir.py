#!/usr/bin/env python
"""The whole MIMIR recipe in one command: pre-training -> adversarial fine-tuning -> robustness report.

    python examples/run_mimir.py --output_dir out/mimir                 # digits, offline, a few minutes on 2 CPUs
    python examples/run_mimir.py --output_dir out/compare --compare     # 4 recipes x 3 seeds -> comparison.md

Each stage is the corresponding script (`run_pretraining.py`, `run_finetuning.py`, `run_evaluation.py`) called with
the arguments below; their outputs go to `<output_dir>/pretrain`, `<output_dir>/finetune`, and the report files
(`robustness.json`, `robustness.md`, `robust_accuracy_vs_eps.png`) to `<output_dir>` itself.

`--compare` trains, with the same fine-tuning budget and seeds, adversarial training from scratch, clean MAE
pre-training + AT, MIMIR without the MI term, and MIMIR, and writes `comparison.md` / `comparison.json`
(natural and PGD-20 accuracy, mean ± std over the seeds).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import run_evaluation  # noqa: E402
import run_finetuning  # noqa: E402
import run_pretraining  # noqa: E402
from common import DataArguments, ModelArguments, logger, mark_complete, parse, prepare_output_dir  # noqa: E402


@dataclass
class MimirRunArguments:
    output_dir: str = field(metadata={"help": "Where every stage writes."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace an output dir holding another run."})
    pretrain_epochs: float = field(default=30, metadata={"help": "Pre-training epochs."})
    finetune_epochs: float = field(default=10, metadata={"help": "Adversarial fine-tuning epochs."})
    pretrain_learning_rate: float = field(default=1e-3, metadata={"help": "Pre-training learning rate."})
    finetune_learning_rate: float = field(default=2e-3, metadata={"help": "Fine-tuning learning rate (head)."})
    batch_size: int = field(default=64, metadata={"help": "Per-device batch size of both trainings."})
    adversarial_method: str = field(default="pgd", metadata={"help": "pgd, trades, mart or none."})
    adversarial_epsilon: float = field(default=8 / 255, metadata={"help": "Fine-tuning and evaluation eps."})
    adversarial_step_size: float = field(default=2 / 255, metadata={"help": "Fine-tuning PGD step."})
    adversarial_steps: int = field(default=5, metadata={"help": "Fine-tuning PGD steps."})
    autoattack_max_samples: int | None = field(
        default=64, metadata={"help": "AutoAttack on the first N evaluation images (~1.6 s an image on 2 CPU cores)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the single run."})
    compare: bool = field(default=False, metadata={"help": "Run the 4-recipe x seeds comparison instead."})
    compare_seeds: str = field(default="0,1,2", metadata={"help": "Seeds of the comparison."})
    bf16: bool = field(default=False, metadata={"help": "bf16 autocast in both trainings."})
    use_cpu: bool = field(default=False, metadata={"help": "Train on the CPU even if a GPU is there."})
    disable_tqdm: bool = field(default=False, metadata={"help": "No progress bars."})


def _flags(**values) -> list[str]:
    argv = []
    for name, value in values.items():
        if value is None or value is False:
            continue
        argv += [f"--{name}", "true" if value is True else str(value)]
    return argv


def stage_arguments(run: MimirRunArguments, model_args: ModelArguments, data_args: DataArguments) -> tuple[list, list]:
    """argv of the pre-training and fine-tuning stages."""
    data = _flags(**vars(data_args))
    common = _flags(per_device_train_batch_size=run.batch_size, bf16=run.bf16, use_cpu=run.use_cpu,
                    disable_tqdm=run.disable_tqdm, report_to="none", save_strategy="no", overwrite_output_dir=True)
    model = _flags(**{k: v for k, v in vars(model_args).items() if k != "model_name_or_path"})
    pretrain = model + data + common + _flags(num_train_epochs=run.pretrain_epochs, learning_rate=run.pretrain_learning_rate)
    finetune = data + common + _flags(
        num_train_epochs=run.finetune_epochs, learning_rate=run.finetune_learning_rate,
        adversarial_method=run.adversarial_method, adversarial_epsilon=run.adversarial_epsilon,
        adversarial_step_size=run.adversarial_step_size, adversarial_steps=run.adversarial_steps,
    )
    return pretrain, finetune


def run_recipe(run, model_args, data_args, output_dir: str, seed: int, pretrain: bool, model_overrides: dict) -> dict:
    """Pre-train (optionally) and fine-tune one recipe; returns the fine-tuning metrics and the stage times."""
    for name, value in model_overrides.items():
        setattr(model_args, name, value)
    pretrain_argv, finetune_argv = stage_arguments(run, model_args, data_args)
    times, seed_flags = {}, ["--seed", str(seed)]
    start = time.time()
    if pretrain:
        run_pretraining.main(pretrain_argv + seed_flags + ["--output_dir", os.path.join(output_dir, "pretrain")])
        finetune_argv += ["--model_name_or_path", os.path.join(output_dir, "pretrain")]
    else:  # from scratch: the architecture comes from the model arguments
        finetune_argv += _flags(**{k: v for k, v in vars(model_args).items() if k != "model_name_or_path"})
    times["pretraining_seconds"] = round(time.time() - start, 1)
    start = time.time()
    metrics = run_finetuning.main(finetune_argv + seed_flags + ["--output_dir", os.path.join(output_dir, "finetune")])
    times["finetuning_seconds"] = round(time.time() - start, 1)
    return {**metrics, **times}


RECIPES = {
    "AT from scratch": dict(pretrain=False, model_overrides={}),
    "clean MAE + AT": dict(pretrain=True, model_overrides=dict(attack_epsilon=0.0, mi_estimator="none")),
    "MIMIR without MI + AT": dict(pretrain=True, model_overrides=dict(mi_estimator="none")),
    "MIMIR + AT": dict(pretrain=True, model_overrides={}),
}


def compare(run, model_args, data_args) -> dict:
    seeds = [int(s) for s in run.compare_seeds.split(",")]
    rows = {}
    for recipe, spec in RECIPES.items():
        results = []
        for seed in seeds:
            logger.info(f"=== {recipe}, seed {seed} ===")
            base = ModelArguments(**vars(model_args))
            folder = os.path.join(run.output_dir, recipe.replace(" ", "_").replace("+", "plus"), f"seed{seed}")
            results.append(run_recipe(run, base, data_args, folder, seed, spec["pretrain"], dict(spec["model_overrides"])))
        rows[recipe] = {
            metric: {"mean": round(statistics.mean(r[metric] for r in results), 2),
                     "std": round(statistics.stdev(r[metric] for r in results), 2) if len(results) > 1 else 0.0,
                     "runs": [r[metric] for r in results]}
            for metric in ("natural_accuracy", "pgd20_accuracy", "pretraining_seconds", "finetuning_seconds")
        }
    eps = run.adversarial_epsilon * 255
    lines = [
        "# Comparison of pre-training recipes before the same adversarial fine-tuning",
        "",
        f"Same data, architecture, fine-tuning ({run.adversarial_method}, eps {eps:.1f}/255, {run.adversarial_steps} steps, "
        f"{run.finetune_epochs:g} epochs) and seeds {seeds}; pre-trained recipes add {run.pretrain_epochs:g} pre-training "
        "epochs. Accuracies in % on the evaluation split, mean ± std over the seeds; PGD-20 at the same eps, step eps/4, "
        "random start.",
        "",
        "| recipe | natural | PGD-20 | pre-training (s) | fine-tuning (s) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for recipe, row in rows.items():
        cells = [f"{row[m]['mean']:.2f} ± {row[m]['std']:.2f}" for m in ("natural_accuracy", "pgd20_accuracy")]
        cells += [f"{row[m]['mean']:.0f}" for m in ("pretraining_seconds", "finetuning_seconds")]
        lines.append(f"| {recipe} | " + " | ".join(cells) + " |")
    with open(os.path.join(run.output_dir, "comparison.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(run.output_dir, "comparison.json"), "w") as f:
        json.dump({"seeds": seeds, "settings": vars(run), "model": vars(model_args), "results": rows}, f, indent=2)
    logger.info("\n" + "\n".join(lines))
    return rows


def main(argv: list[str] | None = None) -> dict:
    run, model_args, data_args = parse((MimirRunArguments, ModelArguments, DataArguments), argv)
    import logging

    logging.basicConfig(format="%(asctime)s - %(message)s", datefmt="%H:%M:%S", level=logging.INFO)
    logger.setLevel(logging.INFO)
    identity = {**vars(run), **vars(model_args), **vars(data_args)}
    for key in ("output_dir", "overwrite_output_dir", "disable_tqdm"):
        identity.pop(key)
    prepare_output_dir(run.output_dir, "run_mimir", identity, run.overwrite_output_dir)
    start = time.time()
    if run.compare:
        result = {"comparison": compare(run, model_args, data_args)}
    else:
        metrics = run_recipe(run, model_args, data_args, run.output_dir, run.seed, pretrain=True, model_overrides={})
        eval_argv = _flags(**vars(data_args)) + _flags(
            model_name_or_path=os.path.join(run.output_dir, "finetune"), output_dir=os.path.join(run.output_dir, "report"),
            epsilon=run.adversarial_epsilon, seed=run.seed, use_cpu=run.use_cpu, overwrite_output_dir=True,
            autoattack_max_samples=run.autoattack_max_samples,
        )
        report = run_evaluation.main(eval_argv)
        for name in ("robustness.json", "robustness.md", "robust_accuracy_vs_eps.png"):
            shutil.copy(os.path.join(run.output_dir, "report", name), os.path.join(run.output_dir, name))
        shutil.copy(os.path.join(run.output_dir, "pretrain", "reconstructions.png"), run.output_dir)
        result = {"finetune": metrics, "robust_accuracy": report["robust_accuracy"],
                  "natural_accuracy": report["natural_accuracy"]}
    result["seconds"] = round(time.time() - start, 1)
    mark_complete(run.output_dir, **result)
    logger.info(f"Done in {result['seconds']:.0f} s: outputs in {run.output_dir}")
    return result


if __name__ == "__main__":
    main()
