"""Registers a ``CarerixEvents`` consumer in the event store the moment Airflow first records its asset.

Airflow pauses new DAGs by default and runs an asset's watcher only while its DAG is unpaused. A consumer
created by its watcher would therefore start wherever the log ended at the unpause, and every event stored
between deploying the DAG and unpausing it would never reach the DAG. Airflow calls ``on_asset_created`` when
the DAG processor first stores a DAG's asset, paused or not: that is the deployment, and the consumer is
registered there with its ``start_from`` (by default: where the log ends now).

Runs in the DAG processor (or wherever the DAG is first synchronised, ``dag.test()`` included), so no DAG file
touches the store while it is parsed. Failure to register is logged, never raised: Airflow's DAG sync must go
on, and the watcher or the first ``claim()`` register the consumer later (from where the log then ends).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from airflow_provider_carerix.version_compat import hookimpl

__all__ = ["CarerixAssetListener", "carerix_watchers"]

log = logging.getLogger(__name__)

_TRIGGER = "airflow_provider_carerix.triggers.events.CarerixEventTrigger"


def carerix_watchers(asset: Any) -> list[dict[str, Any]]:
    """The kwargs of every Carerix event trigger among an asset's watchers (serialised or not)."""
    found = []
    for watcher in getattr(asset, "watchers", None) or ():
        trigger = getattr(watcher, "trigger", None)
        if isinstance(trigger, dict):
            classpath, kwargs = trigger.get("classpath"), trigger.get("kwargs") or {}
        elif trigger is not None and hasattr(trigger, "serialize"):
            classpath, kwargs = trigger.serialize()
        else:
            continue
        if classpath == _TRIGGER and kwargs.get("consumer"):
            found.append(dict(kwargs))
    return found


def register_consumer(kwargs: dict[str, Any]) -> int | None:
    """Create the consumer at its ``start_from`` unless it exists; its position, or None on failure."""
    from airflow_provider_carerix.hooks.event_store import DEFAULT_START_FROM, CarerixEventStoreHook

    consumer = kwargs["consumer"]
    hook = CarerixEventStoreHook(store_conn_id=kwargs.get("store_conn_id"), store_url=kwargs.get("store_url"))
    try:
        return hook.ensure_consumer(consumer, start_from=kwargs.get("start_from") or DEFAULT_START_FROM)
    except Exception as exc:
        log.warning(
            "Carerix consumer %r not registered at deployment (%s: %s); it starts when its watcher first "
            "runs or its first claim() is made, so events stored before then are not its own",
            consumer,
            type(exc).__name__,
            exc,
        )
        return None
    finally:
        hook.close()


# Long enough for a store that is slow to answer; the DAG processor's sync waits at most this per new asset.
REGISTER_TIMEOUT = 60.0


class CarerixAssetListener:
    """Airflow listener (``on_asset_created``), registered by the Carerix plugin."""

    @hookimpl
    def on_asset_created(self, asset: Any) -> None:
        watchers = carerix_watchers(asset)
        if not watchers:
            return
        # Airflow calls this inside its own DAG-sync transaction. Reading the store's connection from the
        # metadata database would use Airflow's thread-local session and end that transaction under the
        # caller (seen on Airflow 3.1: the DAG sync then fails with a KeyError). A thread of its own has a
        # session of its own.
        worker = threading.Thread(
            target=lambda: [register_consumer(kwargs) for kwargs in watchers],
            name="carerix-register-consumer",
            daemon=True,
        )
        worker.start()
        worker.join(REGISTER_TIMEOUT)
        if worker.is_alive():
            log.warning(
                "Carerix consumer(s) %s: registration at deployment still running after %.0f s; the DAG sync "
                "goes on without waiting",
                ", ".join(repr(k["consumer"]) for k in watchers),
                REGISTER_TIMEOUT,
            )
