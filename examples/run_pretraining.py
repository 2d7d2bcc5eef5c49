#!/usr/bin/env python
"""MIMIR pre-training (an adversarial MAE with an MI bottleneck) on any image dataset.

The same as `mimir-hf pretrain`: the code is `mimir_hf/commands/pretrain.py`, a straight line over the library's
dataclasses (`python examples/run_pretraining.py --help` lists them with their defaults).
Runs unchanged under `torchrun` and `accelerate launch`.
"""

import sys

from mimir_hf.commands.cli import main

if __name__ == "__main__":
    sys.exit(main(["pretrain", *sys.argv[1:]]))
