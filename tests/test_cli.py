"""The `mimir-hf` command itself: its commands, `--help`, `--version`, recipes by name, and one-line refusals."""

import subprocess
import sys

import pytest

import mimir_hf
from mimir_hf.commands.cli import COMMANDS, main
from mimir_hf.commands.common import recipe_names, resolve_recipe


def test_help_lists_every_command_and_the_shipped_recipes(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert all(f"  {name}" in text for name in ("run", "pretrain", "finetune", "evaluate", "convert"))
    assert "demo" in text and "cifar10/finetune_vit_small" in text
    assert main([]) == 2  # no command: the usage, and a status that says so
    assert main(["--version"]) == 0 and mimir_hf.__version__ in capsys.readouterr().out


def test_unknown_commands_and_recipes_are_one_line(capsys):
    assert main(["trian"]) == 2
    error = capsys.readouterr().err
    assert (
        error == "mimir-hf: error: unknown command 'trian'; choose one of run, pretrain, finetune, evaluate, convert.\n"
    )
    assert main(["finetune", "cifar10/finetune_vit_huge"]) == 1
    error = capsys.readouterr().err
    assert (
        error.startswith("mimir-hf finetune: error: No recipe 'cifar10/finetune_vit_huge'") and error.count("\n") == 1
    )
    assert "cifar10/finetune_vit_small" in error


def test_recipes_resolve_by_name_or_file(tmp_path):
    assert "demo" in recipe_names() and all(not name.endswith(".yaml") for name in recipe_names())
    assert resolve_recipe("demo") == resolve_recipe("demo.yaml") and resolve_recipe("demo").endswith(
        "recipes/demo.yaml"
    )
    own = tmp_path / "mine.yaml"
    own.write_text("pretrain_epochs: 2\n")
    assert resolve_recipe(str(own)) == str(own)


def test_python_m_mimir_hf_is_the_same_command():
    result = subprocess.run([sys.executable, "-m", "mimir_hf", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and all(name in result.stdout for name in COMMANDS)


def test_run_has_one_epsilon_for_its_three_stages(monkeypatch, capsys):
    """`mimir-hf run --epsilon` sets the pre-training, fine-tuning and report budgets; another value given for one of
    them is refused before any work, naming it."""
    from mimir_hf.commands import run as run_command

    seen = []
    monkeypatch.setattr(run_command, "run", lambda *arguments: seen.append(arguments) or {})
    run_command.main(["demo", "--output_dir", "unused", "--epsilon", "0.0156862745"])
    _, model_args, _, recipe, settings = seen[-1]
    assert model_args.attack_epsilon == recipe.adversarial_epsilon == settings.epsilon == 0.0156862745
    run_command.main(["demo", "--output_dir", "unused"])
    _, model_args, _, recipe, settings = seen[-1]
    assert model_args.attack_epsilon == recipe.adversarial_epsilon == settings.epsilon == 8 / 255
    assert main(["run", "demo", "--output_dir", "unused", "--adversarial_epsilon", "0.0156862745"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("mimir-hf run: error: --adversarial_epsilon 0.0156863 differs from --epsilon 0.0313725")
    assert "Give --epsilon alone" in error and error.count("\n") == 1 and len(seen) == 2


def test_a_recipe_value_of_the_wrong_kind_is_one_sentence_naming_the_field(tmp_path, capsys, monkeypatch):
    """Checked against each argument's kind before any data is read: a scalar for a list, a fraction for an integer,
    a list for a number, a word for a boolean; YAML's `1e-3` (a string) still reads as a number."""
    from mimir_hf.commands import common

    monkeypatch.setattr(common, "read_data", lambda *a, **k: (_ for _ in ()).throw(AssertionError("data was read")))
    cases = {
        "pgd_steps: 2": "pgd_steps: 2, but pgd_steps takes a list of integers, e.g. [2].",
        "max_train_samples: 32.5": "max_train_samples: 32.5, but max_train_samples takes an integer.",
        "epsilon: [0.1]": "epsilon: [0.1], but epsilon takes a number.",
        "autoattack: maybe": "autoattack: 'maybe', but autoattack takes true or false.",
        "eps_sweep: [0, x]": "eps_sweep: [0, 'x'], but eps_sweep takes a list of numbers.",
    }
    for line, message in cases.items():
        recipe = tmp_path / "bad.yaml"
        recipe.write_text(f"model_name_or_path: unused\n{line}\n")
        assert main(["evaluate", str(recipe), "--output_dir", str(tmp_path / "out")]) == 1
        error = capsys.readouterr().err
        assert error == f"mimir-hf evaluate: error: {recipe} sets {message}\n", error
    recipe.write_text("model_name_or_path: unused\nepsilon: 1e-3\n")  # YAML: a string; a number all the same
    _, _, settings = common.parse(_evaluate_classes(), [str(recipe), "--output_dir", str(tmp_path)])
    assert settings.epsilon == 1e-3


def _evaluate_classes():
    from mimir_hf.commands import common, evaluate

    return (evaluate.EvaluationArguments, common.DataArguments, evaluate.RobustnessSettings)


def shown_flags(capsys, command: str) -> list[str]:
    """The options `mimir-hf <command> --help` lists (their first spelling)."""
    try:
        main([command, "--help"])
    except SystemExit:
        pass
    text = capsys.readouterr().out
    return [line.split()[0].rstrip(",") for line in text.splitlines() if line.startswith("  --")]


def test_each_command_s_help_shows_its_attack_budget_once(capsys):
    """One eps per command's --help: pre-training's attack, fine-tuning's, the report's, and `run`'s one --epsilon
    for its three stages (AdamW's adam_epsilon is another setting)."""
    expected = {"pretrain": "--attack_epsilon", "finetune": "--adversarial_epsilon", "evaluate": "--epsilon",
                "run": "--epsilon"}  # fmt: skip
    for command, flag in expected.items():
        flags = shown_flags(capsys, command)
        assert len(flags) == len(set(flags)), command
        assert [name for name in flags if name.endswith("epsilon") and name != "--adam_epsilon"] == [flag], command
    finetune = shown_flags(capsys, "finetune")
    assert not {"--mi_weight", "--mask_ratio", "--decoder_hidden_size", "--attack_steps"} & set(finetune)


def test_finetune_refuses_pretraining_settings_by_name(monkeypatch):
    """Fine-tuning does not read the decoder, masking, pre-training attack or MI fields: giving one is refused, naming
    the flags that set fine-tuning's attack, before any work."""
    from mimir_hf.commands import finetune

    monkeypatch.setattr(finetune, "run", lambda *arguments: pytest.fail("fine-tuning started"))
    with pytest.raises(ValueError, match="--attack_epsilon, --mi_weight: pre-training settings.*--adversarial_epsilon"):
        finetune.main(["--output_dir", "unused", "--attack-epsilon", "0.01", "--mi_weight", "0"])
