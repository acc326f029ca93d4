"""``python -m sdl_anchor ...`` runs the ``sdl-anchor`` command line."""

import sys

from sdl_anchor.cli import main

if __name__ == "__main__":
    sys.exit(main())
