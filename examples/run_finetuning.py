#!/usr/bin/env python
"""Adversarial fine-tuning (PGD-AT, TRADES, MART) of a MIMIR classifier, from a checkpoint or from scratch.

The same as `mimir-hf finetune`: the code is `mimir_hf/commands/finetune.py`, a straight line over the library's
dataclasses (`python examples/run_finetuning.py --help` lists them with their defaults).
Runs unchanged under `torchrun` and `accelerate launch`.
"""

import sys

from mimir_hf.commands.cli import main

if __name__ == "__main__":
    sys.exit(main(["finetune", *sys.argv[1:]]))
