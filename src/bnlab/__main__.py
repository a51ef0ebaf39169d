"""``python -m bnlab`` runs the command-line interface."""

import sys

from bnlab.cli.main import main

sys.exit(main())
