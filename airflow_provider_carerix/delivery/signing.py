"""Carerix's delivery signatures: learning each application's public key, and keeping it where receivers read it.

Carerix signs every delivery with the key pair of its webhook application and serves the public key on the
application (``signatureVerification.publicKey``, PEM). Provisioning (the sync operator, ``carerix-webhooks
apply``) already talks to Carerix with credentials; the receiver, facing the internet, must not hold them. So
provisioning reads the keys and records them in the event store, and the receiver reads them from there
through :class:`SigningKeyCache`: no key file to copy, and a rotated key reaches every receiver with the next
sync.

Rotation: the key recorded last is current; the one it replaced stays valid for ``rotation_window`` (default a
day), so deliveries signed (or retried by Carerix) with the old key shortly before or after the switch are
still accepted. A delivery signed with a key provisioning has not recorded yet is refused (401) until the next
sync; Carerix retries it, and recovery from the delivery log fetches whatever its retries did not deliver.

Once provisioning has recorded a key in a store, signatures are required there: every delivery must name, in
``applicationId``, exactly an application with a recorded key and carry a valid ``Cx-Signature`` made with it.
Otherwise anyone holding the secret header could sidestep the signature by leaving ``applicationId`` out,
spelling it in upper case, adding a space or naming an application nobody provisioned. An operator who runs
applications without keys next to signed ones opts out explicitly (``allow_unsigned_applications``): then
only applications with a recorded key need a signature.

What exactly Carerix signs is not published; like every public client, the receiver verifies the raw body
(RSASSA-PKCS1-v1_5 with SHA-256, base64 in ``Cx-Signature``). No Airflow import: the receiver runs without it.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol, TypeAlias

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

    from airflow_provider_carerix.store import EventStore

__all__ = [
    "DEFAULT_ROTATION_WINDOW",
    "SIGNATURE_HEADER",
    "AuthenticationError",
    "Headers",
    "SigningKeyCache",
    "StoreKeyVerifier",
    "header_values",
    "load_public_key",
    "verify_signature",
]

log = logging.getLogger(__name__)

# Spaces and tabs around a header value are never part of it (HTTP parsers differ in what they strip).
_WHITESPACE = " \t"

#: How long a replaced key stays valid after provisioning saw its successor.
DEFAULT_ROTATION_WINDOW = timedelta(hours=24)
#: How long the receiver trusts what it read from the store before reading again.
DEFAULT_CACHE_TTL = 30.0
#: A failed verification re-reads the store at most this often per application (a just-recorded rotation).
_REFRESH_INTERVAL = 1.0


@dataclass
class _Entry:
    keys: tuple[RSAPublicKey, ...]
    loaded_at: float
    refreshed_at: float = field(default=0.0)


class SigningKeyCache:
    """The keys each application's deliveries may be signed with, read from the store and kept ``ttl`` seconds.

    The store is read at most once per application per ``ttl`` (and once more, at most every second, when a
    signature does not verify: a rotation provisioning just recorded is picked up at once). A key that does
    not load is skipped with a warning: one bad row must not open or close the door for the others.
    """

    def __init__(
        self,
        store: EventStore,
        *,
        ttl: float = DEFAULT_CACHE_TTL,
        rotation_window: timedelta = DEFAULT_ROTATION_WINDOW,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = 10_000,
    ) -> None:
        self.store = store
        self.max_entries = max_entries
        self.ttl = ttl
        self.rotation_window = rotation_window
        self.clock = clock
        self.loads = 0
        self._entries: dict[str, _Entry] = {}
        self._any: tuple[bool, float] | None = None  # (any key recorded in the store, when read)
        self._lock = threading.Lock()

    def cached_any(self) -> bool | None:
        """Whether the store holds any signing key, if read less than ``ttl`` ago; else ``None``."""
        known = self._any
        if known is None or self.clock() - known[1] >= self.ttl:
            return None
        return known[0]

    def load_any(self) -> bool:
        """Read from the store whether any signing key is recorded (blocking; raises ``StoreUnavailable``)."""
        found = self.store.has_signing_keys()
        self._any = (found, self.clock())
        return found

    def cached(self, application_id: str) -> tuple[RSAPublicKey, ...] | None:
        """The keys if cached and fresh, else ``None`` (then call :meth:`load`, off the event loop)."""
        with self._lock:
            entry = self._entries.get(application_id)
        if entry is None or self.clock() - entry.loaded_at >= self.ttl:
            return None
        return entry.keys

    def load(self, application_id: str) -> tuple[RSAPublicKey, ...]:
        """Read the application's valid keys from the store (blocking; raises ``StoreUnavailable``)."""
        pems = self.store.signing_keys(application_id, rotation_window=self.rotation_window)
        keys: list[RSAPublicKey] = []
        for pem in pems:
            try:
                keys.append(load_public_key(pem))
            except ValueError as exc:
                log.warning("Skipping an unreadable signing key of application %s: %s", application_id, exc)
        now = self.clock()
        with self._lock:
            self.loads += 1
            self._entries.pop(application_id, None)
            self._entries[application_id] = _Entry(tuple(keys), now, now)
            # Bounded: deliveries naming ever new application ids must not grow the cache without limit.
            while len(self._entries) > self.max_entries:
                self._entries.pop(next(iter(self._entries)))
        return tuple(keys)

    def should_refresh(self, application_id: str) -> bool:
        """After a failed verification: whether re-reading the store now could help (rate-limited)."""
        with self._lock:
            entry = self._entries.get(application_id)
            if entry is None:
                return True
            if self.clock() - entry.refreshed_at < _REFRESH_INTERVAL:
                return False
            entry.refreshed_at = self.clock()
            return True

    def invalidate(self, application_id: str | None = None) -> None:
        with self._lock:
            self._any = None
            if application_id is None:
                self._entries.clear()
            else:
                self._entries.pop(application_id, None)


class StoreKeyVerifier:
    """Checks ``Cx-Signature`` against the keys recorded for the delivery's ``applicationId``.

    Signatures are required (:meth:`signatures_required`) when ``require_known_key`` (nothing else, such as a
    secret header, authenticates deliveries) or once any key is recorded in the store, unless
    ``allow_unsigned_applications``. Then a delivery whose ``applicationId`` is missing or is not exactly the
    id of an application with a recorded key is refused. :meth:`verify` returns whether the signature was
    verified; raises ``AuthenticationError`` (401) for a refused delivery, and ``StoreUnavailable`` when the keys
    cannot be read (the receiver answers 503 and Carerix retries).
    """

    def __init__(
        self,
        cache: SigningKeyCache,
        *,
        require_known_key: bool,
        allow_unsigned_applications: bool = False,
    ) -> None:
        self.cache = cache
        self.require_known_key = require_known_key
        self.allow_unsigned_applications = allow_unsigned_applications
        self._loading: dict[str, asyncio.Future[tuple[RSAPublicKey, ...]]] = {}
        self._loading_any: asyncio.Future[bool] | None = None

    async def signatures_required(self) -> bool:
        """Whether every delivery must carry a valid signature: decided before its body is read.

        At most one store read per ``ttl`` however many requests ask (a single flight, as for the keys).
        """
        if self.require_known_key:
            return True
        if self.allow_unsigned_applications:
            return False
        known = self.cache.cached_any()
        if known is not None:
            return known
        loop = asyncio.get_running_loop()
        pending = self._loading_any
        if pending is not None and pending.get_loop() is loop:
            return await asyncio.shield(pending)
        future: asyncio.Future[bool] = loop.create_future()
        self._loading_any = future
        try:
            found = await asyncio.to_thread(self.cache.load_any)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters (if any) re-raise it
            raise
        else:
            future.set_result(found)
            return found
        finally:
            if self._loading_any is future:
                self._loading_any = None

    async def _keys(self, application_id: str, *, refresh: bool = False) -> tuple[RSAPublicKey, ...]:
        """Cached keys, else one store read per application however many deliveries wait for it.

        Without the single flight, a burst of deliveries for an application not cached yet (a cold start) would
        send one store query each, all at once, and crowd out the inserts on the store's connection pool.
        """
        keys = None if refresh else self.cache.cached(application_id)
        if keys is not None:
            return keys
        loop = asyncio.get_running_loop()
        pending = self._loading.get(application_id)
        if pending is not None and pending.get_loop() is loop:
            return await asyncio.shield(pending)
        future: asyncio.Future[tuple[RSAPublicKey, ...]] = loop.create_future()
        self._loading[application_id] = future
        try:
            keys = await asyncio.to_thread(self.cache.load, application_id)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters (if any) re-raise it, no "never retrieved" warning
            raise
        else:
            future.set_result(keys)
            return keys
        finally:
            if self._loading.get(application_id) is future:
                del self._loading[application_id]

    async def verify(self, application_id: str | None, body: bytes, headers: Any) -> bool:

        keys = await self._keys(application_id) if application_id else ()
        if not keys:
            if self.require_known_key:
                raise AuthenticationError(
                    "no signing key is recorded for this application: provision it first (sync operator or "
                    "carerix-webhooks apply) so the receiver can verify Cx-Signature",
                    "applicationId",
                )
            if await self.signatures_required():
                raise AuthenticationError(
                    "applicationId: missing, or not exactly the id of an application with a recorded signing "
                    "key; signatures are required once provisioning recorded a key",
                    "applicationId",
                )
            return False
        signatures = header_values(headers, SIGNATURE_HEADER)
        if len(signatures) > 1:
            raise AuthenticationError(f"more than one {SIGNATURE_HEADER} header", SIGNATURE_HEADER)
        if not signatures:
            raise AuthenticationError(f"missing {SIGNATURE_HEADER}", SIGNATURE_HEADER)
        if verify_signature(keys, signatures[0], body):
            return True
        assert application_id is not None
        # Provisioning may have recorded a rotation since the cache was filled: read the store once more.
        if self.cache.should_refresh(application_id):
            keys = await self._keys(application_id, refresh=True)
            if verify_signature(keys, signatures[0], body):
                return True
        raise AuthenticationError(f"invalid {SIGNATURE_HEADER}", SIGNATURE_HEADER)


SIGNATURE_HEADER = "Cx-Signature"


#: Request headers as any server hands them over: a multi-valued mapping (``getlist``, e.g. Starlette's),
#: a plain mapping, or the raw (name, value) pairs (bytes or str) of an ASGI scope.
class SupportsGetList(Protocol):
    """Headers with Starlette's ``getlist``: every value of one name."""

    def getlist(self, key: str) -> list[str]: ...


Headers: TypeAlias = Mapping[str, str] | Iterable[tuple[str | bytes, str | bytes]] | SupportsGetList


class AuthenticationError(Exception):
    """The delivery is not proven to come from Carerix; ``detail`` never repeats what the client sent.

    ``field`` names the header (or body field) at fault when one is, as the receiver's other refusals do.
    """

    status_code = 401

    def __init__(self, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field


def load_public_key(pem: bytes | str | RSAPublicKey) -> RSAPublicKey:
    """An RSA public key from PEM text (an already loaded key is returned as is)."""
    if not isinstance(pem, (bytes, str)):
        return pem
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    key = load_pem_public_key(pem.encode() if isinstance(pem, str) else pem)
    if not isinstance(key, RSAPublicKey):
        raise ValueError("the Cx-Signature public key must be an RSA key (PEM)")
    return key


def header_values(headers: Headers, name: str) -> list[str]:
    """Every value of header ``name`` (case-insensitive), in order; bytes are decoded as latin-1 (RFC 9110)."""
    if not isinstance(headers, Mapping | Iterable):  # Starlette's headers, the door's
        return list(headers.getlist(name))
    getlist = getattr(headers, "getlist", None)
    if callable(getlist):
        return list(getlist(name))
    lower = name.lower()
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    values: list[str] = []
    for key, value in pairs:
        key_s = key.decode("latin-1") if isinstance(key, bytes) else key
        if key_s.lower() == lower:
            values.append(value.decode("latin-1") if isinstance(value, bytes) else value)
    return values


def _verify_signature(keys: Sequence[RSAPublicKey], header: str, body: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    value = header.strip(_WHITESPACE)
    try:
        signature = base64.b64decode(
            value + "=" * (-len(value) % 4),
            altchars=b"-_" if "-" in value or "_" in value else None,
            validate=True,
        )
    except (binascii.Error, ValueError):
        return False
    pads = (
        padding.PKCS1v15(),
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO),
    )
    for key in keys:
        for pad in pads:
            try:
                key.verify(signature, body, pad, hashes.SHA256())
                return True
            except InvalidSignature:
                continue
            except ValueError:
                break  # a signature of the wrong size for this key: try the next key
    return False


#: Public name of the check, for verifiers that pick keys per delivery (keys recorded per application).
verify_signature = _verify_signature
