"""``python -m export.trt``: see :mod:`export.trt.cli`."""
import sys

from export.trt.cli import main

sys.exit(main())
