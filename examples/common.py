"""What the example scripts share: their argument dataclasses, argument parsing, data loading and the output-dir guard."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field, fields

import datasets
import transformers
from transformers import HfArgumentParser, set_seed
from transformers.trainer_utils import get_last_checkpoint

from mimir_hf import PRESETS, MimirConfig
from mimir_hf.data import label_names, load_image_dataset, resolve_columns, with_pixel_transform
from mimir_hf.trainer import MimirTrainingArguments

logger = logging.getLogger("mimir_hf.examples")

# The small-scale recipe used when no preset or checkpoint is given: sized for the 8x8 digits upsampled to 16x16,
# so pre-training, fine-tuning and the full report run in minutes on 2 CPU cores.
DEMO_RECIPE = dict(
    image_size=16,
    patch_size=2,
    hidden_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=128,
    decoder_hidden_size=32,
    decoder_num_hidden_layers=1,
    decoder_num_attention_heads=4,
    decoder_intermediate_size=64,
)


@dataclass
class ModelArguments:
    """Which model to start from, and MIMIR's settings (unset fields keep the preset's / checkpoint's values)."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "A MIMIR (or MAE) checkpoint folder or Hub id; none: a new model."}
    )
    model_preset: str | None = field(
        default=None,
        metadata={"help": f"Shape of a new model: one of {sorted(PRESETS)}; none: the small digits recipe."},
    )
    image_size: int | None = field(default=None, metadata={"help": "Input resolution of a new model."})
    patch_size: int | None = field(default=None, metadata={"help": "Patch size of a new model."})
    hidden_size: int | None = field(default=None, metadata={"help": "Encoder width of a new model."})
    num_hidden_layers: int | None = field(default=None, metadata={"help": "Encoder depth of a new model."})
    num_attention_heads: int | None = field(default=None, metadata={"help": "Encoder heads of a new model."})
    mask_ratio: float | None = field(default=None, metadata={"help": "Pre-training mask ratio (0.75)."})
    attack_epsilon: float | None = field(default=None, metadata={"help": "Pre-training attack eps (8/255)."})
    attack_step_size: float | None = field(default=None, metadata={"help": "Pre-training attack step (10/255)."})
    attack_steps: int | None = field(default=None, metadata={"help": "Pre-training attack steps (1)."})
    mi_estimator: str | None = field(default=None, metadata={"help": "'hsic' (default), 'renyi' or 'none'."})
    mi_weight: float | None = field(default=None, metadata={"help": "Weight of the MI term (1e-5)."})
    drop_path_rate: float | None = field(default=None, metadata={"help": "Stochastic depth (fine-tuning: 0.1)."})

    def config_overrides(self) -> dict:
        names = [f.name for f in fields(self) if f.name not in ("model_name_or_path", "model_preset")]
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    def new_config(self, num_channels: int, **kwargs) -> MimirConfig:
        """A config for a new model: the preset (or the digits recipe), then the explicit overrides."""
        if self.model_preset and self.model_preset not in PRESETS:
            raise ValueError(f"--model_preset {self.model_preset!r} is unknown; choose one of {sorted(PRESETS)}.")
        base = dict(PRESETS[self.model_preset]) if self.model_preset else dict(DEMO_RECIPE)
        return MimirConfig(**{**base, "num_channels": num_channels, **self.config_overrides(), **kwargs})


@dataclass
class DataArguments:
    """Where the images come from. With no dataset argument: scikit-learn's digits, offline."""

    dataset_name: str | None = field(default=None, metadata={"help": "A Hub image-classification dataset."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Its configuration name."})
    train_dir: str | None = field(default=None, metadata={"help": "An imagefolder of training images."})
    validation_dir: str | None = field(default=None, metadata={"help": "An imagefolder of evaluation images."})
    image_column_name: str | None = field(default=None, metadata={"help": "Image column (default: 'image'/'img')."})
    label_column_name: str | None = field(default=None, metadata={"help": "Label column (default: 'label')."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only this many training images."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep only this many evaluation images."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where datasets are cached."})

    @property
    def uses_default_data(self) -> bool:
        return self.dataset_name is None and self.train_dir is None and self.validation_dir is None


@dataclass
class RunArguments:
    """How the output directory is treated."""

    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Empty --output_dir first if it holds another run."}
    )


def parse(argument_classes: tuple, argv: list[str] | None = None):
    """Dataclasses from the command line, or from a single .json / .yaml file of arguments."""
    parser = HfArgumentParser(argument_classes)
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(os.path.abspath(argv[0]))
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
        return parser.parse_yaml_file(os.path.abspath(argv[0]))
    return parser.parse_args_into_dataclasses(args=argv)


def setup_logging(training_args) -> None:
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%H:%M:%S", handlers=[logging.StreamHandler(sys.stdout)]
    )
    level = training_args.get_process_log_level()
    logger.setLevel(logging.INFO if training_args.should_log else level)
    datasets.utils.logging.set_verbosity(level)
    transformers.utils.logging.set_verbosity(level)


def load_data(data_args: DataArguments, image_size: tuple[int, int], num_channels: int, seed: int = 0):
    """(train, test, class names): transformed datasets yielding `pixel_values` in [0, 1] and `labels`."""
    dataset = load_image_dataset(
        data_args.dataset_name, data_args.dataset_config_name, data_args.train_dir, data_args.validation_dir,
        cache_dir=data_args.cache_dir, seed=seed,
    )
    image_column, label_column = resolve_columns(dataset["train"], data_args.image_column_name, data_args.label_column_name)
    names = label_names(dataset["train"], label_column)
    splits = []
    for split, limit in (("train", data_args.max_train_samples), ("test", data_args.max_eval_samples)):
        part = dataset[split]
        if limit is not None:
            part = part.select(range(min(limit, len(part))))
        splits.append(with_pixel_transform(part, image_column, label_column, image_size, num_channels))
    return splits[0], splits[1], names


def default_num_channels(data_args: DataArguments) -> int:
    """1 for the grey digits default, 3 otherwise."""
    return 1 if data_args.uses_default_data else 3


# ----------------------------------------------------------------------------------------------------------------
# The output directory: never reuse one that holds another run, never present a half-written one as complete.
# ----------------------------------------------------------------------------------------------------------------

RUN_FILE = "mimir_run.json"


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


def on_main_process(training_args, function):
    """`function()` run on rank 0 only, its result (or its error) shared with every rank."""
    outcome = None
    if training_args.process_index == 0:
        try:
            outcome = ("ok", function())
        except (ValueError, OSError) as error:
            outcome = ("error", str(error))
    if training_args.world_size > 1:
        import torch.distributed as dist

        holder = [outcome]
        dist.broadcast_object_list(holder, src=0)
        outcome = holder[0]
    if outcome[0] == "error":
        raise ValueError(outcome[1])
    return outcome[1]


def prepare_output_dir(output_dir: str, script: str, arguments: dict, overwrite: bool) -> str | None:
    """Create or check `output_dir`; returns a checkpoint to resume from when it holds this same, unfinished run.

    A directory with other content -- another script's run, other arguments, or files that are not a mimir_hf run --
    is an error unless `overwrite` (`--overwrite_output_dir`), which empties it first.
    """
    identity = {"script": script, "arguments": _jsonable(arguments)}
    run_file = os.path.join(output_dir, RUN_FILE)
    if os.path.isdir(output_dir) and os.listdir(output_dir):
        previous = None
        if os.path.isfile(run_file):
            with open(run_file) as f:
                previous = json.load(f)
        same = previous is not None and {k: previous.get(k) for k in identity} == identity
        if overwrite:
            shutil.rmtree(output_dir)
        elif not same:
            what = f"a {previous['script']} run with other arguments" if previous else "files of something else"
            raise ValueError(
                f"--output_dir {output_dir} already holds {what}. Pass --overwrite_output_dir to replace it, or "
                "choose another directory."
            )
        elif previous.get("status") == "complete":
            logger.info(f"{output_dir} holds this run, complete: running it again.")
        else:
            return get_last_checkpoint(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    with open(run_file, "w") as f:
        json.dump({**identity, "status": "running"}, f, indent=2)
    return None


def mark_complete(output_dir: str, **extra) -> None:
    """Flag the run as complete: written last, after every output file."""
    run_file = os.path.join(output_dir, RUN_FILE)
    with open(run_file) as f:
        record = json.load(f)
    record.update(status="complete", **_jsonable(extra))
    with open(run_file, "w") as f:
        json.dump(record, f, indent=2)


def run_identity(*argument_objects) -> dict:
    """The arguments that define a run (for the output-dir guard), without the ones that only say where or how."""
    ignored = {"output_dir", "overwrite_output_dir", "logging_dir", "resume_from_checkpoint", "push_to_hub", "hub_token",
               "disable_tqdm", "report_to", "logging_steps", "dataloader_num_workers"}
    merged = {}
    for obj in argument_objects:
        merged.update({k: v for k, v in asdict(obj).items() if k not in ignored})
    return merged


def start_training_run(script: str, training_class: type, argv: list[str] | None = None):
    """Parse a training script's arguments, set up logging, guard the output dir (rank 0), seed.

    Returns (model_args, data_args, training_args, checkpoint to resume from or None).
    """
    model_args, data_args, run_args, training_args = parse((ModelArguments, DataArguments, RunArguments, training_class), argv)
    setup_logging(training_args)
    resume = on_main_process(
        training_args,
        lambda: prepare_output_dir(
            training_args.output_dir, script, run_identity(model_args, data_args, training_args),
            run_args.overwrite_output_dir,
        ),
    )
    set_seed(training_args.seed)
    return model_args, data_args, training_args, resume


def train(trainer, resume: str | None):
    """`trainer.train()`; if it stopped on non-finite losses, save the last finite weights and raise."""
    result = trainer.train(resume_from_checkpoint=trainer.args.resume_from_checkpoint or resume)
    if trainer.nonfinite_stop:
        trainer.save_model()
        raise RuntimeError(
            f"{trainer.nonfinite_stop} The last finite weights are saved in {trainer.args.output_dir}; the run is not "
            "marked complete."
        )
    return result


@dataclass
class _RecipeArguments(MimirTrainingArguments):
    """Defaults both MIMIR stages share: AdamW with weight decay 0.05, warm-up then cosine, batch 64."""

    weight_decay: float = 0.05
    lr_scheduler_type: str = "cosine"
    per_device_train_batch_size: int = 64
    logging_steps: float = 50
    remove_unused_columns: bool = False  # the lazy transform reads the image column, which forward() does not name


@dataclass
class PreTrainingArguments(_RecipeArguments):
    """`MimirTrainingArguments` with MIMIR's pre-training optimisation as defaults (AdamW betas (0.9, 0.95), weight
    decay 0.05, warm-up then cosine); the learning rate suits the small default recipe."""

    learning_rate: float = 1e-3
    adam_beta2: float = 0.95
    warmup_steps: float = 0.05
    num_train_epochs: float = 30.0


@dataclass
class FineTuningArguments(_RecipeArguments):
    """`MimirTrainingArguments` with MIMIR's fine-tuning optimisation as defaults (layer decay 0.65, weight decay
    0.05, warm-up then cosine, PGD-AT at 8/255); the learning rate suits the small default recipe."""

    learning_rate: float = 2e-3
    layer_decay: float = 0.65
    warmup_steps: float = 0.1
    num_train_epochs: float = 10.0


