"""``python -m refconv``: the same as the ``refconv`` command (:func:`refconv.cli.main`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
