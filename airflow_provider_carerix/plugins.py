"""Runs the receiver inside the Airflow 3 API server, so a user needs no extra service to receive events.

Mounted at ``/carerix`` (``POST /carerix/events``, ``GET /carerix/health``) only when a secret is configured:
the API server is often reachable from outside, and an unauthenticated door into the pipelines must never open
by default. Configuration (env wins over Airflow config):

* secret(s): env ``CARERIX_RECEIVER_SECRET`` or ``[carerix] receiver_secret`` (comma-separated for rotation;
  ``AIRFLOW__CARERIX__RECEIVER_SECRET_CMD`` / ``_SECRET`` work as for any sensitive option),
* header: env ``CARERIX_RECEIVER_SECRET_HEADER`` or ``[carerix] receiver_secret_header``,
* Cx-Signature key: env ``CARERIX_RECEIVER_PUBLIC_KEY_FILE`` or ``[carerix] receiver_public_key_file``,
* store: resolved like everywhere (``resolve_store_url``).

Registered through the ``airflow.plugins`` entry point, not the provider metadata: Airflow loads
provider-declared plugins only when ``[core] lazy_discover_providers`` is off, while entry-point plugins load
under every setting (Airflow 3.1 to 3.3 alike). Plugins are imported by every Airflow component, but only the
API server reads ``fastapi_apps``; the app is therefore built on first access, not at import.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from airflow.plugins_manager import AirflowPlugin

from airflow_provider_carerix.listeners import CarerixAssetListener

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


def _setting(env: str, option: str) -> str | None:
    value = os.environ.get(env)
    if value:
        return value
    try:
        from airflow.configuration import conf

        value = conf.get("carerix", option, fallback=None)
    except Exception:
        return None
    return value or None


def _receiver_app() -> Any | None:
    """The receiver when a secret is configured, otherwise None (and why, in the log)."""
    from airflow_provider_carerix.receiver import DEFAULT_SECRET_HEADER, create_app

    raw = _setting("CARERIX_RECEIVER_SECRET", "receiver_secret") or ""
    secrets = [s.strip() for s in raw.split(",") if s.strip()]
    if not secrets:
        log.info(
            "Carerix receiver not mounted at %s: no secret configured (env CARERIX_RECEIVER_SECRET or "
            "[carerix] receiver_secret)",
            URL_PREFIX,
        )
        return None
    header = _setting("CARERIX_RECEIVER_SECRET_HEADER", "receiver_secret_header") or DEFAULT_SECRET_HEADER
    key_file = _setting("CARERIX_RECEIVER_PUBLIC_KEY_FILE", "receiver_public_key_file")
    public_key = Path(key_file).read_bytes() if key_file else None
    app = create_app(None, secrets=secrets, secret_header=header, public_key=public_key)
    log.info("Carerix receiver mounted at %s/events (store %r)", URL_PREFIX, app.state.store)
    return app


def build_fastapi_apps() -> list[dict[str, Any]]:
    """One app at ``/carerix``: the read-only page at ``/carerix/ui/`` always, the receiver when configured.

    The page needs no secret: every route of it is behind Airflow's own authentication and authorization.
    """
    from fastapi import FastAPI

    from airflow_provider_carerix.store import EventStore
    from airflow_provider_carerix.ui.app import airflow_authorization, create_ui_router
    from airflow_provider_carerix.ui.plugin import page_sections

    app = _receiver_app()
    if app is None:
        app = FastAPI(title="Carerix", docs_url=None, redoc_url=None, openapi_url=None)
        store = EventStore()
    else:
        store = app.state.store
    app.include_router(
        create_ui_router(store, authorize=airflow_authorization(), extra=page_sections(store)),
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
    fastapi_apps = _LazyFastAPIApps()  # type: ignore[assignment]
    external_views = EXTERNAL_VIEWS
    listeners = [CarerixAssetListener()]
