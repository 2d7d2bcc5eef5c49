"""`mimir-hf`: mimir_hf's command line, installed with the package (`pip install .` puts it on the PATH).

    mimir-hf run demo --output_dir out/demo                      # pre-train, fine-tune, report: the built-in digits
    mimir-hf pretrain --train_dir photos/train --output_dir out/pretrain
    mimir-hf finetune --model_name_or_path out/pretrain --train_dir photos/train --validation_dir photos/val \\
        --output_dir out/finetune
    mimir-hf evaluate --model_name_or_path out/finetune --validation_dir photos/val --output_dir out/report
    mimir-hf convert checkpoint-49.pth out/mimir-vit-t-cifar10   # the authors' .pth files

`python -m mimir_hf ...` is the same command (for `torchrun -m mimir_hf` and `accelerate launch -m mimir_hf`). Each
command's `--help` lists its arguments: the library's own dataclasses, with their defaults. A mistake in the input is
one line on stderr naming what was wrong and what is expected (exit status 1), never a traceback.
"""

from __future__ import annotations

import errno
import importlib
import os
import sys

# command -> (module with `main(argv, prog)`, what it does)
COMMANDS = {
    "run": ("mimir_hf.commands.run", "a whole recipe: pre-training -> adversarial fine-tuning -> robustness report"),
    "pretrain": ("mimir_hf.commands.pretrain", "MIMIR pre-training (adversarial MAE + MI bottleneck)"),
    "finetune": ("mimir_hf.commands.finetune", "adversarial fine-tuning (PGD-AT, TRADES, MART) of a classifier"),
    "evaluate": ("mimir_hf.commands.evaluate", "the robustness report of any image classifier"),
    "convert": ("mimir_hf.convert", "the authors' released .pth checkpoints -> save_pretrained folders"),
}


def usage() -> str:
    from mimir_hf.commands.common import recipe_names

    lines = ["usage: mimir-hf COMMAND [RECIPE] [--flags]  (mimir-hf COMMAND --help for its arguments)", "", "commands:"]
    lines += [f"  {name:<9} {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", f"recipes shipped with mimir_hf (run, pretrain, finetune): {', '.join(recipe_names())}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status (0: done, 1: refused input, 2: bad command line)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from mimir_hf import __version__

        print(f"mimir-hf {__version__}")
        return 0
    command = argv[0]
    if command not in COMMANDS:
        print(f"mimir-hf: error: unknown command {command!r}; choose one of {', '.join(COMMANDS)}.", file=sys.stderr)
        return 2
    prog = f"mimir-hf {command}"
    module = importlib.import_module(COMMANDS[command][0])
    completed = False
    try:
        module.main(argv[1:], prog=prog)
        completed = True
    except (ValueError, OSError) as error:  # refused input, a full disk: our one-line messages
        if isinstance(error, OSError) and error.errno != errno.ENOSPC or os.environ.get("MIMIR_HF_TRACEBACK"):
            raise
        if isinstance(error, OSError):  # ours says where and how much; a bare one at least names its file
            error = error.strerror + (f" (writing {error.filename})" if error.filename else "")
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 1
    finally:
        from mimir_hf.commands.common import end_processes

        end_processes(completed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
