"""Typed errors of the Carerix provider.

Callers (operators, the sync engine, the CLI) decide by type, not by parsing messages: an auth error is a
configuration problem nobody should retry, a not-found may mean "already done", anything else is the API's
fault. Messages name what failed (method, URL, status, a short body excerpt) so a task log is enough to act
on, and they are scrubbed because task logs are widely readable: no client secret, no bearer token.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

#: How much of a response body an error keeps: enough for Carerix's error JSON, not a whole HTML page.
BODY_LIMIT = 500

_REDACTED = "***"
# Things that look like credentials in bodies or URLs, whatever the server echoes back.
_SECRET_PATTERNS = [
    re.compile(r'("(?:access_token|refresh_token|id_token|client_secret|password)"\s*:\s*")[^"]*(")', re.I),
    re.compile(r"((?:access_token|refresh_token|id_token|client_secret|password)=)[^&\s]*", re.I),
    re.compile(r"(Bearer\s+)[A-Za-z0-9\-._~+/]+=*", re.I),
    re.compile(r"(Basic\s+)[A-Za-z0-9+/]+=*", re.I),
]


def scrub(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with known secrets and credential-shaped substrings replaced by ``***``."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, _REDACTED)
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + _REDACTED + (m.group(2) if m.lastindex == 2 else ""), text)
    return text


class CarerixError(Exception):
    """Base of every error this provider raises on purpose."""


class CarerixConfigError(CarerixError, ValueError):
    """The ``carerix`` connection is incomplete or malformed; raised before any network call.

    ``field`` is the connection field or extra key to fix, so a UI or CLI can point at it.
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)


class CarerixApiError(CarerixError):
    """Carerix answered with an error status (or could not be reached: ``status_code`` is then ``None``).

    ``body`` is a truncated, scrubbed excerpt of the answer; ``url`` never carries credentials.
    """

    def __init__(
        self,
        status_code: int | None,
        method: str,
        url: str,
        body: str = "",
        *,
        reason: str | None = None,
        secrets: Iterable[str | None] = (),
    ) -> None:
        secrets = list(secrets)
        self.status_code = status_code
        self.method = method.upper()
        self.url = scrub(url, secrets)
        body = scrub(body or "", secrets).strip()
        if len(body) > BODY_LIMIT:
            body = body[:BODY_LIMIT] + "..."
        self.body = body
        self.reason = scrub(reason, secrets) if reason else None
        super().__init__(self._message())

    def _message(self) -> str:
        what = f"Carerix API {self.method} {self.url}"
        if self.status_code is None:
            text = f"{what} failed: {self.reason or 'no response'}"
        else:
            text = f"{what} failed with HTTP {self.status_code}"
            if self.reason:
                text += f" ({self.reason})"
        if self.body:
            text += f": {self.body}"
        return text


class CarerixAuthError(CarerixApiError):
    """401/403: credentials, realm or scope are wrong; retrying will not help."""


class CarerixScopeError(CarerixAuthError):
    """403 because the token lacks a scope; ``scope`` is the one to add to the connection's ``scope`` field."""

    def __init__(
        self,
        status_code: int | None,
        method: str,
        url: str,
        body: str = "",
        *,
        scope: str,
        reason: str | None = None,
        secrets: Iterable[str | None] = (),
    ) -> None:
        self.scope = scope
        super().__init__(status_code, method, url, body, reason=reason, secrets=secrets)


class CarerixGraphQLError(CarerixApiError):
    """GraphQL answered with errors (in a 200): a query Carerix refused, or data with holes in it.

    ``errors`` keeps each error's ``message`` and ``path`` (never the data); ``partial`` says data came with
    them, which the provider never uses as if it were complete. For record fetches ``entity`` and ``ids``
    name what was asked for, so the message says which records the error is about.
    """

    def __init__(
        self,
        url: str,
        errors: Sequence[Mapping[str, Any]],
        *,
        partial: bool = False,
        entity: str | None = None,
        ids: Sequence[str] = (),
        secrets: Iterable[str | None] = (),
    ) -> None:
        self.errors: list[dict[str, Any]] = [
            {"message": str(e.get("message") or "no message"), "path": list(e.get("path") or [])}
            for e in errors
            if isinstance(e, Mapping)
        ] or [{"message": "answer holds no data", "path": []}]
        self.partial = partial
        self.entity = entity
        self.ids = list(ids)
        first = self.errors[0]
        where = f" at {'.'.join(str(p) for p in first['path'])}" if first["path"] else ""
        more = f" (and {len(self.errors) - 1} more error(s))" if len(self.errors) > 1 else ""
        about = ""
        if entity is not None:
            shown = ", ".join(self.ids[:10]) + (
                f" and {len(self.ids) - 10} more" if len(self.ids) > 10 else ""
            )
            about = f" for {entity} {'id' if len(self.ids) == 1 else 'ids'} {shown}"
        partial_text = "; partial data was not used" if partial else ""
        super().__init__(
            200,
            "POST",
            url,
            "",
            reason=f"GraphQL error{about}: {first['message']}{where}{more}{partial_text}",
            secrets=secrets,
        )

    @property
    def messages(self) -> list[str]:
        return [e["message"] for e in self.errors]

    def about(self, entity: str, ids: Sequence[str]) -> CarerixGraphQLError:
        """The same errors, naming the records they are about."""
        return CarerixGraphQLError(self.url, self.errors, partial=self.partial, entity=entity, ids=ids)


class CarerixNotFoundError(CarerixApiError):
    """404: the application or webhook does not exist (any more)."""


class CarerixConnectionError(CarerixApiError):
    """Carerix could not be reached or did not answer in time, after the retries allowed."""


def api_error(
    status_code: int | None,
    method: str,
    url: str,
    body: str = "",
    *,
    reason: str | None = None,
    secrets: Iterable[str | None] = (),
) -> CarerixApiError:
    """The most specific error class for a status code."""
    cls: type[CarerixApiError]
    if status_code is None:
        cls = CarerixConnectionError
    elif status_code in (401, 403):
        cls = CarerixAuthError
    elif status_code == 404:
        cls = CarerixNotFoundError
    else:
        cls = CarerixApiError
    return cls(status_code, method, url, body, reason=reason, secrets=secrets)
