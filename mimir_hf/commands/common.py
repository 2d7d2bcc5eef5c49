"""What the example scripts share: model and data arguments, argument parsing (with recipe files), data loading, and
starting a training run (its output folder and record are `mimir_hf.run_record`'s). The training and evaluation
settings themselves are the library's dataclasses."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import MISSING, asdict, dataclass, field, fields

import datasets
import transformers
import yaml
from datasets import ClassLabel, DatasetDict
from transformers import HfArgumentParser, PretrainedConfig

from mimir_hf import (
    MimirCaitConfig,
    MimirConfig,
    MimirConvitConfig,
)
from mimir_hf.checkpoints import resume_needs
from mimir_hf.data import (
    check_labels_fit,
    drop_unreadable_images,
    folder_layout,
    image_processor_for,
    label_names,
    load_image_dataset,
    prepared_in_memory,
    preprocessing_change,
    resolve_columns,
    with_pixel_transform,
)
from mimir_hf.hub import check_hub_answers
from mimir_hf.models import FAMILIES
from mimir_hf.robustbench import select_subset
from mimir_hf.run_record import add_results, prepare_output_dir, read_record, run_identity

logger = logging.getLogger("mimir_hf.commands")

# Config fields a script may override for a new model (or on top of a checkpoint's config): MimirConfig's, then the
# CaiT and ConViT ones: the fields of `ModelArguments` below (a test checks the two lists agree). `--help` prints the
# library default of each. A field the model's family lacks is refused by name (`config_overrides`).
CONFIG_OVERRIDES = (
    "image_size", "patch_size", "num_channels", "hidden_size", "num_hidden_layers", "num_attention_heads",
    "intermediate_size",
    "decoder_hidden_size", "decoder_num_hidden_layers", "decoder_num_attention_heads", "decoder_intermediate_size",
    "mask_ratio", "norm_pix_loss", "classifier_pooling", "drop_path_rate", "label_smoothing",
    "attack_epsilon", "attack_step_size", "attack_steps", "attack_random_start",
    "mi_estimator", "mi_weight", "mi_sigma",
    "num_class_attention_layers", "layer_scale_init", "local_up_to_layer", "locality_strength",
)  # fmt: skip
# The overrides that only pre-training reads (the decoder, the masking, the MAE-loss attack, the MI term): fine-tuning
# hides them from its --help and refuses them (its attack is `--adversarial_*`).
PRETRAINING_ONLY_OVERRIDES = (
    "decoder_hidden_size", "decoder_num_hidden_layers", "decoder_num_attention_heads", "decoder_intermediate_size",
    "mask_ratio", "norm_pix_loss", "attack_epsilon", "attack_step_size", "attack_steps", "attack_random_start",
    "mi_estimator", "mi_weight", "mi_sigma",
)  # fmt: skip
# The families the scripts build new models of (those with MIMIR pre-training): ViT, CaiT, ConViT.
_NEW_MODEL_FAMILIES = [family for family in FAMILIES.values() if family.pretraining_class is not None]
_FAMILY_CONFIGS = tuple(family.config_class for family in _NEW_MODEL_FAMILIES)


def _override(name: str):
    """A `ModelArguments` field overriding config field `name`: unset by default, its `--help` naming the config class
    that has the field and the library's default."""
    config_class = next(c for c in _FAMILY_CONFIGS if name in c.__dataclass_fields__)
    default = config_class.__dataclass_fields__[name].default
    shown = f"{default:.6g}" if isinstance(default, float) else repr(default)
    return field(default=None, metadata={"help": f"{config_class.__name__}.{name} (library default {shown})."})


# The families a script builds a new model in, by preset name (Swin is fine-tuned from converted checkpoints only: it
# has no MIMIR pre-training model here), and each family's model classes by `model_type`. A checkpoint of another type
# (a ViT MAE) loads into the ViT classes, which convert it.
NEW_MODEL_PRESETS = {
    name: (family.config_class, shape) for family in _NEW_MODEL_FAMILIES for name, shape in family.presets.items()
}
PRETRAINING_CLASSES = {family.model_type: family.pretraining_class for family in _NEW_MODEL_FAMILIES}
CLASSIFIER_CLASSES = {family.model_type: family.classifier_class for family in FAMILIES.values()}


@dataclass
class _ModelChoice:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "A MIMIR (or MAE) checkpoint folder or Hub id; none: a new model."}
    )
    model_preset: str | None = field(
        default=None,
        metadata={
            "help": f"Family and shape of a new model: one of {sorted(NEW_MODEL_PRESETS)}; none: the digits "
            "recipe (a ViT)."
        },  # fmt: skip
    )
    ignore_mismatched_sizes: bool = field(
        default=False,
        metadata={"help": "Initialise afresh the checkpoint weights of other shapes (another number of classes or "
                  "image size) instead of refusing to load."},
    )  # fmt: skip


@dataclass
class ModelArguments(_ModelChoice):
    """Which model to start from, and config fields to override (unset: the preset's, the checkpoint's or the
    library's value). Each override is the config field of the same name; a field the model's family lacks is refused
    by name (`config_overrides`)."""

    image_size: int | None = _override("image_size")
    patch_size: int | None = _override("patch_size")
    num_channels: int | None = _override("num_channels")
    hidden_size: int | None = _override("hidden_size")
    num_hidden_layers: int | None = _override("num_hidden_layers")
    num_attention_heads: int | None = _override("num_attention_heads")
    intermediate_size: int | None = _override("intermediate_size")
    decoder_hidden_size: int | None = _override("decoder_hidden_size")
    decoder_num_hidden_layers: int | None = _override("decoder_num_hidden_layers")
    decoder_num_attention_heads: int | None = _override("decoder_num_attention_heads")
    decoder_intermediate_size: int | None = _override("decoder_intermediate_size")
    mask_ratio: float | None = _override("mask_ratio")
    norm_pix_loss: bool | None = _override("norm_pix_loss")
    classifier_pooling: str | None = _override("classifier_pooling")
    drop_path_rate: float | None = _override("drop_path_rate")
    label_smoothing: float | None = _override("label_smoothing")
    attack_epsilon: float | None = _override("attack_epsilon")
    attack_step_size: float | None = _override("attack_step_size")
    attack_steps: int | None = _override("attack_steps")
    attack_random_start: bool | None = _override("attack_random_start")
    mi_estimator: str | None = _override("mi_estimator")
    mi_weight: float | None = _override("mi_weight")
    mi_sigma: float | None = _override("mi_sigma")
    num_class_attention_layers: int | None = _override("num_class_attention_layers")
    layer_scale_init: float | None = _override("layer_scale_init")
    local_up_to_layer: int | None = _override("local_up_to_layer")
    locality_strength: float | None = _override("locality_strength")


@dataclass
class FineTuningModelArguments(ModelArguments):
    """ModelArguments of fine-tuning: the same, with fine-tuning's drop path by default."""

    drop_path_rate: float | None = field(
        default=0.1,
        metadata={"help": "Stochastic depth of the fine-tuned encoder (MIMIR fine-tuning: 0.1; the configs' default, "
                  "0.0, is pre-training's)."},
    )  # fmt: skip


def fine_tuning_model_arguments(model_args, **changes):
    """`FineTuningModelArguments` from `ModelArguments`: an unset drop path becomes fine-tuning's default."""
    values = {name: value for name, value in asdict(model_args).items() if value is not None}
    return FineTuningModelArguments(**{**values, **changes})


# The small shape used when no preset or checkpoint is given: sized for the 8x8 digits upsampled to 16x16, so
# pre-training, fine-tuning and the full report run in minutes on 2 CPU cores. Patch 4: 16 patches of 2x2 digit pixels
# (patch 2 gave 64 patches, 3.6x the compute per image, and a weaker model in the same time; docs/benchmarks.md).
DEMO_SHAPE = dict(
    image_size=16,
    patch_size=4,
    hidden_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=128,
    decoder_hidden_size=32,
    decoder_num_hidden_layers=1,
    decoder_num_attention_heads=4,
    decoder_intermediate_size=64,
)


def config_overrides(model_args, config_class: type | None = None) -> dict:
    """The config fields given on the command line; with `config_class`, refused by name if that family lacks one."""
    overrides = {name: getattr(model_args, name) for name in CONFIG_OVERRIDES if getattr(model_args, name) is not None}
    if config_class is not None:
        unknown = sorted(name for name in overrides if name not in config_class.__dataclass_fields__)
        if unknown:
            raise ValueError(
                f"{', '.join('--' + name for name in unknown)} {'do' if len(unknown) > 1 else 'does'} not apply to "
                f"{config_class.__name__} models ({config_class.model_type}); leave "
                f"{'them' if len(unknown) > 1 else 'it'} out."
            )
    return overrides


def new_config(model_args, num_channels: int, **kwargs) -> MimirConfig | MimirCaitConfig | MimirConvitConfig:
    """A config for a new model: the preset's family and shape (or the digits ViT), then the explicit overrides."""
    preset = model_args.model_preset
    if preset and preset not in NEW_MODEL_PRESETS:
        raise ValueError(f"--model_preset {preset!r} is unknown; choose one of {sorted(NEW_MODEL_PRESETS)}.")
    config_class, base = NEW_MODEL_PRESETS[preset] if preset else (MimirConfig, DEMO_SHAPE)
    overrides = config_overrides(model_args, config_class)
    return config_class(**{**base, "num_channels": num_channels, **overrides, **kwargs})


def checkpoint_config(path: str) -> dict:
    """The config dict of a checkpoint folder or Hub id; a `ValueError` naming the path if there is none (or, within
    seconds, if the Hub does not answer: `check_hub_answers`)."""
    check_hub_answers(path)
    try:
        return PretrainedConfig.get_config_dict(path)[0]
    except OSError as error:
        raise ValueError(f"Cannot read a model config from {path}: {error}") from None


def encoder_description(config, classifier: bool = False) -> str:
    """The encoder in a few words, for the model cards (`classifier`: with the ViT's pooling)."""
    if config.model_type == "mimir_swin":
        return f"Swin {config.embed_dim} wide, depths {list(config.depths)}, window {config.window_size}"
    if config.model_type == "mimir_cait":
        return (
            f"CaiT {config.hidden_size} wide, {config.num_hidden_layers} talking-heads layers + "
            f"{config.num_class_attention_layers} class-attention layers, patch {config.patch_size}"
        )
    if config.model_type == "mimir_convit":
        return (
            f"ConViT {config.hidden_size} wide, {config.num_hidden_layers} layers (GPSA in the first "
            f"{config.local_up_to_layer}), patch {config.patch_size}"
        )
    description = f"ViT {config.hidden_size} wide, {config.num_hidden_layers} layers, patch {config.patch_size}"
    return description + (f", {config.classifier_pooling} pooling" if classifier else "")


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
    eval_split_name: str | None = field(
        default=None,
        metadata={"help": "The split to evaluate on (e.g. 'validation' for ImageNet-1k, whose 'test' is unlabelled); "
                  "default: the first of test, validation, valid, val that the dataset has."},
    )  # fmt: skip
    eval_subset: str | None = field(
        default=None,
        metadata={"help": "Evaluate on a published subset of the evaluation split: 'robustbench-imagenet-5000' (the "
                  "RobustBench ImageNet ids, selected by file name, in the list's order)."},
    )  # fmt: skip
    train_val_split: float = field(
        default=0.15,
        metadata={"help": "Share of the training images held out for evaluation when the data has no evaluation split "
                  "(said in the log); 0 holds none out (pre-training only: fine-tuning and evaluation need one)."},
    )  # fmt: skip
    scan_images: bool = field(
        default=True,
        metadata={"help": "Before training, find unreadable, empty, truncated or oversized images and skip them "
                  "(each named in a warning); a run then never dies mid-epoch on one bad file."},
    )  # fmt: skip

    def __post_init__(self):
        if not 0 <= self.train_val_split < 1:
            raise ValueError(
                f"--train_val_split must be in [0, 1) (a share of the images), got {self.train_val_split}."
            )
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name} must be >= 1 (or left unset for all), got {value}.")

    @property
    def input_paths(self) -> list[str]:
        """The local folders this run reads: an output folder must never be (or contain, or sit inside) one."""
        return [path for path in (self.train_dir, self.validation_dir, self.cache_dir, self.aux_data_file) if path]

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


RECIPES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes")
_RECIPE_SUFFIXES = (".yaml", ".yml", ".json")


def recipe_names() -> list[str]:
    """The recipes that ship with mimir_hf, by name (`demo`, `cifar10/finetune_vit_small`, ...)."""
    names = []
    for folder, _, files in os.walk(RECIPES_DIR):
        for name in files:
            if name.endswith(_RECIPE_SUFFIXES):
                relative = os.path.relpath(os.path.join(folder, name), RECIPES_DIR)
                names.append(os.path.splitext(relative)[0].replace(os.sep, "/"))
    return sorted(names)


def resolve_recipe(name: str) -> str:
    """The file of a recipe: `name` itself when it is a file, else the recipe of that name shipped with mimir_hf
    (`demo`, `cifar10/finetune_vit_small`, with or without `.yaml`); a `ValueError` listing them otherwise."""
    if os.path.isfile(name):
        return name
    shipped = os.path.join(RECIPES_DIR, name if name.endswith(_RECIPE_SUFFIXES) else name + ".yaml")
    if os.path.isfile(shipped):
        return shipped
    raise ValueError(
        f"No recipe {name!r}: it is not a file, nor one of the recipes shipped with mimir_hf "
        f"({', '.join(recipe_names())})."
    )


def parse(
    argument_classes: tuple, argv: list[str] | None = None, prog: str | None = None, hidden: tuple[str, ...] = ()
):
    """Dataclasses from the command line. A first argument that is not a flag is a recipe (a .yaml/.json file, or
    the name of a recipe shipped with mimir_hf, e.g. `demo`): its values become the defaults, and the flags after it
    override them (`mimir-hf run demo --output_dir out`). The arguments named in `hidden` are left out of `--help`
    (the command shows that setting under another name, and checks or refuses these itself)."""
    check_launch()
    parser = HfArgumentParser(argument_classes, prog=prog)
    for action in parser._actions:
        if action.dest in hidden:
            action.help = argparse.SUPPRESS
    argv = sys.argv[1:] if argv is None else list(argv)
    values = {}
    if argv and not argv[0].startswith("-"):
        path, argv_recipe = resolve_recipe(argv[0]), argv[0]
        values = load_recipe(path)
        known = {action.dest: action for action in parser._actions}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"{argv[0]} sets unknown arguments {unknown}; see --help for the valid names.")
        argv = argv[1:]
        for mine, other in (("fp16", "bf16"), ("bf16", "fp16")):  # one precision flag given replaces the other
            if values.get(mine) and _flag_value(argv, other) and _flag_value(argv, mine) is None:
                del values[mine]
                logger.info(f"--{other} on the command line replaces the recipe's {mine}.")
        for name, value in values.items():
            action = next((a for a in parser._actions if f"--{name}" in a.option_strings), known[name])
            problem = _value_problem(value, action)
            if problem:
                raise ValueError(f"{argv_recipe} sets {name}: {value!r}, but {name} takes {problem}.")
        parser.set_defaults(**values)
        for name in values:
            known[name].required = False
    parsed = parser.parse_args_into_dataclasses(args=argv)
    cap_recipe_workers(parsed, values.get("dataloader_num_workers"), argv)
    return parsed


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity set where the system has one (a container, a Slurm or
    `taskset` allocation: fewer than the machine's), else the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def cap_recipe_workers(parsed, recipe_workers: int | None, argv: list[str]) -> None:
    """A recipe's `dataloader_num_workers` above the CPUs this process may use (`usable_cpus`) comes down to that
    count, said in one line; a `--dataloader_num_workers` given on the command line (`argv`) is never changed."""
    cores = usable_cpus()
    given = any("--dataloader_num_workers".startswith(arg.partition("=")[0]) for arg in argv
                if arg.startswith("--dataloader_n"))  # fmt: skip
    if recipe_workers is None or recipe_workers <= cores or given:
        return
    for arguments in parsed:
        if getattr(arguments, "dataloader_num_workers", None) == recipe_workers:
            arguments.dataloader_num_workers = cores
    logger.info(
        f"The recipe's dataloader_num_workers {recipe_workers} is more than the {cores} CPUs this process may use: "
        f"{cores} data-loader workers (pass --dataloader_num_workers N to choose)."
    )


def _value_problem(value, action) -> str | None:
    """What a recipe's `value` for the argument `action` should have been, in words, or None when it fits: a list
    where the flag takes several values, one value otherwise; integers, numbers and booleans of their kind (YAML reads
    `1e-3` as a string, which a number field converts, as the command line would). Other kinds are left to the
    argument classes' own checks."""
    several = action.nargs in ("+", "*")
    kind = action.type if action.type in (int, float) else getattr(action.type, "__name__", None)
    one, many = {
        int: ("an integer", "integers"), float: ("a number", "numbers"), "string_to_bool": ("true or false", "booleans")
    }.get(kind, (None, None))  # fmt: skip
    if several and not isinstance(value, list):
        return f"a list of {many or 'values'}, e.g. [{value!r}]"
    if one is None:
        return None
    if not several and isinstance(value, (list, dict)):
        return one
    for item in value if several else [value]:
        if isinstance(item, bool):
            fits = kind == "string_to_bool"
        elif kind == "string_to_bool":
            fits = False
        elif kind is int:
            fits = isinstance(item, int)
        else:
            fits = isinstance(item, (int, float)) or (isinstance(item, str) and _is_number(item))
        if not fits:
            return f"a list of {many}" if several else one
    return None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def given_names(argv: list[str] | None = None) -> set[str]:
    """The argument names set explicitly by `argv` (as `parse` reads it): its flags, and the recipe's names when the
    first argument is a recipe."""
    argv = sys.argv[1:] if argv is None else list(argv)
    names = {arg[2:].partition("=")[0].replace("-", "_") for arg in argv if arg.startswith("--")}
    if argv and not argv[0].startswith("-"):
        names |= set(load_recipe(resolve_recipe(argv[0])))
    return names


def _flag_value(argv: list[str], name: str) -> bool | None:
    """Whether a boolean flag `--name` is switched on in `argv` (`--name`, `--name true`, `--name=yes`), off
    (`--name false`), or None when it is not given."""
    for index, arg in enumerate(argv):
        flag, equals, value = arg.partition("=")
        if flag != f"--{name}":
            continue
        if not equals:
            following = argv[index + 1] if index + 1 < len(argv) else ""
            value = "" if following.startswith("-") else following
        return value.lower() not in ("false", "no", "0", "f", "n")
    return None


def load_recipe(path: str) -> dict:
    """The arguments of a .json / .yaml recipe file, as a dict."""
    with open(path, encoding="utf-8") as f:
        values = json.load(f) if path.endswith(".json") else yaml.safe_load(f)
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of argument names to values, got {type(values).__name__}.")
    return values


def end_processes(completed: bool = True) -> None:
    """Tear down the process group (torchrun / accelerate launch) before the interpreter does: left to interpreter
    shutdown, gloo's worker threads can abort a finished process with SIGABRT (pytorch/pytorch#179291), failing a
    run that completed. After a `completed` command the processes first meet at a barrier, so that none tears its
    connections down while another still uses them (rank 0 may still be writing files); after an error they do not
    wait for each other. A no-op in a single process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if completed and dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


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


@dataclass
class Data:
    """The checked, not yet transformed splits (`test` may be the only one), their columns and class names."""

    train: datasets.Dataset | None
    test: datasets.Dataset | None
    image_column: str
    label_column: str | None
    names: list[str] | None
    default_data: bool = False  # the built-in digits, whose resize to the model's size is documented

    def transformed(
        self, image_processor, label_map: dict[int, int] | None = None, augmentation=None, prepare_train: bool = False
    ):
        """(train, test): the splits yielding `pixel_values` (through `image_processor`) and `labels` (through
        `label_map`); the training split also through `augmentation` (a built `TrainAugmentation`), if any, whose
        random-resized crop gives the model's size without the processor's resize (`training_processor`). A processor
        that changes the images' size or channels says so once, with the numbers, the split and how to keep them.
        With `prepare_train` a training split without augmentation is decoded once and held in memory
        (`prepared_in_memory`; `prepares_in_memory` says when a run should)."""
        cropped = self.train is not None and augmentation is not None and augmentation.outputs_model_size
        reference = self.test if cropped else self.train if self.train is not None else self.test
        change = None if reference is None else preprocessing_change(
            reference, self.image_column, image_processor, which="evaluation images" if cropped else "images"
        )  # fmt: skip
        note = (
            f"The training images are cropped and resized to {augmentation.height}x{augmentation.width} by the "
            "augmentation's random-resized crop; the image processor's resize and centre crop do not apply to them"
        ) if cropped else None  # fmt: skip
        if change:
            (logger.info if self.default_data else logger.warning)(". ".join(filter(None, (change, note))) + ".")
        elif note:
            logger.info(note + ".")
        train, test = (
            None if part is None
            else with_pixel_transform(part, self.image_column, self.label_column, image_processor,
                                      augmentation if part is self.train else None, label_map)
            for part in (self.train, self.test)
        )  # fmt: skip
        if train is not None and augmentation is None and prepare_train:
            train = prepared_in_memory(train, announce=_announce_prepared) or train
        return train, test


def _announce_prepared(images: int, size: int) -> None:
    logger.info(
        f"The {images} training images are decoded and processed once and held in memory ({size / 2**20:.1f} MiB): "
        "without augmentation every epoch reads the same tensors."
    )


def class_index_labels(dataset: DatasetDict, label_column: str) -> DatasetDict:
    """Labels as class indices, each conversion said in one line: floats that are whole numbers (0.0, 1.0, 2.0: a CSV
    or pandas round trip) read as the indices they are (a `ValueError` names a fractional one); names ("cat", "dog":
    a metadata file's labels) become a `ClassLabel` of the training split's names in sorted order, every split
    encoded with the same names (a `ValueError` names the classes a split has that the training split lacks). The
    encoding is `datasets`' cast: a dataset stored with its image bytes (Hub parquet) is written once more into its
    cache."""
    for split, part in dataset.items():
        feature = part.features[label_column]
        if getattr(feature, "dtype", "").startswith("float"):
            values = sorted(set(part[label_column]))
            fractional = [value for value in values if value != int(value)]
            if fractional:
                raise ValueError(
                    f"The {split} split's labels {fractional[:5]} are not class indices; expected whole numbers "
                    f"0..K-1 (or a ClassLabel column) in {label_column!r}."
                )
            logger.info(f"The {split} split's labels are floats ({values[:3]}...): read as class indices.")
            dataset[split] = part.cast_column(label_column, datasets.Value("int64"))
    named = [split for split, part in dataset.items() if getattr(part.features[label_column], "dtype", "") in
             ("string", "large_string")]  # fmt: skip
    if not named:
        return dataset
    for split in named:
        missing = dataset[split][label_column].count(None)
        if missing:
            raise ValueError(
                f"The {split} split has {missing} image(s) without a label in {label_column!r}; give every image its "
                "class."
            )
    reference = "train" if "train" in named else named[0]
    # "2" before "10" when every name is a number
    names = sorted(set(dataset[reference][label_column]), key=lambda name: (0, int(name), name)
                   if name.isdecimal() else (1, 0, name))  # fmt: skip
    for split in named:
        unknown = sorted(set(dataset[split][label_column]) - set(names))
        if unknown:
            raise ValueError(
                f"The {split} split's labels {unknown[:5]} are not among the {reference} split's classes "
                f"{names[:10]}; every split must use the {reference} split's class names in {label_column!r}."
            )
        dataset[split] = dataset[split].cast_column(label_column, ClassLabel(names=names))
    logger.info(
        f"The labels in {label_column!r} are class names: read as {len(names)} classes in sorted order "
        f"({', '.join(names[:10])}{', ...' if len(names) > 10 else ''})."
    )
    return dataset


def read_data(data_args: DataArguments, seed: int = 0, need_labels: bool = True, need_train: bool = True) -> Data:
    """The data, checked before any training starts: the columns, every split's labels against the training classes,
    and (unless `--scan_images false`) every image, unreadable ones skipped with a warning naming each file.
    `need_labels=False` (pre-training) accepts a folder of images without classes (names is then None);
    `need_train=False` (evaluation) accepts data with only an evaluation split (train is then None)."""
    dataset = load_image_dataset(
        data_args.dataset_name, data_args.dataset_config_name, data_args.train_dir, data_args.validation_dir,
        cache_dir=data_args.cache_dir, seed=seed, require_train=need_train, eval_split=data_args.eval_split_name,
        test_fraction=data_args.train_val_split,
    )  # fmt: skip
    reference = dataset["train"] if "train" in dataset else dataset["test"]
    if need_labels and data_args.label_column_name is None:  # an image folder without classes: say what is expected
        for path, argument in ((data_args.train_dir, "--train_dir"), (data_args.validation_dir, "--validation_dir")):
            if path and os.path.isdir(path) and (problem := folder_layout(path, argument)):
                raise ValueError(problem + ".")
    image_column, label_column = resolve_columns(
        reference, data_args.image_column_name, data_args.label_column_name, require_labels=need_labels
    )
    if label_column:
        dataset = class_index_labels(DatasetDict(dataset), label_column)
        reference = dataset["train"] if "train" in dataset else dataset["test"]
    names = label_names(reference, label_column) if label_column else None
    if label_column:
        for split in dataset:  # classes matched by name: a split that orders them otherwise is mapped onto these
            feature = dataset[split].features[label_column]
            if (
                isinstance(feature, ClassLabel)
                and list(feature.names) != list(names)
                and set(feature.names) <= set(names)
            ):
                logger.info(
                    f"The {split} split lists its classes in another order than the training split; its labels are "
                    "mapped onto the training classes by name."
                )
                mapping = {name: index for index, name in enumerate(names)}
                dataset[split] = dataset[split].align_labels_with_mapping(mapping, label_column)
        check_labels_fit(dict(dataset), label_column, names)
    parts = {}
    for split, limit in (("train", data_args.max_train_samples), ("test", data_args.max_eval_samples)):
        if split not in dataset or (split == "train" and not need_train):
            parts[split] = None
            continue
        part = dataset[split]
        if split == "test" and data_args.eval_subset:
            part = select_subset(part, image_column, label_column, data_args.eval_subset)
        if limit is not None:
            part = part.select(range(min(limit, len(part))))
        if data_args.scan_images and not data_args.uses_default_data:
            part = drop_unreadable_images(part, image_column, split)
        parts[split] = part
    if parts["test"] is None and need_labels:
        raise ValueError(
            "The data has no evaluation split and --train_val_split 0 holds none out; fine-tuning and evaluation "
            "need one: give --validation_dir (or a dataset with a test or validation split), or a --train_val_split "
            "above 0."
        )
    return Data(parts["train"], parts["test"], image_column, label_column, names, data_args.uses_default_data)


def load_data(
    data_args: DataArguments,
    config,
    seed: int = 0,
    augmentation=None,
    need_labels: bool = True,
    image_processor=None,
    prepare_train: bool = False,
):
    """(train, test, class names): `read_data`'s splits through `image_processor` (default: the config's);
    `augmentation` (`AugmentationArguments`) augments the training split only; `prepare_train`: see
    `Data.transformed`."""
    data = read_data(data_args, seed, need_labels)
    extra = augmentation.build(config.image_size_hw, config.num_channels) if augmentation else None
    image_processor = image_processor if image_processor is not None else image_processor_for(config)
    return (*data.transformed(image_processor, augmentation=extra, prepare_train=prepare_train), data.names)


def prepares_in_memory(training_args) -> bool:
    """Whether a run decodes its (unaugmented) training split once into memory: in one process without DataLoader
    workers. Workers already decode beside the step (and would receive the tensors through shared memory under
    spawn / forkserver); each process of a group would decode the whole split and hold its own copy."""
    return training_args.dataloader_num_workers == 0 and training_args.world_size == 1


def default_num_channels(data_args: DataArguments) -> int:
    """1 for the grey digits default, 3 otherwise."""
    return 1 if data_args.uses_default_data else 3


# ----------------------------------------------------------------------------------------------------------------
# Starting and ending a run (its output folder and record: `mimir_hf.run_record`)
# ----------------------------------------------------------------------------------------------------------------


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


_MPI_SIZES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE", "PMIX_RANK")


def check_launch() -> None:
    """Refuse, before any work, a launch that asked for several processes but started one: `accelerate launch
    --num_processes N` (or `--cpu`) on a machine without GPUs uses its simple launcher, which starts a single process
    (it expects mpirun for several CPU processes) while setting MASTER_ADDR."""
    env = os.environ
    if "WORLD_SIZE" in env or any(name in env for name in _MPI_SIZES):
        return
    if "ACCELERATE_USE_CPU" in env and "MASTER_ADDR" in env:
        raise ValueError(
            "accelerate launch asked for several processes but started only this one: without GPUs (or with --cpu) "
            "it needs mpirun for that. Use `accelerate launch --multi_gpu --num_processes N ...` (it then starts N "
            "processes that train on the CPU with gloo) or `torchrun --nproc_per_node N ...`."
        )


def push_to_hub(trainer, message: str) -> None:
    """`trainer.push_to_hub` after a complete run; a Hub failure (one line, from the trainer) is also written into
    the run record, whose training stays complete: a rerun is not needed, only the upload."""
    try:
        trainer.push_to_hub(commit_message=message)
    except ValueError as error:
        output_dir = trainer.args.output_dir
        if trainer.is_world_process_zero() and read_record(output_dir) is not None:
            add_results(output_dir, push_to_hub=f"failed: {error}")
        raise


def start_training_run(script: str, model_args, data_args, training_args, run_args, *more_args) -> str | None:
    """Set up logging, guard the output dir (rank 0), seed. Returns a checkpoint to resume from, or None.
    `more_args`: further argument objects that define the run (e.g. `AugmentationArguments`)."""
    setup_training_logging(training_args)
    inputs = (*data_args.input_paths, model_args.model_name_or_path)
    identity = run_identity(model_args, data_args, training_args, *more_args)
    if not model_args.model_name_or_path and not model_args.model_preset:
        identity["digits_shape"] = DEMO_SHAPE  # a run of an older default shape is another run, not one to resume
    resume = on_main_process(
        training_args,
        lambda: prepare_output_dir(
            training_args.output_dir, script, identity,
            run_args.overwrite_output_dir, inputs, resume_needs(training_args),
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
        "learning rate rule": args.learning_rate_rule(),
        "epochs": epochs if args.max_steps <= 0 else f"max_steps {args.max_steps}",
        "warm-up": f"{warmup * epochs:g} epochs" if 0 < warmup < 1 else f"{warmup:g} steps",
        "schedule": f"{getattr(args.lr_scheduler_type, 'value', args.lr_scheduler_type)} "
        f"{dict(args.lr_scheduler_kwargs or {})}",
        "optimizer": f"AdamW betas ({args.adam_beta1}, {args.adam_beta2}), weight decay "
        f"{args.weight_decay}, layer decay {args.layer_decay}",
        "precision": "fp16 mixed (grad scaler)" if args.fp16 else "bf16 mixed" if args.bf16 else "fp32",
        "gradient clipping": f"max norm {args.max_grad_norm:g}" if args.max_grad_norm > 0 else "off",
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


def load_aux_data(
    data_args: DataArguments, config, augmentation=None, num_labels: int | None = None, image_processor=None
):
    """The auxiliary training data of `--aux_data_file`, through the same transform as the training split (labels
    checked against `num_labels` when given; `image_processor` default: the config's); or None."""
    if not data_args.aux_data_file:
        return None
    from mimir_hf.auxiliary_data import AuxiliaryImages
    from mimir_hf.data import pixel_transform

    extra = augmentation.build(config.image_size_hw, config.num_channels) if augmentation else None
    image_processor = image_processor if image_processor is not None else image_processor_for(config)
    transform = pixel_transform("image", "label", image_processor, extra)
    return AuxiliaryImages(data_args.aux_data_file, transform, num_labels=num_labels)
