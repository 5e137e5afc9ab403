"""The door from the internet into the user's pipelines: authenticated, durable, fast ingestion of deliveries.

Carerix POSTs each event to a URL, retries on anything but a quick 2xx and may disable a webhook that keeps
failing. So the receiver answers 2xx only once the event is committed to the store (a 2xx is a promise
Carerix will not be asked to keep again), answers 503 when it cannot keep that promise (Carerix retries) and
answers a precise 4xx for input it will never accept (retrying cannot help), never a 500.

Durability is cheap thanks to group commit: requests hand their event to one writer task which drains every
request waiting at that moment and commits them in one transaction (one fsync), then wakes each request. Under
load a group grows by itself while the previous commit is in flight; alone, a request waits for one commit.

``Cx-Signature``: Carerix reserves this header and public client code says it is RSA with SHA-256 over the
body, with key material handed out when the application is created; Carerix has not published the scheme.
Assumed here: the header is the base64 signature (standard or URL-safe alphabet) of the raw request body,
RSASSA-PKCS1-v1_5 with SHA-256 (what "SHA256withRSA" means in Java), RSASSA-PSS with SHA-256 accepted as well.
It is only checked when a public key is configured.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import gc
import hmac
import logging
import os
import sys
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from airflow_provider_carerix.models import WebhookEvent
from airflow_provider_carerix.store import EventStore, StoreUnavailable, parse_duration, resolve_store_url

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

__all__ = ["DEFAULT_MAX_BODY", "DEFAULT_SECRET_HEADER", "create_app", "load_secrets", "main"]

log = logging.getLogger(__name__)

DEFAULT_SECRET_HEADER = "X-Carerix-Secret"
DEFAULT_MAX_BODY = 1024 * 1024
SIGNATURE_HEADER = "cx-signature"
ENV_SECRET = "CARERIX_RECEIVER_SECRET"
ENV_SECRET_HEADER = "CARERIX_RECEIVER_SECRET_HEADER"
# Carerix gives up on a delivery after about 10 s; answer 503 before that so it retries rather than times out.
DEFAULT_ACK_TIMEOUT = 8.0
_ID_MAX = 255
_UNION_TAGS = frozenset({"str", "int", "float", "bool", "none", "datetime", "list", "dict"})


class _Reject(Exception):
    def __init__(self, status: int, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.field = field


def load_secrets(secret_file: Path | str | None = None, env: str = ENV_SECRET) -> list[str]:
    """Secrets from env (comma-separated) and a file (one per line, ``#`` comments): all valid at once."""
    secrets = [s.strip() for s in os.environ.get(env, "").split(",") if s.strip()]
    if secret_file:
        for line in Path(secret_file).read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                secrets.append(line)
    return list(dict.fromkeys(secrets))


def load_public_key(pem: bytes | str | RSAPublicKey | None) -> RSAPublicKey | None:
    if pem is None:
        return None
    if not isinstance(pem, (bytes, str)):
        return pem
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    key = load_pem_public_key(pem.encode() if isinstance(pem, str) else pem)
    if not isinstance(key, RSAPublicKey):
        raise ValueError("the Cx-Signature public key must be an RSA key (PEM)")
    return key


def _verify_signature(key: RSAPublicKey, header: str | None, body: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    if not header:
        return False
    value = header.strip()
    try:
        signature = base64.b64decode(
            value + "=" * (-len(value) % 4),
            altchars=b"-_" if "-" in value or "_" in value else None,
            validate=True,
        )
    except (binascii.Error, ValueError):
        return False
    for pad in (
        padding.PKCS1v15(),
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO),
    ):
        try:
            key.verify(signature, body, pad, hashes.SHA256())
            return True
        except InvalidSignature:
            continue
        except ValueError:
            return False
    return False


class GroupCommitter:
    """One writer task per event loop: concurrent requests share one transaction (and one fsync).

    Started lazily on the first request because a FastAPI app mounted inside Airflow's API server does not
    receive lifespan events.
    """

    def __init__(self, store: EventStore, *, max_batch: int = 256) -> None:
        self.store = store
        self.max_batch = max_batch
        self.batches = 0
        self.committed = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="carerix-commit")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[tuple[bytes, WebhookEvent, asyncio.Future[tuple[int, bool]]]] | None = None
        self._task: asyncio.Task[None] | None = None

    def _ensure_started(self) -> asyncio.Queue[Any]:
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._loop is not loop or self._queue is None:
            self._loop = loop
            self._queue = asyncio.Queue()
            self._task = loop.create_task(self._run(self._queue), name="carerix-group-commit")
        return self._queue

    def enqueue(self, raw: bytes, event: WebhookEvent) -> asyncio.Future[tuple[int, bool]]:
        """A future resolved once the event is committed (``StoreUnavailable`` when it could not be)."""
        queue = self._ensure_started()
        future: asyncio.Future[tuple[int, bool]] = asyncio.get_running_loop().create_future()
        queue.put_nowait((raw, event, future))
        return future

    async def submit(self, raw: bytes, event: WebhookEvent) -> tuple[int, bool]:
        return await self.enqueue(raw, event)

    async def _run(self, queue: asyncio.Queue[Any]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await queue.get()]
            while len(batch) < self.max_batch and not queue.empty():
                batch.append(queue.get_nowait())
            try:
                results: list[tuple[int, bool] | BaseException] = list(
                    await loop.run_in_executor(
                        self._executor, self.store.insert_many, [(r, e) for r, e, _ in batch]
                    )
                )
            except StoreUnavailable as exc:
                results = [exc] * len(batch)
            except Exception as exc:
                # Not the store being down: one odd item must not fail the requests it was grouped with.
                log.exception("Group commit of %d events failed; retrying them one by one", len(batch))
                results = [exc] if len(batch) == 1 else await self._one_by_one(batch)
            else:
                self.batches += 1
                self.committed += len(batch)
            for (_, _, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(
                        StoreUnavailable(str(result)) if not isinstance(result, StoreUnavailable) else result
                    )
                else:
                    future.set_result(result)

    async def _one_by_one(self, batch: Sequence[tuple[bytes, WebhookEvent, Any]]) -> list[Any]:
        loop = asyncio.get_running_loop()
        out: list[Any] = []
        for raw, event, _ in batch:
            try:
                out.append(await loop.run_in_executor(self._executor, self.store.insert, raw, event))
            except Exception as exc:
                out.append(exc)
        return out

    def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._executor.shutdown(wait=False)


def _json_type(content_type: str | None) -> bool:
    if not content_type:
        return False
    media, _, params = content_type.partition(";")
    media = media.strip().lower()
    if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        return False
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            return False
    return True


def _field_of(error: dict[str, Any]) -> str:
    # Unions add the member that failed ("str", "int", "function-after[...]") to loc: not a field name.
    loc = [
        str(part) for part in error.get("loc", ()) if str(part) not in _UNION_TAGS and "[" not in str(part)
    ]
    return ".".join(loc) or "body"


def _check_event(body: bytes) -> WebhookEvent:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise _Reject(400, "body is not UTF-8 encoded JSON") from None
    try:
        event = WebhookEvent.model_validate_json(text)
    except ValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False)
        if any(e.get("type") == "json_invalid" for e in errors):
            raise _Reject(400, "body is not valid JSON") from None
        first = errors[0]
        field = _field_of(first)
        if first.get("type") == "model_type" and not first.get("loc"):
            raise _Reject(422, "a Carerix event is a JSON object", "body") from None
        raise _Reject(422, f"{field}: {first.get('msg', 'invalid')}", field) from None
    entity, sep, action = event.type.partition(":")
    if not sep or not entity or not action or any(c.isspace() for c in event.type) or ":" in action:
        raise _Reject(422, "type: expected <entity>:<action>, e.g. cremployee:updated", "type")
    for name, value in (
        ("id", event.id),
        ("type", event.type),
        ("tenant", event.tenant),
        ("applicationId", event.application_id),
        ("webhookId", event.webhook_id),
        ("data.entityId", None if event.data is None else event.data.entity_id),
    ):
        if value is not None and len(str(value)) > _ID_MAX:
            raise _Reject(422, f"{name}: longer than {_ID_MAX} characters", name)
    return event


async def _read_body(request: Request, limit: int) -> bytes:
    """Read at most ``limit`` bytes and stop: a huge body is refused without being received in full."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _Reject(413, f"body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(
    store: EventStore | str | None = None,
    *,
    secrets: Sequence[str],
    secret_header: str = DEFAULT_SECRET_HEADER,
    max_body: int = DEFAULT_MAX_BODY,
    public_key: bytes | str | RSAPublicKey | None = None,
    insecure: bool = False,
    max_batch: int = 256,
    ack_timeout: float = DEFAULT_ACK_TIMEOUT,
) -> FastAPI:
    """The receiver app; refuses to exist without a way to authenticate Carerix unless ``insecure``."""
    secrets_b = [s.encode() for s in secrets if s]
    key = load_public_key(public_key)
    if not secrets_b and key is None and not insecure:
        raise ValueError(
            f"no receiver secret configured (env {ENV_SECRET} or --secret-file); refusing to accept "
            "unauthenticated events (pass insecure=True / --insecure for local experiments only)"
        )
    event_store = store if isinstance(store, EventStore) else EventStore(store)
    committer = GroupCommitter(event_store, max_batch=max_batch)
    header_name = secret_header.lower()

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

    def reject(request: Request, exc: _Reject) -> JSONResponse:
        client = request.client.host if request.client else "?"
        # Reason and field name only: never the secret, the signature or any of the payload.
        log.warning("Rejected Carerix delivery from %s: %d %s", client, exc.status, exc.detail)
        content: dict[str, Any] = {"detail": exc.detail}
        if exc.field:
            content["field"] = exc.field
        headers = {"Retry-After": "5"} if exc.status == 503 else None
        if exc.status == 401:
            headers = {"WWW-Authenticate": f'Secret header="{secret_header}"'}
        return JSONResponse(content, status_code=exc.status, headers=headers)

    def authenticated(request: Request) -> bool:
        if not secrets_b:
            return True
        given = request.headers.get(header_name)
        if given is None:
            return False
        given_b = given.encode("latin-1", "replace")
        ok = False
        for secret in secrets_b:  # no early exit: timing must not tell which secret (if any) matched
            ok |= hmac.compare_digest(given_b, secret)
        return ok

    @app.post("/events", response_model=None)
    async def post_event(request: Request) -> Response:
        try:
            if not authenticated(request):
                raise _Reject(401, f"missing or wrong {secret_header} header")
            if not _json_type(request.headers.get("content-type")):
                raise _Reject(415, "Content-Type must be application/json (UTF-8)")
            length = request.headers.get("content-length")
            if length is not None:
                try:
                    declared = int(length)
                except ValueError:
                    raise _Reject(400, "invalid Content-Length") from None
                if declared > max_body:
                    raise _Reject(413, f"body larger than {max_body} bytes")
            body = await _read_body(request, max_body)
            if key is not None and not _verify_signature(key, request.headers.get(SIGNATURE_HEADER), body):
                raise _Reject(401, "missing or invalid Cx-Signature")
            event = _check_event(body)
            try:
                sequence, inserted = await asyncio.wait_for(committer.enqueue(body, event), ack_timeout)
            except (StoreUnavailable, asyncio.TimeoutError) as exc:
                raise _Reject(503, f"event store unavailable ({type(exc).__name__}); retry later") from None
        except _Reject as exc:
            return reject(request, exc)
        return JSONResponse(
            {"id": event.id, "sequence": sequence, "duplicate": not inserted},
            status_code=201 if inserted else 200,
        )

    @app.get("/health", response_model=None)
    async def health() -> Response:
        try:
            await run_in_threadpool(event_store.ping)
        except StoreUnavailable:
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return JSONResponse({"status": "ok", "store": event_store.dialect})

    return app


# -- command line ----------------------------------------------------------------------------------------------

cli = typer.Typer(add_completion=False, no_args_is_help=True, help="Carerix webhook receiver.")


@cli.command()
def serve(
    host: Annotated[
        str, typer.Option(help="Interface to bind; keep loopback behind a TLS proxy.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8090,
    store: Annotated[
        str | None, typer.Option(help="Event store URL (default: resolved as everywhere).")
    ] = None,
    secret_header: Annotated[str, typer.Option(envvar=ENV_SECRET_HEADER)] = DEFAULT_SECRET_HEADER,
    secret_file: Annotated[Path | None, typer.Option(help="File with one valid secret per line.")] = None,
    insecure: Annotated[
        bool, typer.Option(help="Accept events without a secret (local experiments only).")
    ] = False,
    public_key_file: Annotated[
        Path | None, typer.Option(help="RSA public key (PEM) for Cx-Signature.")
    ] = None,
    max_body: Annotated[int, typer.Option(help="Largest accepted body in bytes.")] = DEFAULT_MAX_BODY,
    log_level: Annotated[str, typer.Option()] = "info",
    access_log: Annotated[bool, typer.Option(help="Log every request (uvicorn access log).")] = False,
) -> None:
    """Run the receiver. Secrets come from env CARERIX_RECEIVER_SECRET (comma-separated) or --secret-file."""
    import uvicorn

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    secrets = load_secrets(secret_file)
    if not secrets and not insecure:
        typer.echo(
            f"error: no receiver secret: set {ENV_SECRET} or pass --secret-file "
            "(or --insecure for local experiments only)",
            err=True,
        )
        raise typer.Exit(2)
    if not secrets:
        log.warning(
            "Running with --insecure and no secret: anyone who can reach %s:%d can post events", host, port
        )
    public_key = public_key_file.read_bytes() if public_key_file else None
    app = create_app(
        resolve_store_url(store),
        secrets=secrets,
        secret_header=secret_header,
        max_body=max_body,
        public_key=public_key,
        insecure=insecure,
    )
    log.info("Carerix receiver on http://%s:%d/events, store %r", host, port, app.state.store)
    # Startup objects never die: keep them out of the collector so full collections stay short (p99).
    gc.collect()
    gc.freeze()
    uvicorn.run(app, host=host, port=port, log_level=log_level.lower(), access_log=access_log)


@cli.command()
def purge(
    older_than: Annotated[
        str, typer.Option(help="Delete events received longer ago (30d, 12h, 2w).")
    ] = "30d",
    store: Annotated[
        str | None, typer.Option(help="Event store URL (default: resolved as everywhere).")
    ] = None,
) -> None:
    """Apply retention: delete old events (the newest one is always kept)."""
    try:
        age = parse_duration(older_than)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    with EventStore(store) as event_store:
        try:
            deleted = event_store.purge(age)
        except StoreUnavailable as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
    typer.echo(f"deleted {deleted} events received more than {older_than} ago")


def main(argv: list[str] | None = None) -> None:
    cli(args=argv if argv is not None else sys.argv[1:], prog_name="carerix-receiver")


if __name__ == "__main__":
    main()
