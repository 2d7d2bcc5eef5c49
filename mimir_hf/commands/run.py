"""`mimir-hf run`: a whole recipe in one command: pre-training -> adversarial fine-tuning -> robustness report.

    mimir-hf run demo --output_dir out/demo                   # the demo recipe: digits, offline, 2 CPUs
    mimir-hf run --train_dir photos/train --validation_dir photos/val --output_dir out/photos    # your own folders
    mimir-hf run demo --output_dir out/compare --compare      # 4 pre-training recipes x 3 seeds -> comparison.md

Arguments: `MimirRunArguments` below (per-stage epochs and learning rates), `ModelArguments` and `DataArguments`
(`common.py`), and the library's `AdversarialRecipe` (fine-tuning attack) and `RobustnessSettings` (the report), with
the library's names and defaults. Each stage is the `run(...)` of its command (`pretrain.py`, `finetune.py`,
`evaluate.py`); their outputs go to `<output_dir>/pretrain`, `<output_dir>/finetune`, and the report files
(`robustness.json`, `robustness.md`, `robust_accuracy_vs_eps.png`) to `<output_dir>` itself.

`--compare` trains, with the same fine-tuning budget and seeds, adversarial training from scratch, clean MAE
pre-training + AT, MIMIR without the MI term, and MIMIR, and writes `comparison.md` / `comparison.json`
(natural and PGD-20 accuracy, mean ± std over the seeds).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import statistics
import time
from dataclasses import asdict, dataclass, field

from mimir_hf.evaluation import RobustnessSettings
from mimir_hf.run_record import failures_recorded, mark_complete, prepare_output_dir
from mimir_hf.trainer import (
    AdversarialRecipe,
    MimirAdversarialTrainingArguments,
    MimirPreTrainingArguments,
)

from . import evaluate as run_evaluation
from . import finetune as run_finetuning
from . import pretrain as run_pretraining
from .common import (
    DataArguments,
    ModelArguments,
    RunArguments,
    fine_tuning_model_arguments,
    given_names,
    logger,
    parse,
    setup_logging,
)


@dataclass
class MimirRunArguments:
    """The two trainings' budgets (each stage's other settings are the library's defaults)."""

    output_dir: str = field(metadata={"help": "Where every stage writes."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace an output dir holding another run."})
    pretrain_epochs: float = field(default=30, metadata={"help": "Pre-training epochs."})
    finetune_epochs: float = field(default=10, metadata={"help": "Adversarial fine-tuning epochs."})
    pretrain_learning_rate: float | None = field(
        default=None,
        metadata={"help": "Pre-training learning rate (unset: MimirPreTrainingArguments' base-rate rule, logged)."},
    )
    finetune_learning_rate: float | None = field(
        default=None,
        metadata={"help": "Fine-tuning learning rate of the head (unset: MimirAdversarialTrainingArguments' rule)."},
    )
    batch_size: int = field(default=64, metadata={"help": "Per-device batch size of both trainings."})
    seed: int = field(default=0, metadata={"help": "Seed of the single run."})
    compare: bool = field(default=False, metadata={"help": "Run the 4-recipe x seeds comparison instead."})
    compare_seeds: str = field(default="0,1,2", metadata={"help": "Seeds of the comparison."})
    bf16: bool = field(default=False, metadata={"help": "bf16 autocast in both trainings."})
    use_cpu: bool = field(default=False, metadata={"help": "Train on the CPU even if a GPU is there."})
    disable_tqdm: bool = field(default=False, metadata={"help": "No progress bars."})


def stage_arguments(run: MimirRunArguments, output_dir: str, seed: int, recipe: AdversarialRecipe):
    """The `TrainingArguments` of the two stages."""
    common = dict(
        per_device_train_batch_size=run.batch_size, bf16=run.bf16, use_cpu=run.use_cpu, seed=seed,
        disable_tqdm=run.disable_tqdm, report_to="none", save_strategy="no", logging_steps=50,
    )  # fmt: skip
    pretrain = MimirPreTrainingArguments(
        output_dir=os.path.join(output_dir, "pretrain"), num_train_epochs=run.pretrain_epochs,
        learning_rate=run.pretrain_learning_rate, **common,
    )  # fmt: skip
    finetune = MimirAdversarialTrainingArguments(
        output_dir=os.path.join(output_dir, "finetune"), num_train_epochs=run.finetune_epochs,
        learning_rate=run.finetune_learning_rate, **asdict(recipe), **common,
    )  # fmt: skip
    return pretrain, finetune


def run_recipe(
    run, model_args, data_args, recipe, output_dir: str, seed: int, pretrain: bool, overrides: dict, evaluate=True
) -> dict:
    """Pre-train (optionally) and fine-tune one recipe; returns the fine-tuning metrics and the stage times
    (`evaluate`: with fine-tuning's quick natural / PGD-20 check, which the single run leaves to its report)."""
    model_args = dataclasses.replace(model_args, **overrides)
    pretrain_args, finetune_args = stage_arguments(run, output_dir, seed, recipe)
    again = RunArguments(overwrite_output_dir=True)
    times = {}
    start = time.time()
    if pretrain:
        run_pretraining.run(model_args, data_args, pretrain_args, again)
        finetune_model = fine_tuning_model_arguments(  # the checkpoint's config carries the rest
            ModelArguments(model_name_or_path=pretrain_args.output_dir, drop_path_rate=model_args.drop_path_rate)
        )
    else:  # from scratch: the architecture comes from the model arguments
        finetune_model = fine_tuning_model_arguments(model_args)
    times["pretraining_seconds"] = round(time.time() - start, 1)
    start = time.time()
    metrics = run_finetuning.run(finetune_model, data_args, finetune_args, again, evaluate=evaluate)
    times["finetuning_seconds"] = round(time.time() - start, 1)
    return {**metrics, **times}


RECIPES = {
    "AT from scratch": dict(pretrain=False, overrides={}),
    "clean MAE + AT": dict(pretrain=True, overrides=dict(attack_epsilon=0.0, mi_estimator="none")),
    "MIMIR without MI + AT": dict(pretrain=True, overrides=dict(mi_estimator="none")),
    "MIMIR + AT": dict(pretrain=True, overrides={}),
}


def compare(run, model_args, data_args, recipe) -> dict:
    seeds = [int(s) for s in run.compare_seeds.split(",")]
    rows = {}
    for name, spec in RECIPES.items():
        results = []
        for seed in seeds:
            logger.info(f"=== {name}, seed {seed} ===")
            folder = os.path.join(run.output_dir, name.replace(" ", "_").replace("+", "plus"), f"seed{seed}")
            results.append(
                run_recipe(run, model_args, data_args, recipe, folder, seed, spec["pretrain"], spec["overrides"])
            )
        rows[name] = {
            metric: {
                "mean": round(statistics.mean(r[metric] for r in results), 2),
                "std": round(statistics.stdev(r[metric] for r in results), 2) if len(results) > 1 else 0.0,
                "runs": [r[metric] for r in results],
            }
            for metric in ("natural_accuracy", "pgd20_accuracy", "pretraining_seconds", "finetuning_seconds")
        }
    lines = [
        "# Comparison of pre-training recipes before the same adversarial fine-tuning",
        "",
        f"Same data, architecture, fine-tuning ({recipe.adversarial_method}, {recipe.adversarial_budget.describe()}, "
        f"{run.finetune_epochs:g} epochs) and seeds {seeds}; pre-trained recipes add {run.pretrain_epochs:g} "
        "pre-training epochs. Accuracies in % on the evaluation split, mean ± std over the seeds; PGD-20 at the same "
        "eps, step eps/4, random start.",
        "",
        "| recipe | natural | PGD-20 | pre-training (s) | fine-tuning (s) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, row in rows.items():
        cells = [f"{row[m]['mean']:.2f} ± {row[m]['std']:.2f}" for m in ("natural_accuracy", "pgd20_accuracy")]
        cells += [f"{row[m]['mean']:.0f}" for m in ("pretraining_seconds", "finetuning_seconds")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    with open(os.path.join(run.output_dir, "comparison.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(run.output_dir, "comparison.json"), "w") as f:
        json.dump({"seeds": seeds, "settings": asdict(run), "model": asdict(model_args), "results": rows}, f, indent=2)
    logger.info("\n" + "\n".join(lines))
    return rows


def stage_list(run_args: MimirRunArguments, data_args, recipe: AdversarialRecipe, settings: RobustnessSettings) -> str:
    """The stages this run will go through, said up front."""
    data = data_args.display_name
    fine_tuning = (
        f"adversarial fine-tuning, {run_args.finetune_epochs:g} epochs of {recipe.adversarial_method} "
        f"({recipe.adversarial_budget.describe()})"
    )
    if run_args.compare:
        seeds = run_args.compare_seeds.split(",")
        return (
            f"Stages: {len(RECIPES)} recipes ({', '.join(RECIPES)}) x {len(seeds)} seeds on {data}, each "
            f"{run_args.pretrain_epochs:g} pre-training epochs (all but the first) and {fine_tuning}, then "
            f"comparison.md; outputs in {run_args.output_dir}"
        )
    autoattack = settings.autoattack and settings.autoattack_max_samples != 0
    images = "" if settings.autoattack_max_samples < 0 else f" on the first {settings.autoattack_max_samples} images"
    return (
        f"Stages on {data}: 1) MIMIR pre-training, {run_args.pretrain_epochs:g} epochs -> "
        f"{run_args.output_dir}/pretrain; 2) {fine_tuning} -> {run_args.output_dir}/finetune; 3) the robustness "
        f"report at eps "
        f"{settings.epsilon * 255:g}/255 (FGSM, PGD-{'/'.join(map(str, settings.pgd_steps))}, CW-inf, noise, the "
        f"adaptive PGD-MI and PGD-feature, {'AutoAttack' + images if autoattack else 'no AutoAttack'}, an eps sweep "
        f"of {len(settings.eps_sweep)} points) -> {run_args.output_dir}/robustness.md"
    )


def run(run_args: MimirRunArguments, model_args, data_args, recipe: AdversarialRecipe, settings: RobustnessSettings):
    setup_logging()
    identity = {**asdict(run_args), **asdict(model_args), **asdict(data_args), **asdict(recipe), **asdict(settings)}
    for key in ("output_dir", "overwrite_output_dir", "disable_tqdm"):
        identity.pop(key)
    inputs = (*data_args.input_paths, model_args.model_name_or_path)
    prepare_output_dir(run_args.output_dir, "run_mimir", identity, run_args.overwrite_output_dir, inputs)
    logger.info(stage_list(run_args, data_args, recipe, settings))
    start = time.time()
    if run_args.compare:
        result = {"comparison": compare(run_args, model_args, data_args, recipe)}
    else:
        metrics = run_recipe(
            run_args, model_args, data_args, recipe, run_args.output_dir, run_args.seed, True, {}, evaluate=False
        )
        report_dir = os.path.join(run_args.output_dir, "report")
        evaluation = run_evaluation.EvaluationArguments(
            model_name_or_path=os.path.join(run_args.output_dir, "finetune"), output_dir=report_dir,
            use_cpu=run_args.use_cpu, disable_tqdm=run_args.disable_tqdm,
        )  # fmt: skip
        report_start = time.time()
        report = run_evaluation.run(evaluation, data_args, settings, RunArguments(overwrite_output_dir=True))
        report_seconds = round(time.time() - report_start, 1)
        for name in ("robustness.json", "robustness.md", "robust_accuracy_vs_eps.png"):
            shutil.copy(os.path.join(report_dir, name), os.path.join(run_args.output_dir, name))
        shutil.copy(os.path.join(run_args.output_dir, "pretrain", "reconstructions.png"), run_args.output_dir)
        result = {
            "finetune": metrics,
            "robust_accuracy": report.robust_accuracy,
            "natural_accuracy": report.natural_accuracy,
            "stage_seconds": {
                "pretraining": metrics["pretraining_seconds"],
                "finetuning": metrics["finetuning_seconds"],
                "report": report_seconds,
                "report_attacks": report.seconds,
            },
        }
    result["seconds"] = round(time.time() - start, 1)
    mark_complete(run_args.output_dir, **result)
    stages = result.get("stage_seconds", {})
    timing = ", ".join(f"{name} {value:.0f} s" for name, value in stages.items() if isinstance(value, float))
    logger.info(f"Done in {result['seconds']:.0f} s ({timing}): outputs in {run_args.output_dir}")
    return result


def one_epsilon(model_args, recipe: AdversarialRecipe, settings: RobustnessSettings, given: set[str]) -> None:
    """`mimir-hf run` trains and measures at one eps: `--epsilon` (the report's) also sets the pre-training attack's
    (`attack_epsilon`) and the adversarial training's (`adversarial_epsilon`) unless they are given; a value given for
    either that differs from `--epsilon` is refused, naming it."""
    holders = {"attack_epsilon": model_args, "adversarial_epsilon": recipe}
    for name, holder in holders.items():
        value = getattr(holder, name)
        if name not in given:
            setattr(holder, name, settings.epsilon)
        elif value != settings.epsilon:
            raise ValueError(
                f"--{name} {value:g} differs from --epsilon {settings.epsilon:g}: mimir-hf run pre-trains, fine-tunes "
                f"and reports at one eps. Give --epsilon alone (it sets {' and '.join(holders)} too); to train and "
                "measure at different budgets, run mimir-hf pretrain / finetune / evaluate one by one."
            )


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    """The command: its arguments parsed (a recipe first, if any), then `run`; a failure marks its runs failed."""
    with failures_recorded():
        classes = (MimirRunArguments, ModelArguments, DataArguments, AdversarialRecipe, RobustnessSettings)
        # One eps for the three stages: --epsilon; the stages' own names are accepted only when they agree with it.
        hidden = ("attack_epsilon", "adversarial_epsilon")
        run_args, model_args, data_args, recipe, settings = parse(classes, argv, prog, hidden=hidden)
        one_epsilon(model_args, recipe, settings, given_names(argv))
        return run(run_args, model_args, data_args, recipe, settings)


if __name__ == "__main__":
    import sys

    from .cli import main as cli

    raise SystemExit(cli(["run", *sys.argv[1:]]))
