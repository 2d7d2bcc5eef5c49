#!/usr/bin/env python
"""A whole recipe in one command: MIMIR pre-training -> adversarial fine-tuning -> robustness report.

The same as `mimir-hf run`: the code is `mimir_hf/commands/run.py`, a straight line over the library's
dataclasses (`python examples/run_mimir.py --help` lists them with their defaults).
Runs unchanged under `torchrun` and `accelerate launch`.
"""

import sys

from mimir_hf.commands.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
