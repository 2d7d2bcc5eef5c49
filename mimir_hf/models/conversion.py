"""What every family's checkpoint converter returns, and the small helpers they share.

A family's `convert_<family>.py` maps the authors' (timm / Microsoft / MAE layout) tensors onto its mimir_hf model
and returns a `Conversion`; `mimir_hf.convert` reads the file, picks the family, loads the model strictly against the
conversion's promises (every tensor placed, only `new_keys` left at their initialisation) and saves it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import torch
from transformers import PretrainedConfig

from .family import family_class


@dataclass
class Conversion:
    """A checkpoint's tensors mapped onto one mimir_hf model class.

    Args:
        model_class: the class to build (`config` decides its shape).
        config: the architecture the tensors (and the checkpoint's saved `args`, when present) describe.
        state_dict: the tensors under the model's parameter names.
        ignored: checkpoint keys deliberately not carried over, each with the reason (rebuilt buffers, a
            pre-training decoder, biases a bias-free fine-tuning model does not have, ...). Never silent: the
            converter prints them and writes them into the output's README.
        new_keys: parameters of the model the checkpoint does not hold (they keep their fresh initialisation: a new
            classification head on a pre-training backbone).
        notes: decisions the converter made that the file could not settle (e.g. a guessed head count).
    """

    model_class: type
    config: PretrainedConfig
    state_dict: dict[str, torch.Tensor]
    ignored: dict[str, str] = field(default_factory=dict)
    new_keys: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def count_indexed(state: dict[str, torch.Tensor], prefix: str) -> int:
    """Number of `prefix.N.` blocks in a state dict (max N + 1, 0 when there are none)."""
    indices = {int(m.group(1)) for key in state if (m := re.match(rf"^{re.escape(prefix)}\.(\d+)\.", key))}
    return max(indices) + 1 if indices else 0


@dataclass(frozen=True)
class NamedModel:
    """One of a family's standard models, as a training run's saved `args.model` names it (the authors' model
    functions, timm's, MAE's): the shape a file of that model has."""

    title: str  # e.g. "ViT-S"
    width: int  # embedding width: patch_embed.proj's output channels
    depths: dict[str, int]  # blocks per stack (key prefix), e.g. {"blocks": 12}
    heads: int | tuple[int, ...]  # attention heads (per stage for Swin)

    def describe(self) -> str:
        """E.g. "ViT-S: 384 wide, 12 blocks, 6 heads"; "Swin-B: 128 wide, 2-2-18-2 blocks, 4-8-16-32 heads"."""
        return f"{self.title}: {self.width} wide, {shape_text(self.depths, self.heads)}"


def shape_text(depths: dict[str, int], heads) -> str:
    """Depths and heads as `NamedModel.describe` writes them (stages joined by "-")."""
    if all(prefix.endswith(".blocks") for prefix in depths):
        depth = "-".join(str(value) for value in depths.values()) + " blocks"
    else:
        depth = ", ".join(f"{value} {prefix}" for prefix, value in depths.items())
    return f"{depth}, {heads_text(heads)} heads"


def heads_text(heads) -> str:
    """A head count, or per-stage counts joined by "-"."""
    return "-".join(str(value) for value in heads) if isinstance(heads, (list, tuple)) else str(heads)


def check_depths(state: dict[str, torch.Tensor], name: str, model: NamedModel, why: str = "") -> None:
    """Refuse a file whose block stacks are not as deep as `model`, the model its `args.model` (`name`) names and
    whose width it has (or, said in `why`, the one its width implies): a file without its last blocks (a partial save)
    would otherwise convert into a shallower model, and one with more blocks is not that model."""
    for prefix, depth in model.depths.items():
        found = count_indexed(state, prefix)
        if found == depth:
            continue
        has = f"{prefix} 0..{found - 1}" if found else f"no {prefix}"
        first, last = sorted((found, depth))
        span = f"{prefix}.{first}" if first == last - 1 else f"{prefix}.{first} to {prefix}.{last - 1}"
        verb = "is" if first == last - 1 else "are"
        wrong = f"{span} {verb} missing" if found < depth else f"{span} {verb} beyond it"
        named = why or f"args.model={name} ({model.title})"
        raise ValueError(
            f"The file has {has} but {named} has {depth}; {wrong}. Convert the complete file of that model (is this "
            "one truncated, or from another run?)."
        )


def check_against_name(
    state: dict[str, torch.Tensor], name: str, model: NamedModel | None, width: int, heads, notes: list
) -> None:
    """For a family whose tensors give every shape (heads included): compare the file with `model`, the model its
    `args.model` (`name`) names. The same width: the file must be as deep (`check_depths`), and heads that differ are
    noted. Another width: the name does not describe this file; the converted model follows the weights, noted."""
    if model is None:
        return
    if width == model.width:
        check_depths(state, name, model)
        if heads_text(heads) != heads_text(model.heads):
            notes.append(
                f"args.model={name} names {model.describe()}; the weights have {heads_text(heads)} heads: the model "
                "follows the weights."
            )
        return
    found = shape_text({prefix: count_indexed(state, prefix) for prefix in model.depths}, heads)
    notes.append(
        f"args.model={name} names {model.describe()}, but the weights are {width} wide ({found}): the model follows "
        "the weights, which give every shape."
    )


def split_fused_qkv(value: torch.Tensor, prefix: str, suffix: str) -> dict[str, torch.Tensor]:
    """A fused `qkv` weight or bias (rows q, k, v) as three tensors named `{prefix}{q,k,v}_proj.{suffix}`."""
    return {
        f"{prefix}{name}.{suffix}": chunk.clone()
        for name, chunk in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0), strict=True)
    }


# A timm transformer block's modules -> transformers' layer names (ViT, Swin, CaiT and ConViT blocks alike), under
# `blocks.N.` / `layers.i.blocks.j.`; each family adds its attention's own projections.
TIMM_BLOCK = {
    "norm1": "layernorm_before",
    "norm2": "layernorm_after",
    "attn.proj": "attention.o_proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}


def mae_layout_names(trunk: str) -> tuple[dict[str, str], dict[str, str]]:
    """The modules and bare parameters outside the blocks of a timm / MAE-layout file (patch projection, final norm,
    head, the MAE decoder's frame) -> ours, for a family whose trunk is `trunk` (the base model prefix):
    `(modules, parameters)`."""
    modules = {
        "patch_embed.proj": f"{trunk}.embeddings.patch_embeddings.projection",
        "norm": f"{trunk}.layernorm",
        "head": "classifier",
        "decoder_embed": "decoder.decoder_embed",
        "decoder_norm": "decoder.decoder_norm",
        "decoder_pred": "decoder.decoder_pred",
    }
    parameters = {
        "pos_embed": f"{trunk}.embeddings.position_embeddings",
        "cls_token": f"{trunk}.embeddings.cls_token",
        "mask_token": "decoder.mask_token",
        "decoder_pos_embed": "decoder.decoder_pos_embed",
    }
    return modules, parameters


def rename_keys(
    state: dict[str, torch.Tensor], rename_key, layout: str
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every key of a checkpoint through the family's `rename_key(key, tensor)`, which returns our keys and tensors
    (several for a fused projection; none for a tensor left out on purpose) or None for a key it does not know.
    Returns the renamed tensors and, for each of our keys, the checkpoint key it came from; unknown keys raise a
    `ValueError` that lists them and names the `layout` expected."""
    renamed, origin, unknown = {}, {}, []
    for key, value in state.items():
        new = rename_key(key, value)
        if new is None:
            unknown.append(key)
            continue
        renamed.update(new)
        origin.update({name: key for name in new})
    if unknown:
        raise ValueError(f"Unknown keys in the checkpoint (not {layout}): {sorted(unknown)[:8]}")
    return renamed, origin


def module_tensor(key: str, value: torch.Tensor, modules: dict[str, str], prefix: str = "") -> dict | None:
    """A `<module>.weight` / `.bias` key of a module that `modules` maps (theirs -> ours, under `prefix`) renamed;
    None for any other key."""
    module, _, kind = key.rpartition(".")
    if module in modules and kind in ("weight", "bias"):
        return {f"{prefix}{modules[module]}.{kind}": value}
    return None


def patch_embedding_fields(state: dict[str, torch.Tensor]) -> dict:
    """`hidden_size`, `num_channels` and `patch_size` from a timm-layout patch projection (`patch_embed.proj`)."""
    hidden_size, num_channels, patch_size, _ = state["patch_embed.proj.weight"].shape
    return dict(hidden_size=hidden_size, num_channels=num_channels, patch_size=patch_size)


@dataclass(frozen=True)
class TimmMaeLayout:
    """How a family MIMIR pre-trains as an MAE lays out its timm-style files (CaiT, ConViT), and the conversion that is
    the same for every such family. A family gives its `title` (for messages), its `PreTrainedModel` `base_class` (the
    config and the models a file converts to; its `base_model_prefix` is the trunk's name), its tables and its own
    readings:

    - `stacks`: timm's block stacks (`blocks`, `decoder_blocks`, ...) -> our layer lists; `block`: the modules inside
      a block, timm -> ours; `block_tensor(stack, prefix, name, value)`: the family's own tensors inside a block
      (fused projections to split, scales), our keys and tensors or None to look `name` up in `block`.
    - `required`: keys every file of the family has; `read_fields(state, args, overrides, notes, fields)`: fills the
      family's config fields from the tensors (depths, heads, image size, ...) after the patch projection's.
    - `decoder_heads_key`: the tensor giving the decoder's head count; `default_num_labels`: the classes of an
      encoder-only file unless told; `rebuilt`: a pattern of buffers the model rebuilds (left out, listed);
      `unreadable_size`: the refusal when the image size cannot be read (`{patches}`: the position table's length).
    """

    title: str
    base_class: type
    stacks: dict[str, str]
    block: dict[str, str]
    block_tensor: Callable[[str, str, str, torch.Tensor], dict | None]
    required: tuple[str, ...]
    read_fields: Callable[..., None]
    decoder_heads_key: str
    default_num_labels: int
    layout: str
    unreadable_size: str
    rebuilt: re.Pattern | None = None
    rebuilt_reason: str = ""

    @cached_property
    def outside_blocks(self) -> tuple[dict[str, str], dict[str, str]]:
        """The modules and bare parameters outside the blocks, timm -> ours (`mae_layout_names`)."""
        return mae_layout_names(self.base_class.base_model_prefix)

    def rename_key(self, key: str, value: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """One timm key -> ours (several for a fused projection), or None for a key of no such layout."""
        modules, parameters = self.outside_blocks
        if key in parameters:
            return {parameters[key]: value}
        stack, _, rest = key.partition(".")
        index, _, name = rest.partition(".")
        if stack in self.stacks and index.isdigit():
            prefix = f"{self.stacks[stack]}.{index}."
            own = self.block_tensor(stack, prefix, name, value)
            return own if own is not None else module_tensor(name, value, self.block, prefix)
        return module_tensor(key, value, modules)

    def rename_state_dict(
        self, state: dict[str, torch.Tensor], ignored: dict[str, str] | None = None
    ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """timm names -> ours; and our key -> the checkpoint key it came from. Buffers the model rebuilds go to
        `ignored` with the reason; unknown keys raise a `ValueError` listing them."""
        ignored = {} if ignored is None else ignored
        if self.rebuilt is not None:
            ignored.update({key: self.rebuilt_reason for key in state if self.rebuilt.match(key)})
        kept = {key: value for key, value in state.items() if key not in ignored}
        return rename_keys(kept, self.rename_key, self.layout)

    def infer_config(self, state: dict[str, torch.Tensor], args: dict | None = None, **overrides):
        """The family's config matching the checkpoint's tensors and saved `args`, and the notes on what had to be
        assumed. `overrides` set any field (`None` values are ignored)."""
        missing = [key for key in self.required if key not in state]
        if missing:
            raise ValueError(
                f"Not a timm-layout {self.title} checkpoint: missing {missing} (it has e.g. {sorted(state)[:5]})."
            )
        overrides = {key: value for key, value in overrides.items() if value is not None}
        notes: list[str] = []
        fields = patch_embedding_fields(state)
        self.read_fields(state, args, overrides, notes, fields)
        patches = state["pos_embed"].shape[1] if "pos_embed" in state else "no"
        unreadable_size = self.unreadable_size.format(patches=patches)
        fields = task_and_input_fields(
            state, args, notes, fields, overrides, self.decoder_heads_key, self.default_num_labels, unreadable_size
        )
        return self.base_class.config_class(**fields), notes

    def convert(self, state: dict[str, torch.Tensor], args: dict | None = None, **overrides) -> Conversion:
        """The family's pre-training model when the file has a decoder (`decoder_embed`), else its classifier, with a
        new head when the file has none (noted). DDP's `module.` prefix is dropped; every tensor is placed, listed in
        `ignored` with the reason (query/key/value biases when `qkv_bias=False` is asked for, rebuilt buffers), or
        refused with a `ValueError`."""
        state = {key.removeprefix("module."): value for key, value in state.items()}
        config, notes = self.infer_config(state, args, **overrides)
        task = "AutoModelForPreTraining" if "decoder_embed.weight" in state else "AutoModelForImageClassification"
        model_class = family_class(self.base_class, task)
        ignored: dict[str, str] = {}
        renamed, origin = self.rename_state_dict(state, ignored)
        new_keys = fit_to_model(model_class, config, renamed, origin, ignored, new_allowed=("classifier.",))
        if new_keys:
            notes.append(
                f"an encoder without a head: the {config.num_labels}-class head is newly initialised, for fine-tuning "
                "(pass --num_labels for another number of classes)."
            )
        if any(reason.startswith("query/key/value bias") for reason in ignored.values()):
            notes.append(
                "qkv_bias=False: the file's query/key/value biases were dropped (listed below), as the authors' timm "
                "fine-tuning did when it loaded a biased pre-training encoder into a bias-free model."
            )
        return Conversion(model_class, config, renamed, ignored, new_keys, notes)


def arg(args: dict | None, name: str, default=None):
    """`args[name]` of a checkpoint's saved training arguments, or `default` when absent (or no args at all)."""
    if not args:
        return default
    value = args.get(name, default)
    return default if value is None else value


_QKV_BIASES = ("q_proj.bias", "k_proj.bias", "v_proj.bias")


def fit_to_model(
    model_class: type,
    config: PretrainedConfig,
    renamed: dict[str, torch.Tensor],
    origin: dict[str, str],
    ignored: dict[str, str],
    new_allowed: tuple[str, ...] = (),
) -> list[str]:
    """Check renamed tensors against the model `config` builds (on the meta device: names and shapes only).

    A query/key/value bias the model has no place for because `config.qkv_bias` is False (MIMIR's ConViT: pre-training
    encoders have them, fine-tuned classifiers not) is removed from `renamed` and recorded in `ignored` under its
    checkpoint key (`origin` maps our keys back). Any other tensor without a place, a wrong shape, or a missing weight
    outside `new_allowed` raises a `ValueError`. Returns the model's weights the file lacks (`new_keys`).
    """
    with torch.device("meta"):
        expected = model_class(config).state_dict()
    unexpected = []
    for key in sorted(set(renamed) - set(expected)):
        if key.endswith(_QKV_BIASES) and not config.qkv_bias:
            ignored[origin[key]] = "query/key/value bias of the checkpoint; the config has qkv_bias=False"
            del renamed[key]
        else:
            unexpected.append(origin[key])
    wrong_shape = [
        f"{origin[key]}: {tuple(value.shape)} in the file, {tuple(expected[key].shape)} for {key}"
        for key, value in renamed.items()
        if key in expected and value.shape != expected[key].shape
    ]
    new_keys = sorted(set(expected) - set(renamed))
    missing = [key for key in new_keys if not key.startswith(new_allowed)]
    if unexpected or wrong_shape or missing:
        raise ValueError(
            f"The checkpoint does not fit {model_class.__name__} ({config.model_type}): no place for {unexpected[:6]}, "
            f"shapes {wrong_shape[:4]}, missing {missing[:6]}."
        )
    return new_keys


# `--use_normalize` normalised the data with these (the ImageNet ones for every other data set).
_NORMALISATION = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def normalisation_fields(args: dict | None, notes: list) -> dict:
    """`image_mean` / `image_std` of a run trained with `--use_normalize` (applied inside the model, so that it still
    takes [0, 1] pixels), with a note; nothing otherwise."""
    if not arg(args, "use_normalize", False):
        return {}
    dataset = str(arg(args, "dataset", arg(args, "data_set", "imagenet"))).lower()
    mean, std = _NORMALISATION["cifar10" if dataset.startswith("cifar10") else "imagenet"]
    notes.append(f"trained on normalised inputs (args.use_normalize, {dataset}): mean {mean}, std {std} inside.")
    return dict(image_mean=list(mean), image_std=list(std))


def pretraining_method_fields(args: dict | None, notes: list) -> dict:
    """Config fields of the MIMIR method from a pre-training run's `args`: mask ratio, attack, MI term."""
    fields = {"mask_ratio": float(arg(args, "mask_ratio", 0.75))}
    epsilon, step_size = arg(args, "eps"), arg(args, "alpha")
    if isinstance(epsilon, float) and isinstance(step_size, float):  # tensors when the run was normalised
        fields.update(attack_epsilon=epsilon, attack_step_size=step_size)
    elif epsilon is not None:
        notes.append("args.eps / args.alpha are per-channel (normalised run): the config keeps 8/255 and 10/255.")
    estimator = {"hsic": "hsic", "dib_mi": "renyi"}.get(str(arg(args, "mi_train", "")))
    if estimator:
        fields.update(mi_estimator=estimator)
    if isinstance(arg(args, "mi_xpl"), float):
        fields.update(mi_weight=arg(args, "mi_xpl"))
    return fields


def task_and_input_fields(
    state: dict[str, torch.Tensor],
    args: dict | None,
    notes: list,
    fields: dict,
    overrides: dict,
    decoder_heads_key: str,
    default_num_labels: int,
    unknown_size: str,
) -> dict:
    """Complete a timm-layout family's config `fields` the way every such converter reads them: the decoder's shape
    and the MIMIR method (a pre-training file: `decoder_embed.weight` present; heads from `decoder_heads_key`), or
    drop path and the class count (a classifier file), the input normalisation, then the caller's `overrides`.
    Refuses a file whose image size is still unknown (`unknown_size` says why), and notes an `args.input_size` that
    the weights contradict."""
    if "decoder_embed.weight" in state:
        fields.update(
            decoder_hidden_size=state["decoder_embed.weight"].shape[0],
            decoder_num_hidden_layers=count_indexed(state, "decoder_blocks"),
            decoder_num_attention_heads=state[decoder_heads_key].shape[0],
            decoder_intermediate_size=state["decoder_blocks.0.mlp.fc1.weight"].shape[0],
            norm_pix_loss=bool(arg(args, "norm_pix_loss", True)),
        )
        fields.update(pretraining_method_fields(args, notes))
    else:
        fields["drop_path_rate"] = float(arg(args, "drop_path", 0.0))
        if "head.weight" in state:
            fields["num_labels"] = state["head.weight"].shape[0]
        else:
            fields["num_labels"] = int(arg(args, "nb_classes", default_num_labels))
    fields.update(normalisation_fields(args, notes))
    fields.update(overrides)
    if fields["image_size"] is None:
        raise ValueError(unknown_size)
    input_size = arg(args, "input_size")
    if input_size is not None and int(input_size) != fields["image_size"] and "image_size" not in overrides:
        notes.append(f"args.input_size is {input_size} but pos_embed fits {fields['image_size']}: using the weights'.")
    return fields


__all__ = [
    "TIMM_BLOCK",
    "TimmMaeLayout",
    "Conversion",
    "NamedModel",
    "arg",
    "check_against_name",
    "check_depths",
    "count_indexed",
    "fit_to_model",
    "mae_layout_names",
    "module_tensor",
    "normalisation_fields",
    "patch_embedding_fields",
    "pretraining_method_fields",
    "rename_keys",
    "split_fused_qkv",
    "task_and_input_fields",
]
