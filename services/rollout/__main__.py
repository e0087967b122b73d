"""`python -m services.rollout`: one readout and, unless --dry-run, its decision carried out."""

from services.rollout.cli import main

raise SystemExit(main())
