"""Imported first by interpreters ktk starts without its command line (the fork server of sweep trial workers,
which preloads TensorFlow): their TensorFlow import is as quiet as ktk's own (:mod:`toolkit.quiet`), unless the
process that started them was verbose."""

import os

from toolkit.quiet import VERBOSE_ENV, quiet_tensorflow

quiet_tensorflow(verbose=os.environ.get(VERBOSE_ENV) == "1")
