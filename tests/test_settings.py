"""One home per setting: attack defaults live in `mimir_hf/threat_model.py` only, and the scripts expose the library's
own argument classes (same names, same defaults)."""

import io
import os
import re
import tokenize
from dataclasses import fields

from mimir_hf.evaluation import RobustnessSettings
from mimir_hf.threat_model import ADVERSARIAL_TRAINING_ATTACK, EVALUATION_ATTACK, PRETRAINING_ATTACK
from mimir_hf.trainer import AdversarialRecipe, MimirAdversarialTrainingArguments, MimirPreTrainingArguments

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def code_without_strings(path: str) -> str:
    """The file's code tokens, without strings and comments (where '8/255' in prose is fine)."""
    with open(path, encoding="utf-8") as f:
        tokens = tokenize.generate_tokens(io.StringIO(f.read()).readline)
        kept = [t.string for t in tokens if t.type not in (tokenize.STRING, tokenize.COMMENT)]
    return " ".join(kept)


def test_attack_budgets_are_written_in_one_place():
    budget_literal = re.compile(r"\b\d+ / 255\b")  # e.g. 8 / 255, 2 / 255
    offenders = []
    for folder in ("mimir_hf", "examples"):
        for directory, _, files in os.walk(os.path.join(ROOT, folder)):
            for name in files:
                path = os.path.join(directory, name)
                if name.endswith(".py") and not path.endswith(os.path.join("mimir_hf", "threat_model.py")):
                    offenders += [f"{path}: {m}" for m in budget_literal.findall(code_without_strings(path))]
    assert offenders == []


def test_library_arguments_take_their_defaults_from_the_paper_budgets():
    recipe, pretraining = AdversarialRecipe(), MimirPreTrainingArguments(output_dir="unused")
    assert recipe.adversarial_budget == ADVERSARIAL_TRAINING_ATTACK
    assert not any(f.name.startswith("adversarial_") for f in fields(pretraining))
    settings = RobustnessSettings()
    assert settings.budget(settings.pgd_steps[0]) == EVALUATION_ATTACK
    from mimir_hf import MimirConfig

    assert MimirConfig().attack_budget == PRETRAINING_ATTACK
    assert MimirAdversarialTrainingArguments(output_dir="unused").adversarial_budget == ADVERSARIAL_TRAINING_ATTACK


def help_text(script_main) -> str:
    import contextlib

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.suppress(SystemExit):
        script_main(["--help"])
    return " ".join(buffer.getvalue().split())


def test_scripts_show_the_library_names_and_defaults():
    from mimir_hf.commands import evaluate as run_evaluation
    from mimir_hf.commands import finetune as run_finetuning
    from mimir_hf.commands import run as run_mimir

    for main, classes in [(run_mimir.main, (AdversarialRecipe, RobustnessSettings)),
                          (run_evaluation.main, (RobustnessSettings,)),
                          (run_finetuning.main, (AdversarialRecipe,))]:  # fmt: skip
        text = help_text(main)
        # `run` shows one eps for its three stages, --epsilon (test_cli.py); adversarial_epsilon is accepted, not shown
        hidden = {"adversarial_epsilon"} if main is run_mimir.main else set()
        assert all(f"--{name} " not in text for name in hidden)
        for argument_class in classes:
            defaults = argument_class() if argument_class is not AdversarialRecipe else AdversarialRecipe()
            for f in fields(argument_class):
                default = getattr(defaults, f.name)
                if isinstance(default, bool) or f.name in hidden:
                    continue  # a bool is shown as --name / --no_name
                assert f"--{f.name} " in text, (main.__module__, f.name)
                assert f"(default: {default})" in text, (main.__module__, f.name, default)


def test_model_arguments_are_written_out_and_match_the_configs():
    """ModelArguments is a plain dataclass (its fields visible to a reader and an IDE): one field per overridable
    config field, unset by default, typed as the config's default, its help naming the library default."""
    import dataclasses
    import typing

    from mimir_hf.commands import common

    fields = {f.name: f for f in dataclasses.fields(common.ModelArguments)}
    hints = typing.get_type_hints(common.ModelArguments)  # the annotations (HfArgumentParser rewrites field.type)
    overrides = [name for name in fields if name not in {f.name for f in dataclasses.fields(common._ModelChoice)}]
    assert overrides == list(common.CONFIG_OVERRIDES)
    for name in overrides:
        config_class = next(c for c in common._FAMILY_CONFIGS if name in c.__dataclass_fields__)
        default = config_class.__dataclass_fields__[name].default
        assert fields[name].default is None and "library default" in fields[name].metadata["help"]
        assert hints[name] == type(default) | None, (name, hints[name])
    assert common.FineTuningModelArguments().drop_path_rate == 0.1 and common.ModelArguments().drop_path_rate is None
