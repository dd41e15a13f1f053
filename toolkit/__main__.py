"""`python -m toolkit` is the same as `ktk`."""

import sys

from toolkit.cli import main

sys.exit(main())
