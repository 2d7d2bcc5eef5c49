#!/usr/bin/env python
"""The robustness report of any image classifier (a MIMIR model or any transformers AutoModelForImageClassification).

The same as `mimir-hf evaluate`: the code is `mimir_hf/commands/evaluate.py`, a straight line over the library's
dataclasses (`mimir-hf evaluate --help` lists them with their defaults).
Runs unchanged under `torchrun` and `accelerate launch`.
"""

import sys

from mimir_hf.commands.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
