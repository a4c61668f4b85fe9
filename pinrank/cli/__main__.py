"""``python -m pinrank.cli``: the ``pinrank`` command."""

import sys

from pinrank.cli import main

sys.exit(main())
