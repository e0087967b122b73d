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
    assert (settings.batch_max_size, settings.batch_max_wait_ms) == (16, 5.0)
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
])
def test_production_refuses_unsafe_values(field, value, fragment):
    base = {"environment": "production", "model_repository": "gs://models/prod"}
    InferenceSettings(**base)
    InferenceSettings(**{field: value})  # fine on a laptop
    with pytest.raises(ValidationError, match=fragment):
        InferenceSettings(**base, **{field: value})
