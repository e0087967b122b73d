"""A small client of the Prometheus HTTP API: instant queries, vector results.

Instant queries at an explicit time make a readout reproducible: the same `--at` gives the
same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx

from services.rollout.errors import PrometheusError


@dataclass(frozen=True)
class Sample:
    labels: dict[str, str]
    value: float


class PrometheusClient:
    def __init__(self, base_url: str, timeout: float = 10.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> PrometheusClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def query(self, promql: str, at: datetime | None = None) -> list[Sample]:
        """Evaluate `promql` at `at` (now when None); NaN samples are dropped."""
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at.timestamp():.3f}"
        try:
            response = self._http.post("/api/v1/query", data=params)
        except httpx.HTTPError as exc:
            raise PrometheusError(f"cannot reach Prometheus at {self.base_url}: {exc}") from exc
        body = _json(response)
        if response.status_code != 200 or body.get("status") != "success":
            raise PrometheusError(f"Prometheus refused {promql!r}: HTTP {response.status_code} "
                                  f"{body.get('errorType', '')} {body.get('error', '')}".strip())
        data = body.get("data", {})
        if data.get("resultType") != "vector":
            raise PrometheusError(f"expected a vector from {promql!r}, got "
                                  f"{data.get('resultType')!r}")
        samples = [Sample(dict(item["metric"]), float(item["value"][1]))
                   for item in data.get("result", [])]
        return [s for s in samples if not math.isnan(s.value)]


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError as exc:
        raise PrometheusError(f"Prometheus answered HTTP {response.status_code} with "
                              f"something that is not JSON") from exc
    return body if isinstance(body, dict) else {}
