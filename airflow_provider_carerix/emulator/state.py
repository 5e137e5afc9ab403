"""What every part of the emulator shares: its constants, the records it keeps, and the state they all use.

The parts of :class:`~airflow_provider_carerix.emulator.server.CarerixEmulator` (signing, tokens, the
Management API, delivery, the GraphQL delivery log, the HTTP server) are mixins over :class:`EmulatorState`,
which declares every attribute they read or write, so each part type-checks on its own and one place says
what the emulator holds. ``CarerixEmulator.__init__`` sets them all; one re-entrant lock (``_lock``) guards
the mutable ones, because the HTTP server, the retry thread and the test calling in all touch them at once.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

MANAGE_SCOPE = "urn:cx/webhooks:data:manage"
#: The scope the record queries (``crEmployeePage``, ...) need: what public client code reads data with [T].
DATA_SCOPE = "urn:cx/cx5Wrapper:data:manage"
#: Records per page at most, whatever ``pageable.size`` asks: public client code reports Carerix caps pages at
#: 100 [U]; the emulator caps silently (the harder case for a client, which must follow the pages).
DEFAULT_MAX_PAGE_SIZE = 100
API_PREFIX = "/webhooks/v1"
CONTROL_PREFIX = "/_emulator"
GRAPHQL_PATH = "/graphql/v1/graphql"
SIGNATURE_HEADER = "Cx-Signature"
#: What ``signatureVerification.algorithm`` says; Carerix has not published its values, this is the Java name.
SIGNATURE_ALGORITHM = "SHA256withRSA"
APPLICATION_KINDS = ("Application", "WebhookApplication")
#: Seconds between a failed attempt and the next one; Carerix's own schedule is not published.
DEFAULT_RETRY_SCHEDULE = (30.0, 120.0, 600.0)


@dataclass(frozen=True)
class RecordedRequest:
    """One request the emulator answered (control endpoints are not recorded)."""

    method: str
    path: str
    status: int
    query: str = ""


@dataclass(frozen=True)
class Delivery:
    """One POST of an event to a webhook's URL. ``status`` is 0 when the receiver could not be reached."""

    webhook_id: str
    url: str
    status: int
    event: dict[str, Any]
    error: str | None = None
    job_id: str | None = None
    attempt: int = 1

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass
class Fault:
    """An injected failure: the next ``times`` matching requests get ``status`` (``None``: only ``delay``).

    ``processed=True`` applies the request first and then answers with the fault: what a gateway timeout in
    front of a working backend looks like, and the case where retrying a create would make a duplicate.
    """

    status: int | None = 500
    times: int = 1
    method: str | None = None
    path_contains: str | None = None
    retry_after: str | int | float | None = None
    delay: float = 0.0
    processed: bool = False
    body: dict[str, Any] | None = None  # the answer's JSON; default: {"error": "injected fault", ...}

    def applies(self, method: str, path: str) -> bool:
        return (
            self.times > 0
            and (self.method is None or self.method.upper() == method)
            and (self.path_contains is None or self.path_contains in path)
        )


@dataclass
class _SigningKey:
    private_key: RSAPrivateKey = field(repr=False)
    public_pem: str
    created: float
    retired_at: float | None = None


@dataclass
class _Job:
    """A delivery job: one event on its way to one webhook, with every attempt (Carerix's ``WebhookDeliveryJob``)."""

    id: str
    created: str
    application_id: str
    webhook_id: str
    url: str
    headers: list[dict[str, str]]
    payload: str
    attempts: list[dict[str, Any]] = field(default_factory=list)
    next_attempt_at: float | None = None
    signing: str = "current"

    @property
    def delivered(self) -> bool:
        return any(a["deliveryStatus"] == "successful" for a in self.attempts)


@dataclass
class _Token:
    client_id: str
    scopes: frozenset[str]
    expires_at: float


@dataclass
class _Response:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


def _now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(body or b"{}")
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


class EmulatorState:
    """The attributes the emulator's parts share (declared here, set by ``CarerixEmulator.__init__``)."""

    # Configuration: arguments of CarerixEmulator; tests and POST /_emulator/config change some while it runs.
    host: str
    port: int
    realm: str
    clients: dict[str, str]
    token_lifetime: float
    client_scopes: frozenset[str]
    list_shape: str
    slim: bool
    id_key: str
    trailing_slash: str
    delivery_timeout: float
    application_kind: str
    retry_schedule: tuple[float, ...]
    key_retention: float
    key_size: int
    max_page_size: int | None
    max_qualifier_terms: int | None

    # State, guarded by _lock.
    _lock: threading.RLock
    _apps: dict[str, dict[str, Any]]
    _hooks: dict[str, dict[str, dict[str, Any]]]  # application id -> webhook id -> webhook
    _keys: dict[str, list[_SigningKey]]  # application id -> key pairs, oldest first, the current one last
    _tokens: dict[str, _Token]
    _jobs: dict[str, _Job]
    _in_flight: set[str]  # ids of jobs being attempted by retry_due
    _faults: list[Fault]
    _log: list[RecordedRequest]
    deliveries: list[Delivery]
    _records: dict[str, dict[str, dict[str, Any]]]  # record type -> _id -> record (see dataset.py)
    _broken: dict[tuple[str, str], str]  # (record type, _id) -> the error resolving it gives
    _data_seed: int

    # The running server and its threads (None while stopped).
    _retry_wakeup: threading.Event
    _retry_thread: threading.Thread | None
    _server: ThreadingHTTPServer | None
    _thread: threading.Thread | None
