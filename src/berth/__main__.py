"""``python -m berth``: the command line, for machines where the ``berth`` script is not on PATH."""

import sys

from ._cli import main

sys.exit(main())
