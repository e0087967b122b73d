"""One factory for every Redis client: URL, password, TLS and timeouts decided in one place.

maskfleet talks to Redis in two roles, each with its own settings:
- `cache` (`MASKFLEET_CACHE_REDIS_URL`): the result cache. Volatile: no persistence,
  `allkeys-lru`, may be lost at any time; clients give up fast and carry on without it.
- `state` (`MASKFLEET_STATE_REDIS_URL`): the Celery broker and result backend, job records
  and the answers kept for feedback. Durable: AOF `everysec`, `noeviction`.
Local mode may point both at one server.

The password is a separate secret setting (`MASKFLEET_<ROLE>_REDIS_PASSWORD`, a Kubernetes
Secret in the chart), never part of the URL that is logged or shown: a password written into a
URL is moved out of it when the endpoint is built. `rediss://` turns TLS on, verified against
the system CAs or `MASKFLEET_REDIS_TLS_CA_FILE`. Celery alone needs the password inside its
broker URL (`celery_url`); Celery masks it in its own logs.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field, replace
from typing import Any, Literal
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis
from pydantic import SecretStr
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

Role = Literal["cache", "state"]

HEALTH_CHECK_SECONDS = 30
"""A pooled connection idle this long is pinged before use, so a restarted Redis is noticed."""


@dataclass(frozen=True)
class RedisEndpoint:
    """How to reach one Redis role; builds every client maskfleet uses for it."""

    role: Role
    url: str
    """The URL without a password: safe to log."""
    password: SecretStr | None = field(default=None, repr=False)
    socket_timeout: float = 5.0
    """Seconds one command may take before it fails (a dead Redis must fail a call, not hang)."""
    connect_timeout: float = 5.0
    ca_file: str | None = None
    """CA bundle that verifies a `rediss://` server; None: the system CAs."""
    retries: int = 2
    """Retries of a failed command on a fresh connection; 0 for the cache, which bypasses
    Redis instead of waiting for it."""

    @classmethod
    def build(cls, role: Role, url: str, password: SecretStr | None = None,
              **options: Any) -> RedisEndpoint:
        """An endpoint whose `url` never carries the password (moved out if it did)."""
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"{role} Redis URL must start with redis://, rediss:// or unix://")
        if parts.password is not None:
            if password is not None:
                raise ValueError(f"the {role} Redis password is given twice (URL and setting)")
            password = SecretStr(unquote(parts.password))
            host = parts.hostname or ""
            netloc = f"{parts.username}@{host}" if parts.username else host
            if parts.port:
                netloc += f":{parts.port}"
            url = urlunsplit(parts._replace(netloc=netloc))
        return cls(role, url, password or None, **options)

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "rediss"

    def with_timeouts(self, socket_timeout: float, connect_timeout: float | None = None,
                      retries: int | None = None) -> RedisEndpoint:
        return replace(self, socket_timeout=socket_timeout,
                       connect_timeout=self.connect_timeout if connect_timeout is None
                       else connect_timeout, retries=self.retries if retries is None else retries)

    def _options(self) -> dict[str, Any]:
        options: dict[str, Any] = {
            "socket_timeout": self.socket_timeout,
            "socket_connect_timeout": self.connect_timeout,
            "health_check_interval": HEALTH_CHECK_SECONDS,
        }
        if self.password is not None:
            options["password"] = self.password.get_secret_value()
        if self.tls:
            options["ssl_cert_reqs"] = "required"
            if self.ca_file:
                options["ssl_ca_certs"] = self.ca_file
        return options

    def _retry(self) -> Retry:
        if self.retries <= 0:
            return Retry(NoBackoff(), 0)
        return Retry(ExponentialBackoff(cap=1.0, base=0.05), self.retries)

    def client(self, *, decode_responses: bool = False) -> redis.Redis:
        """A blocking client (job store, worker)."""
        return redis.Redis.from_url(self.url, decode_responses=decode_responses,
                                    retry=self._retry(), retry_on_timeout=self.retries > 0,
                                    **self._options())

    def async_client(self, *, decode_responses: bool = False) -> aioredis.Redis:
        """An asyncio client (the API's cache and feedback log)."""
        from redis.asyncio.retry import Retry as AsyncRetry

        retry = (AsyncRetry(NoBackoff(), 0) if self.retries <= 0
                 else AsyncRetry(ExponentialBackoff(cap=1.0, base=0.05), self.retries))
        return aioredis.Redis.from_url(self.url, decode_responses=decode_responses,
                                       retry=retry, retry_on_timeout=self.retries > 0,
                                       **self._options())

    def celery_url(self) -> str:
        """Broker/backend URL for Celery, which only takes the password inside the URL."""
        parts = urlsplit(self.url)
        if self.password is None or parts.scheme == "unix":
            return self.url
        secret = quote(self.password.get_secret_value(), safe="")
        netloc = f"{parts.username or ''}:{secret}@{parts.netloc}"
        return urlunsplit(parts._replace(netloc=netloc))

    def celery_ssl(self) -> dict[str, Any] | None:
        """`broker_use_ssl` / `redis_backend_use_ssl` for a `rediss://` endpoint."""
        if not self.tls:
            return None
        options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
        if self.ca_file:
            options["ssl_ca_certs"] = self.ca_file
        return options

    def scrub(self, text: str) -> str:
        """`text` with the password blanked, for messages built from client errors."""
        if self.password is None:
            return text
        secret = self.password.get_secret_value()
        if not secret:
            return text
        return text.replace(secret, "***").replace(quote(secret, safe=""), "***")


def plain_reason(exc: BaseException, what: str) -> str:
    """What to tell a caller when Redis failed: Redis' own messages may name keys, scripts or
    hosts, so callers get one of three plain sentences; the exception type goes to the logs.

    Looks through the exception chain, because Celery/kombu wrap the redis-py error.
    """
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, redis.exceptions.OutOfMemoryError) or (
                isinstance(seen, redis.ResponseError) and "maxmemory" in str(seen)):
            return (f"{what} is full: nothing is evicted, so new work is refused until "
                    "running jobs finish or expire; try again later")
        if isinstance(seen, redis.AuthenticationError | redis.exceptions.AuthorizationError):
            return f"{what} refused this service's credentials"
        seen = seen.__cause__ or seen.__context__
    return f"{what} is unreachable; try again later"
