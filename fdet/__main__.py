"""``python -m fdet``: the same as the ``fdet`` console command (:mod:`fdet.cli`)."""
import sys

from fdet.cli import main

sys.exit(main())
