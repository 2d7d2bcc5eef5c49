#!/usr/bin/env python
"""Robustness evaluation of a saved image classifier: natural accuracy, FGSM, PGD-20/100, CW-inf, AutoAttack (when
torchattacks is installed), the adaptive PGD-MI and PGD-feature, an eps sweep, and gradient-masking sanity checks.

    python examples/run_evaluation.py --model_name_or_path out/finetune --output_dir out/report   # digits
    python examples/run_evaluation.py --model_name_or_path out/finetune --dataset_name cifar10 \
        --image_column_name img --epsilon 0.0313725 --output_dir out/report

Writes `robustness.json`, `robustness.md` and `robust_accuracy_vs_eps.png` in --output_dir and, with
--update_model_card (default), puts the numbers in the model folder's card.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from common import DataArguments, RunArguments, load_data, logger, mark_complete, parse, prepare_output_dir  # noqa: E402
from transformers import AutoModelForImageClassification, set_seed  # noqa: E402

import mimir_hf  # noqa: E402,F401  (registers the MIMIR classes)
from mimir_hf.data import tensors  # noqa: E402
from mimir_hf.evaluation import RobustnessSettings, evaluate_robustness, report_markdown, write_report  # noqa: E402
from mimir_hf.model_card import robustness_metrics, write_model_card  # noqa: E402


@dataclass
class EvaluationArguments:
    model_name_or_path: str = field(metadata={"help": "A saved image classifier (folder or Hub id)."})
    output_dir: str = field(metadata={"help": "Where the report goes."})
    epsilon: float = field(default=8 / 255, metadata={"help": "L-inf eps in [0, 1] pixel units (8/255)."})
    step_size: float = field(default=2 / 255, metadata={"help": "PGD step size (2/255)."})
    pgd_steps: int = field(default=20, metadata={"help": "Steps of the main PGD (a second PGD runs 5x longer)."})
    adaptive_steps: int = field(default=100, metadata={"help": "Steps of PGD-MI and PGD-feature."})
    autoattack: bool = field(default=True, metadata={"help": "Run AutoAttack when torchattacks is installed."})
    autoattack_max_samples: int | None = field(default=None, metadata={"help": "AutoAttack on the first N images."})
    batch_size: int = field(default=256, metadata={"help": "Evaluation batch size."})
    seed: int = field(default=0, metadata={"help": "Seed of the attacks' random starts."})
    update_model_card: bool = field(default=True, metadata={"help": "Write the numbers into the model's card."})
    use_cpu: bool = field(default=False, metadata={"help": "Evaluate on the CPU even if a GPU is there."})

    def __post_init__(self):
        if not 0 <= self.epsilon <= 1:
            raise ValueError(f"--epsilon must be in [0, 1] (pixel units, e.g. 0.0314 for 8/255), got {self.epsilon}.")
        if self.step_size <= 0:
            raise ValueError(f"--step_size must be > 0, got {self.step_size}.")
        if self.pgd_steps < 1 or self.adaptive_steps < 1:
            raise ValueError(f"--pgd_steps and --adaptive_steps must be >= 1, got {self.pgd_steps}, {self.adaptive_steps}.")


def main(argv: list[str] | None = None) -> dict:
    eval_args, data_args, run_args = parse((EvaluationArguments, DataArguments, RunArguments), argv)
    import logging

    logging.basicConfig(format="%(asctime)s - %(message)s", datefmt="%H:%M:%S", level=logging.INFO)
    logger.setLevel(logging.INFO)
    identity = {**vars(eval_args), **vars(data_args)}
    identity.pop("output_dir")
    prepare_output_dir(eval_args.output_dir, "run_evaluation", identity, run_args.overwrite_output_dir)
    set_seed(eval_args.seed)

    device = "cuda" if torch.cuda.is_available() and not eval_args.use_cpu else "cpu"
    model = AutoModelForImageClassification.from_pretrained(eval_args.model_name_or_path).to(device).eval()
    config = model.config
    image_size = config.image_size if isinstance(config.image_size, (list, tuple)) else (config.image_size,) * 2
    _, eval_dataset, names = load_data(data_args, tuple(image_size), config.num_channels, eval_args.seed)
    if len(names) != config.num_labels:
        raise ValueError(f"The dataset has {len(names)} classes but the model {config.num_labels}; wrong dataset?")
    images, labels = tensors(eval_dataset)

    settings = RobustnessSettings(
        epsilon=eval_args.epsilon,
        step_size=eval_args.step_size,
        pgd_steps=(eval_args.pgd_steps, 5 * eval_args.pgd_steps),
        adaptive_steps=eval_args.adaptive_steps,
        autoattack=eval_args.autoattack,
        autoattack_max_samples=eval_args.autoattack_max_samples,
        batch_size=eval_args.batch_size,
        seed=eval_args.seed,
    )
    start = time.time()
    report = evaluate_robustness(
        model, images, labels, settings, progress=lambda name: logger.info(f"[{time.time() - start:6.1f}s] {name}")
    )
    report["model"] = eval_args.model_name_or_path
    report["device"] = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    report["seconds"] = round(time.time() - start, 1)
    write_report(report, eval_args.output_dir)
    logger.info("\n" + report_markdown(report))

    card = os.path.join(eval_args.model_name_or_path, "README.md")
    run_file = os.path.join(eval_args.model_name_or_path, "mimir_run.json")
    if eval_args.update_model_card and os.path.isfile(card) and os.path.isfile(run_file):
        with open(run_file) as f:
            training = json.load(f).get("card_training", {})
        results = report_markdown(report).split("\n", 2)[2].replace("## ", "### ")
        dataset_name = data_args.dataset_name or ("sklearn-digits" if data_args.uses_default_data else "imagefolder")
        write_model_card(eval_args.model_name_or_path, "finetuned", dataset_name, training, results, robustness_metrics(report))
    mark_complete(eval_args.output_dir, robust_accuracy=report["robust_accuracy"], natural_accuracy=report["natural_accuracy"])
    return report


if __name__ == "__main__":
    main()
