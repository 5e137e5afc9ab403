"""The standalone receiver's HTTP server: uvicorn on httptools, with the limits an internet-facing door needs.

Anyone can open a connection to the receiver before proving anything, so the server itself bounds what an
unauthenticated client can hold:

* **Request head size** (``max_header_bytes``, default 16 KiB): a request head (request line and headers)
  larger than that gets ``431`` and the connection is closed, whether it trickles in or arrives in one write.
  Bytes are counted as they arrive, so a never-ending header is refused once it passes the limit and never
  buffered beyond it; the parser's own count of the request target and header lines catches a large head
  that arrived in the same read as the request before it (pipelining). uvicorn's httptools protocol has no
  limit at all; h11's limit counts only the bytes of one incomplete read.
* **Header timeout** (``header_timeout``, default 10 s): a connection that has not completed its request line
  and headers within that time after connecting (or after the first byte of its next request) is closed.
  uvicorn has no such timer: a half-open connection would otherwise be kept forever.
* **Idle timeout** (``idle_timeout``, default 75 s): a keep-alive connection with no new request is closed
  (uvicorn's ``timeout_keep_alive``). Longer than the idle timeout of the connection pools and proxies that
  deliver to it (httpx and Node 5 s, the JDK 30 s, nginx and AWS load balancers 60 s), so the sender always
  retires an idle connection first: a server that closes first races a sender reusing the connection at that
  moment, and the request is lost in flight (a ``ReadError`` for the sender, a failed delivery for Carerix).
  uvicorn's own default, 5 s, is exactly httpx's expiry.
* **Connection limit** (``max_connections``, default 256, capped below the process's file-descriptor limit):
  a connection beyond it makes room by closing the connection that has waited longest for a request without
  sending one (connections that never sent a request first): idle and half-open connections cannot lock
  deliveries out. Only when every connection is busy with a request does the new one get ``503`` and is
  closed at once, so the store, logs and ``/health`` keep the descriptors they need.
* **A request answered before its body arrived** (a refusal from the head: 401, 413, 415, ...) closes the
  connection: nothing would read the rest of that body, and a client trickling it must not keep the slot.
* **X-Forwarded-For** is read only from ``trusted_proxies`` (none by default), so the client address logged
  for a rejected request cannot be chosen by the client.

How long a body may take (deadline and minimum rate) is bounded by the app (``body_timeout`` and
``min_body_rate`` of :func:`~airflow_provider_carerix.receiver.app.create_app`), which also applies when the
receiver runs inside Airflow's API server, whose server settings are Airflow's.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import resource
from dataclasses import dataclass
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from airflow_provider_carerix import metrics
from airflow_provider_carerix.receiver.validation import DEFAULT_MAX_HEADER_BYTES

__all__ = ["ServerLimits", "build_config"]

log = logging.getLogger(__name__)

# Descriptors kept free for the store (database file, WAL, shared memory), logs and the listening socket.
_FD_RESERVE = 64
# Evictions are normal under a connection flood: say so at most this often (seconds), with a count.
_EVICTION_LOG_INTERVAL = 10.0


@dataclass(frozen=True)
class ServerLimits:
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    header_timeout: float = 10.0
    idle_timeout: int = 75
    max_connections: int = 256
    trusted_proxies: tuple[str, ...] = ()

    def effective_max_connections(self) -> int:
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return self.max_connections
        return max(1, min(self.max_connections, soft - _FD_RESERVE))


_SERVICE_UNAVAILABLE = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"retry-after: 5\r\nconnection: close\r\ncontent-length: 20\r\n\r\ntoo many connections"
)


def _plain_answer(status: bytes, text: str) -> bytes:
    body = text.encode("ascii")
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
        b"content-length: " + str(len(body)).encode("ascii") + b"\r\n\r\n" + body
    )


class _HeadTooLarge(Exception):
    """Raised from a parser callback: httptools stops parsing and re-raises it as the error's context."""


class _Evictions:
    """Counts connections closed to make room and logs them at most every ``_EVICTION_LOG_INTERVAL`` s."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0
        self.logged_at: float | None = None

    def record(self, now: float) -> None:
        self.count += 1
        if self.logged_at is None or now - self.logged_at >= _EVICTION_LOG_INTERVAL:
            log.warning(
                "Closed %d idle connection(s) that sent no request, to admit new ones (limit %d open)",
                self.count,
                self.limit,
            )
            self.count = 0
            self.logged_at = now


def _protocol_class(limits: ServerLimits) -> type[HttpToolsProtocol]:
    max_connections = limits.effective_max_connections()
    max_head = limits.max_header_bytes
    too_large = _plain_answer(
        b"431 Request Header Fields Too Large", f"request head larger than {max_head} bytes"
    )
    evictions = _Evictions(max_connections)
    arrivals = itertools.count()

    class LimitedHttpToolsProtocol(HttpToolsProtocol):
        """httptools with a limit on the request head, a deadline for it, and a connection cap that evicts."""

        _head_open = True  # waiting for (or receiving) a request head
        _head_bytes = 0  # bytes received while the current head was open, across reads
        _head_size = 0  # request target and header lines of the current head, as the parser saw them
        _header_timer: asyncio.TimerHandle | None = None
        _served = 0  # request heads completed on this connection
        _idle_since = 0.0
        _number = 0  # in order of arrival: breaks ties of _idle_since (the loop's clock is per iteration)

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._idle_since = self.loop.time()
            self._number = next(arrivals)
            if len(self.connections) > max_connections and not self._make_room():
                log.warning(
                    "Refusing a connection: %d open, all busy with requests (limit %d)",
                    len(self.connections) - 1,
                    max_connections,
                )
                transport.write(_SERVICE_UNAVAILABLE)
                transport.close()
                metrics.incr(metrics.RECEIVER_REFUSED, reason="too_many_connections")
                return
            self._arm_header_timer()

        def _waiting(self) -> bool:
            """Idle or half-open: no request being read or answered, nothing in the pipeline."""
            return (
                self._head_open
                and (self.cycle is None or self.cycle.response_complete)
                and not self.pipeline
                and not self.transport.is_closing()
            )

        def _make_room(self) -> bool:
            """Close the connection that waited longest without a request; connections never used go first."""
            candidates = [
                c
                for c in self.connections
                if c is not self and isinstance(c, LimitedHttpToolsProtocol) and c._waiting()
            ]
            if not candidates:
                return False
            victim = min(candidates, key=lambda c: (c._served > 0, c._idle_since, c._number))
            victim.transport.close()
            evictions.record(self.loop.time())
            return True

        # -- reading --------------------------------------------------------------------------------------

        def data_received(self, data: bytes) -> None:
            while self._head_open:
                if self._header_timer is None:
                    self._arm_header_timer()
                room = max_head - self._head_bytes
                if len(data) <= room:
                    self._head_bytes += len(data)
                    break
                # Feed only what the limit allows: a head completes within it, or it is too large.
                served = self._served
                self._head_bytes = max_head
                if room > 0:
                    self._feed(data[:room])
                if self.transport.is_closing():
                    return
                if self._served == served:
                    self._refuse(too_large)
                    return
                # What followed that head in the allowance was fed with it (its body, maybe the start of the
                # next head, which the parser's own count limits); the rest is counted from here on.
                data = data[room:]
                if not data:
                    return
            self._feed(data)

        def _feed(self, data: bytes) -> None:
            self._unset_keepalive_if_required()
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserCallbackError as exc:
                if isinstance(exc.__context__, _HeadTooLarge):
                    self._refuse(too_large)
                else:
                    self._invalid_request()
            except httptools.HttpParserUpgrade:
                if self._should_upgrade():
                    self.handle_websocket_upgrade()
                else:
                    self._unsupported_upgrade_warning()
            except httptools.HttpParserError:
                self._invalid_request()

        def _invalid_request(self) -> None:
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)

        def _refuse(self, answer: bytes) -> None:
            self._cancel_header_timer()
            metrics.incr(metrics.RECEIVER_REFUSED, reason="head_too_large")
            if not self.transport.is_closing():
                self.transport.write(answer)
                self.transport.close()

        # -- parser callbacks -----------------------------------------------------------------------------

        def on_message_begin(self) -> None:
            self._head_size = 0
            super().on_message_begin()

        def on_url(self, url: bytes) -> None:
            self._head_size += len(url)
            if self._head_size > max_head:
                raise _HeadTooLarge
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._head_size += len(name) + len(value) + 4  # ": " and CRLF
            if self._head_size > max_head:
                raise _HeadTooLarge
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._head_open = False
            self._served += 1
            self._cancel_header_timer()
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._head_open = True
            self._head_bytes = 0

        def on_response_complete(self) -> None:
            # With requests queued behind it, the finished request was read in full (the next one followed it).
            cycle = None if self.pipeline else self.cycle
            super().on_response_complete()
            self._idle_since = self.loop.time()
            if cycle is not None and cycle.more_body and not self.transport.is_closing():
                # Answered before the body was complete: nothing reads the rest, so the connection goes.
                self.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_header_timer()
            super().connection_lost(exc)

        # -- the head's deadline --------------------------------------------------------------------------

        def _arm_header_timer(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(limits.header_timeout, self._header_timed_out)

        def _cancel_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timed_out(self) -> None:
            self._header_timer = None
            if self._head_open and not self.transport.is_closing():
                self.transport.close()

    return LimitedHttpToolsProtocol


def build_config(app: Any, *, host: str, port: int, limits: ServerLimits, **kwargs: Any) -> Any:
    """A ``uvicorn.Config`` serving ``app`` with ``limits`` (extra kwargs go to uvicorn)."""
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=_protocol_class(limits),
        # No WebSocket: an upgraded connection would leave this protocol, and its limits, behind.
        ws="none",
        timeout_keep_alive=limits.idle_timeout,
        proxy_headers=bool(limits.trusted_proxies),
        forwarded_allow_ips=list(limits.trusted_proxies) or None,
        **kwargs,
    )
