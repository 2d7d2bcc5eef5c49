#!/usr/bin/env python
"""Robustness evaluation of a saved image classifier: natural accuracy, FGSM, PGD-20/100, CW-inf, AutoAttack (when
torchattacks is installed), the adaptive PGD-MI and PGD-feature, an eps sweep, and gradient-masking sanity checks.

    python examples/run_evaluation.py --model_name_or_path out/finetune --output_dir out/report   # digits
    python examples/run_evaluation.py --model_name_or_path out/finetune --dataset_name cifar10 \
        --image_column_name img --epsilon 0.0313725 --output_dir out/report

Arguments: `EvaluationArguments` below, `DataArguments` (examples/common.py) and the library's `RobustnessSettings`.
Writes `robustness.json`, `robustness.md` and `robust_accuracy_vs_eps.png` in --output_dir and, with
--update_model_card (default), puts the numbers in the model folder's card.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch
from common import (
    DataArguments,
    RunArguments,
    load_data,
    logger,
    mark_complete,
    parse,
    prepare_output_dir,
    setup_logging,
)
from transformers import AutoModelForImageClassification, set_seed

import mimir_hf  # noqa: F401  (registers the MIMIR classes)
from mimir_hf.evaluation import RobustnessSettings, evaluate_robustness, report_markdown, write_report
from mimir_hf.model_card import robustness_eval_results, write_model_card


@dataclass
class EvaluationArguments:
    model_name_or_path: str = field(metadata={"help": "A saved image classifier (folder or Hub id)."})
    output_dir: str = field(metadata={"help": "Where the report goes."})
    update_model_card: bool = field(default=True, metadata={"help": "Write the numbers into the model's card."})
    use_cpu: bool = field(default=False, metadata={"help": "Evaluate on the CPU even if a GPU is there."})


def run(eval_args: EvaluationArguments, data_args: DataArguments, settings: RobustnessSettings, run_args: RunArguments):
    """Evaluate, write the report files (and the model card); returns the `RobustnessReport`."""
    setup_logging()
    identity = {**asdict(eval_args), **asdict(data_args), **asdict(settings)}
    identity.pop("output_dir")
    prepare_output_dir(eval_args.output_dir, "run_evaluation", identity, run_args.overwrite_output_dir)
    set_seed(settings.eval_seed)

    device = "cuda" if torch.cuda.is_available() and not eval_args.use_cpu else "cpu"
    model = AutoModelForImageClassification.from_pretrained(eval_args.model_name_or_path).to(device).eval()
    config = model.config
    _, eval_dataset, names = load_data(data_args, config, settings.eval_seed)
    if len(names) != config.num_labels:
        raise ValueError(f"The dataset has {len(names)} classes but the model {config.num_labels}; wrong dataset?")

    start = time.time()
    report = evaluate_robustness(
        model, eval_dataset, settings, progress=lambda message: logger.info(f"[{time.time() - start:6.1f}s] {message}")
    )
    report.info.update(
        model=eval_args.model_name_or_path,
        device=torch.cuda.get_device_name() if device == "cuda" else "cpu",
        seconds=round(time.time() - start, 1),
    )
    write_report(report, eval_args.output_dir)
    logger.info("\n" + report_markdown(report))

    card = os.path.join(eval_args.model_name_or_path, "README.md")
    run_file = os.path.join(eval_args.model_name_or_path, "mimir_run.json")
    if eval_args.update_model_card and os.path.isfile(card) and os.path.isfile(run_file):
        with open(run_file) as f:
            training = json.load(f).get("card_training", {})
        results = report_markdown(report).split("\n", 2)[2].replace("## ", "### ")
        write_model_card(
            eval_args.model_name_or_path, "finetuned", data_args.display_name, training, results,
            robustness_eval_results(report, data_args.display_name),
        )  # fmt: skip
    mark_complete(
        eval_args.output_dir, robust_accuracy=report.robust_accuracy, natural_accuracy=report.natural_accuracy
    )
    return report


def main(argv: list[str] | None = None):
    return run(*parse((EvaluationArguments, DataArguments, RobustnessSettings, RunArguments), argv))


if __name__ == "__main__":
    main()
