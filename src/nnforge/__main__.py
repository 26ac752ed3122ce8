"""``python -m nnforge`` is the ``nnforge`` command."""

import sys

from nnforge.cli import main

sys.exit(main())
