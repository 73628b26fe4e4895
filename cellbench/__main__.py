"""``python -m cellbench`` (also what ``torchrun -m cellbench`` runs)."""

import sys

from .cli import main

sys.exit(main())
