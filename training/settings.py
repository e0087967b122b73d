"""Environment settings of the retraining job (the experiment itself lives in the YAML config)."""

from __future__ import annotations

from pydantic import Field

from shared.settings import ServiceSettings

RUN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"


class TrainingSettings(ServiceSettings):
    """What the Kubernetes Job sets: its UID as run id, plus the shared repository/cache vars
    (the CPU limit that sizes TensorFlow's pools is the shared `cpu_limit`).

    `model_repository` and `model_name` are the fallback when the YAML config's `repository`
    section leaves them unset, so one ConfigMap works in every environment.
    """

    train_run_id: str | None = Field(default=None, pattern=RUN_ID_PATTERN)
    """Names the checkpoint directory: a retried pod of the same Job resumes where it was.
    The chart sets it to the Job's UID (label batch.kubernetes.io/controller-uid), unique per
    Job even when a name is reused after its old Job expired; unset means a fresh
    timestamped run."""
