"""The identity side: a Keycloak-style client-credentials token endpoint and the bearer check of the APIs.

Tokens are opaque random strings kept in memory with their scopes and expiry, so tests can expire them all
at once (what a restart of Carerix's identity server looks like) and check that none of them leaks.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qs

from airflow_provider_carerix.emulator.state import MANAGE_SCOPE, EmulatorState, _Response, _Token

_TOKEN_PATH = re.compile(r"^/auth/realms/(?P<realm>[^/]+)/protocol/openid-connect/token/?$")


class TokenMixin(EmulatorState):
    """Issues client-credentials tokens (``POST /auth/realms/{realm}/.../token``) and checks bearer tokens."""

    @property
    def issued_tokens(self) -> list[str]:
        """Every access token handed out so far (tests check that none of them leaks into logs)."""
        with self._lock:
            return list(self._tokens)

    def expire_tokens(self) -> None:
        """Make every issued token invalid now (what a restart of Carerix's identity server looks like)."""
        with self._lock:
            for token in self._tokens.values():
                token.expires_at = 0.0

    def issue_token(self, client_id: str | None = None, scopes: Iterable[str] = (MANAGE_SCOPE,)) -> str:
        """A valid token without the HTTP round trip (for tests of other modules)."""
        cid = client_id or next(iter(self.clients), "demo-client")
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = _Token(cid, frozenset(scopes), time.monotonic() + self.token_lifetime)
        return token

    def _token(self, realm: str, headers: Any, body: bytes) -> _Response:
        if realm != self.realm:
            return _Response(404, {"error": "Realm does not exist"})
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        auth = headers.get("Authorization") or ""
        if auth.lower().startswith("basic "):
            try:
                decoded = base64.b64decode(auth[6:].strip()).decode()
                basic_id, _, basic_secret = decoded.partition(":")
                client_id, client_secret = client_id or basic_id, client_secret or basic_secret
            except (binascii.Error, UnicodeDecodeError):
                return _Response(400, {"error": "invalid_request"})
        if form.get("grant_type") != "client_credentials":
            return _Response(
                400, {"error": "unsupported_grant_type", "error_description": "Unsupported grant_type"}
            )
        if not client_id or not client_secret or self.clients.get(client_id) != client_secret:
            return _Response(
                401,
                {
                    "error": "invalid_client",
                    "error_description": "Invalid client or Invalid client credentials",
                },
            )
        # Like a Keycloak client whose scopes are default scopes: no ``scope`` parameter gets them all; an
        # explicit ``scope`` gets only what it names (so a hook configured with another scope gets a token
        # without the management scope, and the API answers 403, as Carerix does).
        requested = (form.get("scope") or "").split()
        scopes = (
            frozenset(s for s in requested if s in self.client_scopes) if requested else self.client_scopes
        )
        token = self.issue_token(client_id, scopes)
        return _Response(
            200,
            {
                "access_token": token,
                "expires_in": self.token_lifetime,
                "refresh_expires_in": 0,
                "token_type": "Bearer",
                "not-before-policy": 0,
                "scope": " ".join(sorted(scopes | {"profile", "email"})),
            },
            {"Cache-Control": "no-store", "Pragma": "no-cache"},
        )

    def _authorize(self, headers: Any, scopes: Iterable[str] = (MANAGE_SCOPE,)) -> _Response | None:
        """``None`` when the bearer token is valid and carries every scope in ``scopes``; else the answer.

        A missing scope is a 403 naming it, as Carerix answers (the GraphQL endpoint checks the scopes of
        the root fields a query asks for: the delivery log needs the Webhooks scope, records the data scope).
        """
        auth = headers.get("Authorization") or ""
        challenge = {"WWW-Authenticate": 'Bearer realm="carerix", error="invalid_token"'}
        if not auth.lower().startswith("bearer "):
            return _Response(401, {"error": "unauthorized", "message": "bearer token required"}, challenge)
        with self._lock:
            token = self._tokens.get(auth[7:].strip())
        if token is None or token.expires_at <= time.monotonic():
            return _Response(
                401, {"error": "invalid_token", "message": "token expired or unknown"}, challenge
            )
        for scope in scopes:
            if scope not in token.scopes:
                return _Response(403, {"error": "insufficient_scope", "message": f"token lacks {scope}"})
        return None
