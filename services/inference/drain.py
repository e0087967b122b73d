"""The drain marker: how a pod's readiness goes false before its SIGTERM.

Kubernetes runs the container's `preStop` hook before it sends SIGTERM. The chart's hook
creates this file and then sleeps: `/readyz` answers 503 from that moment, so load balancers
that health-check it (GKE's NEG health check, a HealthCheckPolicy on `/readyz`) stop sending
new requests, while the endpoint removal propagates to kube-proxy and the Gateway. Requests
that still arrive during the sleep are served normally. Only then does SIGTERM make uvicorn
close its listener and finish what it has accepted.

A file, not an endpoint: a `GET /drain` that anyone reaching the pod could call would be a
denial of service, and `preStop` can only issue GETs. The file lives on the pod's /tmp
emptyDir, which survives a container restart, so the app removes a stale marker on start.
"""

from __future__ import annotations

from pathlib import Path


class DrainMarker:
    def __init__(self, path: str | None) -> None:
        self._path = Path(path) if path else None

    def active(self) -> bool:
        return self._path is not None and self._path.exists()

    def clear(self) -> None:
        """Forget a marker left by an earlier container of this pod (a liveness restart)."""
        if self._path is not None:
            self._path.unlink(missing_ok=True)
