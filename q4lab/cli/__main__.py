"""``python -m q4lab.cli``: the ``q4lab`` command."""

import sys

from q4lab.cli import main

if __name__ == "__main__":
    sys.exit(main())
