"""``python -m versionstore`` runs the ``versionstore`` command (``versionstore.cli``)."""

from __future__ import annotations

import sys

from versionstore.cli import main

if __name__ == "__main__":
    sys.exit(main())
