"""The receiver as an ASGI app: ``POST /events`` and ``GET /health``, standalone or mounted in Airflow.

Carerix POSTs each event to a URL, retries on anything but a quick 2xx and may disable a webhook that keeps
failing. So the receiver answers 2xx only once the event is committed to the store (a 2xx is a promise
Carerix will not be asked to keep again), answers 503 when it cannot keep that promise (Carerix retries) and
answers a precise 4xx for input it will never accept (retrying cannot help), never a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from airflow_provider_carerix.group_commit import GroupCommitter
from airflow_provider_carerix.receiver.auth import (
    DEFAULT_SECRET_HEADER,
    AuthenticationError,
    ReceiverAuth,
)
from airflow_provider_carerix.receiver.validation import (
    DEFAULT_MAX_BODY,
    DeliveryRejected,
    check_content_encoding,
    check_declared_length,
    is_json_media_type,
    parse_event,
    read_body,
)
from airflow_provider_carerix.signing import SigningKeyCache, StoreKeyVerifier
from airflow_provider_carerix.store import EventRejected, EventStore, Provenance, StoreUnavailable

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

__all__ = ["DEFAULT_ACK_TIMEOUT", "create_app"]

log = logging.getLogger(__name__)

# Carerix gives up on a delivery after about 10 s; answer 503 before that so it retries rather than times out.
DEFAULT_ACK_TIMEOUT = 8.0
# How long /health waits for the writers' lock: a load balancer's probe must answer well within its timeout.
HEALTH_PROBE_TIMEOUT = 1.0


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
    signing_keys: SigningKeyCache | None = None,
) -> FastAPI:
    """The receiver app; refuses to exist without a way to authenticate Carerix unless ``insecure``.

    ``auth`` replaces ``secrets``/``secret_header``/``public_key``/``insecure`` with a ready verifier.
    ``verify_signatures`` (default): every delivery's ``Cx-Signature`` is checked against the keys provisioning
    recorded in the store for its ``applicationId`` (``signing_keys`` caches them; pass one to tune the TTL or
    the rotation window); once a key is known for an application, a missing or wrong signature gets a 401.
    ``require_signatures``: the recorded keys alone authenticate (no secret needed; deliveries of applications
    without a recorded key are refused), the secret header becomes an optional second factor.
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
        )

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        committer.close()

    app = FastAPI(
        title="Carerix webhook receiver",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
    )
    app.state.store = event_store
    app.state.committer = committer
    app.state.auth = auth
    app.state.signing_keys = verifier.cache if verifier is not None else None

    def reject(request: Request, status: int, detail: str, field: str | None = None) -> JSONResponse:
        client = request.client.host if request.client else "?"
        # Reason and field name only: never the secret, the signature or any of the payload.
        log.warning("Rejected Carerix delivery from %s: %d %s", client, status, detail)
        content: dict[str, Any] = {"detail": detail}
        if field:
            content["field"] = field
        headers = {"Retry-After": "5"} if status == 503 else None
        if status == 401:
            headers = {"WWW-Authenticate": auth.challenge}
        return JSONResponse(content, status_code=status, headers=headers)

    @app.post("/events", response_model=None)
    async def post_event(request: Request) -> Response:
        try:
            check_declared_length(request.headers.get("content-length"), max_body)
            try:
                body = await read_body(request.stream(), max_body)
            except ClientDisconnect:
                # Nobody is left to answer; not an error of the receiver (no traceback in the log).
                log.info("Carerix delivery abandoned by the client before its body was complete")
                return Response(status_code=400)
            auth.verify(body, request.headers)
            check_content_encoding(request.headers.get("content-encoding"))
            if not is_json_media_type(request.headers.get("content-type")):
                raise DeliveryRejected(415, "Content-Type must be application/json (UTF-8)")
            event = parse_event(body)
            verified = auth.has_static_keys  # auth.verify checked the configured key(s)
            if verifier is not None:
                try:
                    verified = await verifier.verify(event.application_id, body, request.headers) or verified
                except StoreUnavailable as exc:
                    raise DeliveryRejected(
                        503, f"signing keys unavailable ({type(exc).__name__}); retry later"
                    ) from None
            provenance = Provenance(signature_verified=verified)
            try:
                sequence, inserted = await asyncio.wait_for(
                    committer.enqueue(body, event, provenance), ack_timeout
                )
            except EventRejected as exc:
                raise DeliveryRejected(422, f"event {event.id} cannot be stored: {exc}", exc.field) from None
            except (StoreUnavailable, asyncio.TimeoutError) as exc:
                raise DeliveryRejected(
                    503, f"event store unavailable ({type(exc).__name__}); retry later"
                ) from None
        except AuthenticationError as exc:
            return reject(request, exc.status_code, exc.detail)
        except DeliveryRejected as exc:
            return reject(request, exc.status_code, exc.detail, exc.field)
        return JSONResponse(
            {"id": event.id, "sequence": sequence, "duplicate": not inserted},
            status_code=201 if inserted else 200,
        )

    @app.get("/health", response_model=None)
    async def health() -> Response:
        """Ready: would an event be stored now? A rolled-back write under the writers' lock, not a read."""
        try:
            await run_in_threadpool(event_store.probe_write, HEALTH_PROBE_TIMEOUT)
        except StoreUnavailable as exc:
            log.warning("Carerix receiver not ready (store %r): %s", event_store, exc)
            return JSONResponse(
                {"status": "unavailable", "store": event_store.dialect, "reason": str(exc)},
                status_code=503,
                headers={"Retry-After": "5"},
            )
        return JSONResponse({"status": "ok", "store": event_store.dialect})

    @app.get("/health/live", response_model=None)
    async def live() -> Response:
        """Alive: the process serves requests (for restart decisions; says nothing about the store)."""
        return JSONResponse({"status": "alive"})

    return app
