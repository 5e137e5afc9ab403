"""The standalone receiver's HTTP server: uvicorn on h11, with the limits an internet-facing door needs.

Anyone can open a connection to the receiver before proving anything, so the server itself bounds what an
unauthenticated client can hold:

* **Header size** (``max_header_bytes``, default 16 KiB): h11 refuses a request head larger than that with 400
  and closes, instead of buffering a never-ending header (uvicorn's default parser, httptools, has no limit).
* **Header timeout** (``header_timeout``, default 10 s): a connection that has not completed its request line
  and headers within that time after connecting (or after its previous response) is closed. uvicorn has no such
  timer: a half-open connection would otherwise be kept forever.
* **Idle timeout** (``idle_timeout``, default 75 s): a keep-alive connection with no new request is closed
  (uvicorn's ``timeout_keep_alive``). Longer than the idle timeout of the connection pools and proxies that
  deliver to it (httpx and Node 5 s, the JDK 30 s, nginx and AWS load balancers 60 s), so the sender always
  retires an idle connection first: a server that closes first races a sender reusing the connection at that
  moment, and the request is lost in flight (a ``ReadError`` for the sender, a failed delivery for Carerix).
  uvicorn's own default, 5 s, is exactly httpx's expiry.
* **Connection limit** (``max_connections``, default 256, capped below the process's file-descriptor limit):
  connections beyond it get ``503`` and are closed at once, so the store, logs and ``/health`` keep the
  descriptors they need.
* **X-Forwarded-For** is read only from ``trusted_proxies`` (none by default), so the client address logged
  for a rejected request cannot be chosen by the client.

Slow bodies are bounded by the app itself (``body_timeout`` of :func:`create_app`), which also applies when the
receiver runs inside Airflow's API server, whose server settings are Airflow's.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from dataclasses import dataclass
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["ServerLimits", "build_config"]

log = logging.getLogger(__name__)

# Descriptors kept free for the store (database file, WAL, shared memory), logs and the listening socket.
_FD_RESERVE = 64


@dataclass(frozen=True)
class ServerLimits:
    max_header_bytes: int = 16 * 1024
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


def _protocol_class(limits: ServerLimits) -> type[H11Protocol]:
    max_connections = limits.effective_max_connections()

    class LimitedH11Protocol(H11Protocol):
        """h11 with a connection cap and a deadline for each request head."""

        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                log.warning(
                    "Refusing a connection: %d open (limit %d)", len(self.connections) - 1, max_connections
                )
                transport.write(_SERVICE_UNAVAILABLE)
                transport.close()
                return
            self._arm_header_timer()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self._arm_header_timer()  # a head is (still) being received: keep the first deadline
            else:
                self._cancel_header_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._cancel_header_timer()  # idle now: uvicorn's keep-alive timeout applies

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_header_timer()
            super().connection_lost(exc)

        def _arm_header_timer(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(limits.header_timeout, self._header_timed_out)

        def _cancel_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timed_out(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return LimitedH11Protocol


def build_config(app: Any, *, host: str, port: int, limits: ServerLimits, **kwargs: Any) -> Any:
    """A ``uvicorn.Config`` serving ``app`` with ``limits`` (extra kwargs go to uvicorn)."""
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=_protocol_class(limits),
        h11_max_incomplete_event_size=limits.max_header_bytes,
        timeout_keep_alive=limits.idle_timeout,
        proxy_headers=bool(limits.trusted_proxies),
        forwarded_allow_ips=list(limits.trusted_proxies) or None,
        **kwargs,
    )
