"""``python -m pdeseg.cli``: the ``pdeseg`` command."""

import sys

from pdeseg.cli import main

sys.exit(main())
