"""Inference settings come from MASKFLEET_* variables; production refuses unsafe values."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.inference.settings import InferenceSettings


def test_defaults_match_the_documented_interface(monkeypatch):
    for name in ("MASKFLEET_PORT", "MASKFLEET_HOST", "MASKFLEET_BATCH_MAX_SIZE", "MASKFLEET_ROLE"):
        monkeypatch.delenv(name, raising=False)
    settings = InferenceSettings()
    assert (settings.host, settings.port) == ("0.0.0.0", 8080)
    assert (settings.batch_max_size, settings.batch_max_wait_ms) == (16, 20.0)
    assert settings.role == "stable"
    assert settings.redis_socket_timeout_ms <= 100


def test_environment_variables_configure_the_service(monkeypatch):
    monkeypatch.setenv("MASKFLEET_BATCH_MAX_SIZE", "32")
    monkeypatch.setenv("MASKFLEET_ROLE", "canary")
    monkeypatch.setenv("MASKFLEET_MODEL_VERSION", "7")
    settings = InferenceSettings()
    assert (settings.batch_max_size, settings.role, settings.model_version) == (32, "canary", 7)


def test_a_role_other_than_stable_or_canary_is_refused():
    with pytest.raises(ValidationError, match="role"):
        InferenceSettings(role="blue")


@pytest.mark.parametrize(("field", "value", "fragment"), [
    ("max_pixels", 500_000_000, "bomb guard"),
    ("max_body_bytes", 1 << 30, "max_body_bytes"),
    ("redis_socket_timeout_ms", 5000, "Redis timeouts"),
    ("stage_poll_seconds", 0.1, "stage_poll_seconds"),
    ("max_inflight_pixels", 1_000_000_000, "max_inflight_pixels"),
    ("max_header_bytes", 1 << 20, "max_header_bytes"),
    ("body_timeout_seconds", 600, "slow clients"),
])
def test_production_refuses_unsafe_values(field, value, fragment):
    base = {"environment": "production", "model_repository": "gs://models/prod",
            "api_keys_file": "/etc/maskfleet/keys/keys.json",
            "state_redis_password": "s", "cache_redis_password": "c"}
    InferenceSettings(**base)
    InferenceSettings(**{field: value})  # fine on a laptop
    with pytest.raises(ValidationError, match=fragment):
        InferenceSettings(**base, **{field: value})


PRODUCTION = {"environment": "production", "model_repository": "gs://models/prod",
              "state_redis_password": "s", "cache_redis_password": "c"}


def test_production_refuses_to_run_without_keys_or_a_trusted_gateway():
    with pytest.raises(ValidationError, match="api_keys_file"):
        InferenceSettings(**PRODUCTION)
    keyed = InferenceSettings(**PRODUCTION, api_keys_file="/keys.json")
    gateway = InferenceSettings(**PRODUCTION, trusted_identity_header="X-Authenticated-User")
    for settings in (keyed, gateway):
        assert settings.open_scopes == frozenset()
        assert settings.metrics_listen_port == 9090
        assert settings.docs_served is False


@pytest.mark.parametrize(("field", "value", "fragment"), [
    ("anonymous_scopes", "infer", "anonymous_scopes"),
    ("metrics_port", 0, "metrics_port"),
    ("metrics_port", 8080, "metrics_port"),
])
def test_production_refuses_anonymous_callers_and_metrics_on_the_api_port(field, value,
                                                                           fragment):
    with pytest.raises(ValidationError, match=fragment):
        InferenceSettings(**PRODUCTION, api_keys_file="/keys.json", **{field: value})


def test_local_mode_is_open_without_a_keys_file_and_closed_with_one(monkeypatch):
    monkeypatch.delenv("MASKFLEET_ANONYMOUS_SCOPES", raising=False)
    assert InferenceSettings().open_scopes == {"infer", "feedback", "jobs"}
    assert InferenceSettings(api_keys_file="/keys.json").open_scopes == frozenset()
    monkeypatch.setenv("MASKFLEET_ANONYMOUS_SCOPES", "infer, feedback")
    assert InferenceSettings().open_scopes == {"infer", "feedback"}
    monkeypatch.setenv("MASKFLEET_ANONYMOUS_SCOPES", "infer,root")
    with pytest.raises(ValidationError, match="anonymous_scopes"):
        InferenceSettings()
