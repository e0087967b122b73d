"""API keys: random secrets handed to callers once, kept only as SHA-256 digests.

The keys file (JSON, mounted from a Kubernetes Secret in the chart) looks like::

    {"keys": [{"id": "web-frontend", "sha256": "<64 hex>", "scopes": ["infer", "feedback"]}]}

A key is `mfk_` + 43 URL-safe characters (256 random bits). Because keys are random and long,
a fast hash is enough: slow password hashes (bcrypt, argon2) exist to protect guessable
passwords, and would cost every request milliseconds here for no gain. The file therefore
never holds anything a caller could present; the plaintext is printed once by
`maskfleet-keys create` and never stored by maskfleet.

Verification hashes the presented key and compares it with every stored digest using
`hmac.compare_digest`, without stopping at the first match, so neither the position of a key
nor the number of matching leading bytes shows in the response time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shared.errors import ConfigError

Scope = Literal["infer", "feedback", "jobs", "admin"]
SCOPES: tuple[Scope, ...] = ("infer", "feedback", "jobs", "admin")
"""`infer`: /v1/segment and /v2 (Open Inference Protocol); `feedback`: /v1/feedback; `jobs`:
/v1/jobs (own jobs); `admin`: model and stage operations, and other callers' jobs."""

KEY_PREFIX = "mfk_"
KEY_ID_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"


class ApiKey(BaseModel):
    """One entry of the keys file: who, what they may do, and the digest of their key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=KEY_ID_PATTERN)
    """Logged with every request and stored in job records; never the key itself."""

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    """Hex SHA-256 of the key text."""

    scopes: frozenset[Scope] = Field(min_length=1)
    """What the key may call."""

    def allows(self, scope: Scope) -> bool:
        return scope in self.scopes


class KeyFile(BaseModel):
    """The whole keys file; ids are unique so a log line names exactly one caller."""

    model_config = ConfigDict(extra="forbid")

    keys: list[ApiKey] = Field(default_factory=list)

    @field_validator("keys")
    @classmethod
    def _unique(cls, keys: list[ApiKey]) -> list[ApiKey]:
        ids = [key.id for key in keys]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"duplicate key ids: {', '.join(duplicates)}")
        digests = [key.sha256 for key in keys]
        if len(set(digests)) != len(digests):
            raise ValueError("two entries share one key digest")
        return keys

    @classmethod
    def read(cls, path: str | Path) -> KeyFile:
        """Parse the file; a missing or malformed file is a ConfigError naming the file only."""
        try:
            text = Path(path).read_text()
        except FileNotFoundError:
            raise ConfigError(f"the API keys file {path} does not exist") from None
        except OSError as exc:
            raise ConfigError(f"cannot read the API keys file {path}: "
                              f"{exc.strerror or type(exc).__name__}") from None
        if not text.strip():
            return cls()
        try:
            return cls.model_validate(json.loads(text))
        except (json.JSONDecodeError, ValidationError) as exc:
            raise ConfigError(f"the API keys file {path} is invalid: {_short(exc)}") from None

    def write(self, path: str | Path) -> None:
        """Rewrite the file atomically (create-then-rename), readable by the owner only."""
        target = Path(path)
        tmp = target.with_name(f".{target.name}.tmp")
        body = {"keys": [{"id": k.id, "sha256": k.sha256, "scopes": sorted(k.scopes)}
                         for k in self.keys]}
        tmp.write_text(json.dumps(body, indent=2) + "\n")
        tmp.chmod(0o600)
        tmp.replace(target)


def _short(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        return f"{'.'.join(map(str, first['loc']))}: {first['msg']}"
    return str(exc).splitlines()[0]


def hash_key(key: str) -> str:
    """The digest stored in the keys file for `key`."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    """A fresh key: the prefix makes leaked keys easy to recognise (secret scanners)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


class KeyRing:
    """The loaded keys, answering "which key is this?" in constant time per stored key."""

    def __init__(self, keys: list[ApiKey]) -> None:
        self._keys = tuple(keys)

    @classmethod
    def from_file(cls, path: str | Path) -> KeyRing:
        return cls(KeyFile.read(path).keys)

    def __len__(self) -> int:
        return len(self._keys)

    def identify(self, presented: str) -> ApiKey | None:
        """The entry whose digest matches, or None; every entry is compared every time."""
        digest = hash_key(presented).encode()
        found: ApiKey | None = None
        for key in self._keys:
            if hmac.compare_digest(digest, key.sha256.encode()):
                found = key
        return found
