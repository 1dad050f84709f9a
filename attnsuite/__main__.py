"""``python -m attnsuite ...``: the ``attnsuite`` command without the virtual environment's scripts on PATH."""

import sys

from .cli import main

sys.exit(main())
