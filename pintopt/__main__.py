"""``python -m pintopt``: see :mod:`pintopt.cli`."""

import sys

from pintopt.cli import main

sys.exit(main())
