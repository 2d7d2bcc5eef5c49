"""`python -m mimir_hf COMMAND ...`: the `mimir-hf` command (see `mimir_hf.commands.cli`)."""

import sys

from mimir_hf.commands.cli import main

sys.exit(main())
