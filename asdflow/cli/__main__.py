"""``python -m asdflow.cli``: the same as the ``asdflow`` console script."""

import sys

from asdflow.cli import main

sys.exit(main())
