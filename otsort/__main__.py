"""python -m otsort: the command line."""

import sys

from otsort._cli import main

sys.exit(main())
