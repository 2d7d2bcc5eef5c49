"""What the example scripts share: model and data arguments, argument parsing (with recipe files), data loading, and
the output-dir guard. The training and evaluation settings themselves are the library's dataclasses."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from dataclasses import MISSING, asdict, dataclass, field, fields, make_dataclass

import datasets
import transformers
import yaml
from transformers import HfArgumentParser
from transformers.trainer_utils import get_last_checkpoint

from mimir_hf import PRESETS, MimirConfig
from mimir_hf.data import image_processor_for, label_names, load_image_dataset, resolve_columns, with_pixel_transform
from mimir_hf.robustbench import select_subset

logger = logging.getLogger("mimir_hf.examples")

# MimirConfig fields a script may override for a new model (or on top of a checkpoint's config). Their names, types
# and defaults are MimirConfig's own: `--help` prints the library default of each.
CONFIG_OVERRIDES = (
    "image_size", "patch_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "decoder_hidden_size", "decoder_num_hidden_layers", "decoder_num_attention_heads", "decoder_intermediate_size",
    "mask_ratio", "norm_pix_loss", "classifier_pooling", "drop_path_rate", "label_smoothing",
    "attack_epsilon", "attack_step_size", "attack_steps", "attack_random_start",
    "mi_estimator", "mi_weight", "mi_sigma",
)  # fmt: skip
_OVERRIDE_TYPES = {"image_size": int, "classifier_pooling": str, "mi_estimator": str}


def _override_field(name: str):
    default = MimirConfig.__dataclass_fields__[name].default
    kind = _OVERRIDE_TYPES.get(name, type(default))
    shown = f"{default:.6g}" if isinstance(default, float) else repr(default)
    return (name, kind | None, field(default=None, metadata={"help": f"MimirConfig.{name} (library default {shown})."}))


@dataclass
class _ModelChoice:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "A MIMIR (or MAE) checkpoint folder or Hub id; none: a new model."}
    )
    model_preset: str | None = field(
        default=None, metadata={"help": f"Shape of a new model: one of {sorted(PRESETS)}; none: the digits recipe."}
    )


ModelArguments = make_dataclass(
    "ModelArguments",
    [_override_field(name) for name in CONFIG_OVERRIDES],
    bases=(_ModelChoice,),
    namespace={"__doc__": "Which model to start from, and MimirConfig fields to override (unset: the preset's, the "
               "checkpoint's or the library's value)."},
)  # fmt: skip

# The small shape used when no preset or checkpoint is given: sized for the 8x8 digits upsampled to 16x16, so
# pre-training, fine-tuning and the full report run in minutes on 2 CPU cores.
DEMO_SHAPE = dict(
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


def config_overrides(model_args) -> dict:
    return {name: getattr(model_args, name) for name in CONFIG_OVERRIDES if getattr(model_args, name) is not None}


def new_config(model_args, num_channels: int, **kwargs) -> MimirConfig:
    """A config for a new model: the preset (or the digits shape), then the explicit overrides."""
    if model_args.model_preset and model_args.model_preset not in PRESETS:
        raise ValueError(f"--model_preset {model_args.model_preset!r} is unknown; choose one of {sorted(PRESETS)}.")
    base = dict(PRESETS[model_args.model_preset]) if model_args.model_preset else dict(DEMO_SHAPE)
    return MimirConfig(**{**base, "num_channels": num_channels, **config_overrides(model_args), **kwargs})


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
    aux_data_file: str | None = field(
        default=None,
        metadata={"help": "Auxiliary training data (e.g. the EDM images): an .npz with 'image' (uint8 NxHxWx3) and "
                  "'label'; every batch draws aux_fraction of its examples from it."},
    )  # fmt: skip
    eval_subset: str | None = field(
        default=None,
        metadata={"help": "Evaluate on a published subset of the evaluation split: 'robustbench-imagenet-5000' (the "
                  "RobustBench ImageNet ids, selected by file name, in the list's order)."},
    )  # fmt: skip

    @property
    def uses_default_data(self) -> bool:
        return self.dataset_name is None and self.train_dir is None and self.validation_dir is None

    @property
    def display_name(self) -> str:
        return self.dataset_name or ("sklearn-digits" if self.uses_default_data else "imagefolder")


@dataclass
class RunArguments:
    """How the output directory is treated."""

    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Empty --output_dir first if it holds another run."}
    )


def parse(argument_classes: tuple, argv: list[str] | None = None):
    """Dataclasses from the command line. A first argument ending in .json/.yaml/.yml is a recipe: its values become
    the defaults, and the flags after it override them (`run.py recipes/x.yaml --output_dir out`)."""
    parser = HfArgumentParser(argument_classes)
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0].endswith((".json", ".yaml", ".yml")):
        values = load_recipe(argv[0])
        known = {action.dest: action for action in parser._actions}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"{argv[0]} sets unknown arguments {unknown}; see --help for the valid names.")
        parser.set_defaults(**values)
        for name in values:
            known[name].required = False
        argv = argv[1:]
    return parser.parse_args_into_dataclasses(args=argv)


def load_recipe(path: str) -> dict:
    """The arguments of a .json / .yaml recipe file, as a dict."""
    with open(path, encoding="utf-8") as f:
        values = json.load(f) if path.endswith(".json") else yaml.safe_load(f)
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of argument names to values, got {type(values).__name__}.")
    return values


def setup_logging(log_level: int = logging.INFO, library_level: int = logging.WARNING) -> None:
    """Our messages at `log_level`; datasets' and transformers' at `library_level`."""
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    logger.setLevel(log_level)
    datasets.utils.logging.set_verbosity(library_level)
    transformers.utils.logging.set_verbosity(library_level)


def setup_training_logging(training_args) -> None:
    level = training_args.get_process_log_level()  # Trainer's --log_level (default: warnings)
    setup_logging(logging.INFO if training_args.should_log else level, level)


def load_data(
    data_args: DataArguments, config, seed: int = 0, augmentation=None, image_processor=None, evaluation_only=False
):
    """(train, test, class names): transformed datasets yielding `pixel_values` (through the model's image processor,
    or `image_processor`) and `labels`. `augmentation` (`AugmentationArguments`) augments the training split only;
    `evaluation_only`: an evaluation split alone is enough (it also gives the class names)."""
    dataset = load_image_dataset(
        data_args.dataset_name, data_args.dataset_config_name, data_args.train_dir, data_args.validation_dir,
        cache_dir=data_args.cache_dir, seed=seed, evaluation_only=evaluation_only,
    )  # fmt: skip
    image_column, label_column = resolve_columns(
        dataset["train"], data_args.image_column_name, data_args.label_column_name
    )
    names = label_names(dataset["train"], label_column)
    processor = image_processor or image_processor_for(config)
    train_augmentation = augmentation.build(config.image_size_hw, config.num_channels) if augmentation else None
    splits = []
    for split, limit in (("train", data_args.max_train_samples), ("test", data_args.max_eval_samples)):
        part = dataset[split]
        if split == "test" and data_args.eval_subset:
            part = select_subset(part, image_column, label_column, data_args.eval_subset)
        if limit is not None:
            part = part.select(range(min(limit, len(part))))
        extra = train_augmentation if split == "train" else None
        splits.append(with_pixel_transform(part, image_column, label_column, processor, extra))
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


_WHERE_OR_HOW = {
    "output_dir", "overwrite_output_dir", "logging_dir", "resume_from_checkpoint", "push_to_hub", "hub_token",
    "disable_tqdm", "report_to", "logging_steps", "dataloader_num_workers",
}  # fmt: skip


def run_identity(*argument_objects) -> dict:
    """The arguments that define a run (for the output-dir guard), without the ones that only say where or how."""
    merged = {}
    for obj in argument_objects:
        merged.update({k: v for k, v in asdict(obj).items() if k not in _WHERE_OR_HOW})
    return merged


def start_training_run(script: str, model_args, data_args, training_args, run_args, *more_args) -> str | None:
    """Set up logging, guard the output dir (rank 0), seed. Returns a checkpoint to resume from, or None.
    `more_args`: further argument objects that define the run (e.g. `AugmentationArguments`)."""
    setup_training_logging(training_args)
    resume = on_main_process(
        training_args,
        lambda: prepare_output_dir(
            training_args.output_dir, script, run_identity(model_args, data_args, training_args, *more_args),
            run_args.overwrite_output_dir,
        ),
    )  # fmt: skip
    transformers.set_seed(training_args.seed)
    return resume


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


def field_names(argument_class) -> set[str]:
    return {f.name for f in fields(argument_class)}


def required_fields(argument_class) -> list[str]:
    return [f.name for f in fields(argument_class) if f.default is MISSING and f.default_factory is MISSING]


# ----------------------------------------------------------------------------------------------------------------
# Paper-scale training: the effective settings of a run, auxiliary data
# ----------------------------------------------------------------------------------------------------------------


def effective_settings(args, augmentation, config=None, aux_data_file: str | None = None) -> dict:
    """What a training run with training arguments `args` will actually use, after the learning-rate scaling: printed
    at start, recorded in `mimir_run.json`, compared with the README's recipe table by the tests."""
    epochs, warmup = args.num_train_epochs, args.warmup_steps
    settings = {
        "effective batch": f"{args.effective_batch_size()} (per device {args.per_device_train_batch_size} x "
        f"accumulation {args.gradient_accumulation_steps} x {args.world_size} processes)",
        "learning rate": args.scaled_learning_rate(),
        "learning rate rule": (
            f"base {args.base_learning_rate:g} x effective batch / {args.base_batch_size}"
            if args.base_learning_rate is not None
            else "as given"
        ),
        "epochs": epochs if args.max_steps <= 0 else f"max_steps {args.max_steps}",
        "warm-up": f"{warmup * epochs:g} epochs" if 0 < warmup < 1 else f"{warmup:g} steps",
        "schedule": f"{getattr(args.lr_scheduler_type, 'value', args.lr_scheduler_type)} "
        f"{dict(args.lr_scheduler_kwargs or {})}",
        "optimizer": f"AdamW betas ({args.adam_beta1}, {args.adam_beta2}), weight decay "
        f"{args.weight_decay}, layer decay {args.layer_decay}",
        "augmentation": augmentation.describe(),
        "EMA": f"decay {args.ema_decay}" if args.ema_decay > 0 else "off",
        "auxiliary data": f"{aux_data_file}, fraction {args.aux_fraction}" if aux_data_file else "none",
    }
    if hasattr(args, "adversarial_budget"):
        ramp = args.adversarial_step_size_ramp_epochs
        settings["attack"] = f"{args.adversarial_method}, {args.adversarial_budget.describe()}" + (
            f", step ramped over {ramp} epochs" if ramp else ""
        )
        settings["mixup / cutmix"] = (
            f"{args.mixup_alpha:g} / {args.cutmix_alpha:g}, soft targets" if args.mixes_batches else "off"
        )
    elif config is not None:
        settings["attack"] = f"MAE-loss PGD, {config.attack_budget.describe()}"
    if config is not None and hasattr(config, "label_smoothing"):
        settings["label smoothing"] = config.label_smoothing
    return settings


def log_effective_settings(settings: dict) -> None:
    logger.info("Effective settings:\n" + "\n".join(f"  {name}: {value}" for name, value in settings.items()))


def load_aux_data(data_args: DataArguments, config, augmentation=None, num_labels: int | None = None):
    """The auxiliary training data of `--aux_data_file`, through the same transform as the training split (labels
    checked against `num_labels` when given); or None."""
    if not data_args.aux_data_file:
        return None
    from mimir_hf.auxiliary_data import AuxiliaryImages
    from mimir_hf.data import pixel_transform

    extra = augmentation.build(config.image_size_hw, config.num_channels) if augmentation else None
    transform = pixel_transform("image", "label", image_processor_for(config), extra)
    return AuxiliaryImages(data_args.aux_data_file, transform, num_labels=num_labels)
