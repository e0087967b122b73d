"""Cloud Storage failures that are not API answers (credentials, network) reach callers as
retryable storage errors, never as google.auth or requests exceptions (which were 500s)."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.cloud.storage.retry import DEFAULT_RETRY
from google.oauth2.credentials import Credentials

from services.worker.tasks import RETRYABLE
from shared.errors import StorageUnavailable
from shared.storage import GcsStorage
from tests.servers import free_port

QUICK = DEFAULT_RETRY.with_timeout(0.3)
"""The client's own retry policy, cut short so that each failure surfaces in a moment."""


def closed_endpoint() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


def test_credentials_that_cannot_be_refreshed_are_storage_unavailable() -> None:
    credentials = Credentials(token=None, refresh_token="expired", client_id="id",
                              client_secret="secret", token_uri=closed_endpoint() + "/token")
    client = storage.Client(project="p", credentials=credentials,
                            client_options={"api_endpoint": closed_endpoint()})
    gcs = GcsStorage(client, retry=QUICK)
    with pytest.raises(StorageUnavailable) as caught:
        gcs.read("gs://bucket/image.jpg")
    assert caught.value.status == 503
    # what reaches an error body names the kind of failure, not the token endpoint it hit
    assert "/token" not in caught.value.detail
    assert "127.0.0.1" not in caught.value.detail
    with pytest.raises(StorageUnavailable):
        gcs.list("gs://bucket/prefix/")


def test_an_unreachable_endpoint_is_storage_unavailable_and_the_worker_retries_it() -> None:
    client = storage.Client(project="p", credentials=AnonymousCredentials(),
                            client_options={"api_endpoint": closed_endpoint()})
    gcs = GcsStorage(client, retry=QUICK)
    for call in (lambda: gcs.read("gs://b/k"), lambda: gcs.write("gs://b/k", b"x"),
                 lambda: gcs.exists("gs://b/k")):
        with pytest.raises(StorageUnavailable) as caught:
            call()
        assert isinstance(caught.value, RETRYABLE)
        assert caught.value.status == 503
        assert "127.0.0.1" not in caught.value.detail  # no raw client message
    assert issubclass(StorageUnavailable, RETRYABLE)


def test_no_credentials_at_all_is_storage_unavailable_for_listings_too(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The client is built on first use; without any credentials that first use fails, and a
    listing (lazy since it may stop early) translates it like every other call."""
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    gcs = GcsStorage(retry=QUICK)
    with pytest.raises(StorageUnavailable):
        next(gcs.walk("gs://bucket/prefix/"))
    with pytest.raises(StorageUnavailable):
        gcs.list("gs://bucket/prefix/")
