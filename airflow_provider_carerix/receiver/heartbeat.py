"""A receiver says "I write to this store" by recording a heartbeat in it, at start and then every minute.

Readers (watchers, the sensor, ``claim()``) look for a recent heartbeat in the store they read; none means
the receiver is down or writes to another store, which no reader would otherwise notice: every component
would report healthy while no event ever reached a DAG. The Carerix page and ``/health`` list the receivers
seen.

A daemon thread, not an asyncio task: the receiver mounted in Airflow's API server gets no lifespan events,
and the heartbeat must not wait for a first delivery. A store that cannot be written is only logged here (the
receiver's ``/health`` reports it; deliveries get 503).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
import weakref
from datetime import datetime, timezone

from airflow_provider_carerix.store import EventStore, StoreUnavailable

__all__ = ["HEARTBEAT_INTERVAL", "ReceiverHeartbeat"]

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL = 60.0


class ReceiverHeartbeat:
    """Records ``kind`` (``standalone``, ``api-server``) alive in ``store`` until :meth:`stop` or the store's
    owner is gone."""

    def __init__(self, store: EventStore, *, kind: str, interval: float = HEARTBEAT_INTERVAL) -> None:
        from airflow_provider_carerix import __version__

        self.kind = kind
        self.interval = interval
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.receiver_id = f"{kind}@{self.host}:{self.pid}:{uuid.uuid4().hex[:6]}"
        self.version = __version__
        self.started_at = datetime.now(timezone.utc)
        self.beats = 0
        self._store = weakref.ref(store)
        self._stop = threading.Event()
        self._failing = False
        self._thread: threading.Thread | None = None

    def beat(self) -> bool:
        """Record one heartbeat now; False (logged once per outage) when the store cannot take it."""
        store = self._store()
        if store is None:
            self._stop.set()
            return False
        try:
            store.record_heartbeat(
                self.receiver_id,
                kind=self.kind,
                host=self.host,
                pid=self.pid,
                version=self.version,
                started_at=self.started_at,
            )
        except StoreUnavailable as exc:
            if not self._failing:
                log.warning("Carerix receiver heartbeat not recorded in %r: %s", store, exc)
            self._failing = True
            return False
        except Exception as exc:  # never let the thread die: the next beat may work
            if not self._failing:
                log.warning("Carerix receiver heartbeat failed: %s", type(exc).__name__)
            self._failing = True
            return False
        if self._failing:
            log.info("Carerix receiver heartbeat recorded in %r again", store)
        self._failing = False
        self.beats += 1
        return True

    def start(self) -> ReceiverHeartbeat:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="carerix-receiver-heartbeat", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        self.beat()
        while not self._stop.wait(self.interval):
            self.beat()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
