#!/usr/bin/env python
"""Robustness evaluation of a saved image classifier: natural accuracy, FGSM, PGD-20/100, CW-inf, AutoAttack (when
torchattacks is installed), the adaptive PGD-MI and PGD-feature, an eps sweep, and gradient-masking sanity checks.

    python examples/run_evaluation.py --model_name_or_path out/finetune --output_dir out/report   # digits
    python examples/run_evaluation.py --model_name_or_path out/finetune --dataset_name cifar10 \
        --image_column_name img --epsilon 0.0313725 --output_dir out/report

    torchrun --nproc_per_node 8 examples/run_evaluation.py --model_name_or_path out/mimir-swin-b \
        --validation_dir /data/imagenet/val --eval_subset robustbench-imagenet-5000 --epsilon 0.0156863 \
        --output_dir out/report --resume_file out/report/progress.jsonl      # RobustBench's 5000 images, 8 GPUs

Arguments: `EvaluationArguments` below, `DataArguments` (examples/common.py) and the library's `RobustnessSettings`.
Writes `robustness.json`, `robustness.md` and `robust_accuracy_vs_eps.png` in --output_dir and, with
--update_model_card (default), puts the numbers in the model folder's card. Images go through the image processor
saved with the model (e.g. resize 256 + centre crop 224 for converted ImageNet models), else the model's default one.

Under `torchrun` / `accelerate launch` every process evaluates its own contiguous shard of the images (gloo on CPUs,
NCCL on GPUs), the counts are summed, and only rank 0 writes. With `--resume_file`, each process appends its finished
batches to `<file>` (`<file>.rank<N>` with several processes) and a rerun of the same evaluation (same settings, data
and number of processes) skips them: a long AutoAttack run survives being killed.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch
import torch.distributed as dist
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
from transformers import AutoImageProcessor, AutoModelForImageClassification, set_seed

import mimir_hf  # noqa: F401  (registers the MIMIR classes)
from mimir_hf.evaluation import RobustnessSettings, evaluate_robustness, report_markdown, write_report
from mimir_hf.model_card import robustness_eval_results, write_model_card


@dataclass
class EvaluationArguments:
    model_name_or_path: str = field(metadata={"help": "A saved image classifier (folder or Hub id)."})
    output_dir: str = field(metadata={"help": "Where the report goes."})
    update_model_card: bool = field(default=True, metadata={"help": "Write the numbers into the model's card."})
    use_cpu: bool = field(default=False, metadata={"help": "Evaluate on the CPU even if a GPU is there."})
    resume_file: str | None = field(
        default=None,
        metadata={"help": "Append every finished batch to this file (<file>.rank<N> per process under torchrun) and "
                  "skip those batches when the same evaluation runs again (long AutoAttack runs)."},
    )  # fmt: skip
    num_workers: int = field(default=0, metadata={"help": "DataLoader workers reading the evaluation images."})


def start_processes(use_cpu: bool) -> tuple[torch.device, bool]:
    """(this process's device, whether this call started torch.distributed): under torchrun / accelerate launch
    (WORLD_SIZE > 1) one process group, NCCL on GPUs and gloo otherwise."""
    cuda = torch.cuda.is_available() and not use_cpu
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        return (torch.device("cuda", local) if cuda else torch.device("cpu")), False
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local)
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return (torch.device("cuda", local) if cuda else torch.device("cpu")), True


def run(eval_args: EvaluationArguments, data_args: DataArguments, settings: RobustnessSettings, run_args: RunArguments):
    """Evaluate, write the report files (and the model card) from rank 0; returns the `RobustnessReport`."""
    setup_logging()
    device, started = start_processes(eval_args.use_cpu)
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    identity = {**asdict(eval_args), **asdict(data_args), **asdict(settings), "processes": world}
    for key in ("output_dir", "num_workers"):
        identity.pop(key)
    try:
        if rank == 0:
            prepare_output_dir(eval_args.output_dir, "run_evaluation", identity, run_args.overwrite_output_dir)
        if world > 1:
            dist.barrier()  # the output dir exists (and a replaced one is gone) before any process writes there
        report = evaluate(eval_args, data_args, settings, device, rank, world)
    finally:
        if started:
            dist.destroy_process_group()
    return report


def evaluate(eval_args, data_args, settings, device, rank: int, world: int):
    set_seed(settings.eval_seed)
    model = AutoModelForImageClassification.from_pretrained(eval_args.model_name_or_path).to(device).eval()
    config = model.config
    processor = None
    if os.path.isfile(os.path.join(eval_args.model_name_or_path, "preprocessor_config.json")):
        processor = AutoImageProcessor.from_pretrained(eval_args.model_name_or_path)  # what the model was made for
    _, eval_dataset, names = load_data(
        data_args, config, settings.eval_seed, image_processor=processor, evaluation_only=True
    )
    if len(names) != config.num_labels:
        raise ValueError(f"The dataset has {len(names)} classes but the model {config.num_labels}; wrong dataset?")

    start = time.time()
    say = (lambda message: logger.info(f"[{time.time() - start:6.1f}s] {message}")) if rank == 0 else None
    report = evaluate_robustness(
        model, eval_dataset, settings, progress=say, resume_file=eval_args.resume_file,
        num_workers=eval_args.num_workers,
    )  # fmt: skip
    if rank != 0:
        return report
    report.info.update(
        model=eval_args.model_name_or_path,
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        processes=world,
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
