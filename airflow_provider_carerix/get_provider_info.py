"""Provider metadata that Airflow reads through the ``apache_airflow_provider`` entry point.

In Airflow 3.2+ the connection form is built from ``conn-fields`` and ``ui-field-behaviour`` here, without
importing the hook, so everything the UI needs about the ``carerix`` connection lives in this dict.
"""

from __future__ import annotations

from typing import Any

from airflow_provider_carerix import __version__
from airflow_provider_carerix.settings import SETTINGS


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "airflow-provider-carerix",
        "name": "Carerix",
        "description": "Provision Carerix webhooks and run DAGs on Carerix events (candidates, jobs, matches, ...).",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "Carerix",
                "external-doc-url": "https://help.carerix.com/",
                "tags": ["service"],
            }
        ],
        "hooks": [
            {
                "integration-name": "Carerix",
                "python-modules": [
                    "airflow_provider_carerix.hooks.carerix",
                    "airflow_provider_carerix.hooks.event_store",
                ],
            }
        ],
        "operators": [
            {
                "integration-name": "Carerix",
                "python-modules": [
                    "airflow_provider_carerix.operators.base",
                    "airflow_provider_carerix.operators.webhooks",
                    "airflow_provider_carerix.operators.recovery",
                    "airflow_provider_carerix.operators.sweep",
                    "airflow_provider_carerix.operators.monitoring",
                ],
            }
        ],
        "sensors": [
            {
                "integration-name": "Carerix",
                "python-modules": ["airflow_provider_carerix.sensors.events"],
            }
        ],
        "triggers": [
            {
                "integration-name": "Carerix",
                "python-modules": ["airflow_provider_carerix.triggers.events"],
            }
        ],
        # No "plugins" entry: Airflow skips provider-declared plugins under its default
        # ``[core] lazy_discover_providers = True``; the receiver plugin is registered through the
        # ``airflow.plugins`` entry point instead, which every setting loads (listing it here as well would
        # register it twice when lazy discovery is off).
        "connection-types": [
            {
                "connection-type": "carerix",
                "hook-class-name": "airflow_provider_carerix.hooks.carerix.CarerixHook",
                "hook-name": "Carerix",
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port", "login", "password"],
                    "relabeling": {"host": "API base URL"},
                    # Airflow 3's form shows placeholders for standard fields only: the extra fields below
                    # carry their examples in their descriptions.
                    "placeholders": {"host": "https://api.carerix.io"},
                },
                "conn-fields": {
                    "client_id": {
                        "label": "Client ID",
                        "description": "Code of your confidential OAuth2 client in Carerix, "
                        "e.g. urn:yourvendor/your-application.",
                        "schema": {"type": ["string", "null"]},
                    },
                    "client_secret": {
                        "label": "Client Secret",
                        "description": "Secret of that client, shown by Carerix when the client is created. "
                        "Stored encrypted and masked in task logs.",
                        "schema": {"type": ["string", "null"], "format": "password"},
                    },
                    "realm": {
                        "label": "Realm",
                        "description": "Keycloak realm of your Carerix tenant, e.g. yourcompany "
                        "(csmdemo in the Carerix guide). Not needed when Access token URL is set.",
                        "schema": {"type": ["string", "null"]},
                    },
                    "identity_host": {
                        "label": "Identity host",
                        "description": "Host of your tenant's login page, e.g. https://id-2.carerix.io or just id-2. "
                        "Empty means https://id.carerix.io; tenants also live on id-3, id-4, id-s1...",
                        "schema": {"type": ["string", "null"]},
                    },
                    "auth_url": {
                        "label": "Access token URL",
                        "description": "Full token URL, e.g. https://id-2.carerix.io/auth/realms/yourcompany/protocol/"
                        "openid-connect/token. When set it wins over Realm and Identity host.",
                        "schema": {"type": ["string", "null"]},
                    },
                    "scope": {
                        "label": "Scope",
                        "description": "OAuth2 scopes the token asks for, space-separated. Empty means "
                        "urn:cx/webhooks:data:manage (the Webhooks Management API). To also read records "
                        "(CarerixHook.get_entities, the coverage sweep) add urn:cx/cx5Wrapper:data:manage: "
                        "urn:cx/webhooks:data:manage urn:cx/cx5Wrapper:data:manage. The client must hold "
                        "every scope named (Carerix, Identity & Access).",
                        "schema": {"type": ["string", "null"]},
                    },
                },
            },
            {
                # The event store every component shares (docs/configuration.md): PostgreSQL as host, port,
                # database, login, password; or a SQLite file as host (one machine only).
                "connection-type": "carerix_event_store",
                "hook-class-name": "airflow_provider_carerix.hooks.event_store.CarerixEventStoreHook",
                "hook-name": "Carerix event store",
                "ui-field-behaviour": {
                    "hidden-fields": [],
                    "relabeling": {"host": "Host (or SQLite file)", "schema": "Database"},
                    "placeholders": {
                        "host": "db.example.com, or /data/carerix_events.db for SQLite",
                        "schema": "carerix",
                        "port": "5432",
                        "extra": '{"url": "postgresql+psycopg://carerix@db:5432/carerix"} (instead of the fields)',
                    },
                },
            },
        ],
        # Every option of :mod:`airflow_provider_carerix.settings`, which is the one place they are described.
        "config": {
            "carerix": {
                "description": "Carerix provider settings: every component reads them the same way "
                "(environment AIRFLOW__CARERIX__<OPTION>, then airflow.cfg). See docs/configuration.md.",
                "options": {
                    setting.option: {
                        "description": setting.description,
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": setting.example,
                        "default": setting.default,
                        **({"sensitive": True} if setting.sensitive else {}),
                    }
                    for setting in SETTINGS
                },
            }
        },
    }
