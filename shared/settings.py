"""Settings base shared by every maskfleet process.

Each service subclasses :class:`ServiceSettings` and builds exactly one instance at its entry
point; nothing else reads the environment.
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.redis import RedisEndpoint

Stage = Literal["production", "candidate"]


class ServiceSettings(BaseSettings):
    """What every process needs: where models live, which one, Redis and logging."""

    model_config = SettingsConfigDict(
        env_prefix="MASKFLEET_", env_file=None, extra="ignore", protected_namespaces=()
    )

    environment: Literal["development", "production"] = "development"
    """`production` refuses defaults that only make sense on a laptop."""

    model_repository: str = "./var/models"
    """Model repository URI: `gs://bucket/prefix`, a local path or `file://`."""

    model_name: str = Field(default="unet", pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$")
    """Model name inside the repository."""

    model_stage: Stage = "production"
    """Stage followed when no version is pinned."""

    model_version: int | None = Field(default=None, ge=1)
    """Pinned version; wins over the stage."""

    state_redis_url: str = "redis://127.0.0.1:6379/0"
    """The durable Redis: Celery broker and results, job records, answers kept for feedback.
    Run it with AOF `everysec` and `noeviction`; `rediss://` for TLS. The password goes in
    `state_redis_password`, not here, so this URL can be logged."""

    state_redis_password: SecretStr | None = None
    """`requirepass` of the state Redis (a Kubernetes Secret in the chart); never logged."""

    state_redis_timeout_seconds: float = Field(default=5.0, gt=0.0, le=60.0)
    """Connect and per-command timeout towards the state Redis: a dead Redis fails a
    submission (503) or retries a chunk instead of hanging it."""

    redis_tls_ca_file: str | None = None
    """CA bundle verifying `rediss://` servers of either role; unset: the system CAs."""

    model_variant: str = Field(default="auto", pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")
    """Runtime build of the version to serve: `auto` (the fastest published variant, timed on
    this machine during warm-up), `savedmodel` (TensorFlow, the reference) or a variant name
    such as `int8`. A missing or broken variant falls back to the SavedModel."""

    model_threads: int = Field(default=0, ge=0, le=256)
    """Threads an OpenVINO variant computes with; 0 sizes them from the CPU limit as
    TensorFlow's pools are (`cpu_limit`, else the cgroup quota, else the visible cores)."""

    cache_dir: str = "/tmp/maskfleet"
    """Local directory where downloaded model versions are cached."""

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Root log level; logs are JSON lines on stdout."""

    cpu_limit: float | None = Field(default=None, gt=0)
    """Cores this container may use, which sizes TensorFlow's thread pools (`shared/cpu.py`).
    Unset: the cgroup CPU quota, else the visible cores. The chart may fill it from the
    downward API (`resourceFieldRef: limits.cpu`)."""

    @model_validator(mode="after")
    def _refuse_laptop_defaults_in_production(self) -> Self:
        if self.environment == "production" and self.model_repository.startswith("./"):
            raise ValueError("model_repository must be an absolute path or gs:// URI in production")
        return self

    @model_validator(mode="after")
    def _state_redis_is_usable(self) -> Self:
        self.state_redis()
        return self

    def state_redis(self) -> RedisEndpoint:
        """The state role, built once here for the job store, Celery and kept answers."""
        return RedisEndpoint.build(
            "state", self.state_redis_url, self.state_redis_password,
            socket_timeout=self.state_redis_timeout_seconds,
            connect_timeout=self.state_redis_timeout_seconds, ca_file=self.redis_tls_ca_file)
