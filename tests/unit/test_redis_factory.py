"""The Redis factory: the password stays out of URLs and reprs, TLS follows rediss://, and
the two roles come from their own settings."""

from __future__ import annotations

import ssl

import pytest
from pydantic import SecretStr, ValidationError

from services.inference.settings import InferenceSettings
from services.jobs.broker import make_celery
from services.worker.settings import WorkerSettings
from shared.redis import RedisEndpoint

SECRET = "s3cr:t/p@ss"


def test_a_password_in_the_url_is_moved_out_of_it() -> None:
    endpoint = RedisEndpoint.build("state", "redis://:s3cr%3At%2Fp%40ss@redis-state:6379/1")
    assert endpoint.url == "redis://redis-state:6379/1"
    assert endpoint.password is not None
    assert endpoint.password.get_secret_value() == SECRET
    assert SECRET not in repr(endpoint)


def test_a_password_given_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="given twice"):
        RedisEndpoint.build("state", "redis://:a@host:6379/0", SecretStr("b"))


def test_celery_gets_the_password_inside_its_url_quoted() -> None:
    endpoint = RedisEndpoint.build("state", "redis://redis-state:6379/1", SecretStr(SECRET))
    assert endpoint.celery_url() == "redis://:s3cr%3At%2Fp%40ss@redis-state:6379/1"
    app = make_celery(endpoint, set_as_current=False)
    assert app.conf.broker_url == endpoint.celery_url()
    assert app.conf.broker_transport_options["socket_timeout"] == endpoint.socket_timeout
    assert app.conf.broker_use_ssl is None


def test_rediss_turns_tls_on_for_clients_and_celery() -> None:
    endpoint = RedisEndpoint.build("state", "rediss://redis-state:6380/0", SecretStr("x"),
                                   ca_file="/etc/ssl/redis-ca.pem")
    kwargs = endpoint.client().connection_pool.connection_kwargs
    assert kwargs["ssl_cert_reqs"] == "required"
    assert kwargs["ssl_ca_certs"] == "/etc/ssl/redis-ca.pem"
    assert kwargs["password"] == "x"
    assert endpoint.celery_ssl() == {"ssl_cert_reqs": ssl.CERT_REQUIRED,
                                     "ssl_ca_certs": "/etc/ssl/redis-ca.pem"}


def test_scrub_blanks_the_password_in_messages() -> None:
    endpoint = RedisEndpoint.build("state", "redis://h:6379/0", SecretStr(SECRET))
    assert endpoint.scrub(f"failed with {SECRET} and {endpoint.celery_url()}") == (
        "failed with *** and redis://:***@h:6379/0")


def test_the_two_roles_have_their_own_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MASKFLEET_CACHE_REDIS_URL", "redis://cache:6379/0")
    monkeypatch.setenv("MASKFLEET_CACHE_REDIS_PASSWORD", "c-pass")
    monkeypatch.setenv("MASKFLEET_STATE_REDIS_URL", "rediss://state:6380/0")
    monkeypatch.setenv("MASKFLEET_STATE_REDIS_PASSWORD", "s-pass")
    settings = InferenceSettings()
    cache, state = settings.cache_redis(), settings.state_redis()
    assert (cache.role, cache.url, cache.retries) == ("cache", "redis://cache:6379/0", 0)
    assert cache.socket_timeout == pytest.approx(0.05)
    assert (state.role, state.url, state.tls) == ("state", "rediss://state:6380/0", True)
    assert state.password is not None
    assert state.password.get_secret_value() == "s-pass"
    assert "s-pass" not in repr(settings)
    assert "c-pass" not in repr(settings)
    assert WorkerSettings().state_redis().url == "rediss://state:6380/0"


def test_a_url_of_another_scheme_is_refused_at_startup() -> None:
    with pytest.raises(ValidationError, match="state Redis URL"):
        WorkerSettings(state_redis_url="http://state:6379/0")


def test_production_refuses_redis_without_a_password() -> None:
    with pytest.raises(ValidationError, match=r"state Redis .* has no password"):
        WorkerSettings(environment="production", model_repository="gs://m/models")
    with pytest.raises(ValidationError, match="cache Redis has no password"):
        InferenceSettings(environment="production", model_repository="gs://m/models",
                          state_redis_password="s", api_keys_file="/keys.json")
    ok = InferenceSettings(environment="production", model_repository="gs://m/models",
                           state_redis_url="redis://:s@state:6379/0", cache_redis_password="c",
                           api_keys_file="/keys.json")
    assert ok.state_redis().password is not None
