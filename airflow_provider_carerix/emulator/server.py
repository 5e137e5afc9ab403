"""The emulator as one HTTP server: :class:`CarerixEmulator`, and the stdlib server and handler it runs on.

:class:`CarerixEmulator` puts the parts together (tokens, the Management API, signing, delivery and the
GraphQL delivery log: mixins from the sibling modules over :class:`~.state.EmulatorState`) and keeps what is
the server's own: starting and stopping, its addresses and connection strings, routing each request to its
part, injected faults, the request log, and the control API under ``/_emulator`` through which tests, the
demo and users drive it.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote, urlsplit

from airflow_provider_carerix.emulator.dataset import ENTITY_ROOTS as _ENTITY_ROOTS
from airflow_provider_carerix.emulator.dataset import generate
from airflow_provider_carerix.emulator.graphql import execute, root_fields
from airflow_provider_carerix.emulator.management import ManagementMixin
from airflow_provider_carerix.emulator.records import RecordsMixin
from airflow_provider_carerix.emulator.state import (
    API_PREFIX,
    APPLICATION_KINDS,
    CONTROL_PREFIX,
    DATA_SCOPE,
    DEFAULT_MAX_PAGE_SIZE,
    DEFAULT_RETRY_SCHEDULE,
    GRAPHQL_PATH,
    MANAGE_SCOPE,
    Delivery,
    Fault,
    RecordedRequest,
    _Job,
    _json_object,
    _Response,
    _SigningKey,
    _Token,
)
from airflow_provider_carerix.emulator.token import _TOKEN_PATH, TokenMixin

log = logging.getLogger(__name__)

_WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class _EmulatorServer(ThreadingHTTPServer):
    """A client that gives up (a hook test's timeout, a fault that hangs) is normal here, not an error.

    The stdlib server prints a traceback for every client that closed its connection before the answer
    was written; other errors still go through its default handling.
    """

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            log.debug("Emulator client %s went away before its answer was written", client_address)
            return
        super().handle_error(request, client_address)


class CarerixEmulator(ManagementMixin, RecordsMixin, TokenMixin):
    """An in-memory Carerix on loopback. Thread-safe; every knob can be changed while it runs.

    List behaviour (what Carerix does not publish): ``list_shape`` ``"array"`` or ``"items"``; ``slim=True``
    ignores ``?fields=`` so list entries hold only ``_kind`` and ``_id``; ``id_key`` ``"_id"`` or ``"id"``;
    ``trailing_slash`` ``"both"``, ``"with"`` or ``"without"`` for the collection paths.

    ``application_kind``: the ``_kind`` answered for applications (the REST guide says ``Application``, the
    GraphQL schema ``WebhookApplication``); both are accepted on create. ``retry_schedule``: seconds to wait
    after each failed attempt before the next (its length is the number of retries; ``()`` never retries).
    ``key_retention``: how long a rotated-out signing key can still be used with ``deliver(signing="previous")``.

    Records (:mod:`.records`): a data set generated from ``data_seed`` (``data_sizes`` per entity, e.g.
    ``{"cremployee": 150}``); ``max_page_size`` caps ``pageable.size`` (``None``: no cap);
    ``max_qualifier_terms`` refuses longer ``OR`` chains (``None``: no limit; Carerix publishes none).
    ``client_scopes``: what the client may ask for (by default the Webhooks and the data scope, one client
    holding both); a token gets what its request names, all of them when it names none.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        realm: str = "demo",
        clients: dict[str, str] | None = None,
        token_lifetime: float = 300,
        client_scopes: Iterable[str] = (MANAGE_SCOPE, DATA_SCOPE),
        list_shape: str = "array",
        slim: bool = False,
        id_key: str = "_id",
        trailing_slash: str = "both",
        delivery_timeout: float = 10.0,
        application_kind: str = "Application",
        retry_schedule: Iterable[float] = DEFAULT_RETRY_SCHEDULE,
        key_retention: float = 3600.0,
        key_size: int = 2048,
        data_seed: int = 29,
        data_sizes: dict[str, int] | None = None,
        max_page_size: int | None = DEFAULT_MAX_PAGE_SIZE,
        max_qualifier_terms: int | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.realm = realm
        self.clients: dict[str, str] = dict(
            clients if clients is not None else {"demo-client": "demo-secret"}
        )
        self.token_lifetime = token_lifetime
        self.client_scopes = frozenset(client_scopes)
        self.list_shape = list_shape
        self.slim = slim
        self.id_key = id_key
        self.trailing_slash = trailing_slash
        self.delivery_timeout = delivery_timeout
        if application_kind not in APPLICATION_KINDS:
            raise ValueError(f"application_kind must be one of {APPLICATION_KINDS}, got {application_kind!r}")
        self.application_kind = application_kind
        self.retry_schedule = tuple(float(s) for s in retry_schedule)
        self.key_retention = key_retention
        self.key_size = key_size
        self._keys: dict[str, list[_SigningKey]] = {}
        self._jobs: dict[str, _Job] = {}
        self._in_flight: set[str] = set()
        self._retry_wakeup = threading.Event()
        self._retry_thread: threading.Thread | None = None
        self._lock = threading.RLock()
        self._apps: dict[str, dict[str, Any]] = {}
        self._hooks: dict[str, dict[str, dict[str, Any]]] = {}
        self._tokens: dict[str, _Token] = {}
        self._faults: list[Fault] = []
        self._log: list[RecordedRequest] = []
        self.deliveries: list[Delivery] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.max_page_size = max_page_size
        self.max_qualifier_terms = max_qualifier_terms
        self._data_seed = data_seed
        self._data_sizes = dict(data_sizes or {})
        self._records = generate(data_seed, self._data_sizes)
        self._broken: dict[tuple[str, str], str] = {}

    # ------------------------------------------------------------------------------------------ lifecycle

    def start(self) -> CarerixEmulator:
        if self._server is not None:
            return self
        emulator = self

        class Handler(_Handler):
            pass

        Handler.emulator = emulator
        server = _EmulatorServer((self.host, self.port), Handler)
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="carerix-emulator", daemon=True
        )
        self._thread.start()
        self._retry_thread = threading.Thread(
            target=self._retry_loop, args=(server,), name="carerix-emulator-retries", daemon=True
        )
        self._retry_thread.start()
        log.info("Carerix emulator listening on %s (token URL %s)", self.url, self.token_url)
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._retry_wakeup.set()
        if self._retry_thread is not None:
            self._retry_thread.join(timeout=max(5.0, self.delivery_timeout + 1))
            self._retry_thread = None
        self._retry_wakeup.clear()
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> CarerixEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------------ addresses

    @property
    def url(self) -> str:
        """Base URL of the API (and of the identity host: both live on this one server)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def api_url(self) -> str:
        return self.url + API_PREFIX

    @property
    def graphql_url(self) -> str:
        return self.url + GRAPHQL_PATH

    @property
    def token_url(self) -> str:
        return f"{self.url}/auth/realms/{self.realm}/protocol/openid-connect/token"

    def _credentials(self, client_id: str | None, client_secret: str | None) -> tuple[str, str]:
        cid = client_id if client_id is not None else next(iter(self.clients), "demo-client")
        secret = client_secret if client_secret is not None else self.clients.get(cid, "")
        return cid, secret

    def connection_json(
        self, client_id: str | None = None, client_secret: str | None = None, *, scope: str | None = None
    ) -> str:
        """``AIRFLOW_CONN_...`` value (JSON form) for a ``carerix`` connection to this emulator.

        ``scope``: the connection's ``scope`` extra (e.g. both scopes, space-separated, to read records too).
        """
        cid, secret = self._credentials(client_id, client_secret)
        extra = {"client_id": cid, "client_secret": secret, "realm": self.realm, "identity_host": self.url}
        if scope is not None:
            extra["scope"] = scope
        return json.dumps({"conn_type": "carerix", "host": self.url, "extra": extra})

    def connection_uri(self, client_id: str | None = None, client_secret: str | None = None) -> str:
        """``AIRFLOW_CONN_...`` value (URI form; client id/secret as login/password)."""
        cid, secret = self._credentials(client_id, client_secret)
        return (
            f"carerix://{quote(cid, safe='')}:{quote(secret, safe='')}@{quote(self.url, safe='')}"
            f"?realm={quote(self.realm, safe='')}&identity_host={quote(self.url, safe='')}"
        )

    # ------------------------------------------------------------------------------------------ inspection

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._log)

    def count(self, method: str | None = None, path_contains: str | None = None) -> int:
        with self._lock:
            return sum(
                1
                for r in self._log
                if (method is None or r.method == method.upper())
                and (path_contains is None or path_contains in r.path)
            )

    def write_count(self) -> int:
        """Changing calls on the Management API (token requests excluded)."""
        with self._lock:
            return sum(1 for r in self._log if r.method in _WRITE_METHODS and r.path.startswith(API_PREFIX))

    @property
    def token_requests(self) -> int:
        """How many token requests were made (answered or refused)."""
        return self.count(path_contains="/protocol/openid-connect/token")

    def reset_log(self) -> None:
        with self._lock:
            self._log.clear()
            self.deliveries.clear()

    # ------------------------------------------------------------------------------------------ state

    def clear(self) -> None:
        """Forget applications, webhooks, tokens, faults and the log; the records go back to the data set."""
        with self._lock:
            self._records = generate(self._data_seed, self._data_sizes)
            self._broken.clear()
            self._apps.clear()
            self._hooks.clear()
            self._tokens.clear()
            self._faults.clear()
            self._log.clear()
            self.deliveries.clear()
            self._keys.clear()
            self._jobs.clear()

    def state(self) -> dict[str, Any]:
        with self._lock:
            return {
                "applications": [
                    {**app, "webhooks": list(self._hooks.get(app_id, {}).values())}
                    for app_id, app in self._apps.items()
                ],
                "config": {
                    "realm": self.realm,
                    "token_lifetime": self.token_lifetime,
                    "list_shape": self.list_shape,
                    "slim": self.slim,
                    "id_key": self.id_key,
                    "trailing_slash": self.trailing_slash,
                    "application_kind": self.application_kind,
                    "retry_schedule": list(self.retry_schedule),
                    "key_retention": self.key_retention,
                    "max_page_size": self.max_page_size,
                    "max_qualifier_terms": self.max_qualifier_terms,
                },
                "jobs": len(self._jobs),
                "records": {
                    name: len(self._of(root, deleted=True)) for name, root in sorted(_ENTITY_ROOTS.items())
                },
            }

    # ------------------------------------------------------------------------------------------ faults

    def inject_fault(
        self,
        status: int | None = 500,
        times: int = 1,
        method: str | None = None,
        path_contains: str | None = None,
        retry_after: str | int | float | None = None,
        delay: float = 0.0,
        *,
        processed: bool = False,
        body: dict[str, Any] | None = None,
    ) -> Fault:
        fault = Fault(status, times, method, path_contains, retry_after, delay, processed, body)
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.applies(method, path):
                    fault.times -= 1
                    return fault
        return None

    # ------------------------------------------------------------------------------------------ HTTP

    def _record(self, method: str, path: str, status: int, query: str) -> None:
        if not path.startswith(CONTROL_PREFIX):
            with self._lock:
                self._log.append(RecordedRequest(method, path, status, query))

    def handle(self, method: str, target: str, headers: Any, body: bytes) -> _Response:
        parts = urlsplit(target)
        path, query = parts.path, parts.query
        if path.startswith(CONTROL_PREFIX):
            return self._control(method, path, query, body)
        fault = self._take_fault(method, path)
        if fault is not None and fault.delay:
            time.sleep(fault.delay)
        if fault is not None and fault.status is not None and not fault.processed:
            response = self._fault_response(fault)
        else:
            response = self._dispatch(method, path, query, headers, body)
            if fault is not None and fault.status is not None:
                response = self._fault_response(fault)
        self._record(method, path, response.status, query)
        return response

    @staticmethod
    def _fault_response(fault: Fault) -> _Response:
        assert fault.status is not None
        headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
        body = fault.body if fault.body is not None else {"error": "injected fault", "status": fault.status}
        return _Response(fault.status, body, headers)

    def _dispatch(self, method: str, path: str, query: str, headers: Any, body: bytes) -> _Response:
        match = _TOKEN_PATH.match(path)
        if match:
            if method != "POST":
                return _Response(405, {"error": "method not allowed"})
            return self._token(match.group("realm"), headers, body)
        if path == API_PREFIX or path.startswith(API_PREFIX + "/"):
            denied = self._authorize(headers)
            if denied is not None:
                return denied
            return self._api(method, path[len(API_PREFIX) :], query, body)
        if path.rstrip("/") == GRAPHQL_PATH:
            if method != "POST":
                return _Response(405, {"error": "method not allowed"})
            denied = self._authorize(headers, scopes=())
            if denied is not None:
                return denied
            request = _json_object(body)
            if request is None:
                return _Response(400, {"errors": [{"message": "body must be a JSON object"}]})
            # Each root field needs its scope: the delivery log the Webhooks one, records the data one.
            needed = {
                MANAGE_SCOPE if f == "webhookDeliveryJobPage" else DATA_SCOPE
                for f in root_fields(request) or ()
            }
            denied = self._authorize(headers, scopes=sorted(needed))
            if denied is not None:
                return denied
            with self._lock:
                return _Response(200, execute(request, self._graphql_root()))
        return _Response(404, {"error": "not found"})

    def _control(self, method: str, path: str, query: str, body: bytes) -> _Response:
        action = path[len(CONTROL_PREFIX) :].strip("/")
        data = _json_object(body) if body else {}
        if data is None:
            return _Response(400, {"error": "body must be a JSON object"})
        if action == "state" and method == "GET":
            return _Response(200, self.state())
        if action == "requests" and method == "GET":
            return _Response(
                200, {"requests": [asdict(r) for r in self.requests], "token_requests": self.token_requests}
            )
        if action == "requests" and method == "DELETE":
            self.reset_log()
            return _Response(204)
        if action == "deliver" and method == "POST":
            if not data.get("type"):
                return _Response(400, {"error": "'type' is required"})
            try:
                deliveries = self.deliver(
                    str(data["type"]),
                    data.get("data") or {},
                    tenant=str(data.get("tenant") or "demo"),
                    event_id=data.get("id"),
                    signing=str(data.get("signing") or "current"),
                )
            except (ValueError, KeyError) as exc:
                return _Response(400, {"error": str(exc)})
            return _Response(200, {"deliveries": [asdict(d) for d in deliveries]})
        if action == "faults" and method == "POST":
            allowed = {"status", "times", "method", "path_contains", "retry_after", "delay", "processed"}
            unknown = set(data) - allowed
            if unknown:
                return _Response(400, {"error": f"unknown keys: {sorted(unknown)}"})
            self.inject_fault(**data)
            return _Response(201, {"faults": len(self._faults)})
        if action.startswith(("records/", "break-records")):
            return self._records_control(method, action, data)
        if action == "faults" and method == "DELETE":
            self.clear_faults()
            return _Response(204)
        if action == "config" and method == "POST":
            allowed = {
                "token_lifetime",
                "list_shape",
                "slim",
                "id_key",
                "trailing_slash",
                "application_kind",
                "retry_schedule",
                "key_retention",
                "max_page_size",
                "max_qualifier_terms",
            }
            unknown = set(data) - allowed
            if unknown:
                return _Response(400, {"error": f"unknown keys: {sorted(unknown)}"})
            if data.get("application_kind", self.application_kind) not in APPLICATION_KINDS:
                return _Response(400, {"error": f"application_kind must be one of {list(APPLICATION_KINDS)}"})
            for key, value in data.items():
                setattr(self, key, tuple(float(v) for v in value) if key == "retry_schedule" else value)
            return _Response(200, self.state()["config"])
        if action == "rotate-key" and method == "POST":
            app_id = str(data.get("applicationId") or "")
            if app_id not in self._apps:
                return _Response(404, {"error": f"no application {app_id!r}"})
            return _Response(200, {"applicationId": app_id, "publicKey": self.rotate_key(app_id)})
        if action == "sign" and method == "POST":
            # What Carerix would put in Cx-Signature for this body (demos and tests of receivers).
            app_id = str(data.get("applicationId") or "")
            if app_id not in self._apps or not isinstance(data.get("body"), str):
                return _Response(
                    400, {"error": "need 'applicationId' (an application) and 'body' (a string)"}
                )
            which = "previous" if data.get("previous") else "current"
            try:
                signature = self.sign(app_id, data["body"].encode(), which=which)
            except KeyError as exc:
                return _Response(409, {"error": str(exc)})
            return _Response(200, {"signature": signature})
        if action == "retry" and method == "POST":
            retried = self.retry_due(now=bool(data.get("all", True)))
            return _Response(200, {"deliveries": [asdict(d) for d in retried]})
        if action == "jobs" and method == "GET":
            return _Response(200, {"jobs": self.jobs()})
        if action == "expire-tokens" and method == "POST":
            self.expire_tokens()
            return _Response(204)
        if action == "reset" and method == "POST":
            self.clear()
            return _Response(204)
        return _Response(404, {"error": "unknown control endpoint"})


class _Handler(BaseHTTPRequestHandler):
    emulator: CarerixEmulator
    server_version = "CarerixEmulator/1.0"
    # HTTP/1.0: one connection per request, so a stopped emulator never keeps answering on a kept-alive socket.
    protocol_version = "HTTP/1.0"

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        try:
            response = self.emulator.handle(self.command, self.path, self.headers, body)
        except Exception:  # pragma: no cover - a bug in the emulator must not hang the client
            log.exception("Carerix emulator failed on %s %s", self.command, self.path)
            response = _Response(500, {"error": "emulator error"})
        payload = b"" if response.body is None else json.dumps(response.body).encode()
        try:
            self.send_response(response.status, HTTPStatus(response.status).phrase)
        except ValueError:
            self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        if payload:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if payload:
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("emulator: " + format, *args)
