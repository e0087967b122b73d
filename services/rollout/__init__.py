"""Canary readout and rollout: compare canary with stable in Prometheus, then promote or roll back.

`python -m services.rollout [--dry-run] [--json]`; see docs/rollout.md for the whole loop.
"""
