"""Environment settings of the retraining job (the experiment itself lives in the YAML config)."""

from __future__ import annotations

from pydantic import Field

from shared.settings import ServiceSettings

RUN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"


class TrainingSettings(ServiceSettings):
    """What the Kubernetes Job sets: its name as run id, plus the shared repository/cache vars.

    `model_repository` and `model_name` are the fallback when the YAML config's `repository`
    section leaves them unset, so one ConfigMap works in every environment.
    """

    train_run_id: str | None = Field(default=None, pattern=RUN_ID_PATTERN)
    """Names the checkpoint directory: a restarted Job with the same id resumes where it was.
    Kubernetes sets it from the Job name; unset means a fresh timestamped run."""
