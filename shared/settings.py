"""Settings base shared by every maskfleet process.

Each service subclasses :class:`ServiceSettings` and builds exactly one instance at its entry
point; nothing else reads the environment.
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

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

    redis_url: str = "redis://127.0.0.1:6379/0"
    """Redis for the result cache, the Celery broker and job state."""

    cache_dir: str = "/tmp/maskfleet"
    """Local directory where downloaded model versions are cached."""

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Root log level; logs are JSON lines on stdout."""

    @model_validator(mode="after")
    def _refuse_laptop_defaults_in_production(self) -> Self:
        if self.environment == "production" and self.model_repository.startswith("./"):
            raise ValueError("model_repository must be an absolute path or gs:// URI in production")
        return self
