import sys

from pdeseg.cli import main

sys.exit(main())
