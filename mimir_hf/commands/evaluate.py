"""`mimir-hf evaluate`: the robustness report of any image classifier: natural accuracy, FGSM, PGD-20/100, CW-inf,
AutoAttack, the adaptive PGD-MI and PGD-feature (MIMIR models), an eps sweep, and gradient-masking sanity checks.

    mimir-hf evaluate --model_name_or_path out/finetune --output_dir out/report                 # the built-in digits
    mimir-hf evaluate --model_name_or_path my-vit --validation_dir photos/val --output_dir out/report   # any model
    torchrun --nproc_per_node 8 -m mimir_hf evaluate --model_name_or_path out/mimir-swin-b \
        --validation_dir /data/imagenet/val --eval_subset robustbench-imagenet-5000 --epsilon 0.0156863 \
        --output_dir out/report --resume_file out/report/progress.jsonl      # RobustBench's 5000 images, 8 GPUs

The model is any `AutoModelForImageClassification` folder or Hub id (a MIMIR model, or a transformers ViT, DeiT,
ResNet, ConvNeXt, ...) with its image processor. Attacks act on [0, 1] pixels at the model's input size: the
processor's resize and crop run in the data loader, its normalisation inside the model (MIMIR models) or inside a
wrapper (`mimir_hf.pixel_space`); the report names what was done.

Arguments: `EvaluationArguments` below, `DataArguments` (`common.py`) and the library's `RobustnessSettings`. Writes
`robustness.json`, `robustness.md` and `robust_accuracy_vs_eps.png` in --output_dir and, with --update_model_card
(default), puts the numbers in the card of a model folder that mimir_hf trained.

Under `torchrun` / `accelerate launch` every process evaluates its own contiguous run of whole batches (gloo on
CPUs, NCCL on GPUs; the first processes take one more when they do not divide evenly), the counts are summed, and
only rank 0 writes. With `--resume_file`, each process appends its finished
batches to `<file>` (`<file>.rank<N>` with several processes) and a rerun of the same evaluation (same settings, data
and number of processes) skips them: a long AutoAttack run survives being killed.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.distributed as dist
from transformers import AutoModelForImageClassification, set_seed

import mimir_hf  # noqa: F401  (registers the MIMIR classes)
from mimir_hf.data import checkpoint_image_processor
from mimir_hf.evaluation import RobustnessSettings, evaluate_robustness, report_markdown, write_report
from mimir_hf.image_processing_mimir import saved_image_processor
from mimir_hf.model_card import robustness_eval_results, write_model_card
from mimir_hf.pixel_space import pixel_space_classifier
from mimir_hf.run_record import (
    failures_recorded,
    mark_complete,
    prepare_output_dir,
    read_record,
    software_environment,
)

from .common import (
    DataArguments,
    RunArguments,
    checkpoint_config,
    logger,
    parse,
    read_data,
    setup_logging,
)


@dataclass
class EvaluationArguments:
    model_name_or_path: str = field(metadata={"help": "A saved image classifier (folder or Hub id)."})
    output_dir: str = field(metadata={"help": "Where the report goes."})
    update_model_card: bool = field(
        default=True, metadata={"help": "Write the numbers into the model folder's card (when it is writable)."}
    )
    use_cpu: bool = field(default=False, metadata={"help": "Evaluate on the CPU even if a GPU is there."})
    resume_file: str | None = field(
        default=None,
        metadata={"help": "Append every finished batch to this file (<file>.rank<N> per process under torchrun) and "
                  "skip those batches when the same evaluation runs again (long AutoAttack runs)."},
    )  # fmt: skip
    num_workers: int = field(default=0, metadata={"help": "DataLoader workers reading the evaluation images."})
    disable_tqdm: bool = field(
        default=False, metadata={"help": "No progress bars (the stage list and a log line per attack remain)."}
    )

    allow_new_head: bool = field(
        default=False,
        metadata={"help": "Evaluate a model whose classification head the checkpoint does not hold (newly "
                  "initialised, e.g. a pre-training folder): its numbers are meaningless, so it is refused otherwise."},
    )  # fmt: skip
    label_mapping: str | None = field(
        default=None,
        metadata={"help": "JSON (a file or inline) mapping the data's class names to the model's, when they differ, "
                  'e.g. \'{"kitty": "cat", "puppy": "dog"}\'.'},
    )  # fmt: skip


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


MIMIR_MODEL_TYPES = ("mimir", "mimir_swin", "mimir_cait", "mimir_convit")


def load_classifier(eval_args: EvaluationArguments, device, names: list[str]):
    """(classifier of [0, 1] pixels, the preprocessor that yields them, one line describing the preprocessing).

    Any `AutoModelForImageClassification` folder or Hub id: a MIMIR model with its saved `MimirImageProcessor` (or
    the one its config implies), any other transformers classifier with its own image processor, whose
    normalisation moves inside a wrapper (`mimir_hf.pixel_space`). Refused when the head was not in the checkpoint
    (unless --allow_new_head, when the new head gets one output per class of the data)."""
    path = eval_args.model_name_or_path
    model_type = checkpoint_config(path).get("model_type")
    try:
        model, info = AutoModelForImageClassification.from_pretrained(path, output_loading_info=True)
    except (KeyError, ValueError) as error:
        if model_type in MIMIR_MODEL_TYPES:
            raise
        raise ValueError(
            f"{path} is not an image classifier transformers can load (model_type {model_type!r}: {error}); "
            "`mimir-hf evaluate` takes any AutoModelForImageClassification folder or Hub id."
        ) from None
    new = sorted(info["missing_keys"])
    if new and not eval_args.allow_new_head:
        raise ValueError(
            f"{path} holds no trained classification head ({', '.join(new[:6])} would be newly initialised, e.g. a "
            "pre-training checkpoint): its accuracy would be meaningless. Fine-tune it first (mimir-hf finetune), "
            "or pass --allow_new_head to evaluate it anyway."
        )
    if new and model.config.num_labels != len(names):
        labels = dict(id2label=dict(enumerate(names)), label2id={name: i for i, name in enumerate(names)})
        model = AutoModelForImageClassification.from_pretrained(path, num_labels=len(names), **labels)
    if model_type in MIMIR_MODEL_TYPES:
        processor = checkpoint_image_processor(path, model.config)
    else:
        processor = saved_image_processor(path)  # transformers' PIL backend (no torchvision needed)
        if processor is None:
            raise ValueError(
                f"{path} has no image processor (preprocessor_config.json): the report needs it to know the model's "
                "input size and normalisation. Save the processor the model was trained with next to it "
                "(`AutoImageProcessor.from_pretrained(...).save_pretrained(folder)`)."
            )
    classifier, preprocessor, preprocessing = pixel_space_classifier(model.to(device).eval(), processor)
    classifier.untrained_head = new  # said in the report (robustness.md / .json)
    return classifier.eval(), preprocessor, preprocessing


def read_label_mapping(label_mapping: str) -> dict:
    """`--label_mapping`: a JSON file, or JSON itself, holding an object {data class name: model class name or
    index}; a `ValueError` saying which of these it is not."""
    expected = 'a JSON object {data class: model class}, e.g. {"cat": "3", "dog": "8"}, inline or in a .json file'
    if os.path.isfile(label_mapping):
        with open(label_mapping, encoding="utf-8") as f:
            text, source = f.read(), f"the file {label_mapping}"
    elif label_mapping.lstrip().startswith(("{", "[")) or label_mapping.strip() in ("null", "true", "false"):
        text, source = label_mapping, "the JSON given"
    else:
        raise ValueError(f"--label_mapping {label_mapping!r}: no such file; expected {expected}.")
    try:
        mapping = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"--label_mapping: {source} is not valid JSON ({error}); expected {expected}.") from None
    if not isinstance(mapping, dict):
        kind = "null" if mapping is None else f"a JSON {type(mapping).__name__}"
        raise ValueError(f"--label_mapping: {source} holds {kind}; expected {expected}.")
    return mapping


def label_map_for(names: list[str], config, label_mapping: str | None) -> dict[int, int] | None:
    """Data class index -> model class index, by class name; a `ValueError` when the names differ and no
    `--label_mapping` says how they correspond."""
    model_names = [config.id2label[i] for i in range(config.num_labels)]
    default_names = model_names == [f"LABEL_{i}" for i in range(config.num_labels)]
    if label_mapping is None and (names == model_names or default_names):
        if len(names) != config.num_labels:
            raise ValueError(f"The data has {len(names)} classes but the model {config.num_labels}; wrong dataset?")
        return None
    mapping = {} if label_mapping is None else read_label_mapping(label_mapping)
    unknown_keys = sorted(set(mapping) - set(names))
    if unknown_keys:
        raise ValueError(
            f"--label_mapping names {unknown_keys[:10]}, which are not classes of the data ({names[:10]}"
            f"{', ...' if len(names) > 10 else ''}); map the data's class names onto the model's."
        )
    index = {name: i for i, name in enumerate(model_names)}
    result, unknown = {}, []
    for data_index, name in enumerate(names):
        target = mapping.get(name, name)
        if isinstance(target, int) and not isinstance(target, bool) and 0 <= target < len(model_names):
            result[data_index] = target  # a model class given by its index
        elif target in index:
            result[data_index] = index[target]
        elif name in mapping:
            raise ValueError(
                f"--label_mapping maps {name!r} onto {target!r}, which is not a class of the model (its classes: "
                f"{model_names[:10]}{', ...' if len(model_names) > 10 else ''}, or their indices "
                f"0..{len(model_names) - 1})."
            )
        else:
            unknown.append(name)
    if unknown:
        raise ValueError(
            f"The data's classes {unknown[:10]} are not classes of the model ({model_names[:10]}"
            f"{', ...' if len(model_names) > 10 else ''}); pass --label_mapping (JSON: data class -> model class) if "
            "they are the same classes under other names."
        )
    return result


def run(eval_args: EvaluationArguments, data_args: DataArguments, settings: RobustnessSettings, run_args: RunArguments):
    """Evaluate, write the report files (and the model card) from rank 0; returns the `RobustnessReport`."""
    setup_logging()
    device, started = start_processes(eval_args.use_cpu)
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    identity = {**asdict(eval_args), **asdict(data_args), **asdict(settings), "processes": world}
    for key in ("output_dir", "num_workers", "disable_tqdm"):
        identity.pop(key)
    inputs = (*data_args.input_paths, eval_args.model_name_or_path, eval_args.label_mapping)
    try:
        if rank == 0:
            prepare_output_dir(eval_args.output_dir, "run_evaluation", identity, run_args.overwrite_output_dir, inputs)
        if world > 1:
            dist.barrier()  # the output dir exists (and a replaced one is gone) before any process writes there
        report = evaluate(eval_args, data_args, settings, device, rank, world)
    finally:
        if started:
            dist.destroy_process_group()
    return report


def evaluate(eval_args, data_args, settings, device, rank: int, world: int):
    set_seed(settings.eval_seed)
    update_card = rank == 0 and eval_args.update_model_card and _card_is_writable(eval_args.model_name_or_path)
    data = read_data(data_args, settings.eval_seed, need_train=False)
    model, preprocessor, preprocessing = load_classifier(eval_args, device, data.names)
    if rank == 0:
        logger.info(f"Model input: {preprocessing}.")
    labels = label_map_for(data.names, model.config, eval_args.label_mapping)
    _, eval_dataset = data.transformed(preprocessor, labels)

    start = time.time()
    say = (lambda message: logger.info(f"[{time.time() - start:6.1f}s] {message}")) if rank == 0 else None
    report = evaluate_robustness(
        model, eval_dataset, settings, progress=say, resume_file=eval_args.resume_file,
        num_workers=eval_args.num_workers, show_progress=rank == 0 and not eval_args.disable_tqdm,
        resume_identity={"image processor": preprocessing, "label mapping": labels},
    )  # fmt: skip
    if rank != 0:
        return report
    report.info.update(
        untrained_head=getattr(model, "untrained_head", []) or None,
        label_mapping={str(data): model_class for data, model_class in labels.items()} if labels else None,
        model=eval_args.model_name_or_path,
        model_type=model.config.model_type,
        preprocessing=preprocessing,
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        processes=world,
        seconds=round(time.time() - start, 1),
        environment=software_environment().to_json(),
    )
    write_report(report, eval_args.output_dir)
    logger.info("\n" + report_markdown(report))

    card = os.path.join(eval_args.model_name_or_path, "README.md")
    training_run = read_record(eval_args.model_name_or_path) if update_card and os.path.isfile(card) else None
    if training_run is not None:
        training = training_run.results.get("card_training", {})
        results = report_markdown(report).split("\n", 2)[2].replace("## ", "### ")
        try:
            write_model_card(
                eval_args.model_name_or_path, "finetuned", data_args.display_name, training, results,
                robustness_eval_results(report, data_args.display_name),
            )  # fmt: skip
        except OSError as error:
            logger.warning(f"Could not update the model card in {eval_args.model_name_or_path} ({error}).")
    mark_complete(
        eval_args.output_dir, robust_accuracy=report.robust_accuracy, natural_accuracy=report.natural_accuracy
    )
    return report


def _card_is_writable(model_path: str) -> bool:
    """Checked before any work: a read-only model folder keeps its card; the report goes to --output_dir only."""
    if not os.path.isdir(model_path) or os.access(model_path, os.W_OK):
        return True
    logger.warning(
        f"{model_path} is read-only: its model card will not be updated; the report goes to --output_dir only."
    )
    return False


def main(argv: list[str] | None = None, prog: str | None = None):
    """The command: its arguments parsed (a recipe first, if any), then `run`; a failure marks its runs failed."""
    with failures_recorded():
        return run(*parse((EvaluationArguments, DataArguments, RobustnessSettings, RunArguments), argv, prog))


if __name__ == "__main__":
    import sys

    from .cli import main as cli

    raise SystemExit(cli(["evaluate", *sys.argv[1:]]))
