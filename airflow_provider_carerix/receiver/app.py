"""The receiver as an ASGI app: ``POST /events`` and ``GET /health``, standalone or mounted in Airflow.

Carerix POSTs each event to a URL, retries on anything but a quick 2xx and may disable a webhook that keeps
failing. So the receiver answers 2xx only once the event is committed to the store (a 2xx is a promise
Carerix will not be asked to keep again), answers 503 when it cannot keep that promise (Carerix retries) and
answers a precise 4xx for input it will never accept (retrying cannot help), never a 500.

``POST /events`` is a plain ASGI endpoint (no request object, no response class): it is the one hot path, and
everything it does it does in the order that lets the cheapest refusal come first. From the request head
alone, before a byte of the body is read: its size, the secret header, how many ``Cx-Signature`` headers (and
whether one is there when signatures are required), the announced length, the media type and encoding; a
refusal there closes the connection, so a client without the secret cannot hold it by trickling a body. Then
the body, within a deadline and at a minimum rate; then strict parsing, the signature, the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from airflow_provider_carerix import metrics
from airflow_provider_carerix.delivery.signing import SigningKeyCache, StoreKeyVerifier
from airflow_provider_carerix.receiver.auth import (
    DEFAULT_SECRET_HEADER,
    SIGNATURE_HEADER,
    AuthenticationError,
    ReceiverAuth,
    header_values,
)
from airflow_provider_carerix.receiver.group_commit import GroupCommitter
from airflow_provider_carerix.receiver.heartbeat import HEARTBEAT_INTERVAL
from airflow_provider_carerix.receiver.validation import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_MIN_BODY_RATE,
    ClientGone,
    DeliveryRejected,
    check_content_encoding,
    check_declared_length,
    is_json_media_type,
    parse_event,
    printable,
    receive_body,
)
from airflow_provider_carerix.store import EventRejected, EventStore, Provenance, StoreUnavailable

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

__all__ = ["DEFAULT_ACK_TIMEOUT", "create_app"]

log = logging.getLogger(__name__)

# Carerix gives up on a delivery after about 10 s; answer 503 before that so it retries rather than times out.
DEFAULT_ACK_TIMEOUT = 8.0
# How long /health waits for the writers' lock: a load balancer's probe must answer well within its timeout.
HEALTH_PROBE_TIMEOUT = 1.0
# /health believes the receiver's own last write if it is at most this old (seconds); otherwise it probes.
HEALTH_RECENT_WRITE = 2.0
# A successful probe is reused this long (seconds): a flood of /health requests costs one commit a second.
HEALTH_PROBE_REUSE = 1.0

_Scope = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
_Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def create_app(
    store: EventStore | str | None = None,
    *,
    secrets: Sequence[str] = (),
    secret_header: str = DEFAULT_SECRET_HEADER,
    max_body: int = DEFAULT_MAX_BODY,
    public_key: bytes | str | RSAPublicKey | None = None,
    insecure: bool = False,
    max_batch: int = 256,
    ack_timeout: float = DEFAULT_ACK_TIMEOUT,
    auth: ReceiverAuth | None = None,
    verify_signatures: bool = True,
    require_signatures: bool = False,
    allow_unsigned_applications: bool = False,
    signing_keys: SigningKeyCache | None = None,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
    min_body_rate: int = DEFAULT_MIN_BODY_RATE,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
) -> FastAPI:
    """The receiver app; refuses to exist without a way to authenticate Carerix unless ``insecure``.

    ``auth`` replaces ``secrets``/``secret_header``/``public_key``/``insecure`` with a ready verifier.
    ``verify_signatures`` (default): every delivery's ``Cx-Signature`` is checked against the keys provisioning
    recorded in the store for its ``applicationId`` (``signing_keys`` caches them; pass one to tune the TTL or
    the rotation window). Once any key is recorded in the store, signatures are required: a delivery that does
    not name exactly an application with a recorded key, or lacks its valid signature, gets a 401.
    ``allow_unsigned_applications`` relaxes that to applications that have a key (the others are admitted by
    the secret alone). ``require_signatures``: the recorded keys alone authenticate (no secret needed), the
    secret header becomes an optional second factor.

    ``body_timeout`` (seconds) and ``min_body_rate`` (bytes per second, 0 for none) bound how long a body may
    take once its head is in; ``max_header_bytes`` bounds the request head as it reaches the app (the
    standalone server refuses larger heads before that; inside Airflow's API server this is the only check).
    """
    if auth is None:
        auth = ReceiverAuth(
            secrets,
            secret_header=secret_header,
            public_keys=[public_key] if public_key is not None else [],
            insecure=insecure,
            keys_per_application=require_signatures,
        )
    event_store = store if isinstance(store, EventStore) else EventStore(store)
    committer = GroupCommitter(event_store, max_batch=max_batch)
    verifier: StoreKeyVerifier | None = None
    if verify_signatures or require_signatures:
        # Without a secret (or a configured key) nothing else vouches for a delivery: a key must be known.
        verifier = StoreKeyVerifier(
            signing_keys or SigningKeyCache(event_store),
            require_known_key=not (auth.has_secrets or auth.has_static_keys or auth.insecure),
            allow_unsigned_applications=allow_unsigned_applications,
        )
    door = _Door(
        auth=auth,
        verifier=verifier,
        committer=committer,
        max_body=max_body,
        ack_timeout=ack_timeout,
        body_timeout=body_timeout,
        min_body_rate=min_body_rate,
        max_header_bytes=max_header_bytes,
    )
    prober = _Prober(event_store)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        committer.close()

    app = _ReceiverApp(
        door,
        title="Carerix webhook receiver",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
        # POST /events/ must be a 404, not a redirect whose Location is built from the client's Host header.
        redirect_slashes=False,
    )
    app.state.store = event_store
    app.state.committer = committer
    app.state.auth = auth
    app.state.signing_keys = verifier.cache if verifier is not None else None
    # Reached for other methods only (405): POST /events goes to the door before routing (_ReceiverApp).
    # An ASGI callable, which Starlette serves as an app: the route only answers other methods (405).
    app.router.add_route("/events", door, methods=["POST"], include_in_schema=False)  # type: ignore[arg-type]

    seen: dict[str, Any] = {}

    async def identity() -> dict[str, Any]:
        """The store's id and how many receivers wrote a heartbeat there lately (cached 10 s): every receiver
        and reader of one deployment must show the same id. No host names or URLs: /health is public."""
        now = time.monotonic()
        if seen and now - seen["at"] < 10.0:
            return dict(seen["value"])

        def read() -> dict[str, Any]:
            alive = event_store.receivers_seen(within=timedelta(seconds=3 * HEARTBEAT_INTERVAL))
            return {"store_id": event_store.identity().store_id, "receivers_seen": len(alive)}

        try:
            value = await run_in_threadpool(read)
        except StoreUnavailable:
            value = {}
        seen.update(at=now, value=value)
        return dict(value)

    @app.get("/health", response_model=None)
    async def health() -> Response:
        """Ready: would an event reach the disk now? The receiver's own last write, or one real small commit.

        The answer is a JSON object meant to grow: ``status``, ``store`` (its dialect), ``checked`` (what it is
        based on: ``last write`` or ``probe``), when ready ``store_id`` and ``receivers_seen`` (the store's
        identity and how many receivers wrote a heartbeat to it in the last three minutes), when not ready
        ``cause`` and ``reason``.
        """
        recent = committer.last_outcome(HEALTH_RECENT_WRITE)
        if recent is not None:
            error, checked = recent[0], "last write"
        else:
            error, checked = await prober.check(), "probe"
        content: dict[str, Any] = {"status": "ok", "store": event_store.dialect, "checked": checked}
        if error is None:
            content.update(await identity())
            return JSONResponse(content)
        log.warning("Carerix receiver not ready (store %r): %s [%s]", event_store, error, error.cause)
        content.update(status="unavailable", cause=error.cause, reason=str(error))
        return JSONResponse(content, status_code=503, headers={"Retry-After": "5"})

    @app.get("/health/live", response_model=None)
    async def live() -> Response:
        """Alive, unless only a restart can bring the store back (its SQLite file replaced or removed).

        For restart decisions: one ``stat``, no query. Everything else the receiver recovers from by itself
        (a full disk freed, permissions fixed, a lock released, the database back), so it stays alive then.
        """
        restart = event_store.restart_needed()
        if restart is None:
            return JSONResponse({"status": "alive"})
        log.error("Carerix receiver needs a restart (store %r): %s", event_store, restart)
        return JSONResponse(
            {"status": "restart needed", "cause": restart.cause, "reason": str(restart)}, status_code=503
        )

    return app


class _ReceiverApp(FastAPI):
    """The FastAPI app, except that ``POST /events`` goes straight to the door.

    It is the one path under load: Starlette's middleware and routing layers (about a tenth of a delivery's
    CPU time) have nothing to add to a plain ASGI endpoint that answers every outcome itself.
    """

    def __init__(self, door: _Door, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.door = door

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and _route_path(scope) == "/events":
            await self.door(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def _route_path(scope: _Scope) -> str:
    """The path below where the app is mounted (``/carerix`` in Airflow's API server: ``root_path``)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


class _Prober:
    """One durable probe write at a time, a success reused for :data:`HEALTH_PROBE_REUSE` seconds."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self._ok_at: float | None = None
        self._running: asyncio.Future[StoreUnavailable | None] | None = None

    async def check(self) -> StoreUnavailable | None:
        if self._ok_at is not None and time.monotonic() - self._ok_at < HEALTH_PROBE_REUSE:
            return None
        loop = asyncio.get_running_loop()
        running = self._running
        if running is not None and running.get_loop() is loop:
            return await asyncio.shield(running)
        future: asyncio.Future[StoreUnavailable | None] = loop.create_future()
        self._running = future
        try:
            await run_in_threadpool(self.store.probe_write, HEALTH_PROBE_TIMEOUT)
        except StoreUnavailable as exc:
            self._ok_at = None
            future.set_result(exc)
            return exc
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()
            raise
        else:
            self._ok_at = time.monotonic()
            future.set_result(None)
            return None
        finally:
            if self._running is future:
                self._running = None


class _Door:
    """``POST /events`` as a plain ASGI app (see the module docstring for the order of the checks)."""

    def __init__(
        self,
        *,
        auth: ReceiverAuth,
        verifier: StoreKeyVerifier | None,
        committer: GroupCommitter,
        max_body: int,
        ack_timeout: float,
        body_timeout: float,
        min_body_rate: int,
        max_header_bytes: int,
    ) -> None:
        self.auth = auth
        self.verifier = verifier
        self.committer = committer
        self.max_body = max_body
        self.ack_timeout = ack_timeout
        self.body_timeout = body_timeout
        self.min_body_rate = min_body_rate
        self.max_header_bytes = max_header_bytes
        # The only headers the door reads, as ASGI spells them (lower case).
        self.head_names = frozenset(
            name.lower().encode("latin-1")
            for name in (
                "content-length",
                "content-type",
                "content-encoding",
                auth.secret_header,
                SIGNATURE_HEADER,
            )
        )

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        try:
            await self._deliver(scope, receive, send)
        except Exception as exc:
            # A bug, not the client's fault and maybe not lasting: 503 (Carerix retries), never a 500. By type
            # only: the message of an unexpected error may quote the payload.
            log.error("Carerix delivery failed unexpectedly: %s", type(exc).__name__)
            metrics.incr(metrics.RECEIVER_STORE_ERRORS, cause="unexpected")
            with contextlib.suppress(Exception):
                await _send_json(send, 503, {"detail": "unexpected error; retry later"}, _CLOSE)

    async def _deliver(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        headers = _HeadFields(scope["headers"], self.head_names)
        body_read = False
        try:
            self._check_head(scope, headers)
            if (
                self.verifier is not None
                and not header_values(headers, SIGNATURE_HEADER)
                and await self.verifier.signatures_required()
            ):
                raise AuthenticationError(
                    f"missing {SIGNATURE_HEADER}: signatures are required once provisioning recorded a "
                    "signing key",
                    SIGNATURE_HEADER,
                )
            body = await receive_body(
                receive, self.max_body, timeout=self.body_timeout, min_rate=self.min_body_rate
            )
            body_read = True
            self.auth.verify_body(body, headers)
            event = parse_event(body)
            verified = self.auth.has_static_keys  # verify_body checked the configured key(s)
            if self.verifier is not None:
                verified = await self.verifier.verify(event.application_id, body, headers) or verified
            future = self.committer.enqueue(body, event, Provenance(signature_verified=verified))
            sequence, inserted = await asyncio.wait_for(future, self.ack_timeout)
        except ClientGone:
            # Nobody is left to answer; not an error of the receiver (no traceback in the log).
            log.info("Carerix delivery abandoned by the client before its body was complete")
            return
        except AuthenticationError as exc:
            await self._refuse(scope, send, 401, exc.detail, exc.field, close=not body_read)
            return
        except DeliveryRejected as exc:
            await self._refuse(scope, send, exc.status_code, exc.detail, exc.field, close=not body_read)
            return
        except EventRejected as exc:
            # Only after parsing: ``event`` is bound.
            detail = f"event {event.id} cannot be stored: {exc}"
            await self._refuse(scope, send, 422, detail, exc.field, close=False, reason="store_refused")
            return
        except StoreUnavailable as exc:
            await self._refuse(scope, send, 503, f"{exc}; retry later", cause=exc.cause, close=not body_read)
            return
        except asyncio.TimeoutError:
            detail = f"the event store did not confirm the commit within {self.ack_timeout:g} s; retry later"
            await self._refuse(scope, send, 503, detail, cause="timeout", close=False, reason="ack_timeout")
            return
        answer = {"id": event.id, "sequence": sequence, "duplicate": not inserted}
        await _send_json(send, 201 if inserted else 200, answer)

    def _check_head(self, scope: _Scope, headers: _HeadFields) -> None:
        size = headers.size + len(scope["method"]) + len(scope.get("raw_path") or b"")
        if size + len(scope["query_string"]) + 12 > self.max_header_bytes:
            raise DeliveryRejected(431, f"request head larger than {self.max_header_bytes} bytes")
        self.auth.verify_head(headers)
        check_declared_length(headers.one("Content-Length"), self.max_body)
        check_content_encoding(headers.one("Content-Encoding"))
        if not is_json_media_type(headers.one("Content-Type")):
            raise DeliveryRejected(415, "Content-Type must be application/json (UTF-8)", "Content-Type")

    async def _refuse(
        self,
        scope: _Scope,
        send: _Send,
        status: int,
        detail: str,
        field: str | None = None,
        *,
        cause: str | None = None,
        close: bool,
        reason: str | None = None,
    ) -> None:
        if status == 503:
            metrics.incr(metrics.RECEIVER_STORE_ERRORS, cause=reason or cause)
        else:
            metrics.incr(metrics.RECEIVER_REFUSED, reason=reason or _REASONS.get(status, str(status)))
        client = scope.get("client")
        # Reason and field name only: never the secret, the signature or any of the payload; nothing the
        # client chose reaches the log unescaped (its address may come from a proxy's header).
        log.warning(
            "Rejected Carerix delivery from %s: %d %s",
            printable(str(client[0])) if client else "?",
            status,
            printable(detail),
        )
        content: dict[str, Any] = {"detail": detail}
        if field:
            content["field"] = field
        if cause:
            content["cause"] = cause
        extra: list[tuple[bytes, bytes]] = []
        if status == 503:
            extra.append((b"retry-after", b"5"))
        elif status == 401:
            extra.append((b"www-authenticate", self.auth.challenge.encode("latin-1")))
        if close:
            # Answered before the body was read: the rest of it is nobody's business, the connection goes.
            extra.append((b"connection", b"close"))
        await _send_json(send, status, content, extra)


_CLOSE = ((b"connection", b"close"),)
# A refusal's reason as ``carerix.receiver.refused`` tags it (docs/monitoring.md).
_REASONS = {
    400: "bad_request",
    401: "unauthenticated",
    408: "body_timeout",
    413: "too_large",
    415: "media_type",
    422: "invalid_event",
    431: "head_too_large",
}


class _HeadFields:
    """The request headers the door reads, gathered in one pass over the ASGI list; ``getlist`` like Starlette's.

    ``size`` counts every header line (name, value, ": " and CRLF) on the way, for the head's limit.
    """

    __slots__ = ("_values", "size")

    def __init__(self, raw: Sequence[tuple[bytes, bytes]], names: frozenset[bytes]) -> None:
        values: dict[bytes, list[str]] = {}
        size = 0
        for name, value in raw:
            size += len(name) + len(value) + 4
            if name in names:
                values.setdefault(name, []).append(value.decode("latin-1"))
        self._values = values
        self.size = size

    def getlist(self, name: str) -> list[str]:
        return self._values.get(name.lower().encode("latin-1"), [])

    def one(self, name: str) -> str | None:
        """The header's value; several of them (ambiguous framing or type) are refused."""
        values = self._values.get(name.lower().encode("latin-1"))
        if not values:
            return None
        if len(values) > 1:
            raise DeliveryRejected(400, f"more than one {name} header", name)
        return values[0]


async def _send_json(
    send: _Send, status: int, content: dict[str, Any], extra: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    body = json.dumps(content, separators=(",", ":")).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
