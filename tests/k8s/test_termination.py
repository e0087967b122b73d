"""Graceful termination as rendered: a preStop hook that fails readiness and waits, a grace
period covering that wait plus the API's drain, and the same drain marker path on both sides.
(tests/integration/test_inference_drain.py runs this very hook against a real API.)"""

from __future__ import annotations

from typing import Any

import pytest

from tests.k8s.cases import Manifest, by_kind, container
from tests.k8s.conftest import Render


def inference_deployments(objects: list[Manifest]) -> list[Manifest]:
    return [d for d in by_kind(objects, "Deployment")
            if d["metadata"]["labels"]["app.kubernetes.io/component"] == "inference"]


def env_of(c: Manifest) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in c.get("env", [])}


def test_pre_stop_marks_draining_then_sleeps_within_the_grace_period(defaults: list[Manifest]):
    deployments = inference_deployments(defaults)
    assert {d["metadata"]["name"] for d in deployments} == {
        "maskfleet-inference-stable", "maskfleet-inference-canary"}
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        c = container(deployment, "inference")
        env = env_of(c)
        command = c["lifecycle"]["preStop"]["exec"]["command"]
        assert command[:2] == ["/bin/sh", "-c"]
        assert '"$MASKFLEET_DRAIN_FILE"' in command[2]
        assert command[2].endswith("sleep 10")
        assert env["MASKFLEET_DRAIN_FILE"].startswith("/tmp/"), "on the writable emptyDir"
        drain = float(env["MASKFLEET_SHUTDOWN_TIMEOUT_SECONDS"])
        assert pod["terminationGracePeriodSeconds"] >= 10 + drain


def test_pre_stop_sleep_and_drain_are_values(render: Render):
    values = {"inference": {"preStopSleepSeconds": 25, "shutdownTimeoutSeconds": 60,
                            "terminationGracePeriodSeconds": 90}}
    for deployment in inference_deployments(render(values)):
        c = container(deployment, "inference")
        assert c["lifecycle"]["preStop"]["exec"]["command"][2].endswith("sleep 25")
        assert env_of(c)["MASKFLEET_SHUTDOWN_TIMEOUT_SECONDS"] == "60"
        assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 90


def test_a_grace_period_shorter_than_sleep_plus_drain_is_refused(render: Render):
    values: dict[str, Any] = {"inference": {"preStopSleepSeconds": 20,
                                            "terminationGracePeriodSeconds": 45}}
    with pytest.raises(Exception, match="must cover preStopSleepSeconds"):
        render(values)


def test_a_heartbeat_age_below_three_intervals_is_refused(render: Render):
    values: dict[str, Any] = {"worker": {"heartbeat": {"intervalSeconds": 30,
                                                       "maxAgeSeconds": 60}}}
    with pytest.raises(Exception, match="at least three heartbeat intervals"):
        render(values)
