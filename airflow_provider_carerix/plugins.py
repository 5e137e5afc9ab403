"""Runs the receiver inside the Airflow 3 API server, so a user needs no extra service to receive events.

Mounted at ``/carerix`` (``POST /carerix/events``, ``GET /carerix/health``) only when a secret is configured:
the API server is often reachable from outside, and an unauthenticated door into the pipelines must never open
by default. Configuration comes from :mod:`airflow_provider_carerix.settings`, like every other component's:

* secret(s): ``[carerix] receiver_secret`` (``AIRFLOW__CARERIX__RECEIVER_SECRET``, its ``_CMD`` / ``_SECRET``
  forms, or the older ``CARERIX_RECEIVER_SECRET``; comma-separated for rotation),
* header: ``[carerix] receiver_secret_header``; Cx-Signature key: ``[carerix] receiver_public_key_file``,
* store: the ``carerix_event_store`` connection (read from the metadata database here), then
  ``[carerix] event_store_url``, then the default; logged at start with its source.

Registered through the ``airflow.plugins`` entry point, not the provider metadata: Airflow loads
provider-declared plugins only when ``[core] lazy_discover_providers`` is off, while entry-point plugins load
under every setting (Airflow 3.1 to 3.3 alike). Plugins are imported by every Airflow component, but only the
API server reads ``fastapi_apps``; the app is therefore built on first access, not at import.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.plugins_manager import AirflowPlugin

from airflow_provider_carerix.listeners import CarerixAssetListener
from airflow_provider_carerix.settings import ConfigurationError, StoreLocation

log = logging.getLogger(__name__)

URL_PREFIX = "/carerix"
UI_PREFIX = "/ui"
# Airflow shows external views in its navigation and embeds ``href`` (same origin: the session cookie goes along).
EXTERNAL_VIEWS = [
    {
        "name": "Carerix",
        "href": f"{URL_PREFIX}{UI_PREFIX}/",
        "url_route": "carerix",
        "destination": "nav",
        "category": "browse",
    }
]


def _receiver_app(location: StoreLocation) -> Any | None:
    """The receiver when a secret is configured, otherwise None (and why, in the log)."""
    from airflow_provider_carerix.receiver import create_app
    from airflow_provider_carerix.receiver.config import receiver_settings
    from airflow_provider_carerix.receiver.heartbeat import ReceiverHeartbeat
    from airflow_provider_carerix.store import EventStore

    config = receiver_settings()
    if not config.secrets:
        log.info(
            "Carerix receiver not mounted at %s: no secret configured ([carerix] receiver_secret, e.g. "
            "AIRFLOW__CARERIX__RECEIVER_SECRET)",
            URL_PREFIX,
        )
        return None
    store = EventStore(location.url)
    app = create_app(store, **config.app_kwargs())
    app.state.heartbeat = ReceiverHeartbeat(store, kind="api-server").start()
    log.info("Carerix receiver mounted at %s/events, event store %s", URL_PREFIX, location.describe())
    return app


def build_fastapi_apps() -> list[dict[str, Any]]:
    """One app at ``/carerix``: the read-only page at ``/carerix/ui/`` always, the receiver when configured.

    The page needs no secret: every route of it is behind Airflow's own authentication and authorization.
    """
    from fastapi import FastAPI

    from airflow_provider_carerix.hooks.event_store import locate_store
    from airflow_provider_carerix.store import EventStore
    from airflow_provider_carerix.ui.app import airflow_authorization, create_ui_router
    from airflow_provider_carerix.ui.sections import page_sections

    location = locate_store()
    app = _receiver_app(location)
    if app is None:
        app = FastAPI(title="Carerix", docs_url=None, redoc_url=None, openapi_url=None)
        store = EventStore(location.url)
        log.info("Carerix page at %s%s/, event store %s", URL_PREFIX, UI_PREFIX, location.describe())
    else:
        store = app.state.store
    app.include_router(
        create_ui_router(
            store, authorize=airflow_authorization(), extra=page_sections(store, location.source)
        ),
        prefix=UI_PREFIX,
    )
    return [{"app": app, "url_prefix": URL_PREFIX, "name": "Carerix"}]


class _LazyFastAPIApps:
    """Class-level attribute computed once on first read (Airflow reads it from the plugin class)."""

    def __init__(self) -> None:
        self._apps: list[dict[str, Any]] | None = None

    def __get__(self, obj: Any, owner: type | None = None) -> list[dict[str, Any]]:
        if self._apps is None:
            try:
                self._apps = build_fastapi_apps()
            except ConfigurationError as exc:
                # Not mounted rather than mounted on the wrong store; the API server itself keeps running.
                log.error("Carerix receiver and page not mounted at %s: %s", URL_PREFIX, exc)
                self._apps = []
            except Exception:
                # A bad key file must not take the whole API server down with it.
                log.exception("Carerix receiver not mounted at %s: configuration error", URL_PREFIX)
                self._apps = []
        return self._apps


class CarerixPlugin(AirflowPlugin):
    """Carerix webhook receiver and the Carerix page inside the Airflow API server; the listener that
    registers a ``CarerixEvents`` consumer when its DAG is deployed (every component loads it, the DAG
    processor uses it)."""

    name = "carerix"
    fastapi_apps = _LazyFastAPIApps()
    external_views = EXTERNAL_VIEWS
    listeners = [CarerixAssetListener()]
