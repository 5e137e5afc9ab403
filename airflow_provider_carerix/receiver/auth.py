"""Is this delivery from Carerix? One object, one ``verify(body, headers)``, no web framework inside.

Shaped like the standard-webhooks libraries (``Webhook(secret).verify(payload, headers)``): the caller hands
over the raw body and the request headers, and gets either nothing back or an :class:`AuthenticationError`
(status 401) saying what was wrong without echoing anything the client sent. The same object therefore serves
the standalone receiver, the receiver mounted in Airflow's API server, tests and any other server a user
prefers.

``verify`` is ``verify_head`` followed by ``verify_body``; a server calls them apart, so that everything the
headers alone decide (the secret, how many ``Cx-Signature`` headers, whether one is there) is decided before a
byte of the body is read: a client without the secret gets its 401 at once and cannot hold a connection open
by trickling a body.

Two mechanisms, each optional, both required when both are configured:

* **Secret header** (what Carerix's ``customHeaders`` give today): the header must be present exactly once and
  equal one of the configured secrets (several at once during rotation). Surrounding spaces and tabs are never
  part of a secret, neither in the configuration nor in the header (HTTP parsers differ in what they strip,
  so the rule is applied here, once). Comparison is constant-time and does not stop at the first match.
* **Cx-Signature**: Carerix reserves this header and public client code says it is RSA with SHA-256 over the
  body, with key material handed out when the application is created; Carerix has not published the scheme.
  Assumed here: the header is the base64 signature (standard or URL-safe alphabet) of the raw request body,
  RSASSA-PKCS1-v1_5 with SHA-256 (what "SHA256withRSA" means in Java), RSASSA-PSS with SHA-256 accepted as
  well. Checked only when at least one public key is configured; any configured key may match (rotation).
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from airflow_provider_carerix.delivery.signing import (
    _WHITESPACE,
    SIGNATURE_HEADER,
    AuthenticationError,
    Headers,
    _verify_signature,
    header_values,
    load_public_key,
    verify_signature,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

__all__ = [
    "DEFAULT_SECRET_HEADER",
    "SIGNATURE_HEADER",
    "AuthenticationError",
    "ReceiverAuth",
    "load_public_key",
    "load_secrets",
    "verify_signature",
]

DEFAULT_SECRET_HEADER = "X-Carerix-Secret"


def load_secrets(secret_file: Path | str | None = None) -> list[str]:
    """Secrets from ``[carerix] receiver_secret`` (comma-separated; ``AIRFLOW__CARERIX__RECEIVER_SECRET``, its
    ``_CMD``/``_SECRET`` forms or the older ``CARERIX_RECEIVER_SECRET``) and a file (one per line, ``#``
    comments): all valid at once."""
    from airflow_provider_carerix import settings

    secrets, _source = settings.get_list("receiver_secret")
    if secret_file:
        for line in Path(secret_file).read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                secrets.append(line)
    return list(dict.fromkeys(secrets))


class ReceiverAuth:
    """Verifies deliveries: the secret header and, when keys are configured, the Cx-Signature of the body.

    ``ReceiverAuth([], insecure=True)`` accepts everything (local experiments only); without ``insecure`` it
    refuses to exist with nothing to check, so a misconfiguration cannot silently open the door.
    """

    def __init__(
        self,
        secrets: Sequence[str],
        *,
        secret_header: str = DEFAULT_SECRET_HEADER,
        public_keys: Sequence[bytes | str | RSAPublicKey] = (),
        insecure: bool = False,
        keys_per_application: bool = False,
    ) -> None:
        self.secret_header = secret_header
        self._secrets = [s.strip(_WHITESPACE).encode() for s in secrets if s.strip(_WHITESPACE)]
        self._keys = [load_public_key(k) for k in public_keys]
        self.insecure = insecure
        # Signatures checked against keys recorded per application (after parsing, by the app): a mechanism.
        self.keys_per_application = keys_per_application
        if not self._secrets and not self._keys and not keys_per_application and not insecure:
            raise ValueError(
                "no receiver secret configured ([carerix] receiver_secret, e.g. AIRFLOW__CARERIX__RECEIVER_SECRET, "
                "or --secret-file); refusing to accept "
                "unauthenticated events (pass insecure=True / --insecure for local experiments only)"
            )

    @property
    def enabled(self) -> bool:
        """False when nothing is checked (``insecure`` without secrets or keys)."""
        return bool(self._secrets or self._keys or self.keys_per_application)

    @property
    def has_secrets(self) -> bool:
        """Whether a secret header authenticates deliveries (then a recorded key is a second factor)."""
        return bool(self._secrets)

    @property
    def has_static_keys(self) -> bool:
        """Whether configured public keys check every delivery's signature in :meth:`verify`."""
        return bool(self._keys)

    @property
    def challenge(self) -> str:
        """The ``WWW-Authenticate`` value of a 401: names the header to send, never a secret."""
        return f'Secret header="{self.secret_header}"'

    def verify(self, body: bytes, headers: Headers) -> None:
        """Return if the delivery is authentic, raise :class:`AuthenticationError` otherwise."""
        self.verify_head(headers)
        self.verify_body(body, headers)

    def verify_head(self, headers: Headers) -> None:
        """What the headers alone decide: the secret, and exactly one ``Cx-Signature`` where one is needed.

        Two ``Cx-Signature`` headers are refused whatever is configured (proxies and frameworks disagree on
        which one wins, so the one checked might not be the one another reader trusts).
        """
        if self._secrets:
            self._verify_secret(headers)
        signatures = header_values(headers, SIGNATURE_HEADER)
        if len(signatures) > 1:
            raise AuthenticationError(f"more than one {SIGNATURE_HEADER} header", SIGNATURE_HEADER)
        if self._keys and not signatures:
            raise AuthenticationError(f"missing or invalid {SIGNATURE_HEADER}", SIGNATURE_HEADER)

    def verify_body(self, body: bytes, headers: Headers) -> None:
        """The configured key(s) against the body; call after :meth:`verify_head`."""
        if self._keys:
            signatures = header_values(headers, SIGNATURE_HEADER)
            if len(signatures) != 1 or not _verify_signature(self._keys, signatures[0], body):
                raise AuthenticationError(f"missing or invalid {SIGNATURE_HEADER}", SIGNATURE_HEADER)

    def _verify_secret(self, headers: Headers) -> None:
        values = header_values(headers, self.secret_header)
        if len(values) > 1:
            # Proxies and frameworks disagree on which of two values wins: refuse the ambiguity.
            raise AuthenticationError(f"more than one {self.secret_header} header", self.secret_header)
        if not values:
            raise AuthenticationError(f"missing or wrong {self.secret_header} header", self.secret_header)
        given = values[0].strip(_WHITESPACE).encode("latin-1", "replace")
        ok = False
        for secret in self._secrets:  # no early exit: timing must not tell which secret (if any) matched
            ok |= hmac.compare_digest(given, secret)
        if not ok:
            raise AuthenticationError(f"missing or wrong {self.secret_header} header", self.secret_header)

    def __repr__(self) -> str:
        return (
            f"ReceiverAuth(header={self.secret_header!r}, secrets={len(self._secrets)}, "
            f"keys={len(self._keys)})"
        )
