"""Failures of the rollout command; each one ends the run with the error exit code."""

from __future__ import annotations

from shared.errors import MaskfleetError


class RolloutError(MaskfleetError):
    status = 502
    code = "rollout_failed"
    title = "The rollout could not complete"


class PrometheusError(RolloutError):
    code = "prometheus_error"
    title = "Prometheus could not answer the readout queries"


class TrafficError(RolloutError):
    code = "traffic_error"
    title = "The traffic split could not be read or changed"
