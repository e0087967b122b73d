"""Settings of the rollout command: where to read the evidence, what to change, how strict to be.

Built once in `python -m services.rollout` and passed down. Every field reads
`MASKFLEET_<FIELD>` like the other services, so the chart's shared ConfigMap (repository, model
name, environment) applies unchanged; the rollout-only fields carry a `rollout_` prefix.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Self
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from shared.settings import ServiceSettings

PROMETHEUS_DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1"}


class RolloutSettings(ServiceSettings):
    """One readout of canary against stable, and the objects a decision touches."""

    prometheus_url: str = "http://127.0.0.1:9090"
    """Base URL of the Prometheus that scrapes both inference Deployments (HTTP API v1)."""

    prometheus_timeout_seconds: float = Field(default=10.0, gt=0.0, le=300.0)
    """Per-query timeout; a readout is a handful of instant queries."""

    kubeconfig: str | None = None
    """Path of a kubeconfig file; unset means the in-cluster ServiceAccount config."""

    rollout_namespace: str = Field(default="default", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    """Namespace of the HTTPRoute and the canary Ingress."""

    rollout_httproute: str | None = None
    """Name of the Gateway API HTTPRoute that splits traffic; unset = no HTTPRoute to change
    (local mode: a decision only moves the stages)."""

    rollout_grpcroute: str | None = None
    """Name of the Gateway API GRPCRoute whose weighted rule gets the same split as the
    HTTPRoute (gRPC clients follow the same decision); unset = none."""

    rollout_stable_service: str = "maskfleet-inference-stable"
    """Service of inference-stable, as named in the HTTPRoute's backendRefs."""

    rollout_canary_service: str = "maskfleet-inference-canary"
    """Service of inference-canary, as named in the HTTPRoute's backendRefs."""

    rollout_nginx_canary_ingress: str | None = None
    """Name of the legacy ingress-nginx canary Ingress whose canary-weight is set to 0 too;
    unset = none (ingress-nginx was retired in March 2026)."""

    rollout_canary_weight: int = Field(default=10, ge=0, le=100)
    """Percent of the main path given to the canary once it serves the candidate (the chart's
    abTest.canaryWeight). The rollout is the only writer of the weights: 0 while there is no
    candidate or the canary does not serve it yet, this share while it is under test, 0 again
    after a promotion or rollback."""

    rollout_jobs: str | None = None
    """Regex on the `job` label of the API's series; unset = the two Services' names, the
    `job` that the chart's ServiceMonitors and PodMonitorings give them. Together with
    `namespace` = rollout_namespace it keeps another release's series out of the readout."""

    rollout_window: str = "30m"
    """Prometheus range over which both sides are compared (e.g. 30m, 2h)."""

    rollout_routes: str = r"/v1/segment|/v2/models/.+/infer"
    """Regex on the `route` label: the prediction routes whose errors and latency count
    (probes and /metrics would drown the signal)."""

    rollout_min_requests: int = Field(default=500, ge=1)
    """Prediction requests each side needs in the window before errors and latency are judged."""

    rollout_max_error_ratio_increase: float = Field(default=0.01, ge=0.0, le=1.0)
    """Tolerated rise of the 5xx ratio, canary minus stable (0.01 = one percentage point)."""

    rollout_max_p95_ratio: float = Field(default=1.25, ge=1.0)
    """Largest tolerated canary/stable ratio of the p95 latency of successful requests."""

    rollout_min_feedback: int = Field(default=30, ge=2)
    """Corrected masks (feedback IoU samples) each side needs before IoU is judged."""

    rollout_min_iou_delta: float = Field(default=-0.01, ge=-1.0, le=1.0)
    """Smallest acceptable canary-minus-stable mean feedback IoU: negative tolerates a small
    loss, positive demands a gain."""

    rollout_require_feedback: bool = True
    """Without enough feedback: True waits, False decides on errors and latency alone."""

    rollout_alpha: float = Field(default=0.05, gt=0.0, le=0.2)
    """Significance level of each one-sided test (confidence bounds at 1 - alpha)."""

    rollout_evaluation_time: datetime | None = None
    """Evaluate at this instant instead of now (replaying a past readout)."""

    @field_validator("rollout_window")
    @classmethod
    def _prometheus_duration(cls, value: str) -> str:
        if not PROMETHEUS_DURATION.match(value):
            raise ValueError(f"{value!r} is not a Prometheus duration such as 30m or 1h30m")
        return value

    @property
    def jobs_regex(self) -> str:
        """The `job` matcher of every readout query."""
        if self.rollout_jobs is not None:
            return self.rollout_jobs
        return "|".join(re.escape(name) for name in
                        (self.rollout_stable_service, self.rollout_canary_service))

    @field_validator("rollout_routes", "rollout_jobs")
    @classmethod
    def _valid_regex(cls, value: str | None) -> str | None:
        """A broken regex is a settings error (exit 1 with a message), not a traceback."""
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"{value!r} is not a regular expression: {exc}") from exc
        return value

    @model_validator(mode="after")
    def _refuse_laptop_prometheus_in_production(self) -> Self:
        host = urlsplit(self.prometheus_url).hostname or ""
        if self.environment == "production" and host in LOOPBACK_HOSTS:
            raise ValueError("prometheus_url points at this machine; set the cluster's "
                             "Prometheus in production")
        return self
