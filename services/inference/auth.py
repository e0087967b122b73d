"""Who is calling, and may they: the one FastAPI dependency every protected route uses.

Credentials, in order:
1. an API key, as `Authorization: Bearer <key>` or `X-API-Key: <key>` (tritonclient and curl
   can send either); an unknown key is a 401 whatever else the request carries;
2. with `trusted_identity_header` set, the identity an authenticating gateway asserts, with the
   scopes it lists in `trusted_scopes_header` (as KServe delegates to an Istio/Gateway policy);
3. nothing: the anonymous caller, allowed only the settings' `open_scopes` (none in
   production).
A missing or unknown credential is 401 with a `WWW-Authenticate: Bearer` challenge; a known
caller without the route's scope is 403. The caller's id (key id, gateway identity or
`anonymous`) goes to `request.state.caller` for the access log; the key itself is never kept.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Depends, Request
from starlette.datastructures import Headers

from shared.auth import SCOPES, KeyRing, Scope
from shared.errors import Forbidden, Unauthenticated

from .settings import InferenceSettings

ANONYMOUS = "anonymous"
GATEWAY_DEFAULT_SCOPES: frozenset[Scope] = frozenset({"infer"})
MAX_IDENTITY_CHARS = 256

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Caller:
    """An authenticated (or knowingly anonymous) caller, passed to routes as data."""

    id: str
    scopes: frozenset[Scope]
    via: Literal["key", "gateway", "anonymous"]

    def may(self, scope: Scope) -> bool:
        return scope in self.scopes


class Authenticator:
    """Resolves request headers to a `Caller` and checks one scope."""

    def __init__(self, keys: KeyRing, *, open_scopes: frozenset[Scope],
                 trusted_header: str | None = None,
                 trusted_scopes_header: str = "X-Maskfleet-Scopes") -> None:
        self._keys = keys
        self._open = open_scopes
        self._trusted = trusted_header.lower() if trusted_header else None
        self._trusted_scopes = trusted_scopes_header.lower()

    @classmethod
    def from_settings(cls, settings: InferenceSettings) -> Authenticator:
        keys = KeyRing.from_file(settings.api_keys_file) if settings.api_keys_file else KeyRing([])
        return cls(keys, open_scopes=settings.open_scopes,
                   trusted_header=settings.trusted_identity_header,
                   trusted_scopes_header=settings.trusted_scopes_header)

    def describe(self) -> dict[str, object]:
        """For the start-up log: how callers are recognised (counts and scopes, no secrets)."""
        return {"api_keys": len(self._keys), "anonymous_scopes": sorted(self._open),
                "trusted_identity_header": self._trusted}

    def identify(self, headers: Headers) -> Caller:
        presented = _presented_key(headers)
        if presented is not None:
            key = self._keys.identify(presented)
            if key is None:
                raise Unauthenticated("the API key is not valid")
            return Caller(key.id, key.scopes, "key")
        if self._trusted is not None:
            identity = headers.get(self._trusted, "").strip()
            if identity:
                return Caller(identity[:MAX_IDENTITY_CHARS], self._gateway_scopes(headers),
                              "gateway")
        return Caller(ANONYMOUS, self._open, "anonymous")

    def _gateway_scopes(self, headers: Headers) -> frozenset[Scope]:
        listed = headers.get(self._trusted_scopes)
        if listed is None:
            return GATEWAY_DEFAULT_SCOPES
        named = {part.strip() for part in listed.split(",")}
        return frozenset(s for s in SCOPES if s in named)

    def authorize(self, headers: Headers, scope: Scope) -> Caller:
        caller = self.identify(headers)
        if caller.may(scope):
            return caller
        if caller.via == "anonymous":
            raise Unauthenticated(f"this endpoint needs an API key with the `{scope}` scope "
                                  "(Authorization: Bearer <key> or X-API-Key: <key>)")
        raise Forbidden(f"caller {caller.id!r} lacks the `{scope}` scope this endpoint needs")


def _presented_key(headers: Headers) -> str | None:
    authorization = headers.get("authorization")
    if authorization is not None:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("send the key as `Authorization: Bearer <key>`")
        return token.strip()
    key = headers.get("x-api-key")
    if key is not None:
        if not key.strip():
            raise Unauthenticated("the X-API-Key header is empty")
        return key.strip()
    return None


class RequireScope:
    """`Depends(RequireScope("jobs"))`: the caller, once they are known to hold the scope."""

    def __init__(self, scope: Scope) -> None:
        self.scope = scope

    async def __call__(self, request: Request) -> Caller:
        authenticator: Authenticator = request.app.state.auth
        caller = authenticator.authorize(request.headers, self.scope)
        request.state.caller = caller.id
        return caller


InferCaller = Annotated[Caller, Depends(RequireScope("infer"))]
FeedbackCaller = Annotated[Caller, Depends(RequireScope("feedback"))]
JobsCaller = Annotated[Caller, Depends(RequireScope("jobs"))]
AdminCaller = Annotated[Caller, Depends(RequireScope("admin"))]
