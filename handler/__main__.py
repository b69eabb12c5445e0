"""``python -m handler explain ...``: see handler/cli.py."""

import sys

from handler.cli import main

sys.exit(main())
