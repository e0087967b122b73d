"""`python -m services.models`, the same as the `maskfleet-models` console script."""

from __future__ import annotations

import sys

from services.models.cli import main

if __name__ == "__main__":
    sys.exit(main())
