"""``python -m versionstore`` runs the ``versionstore`` command (``versionstore.cli``)."""

from __future__ import annotations

import sys

from versionstore.cli import main

__all__: list[str] = []

if __name__ == "__main__":
    sys.exit(main())
