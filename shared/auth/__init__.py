"""Caller identity: API keys with scopes, stored hashed in one file (`maskfleet-keys`)."""

from .keys import SCOPES, ApiKey, KeyFile, KeyRing, Scope, hash_key, new_key

__all__ = ["SCOPES", "ApiKey", "KeyFile", "KeyRing", "Scope", "hash_key", "new_key"]
