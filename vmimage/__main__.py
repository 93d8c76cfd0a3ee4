"""`python -m vmimage build|info`: the image builder on its own (the `pinnace image` CLI shares it)."""

from __future__ import annotations

import sys

from vmimage.cli import main

if __name__ == "__main__":
    sys.exit(main())
