"""`python -m shared.auth` is `maskfleet-keys`."""

import sys

from .cli import main

sys.exit(main())
