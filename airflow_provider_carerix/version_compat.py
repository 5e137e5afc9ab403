"""Airflow names that moved between the versions this provider supports (3.1, 3.2, 3.3), resolved in one place.

Modules of this package import Airflow's public classes from here rather than from ``airflow.*`` directly, so a
name that moves in a later Airflow release is fixed once. The flags follow the convention of Airflow's own
providers (``version_compat.py`` in each of them): compare the base version, so pre-releases of a minor count
as that minor.

What differs today:

* Airflow 3.1 keeps ``AirflowSensorTimeout``, ``AirflowFailException``, ``AirflowSkipException`` and
  ``TaskDeferred`` in ``airflow.exceptions``; 3.2 moved them to ``airflow.sdk.exceptions`` (the old path
  still works there but warns). ``AirflowException`` is the same class in both places on every version.
* Airflow 3.3 adds shared trigger streams (``airflow.triggers.shared_stream``): one producer feeding many
  event triggers, with acknowledgement. Below 3.3 ``HAS_SHARED_STREAMS`` is False, ``SharedStreamProducer``
  is a plain base class and each trigger polls on its own.
* Airflow 3.2 builds the connection form from provider info (``conn-fields``); 3.1 asks the hook class
  (``get_connection_form_widgets`` / ``get_ui_field_behaviour``). The hook provides both.
* Airflow's ``Stats`` (metrics) is one self-configuring class on 3.1 and two singletons (core and Task SDK)
  that each component sets up on 3.2+; :func:`airflow_stats` finds the one this process uses.
* ``BaseHook``, ``BaseOperator``, ``BaseSensorOperator``, ``PokeReturnValue``, ``Asset``, ``AssetWatcher``
  and the trigger base classes live in the same place on every supported version; they are re-exported here
  so that stays a single decision.
"""

from __future__ import annotations

from typing import Any


def get_base_airflow_version_tuple() -> tuple[int, int, int]:
    from airflow import __version__
    from packaging.version import Version

    version = Version(__version__)
    return version.major, version.minor, version.micro


AIRFLOW_V_3_2_PLUS = get_base_airflow_version_tuple() >= (3, 2, 0)
AIRFLOW_V_3_3_PLUS = get_base_airflow_version_tuple() >= (3, 3, 0)

from airflow.listeners import hookimpl  # noqa: E402  (same name on 3.1-3.3; its module moved in 3.3)
from airflow.sdk import (  # noqa: E402
    Asset,
    AssetWatcher,
    BaseHook,
    BaseOperator,
    BaseSensorOperator,
    PokeReturnValue,
)
from airflow.sdk.exceptions import AirflowException  # noqa: E402
from airflow.triggers.base import BaseEventTrigger, BaseTrigger, TriggerEvent  # noqa: E402

if AIRFLOW_V_3_2_PLUS:
    from airflow.sdk.exceptions import (
        AirflowFailException,
        AirflowSensorTimeout,
        AirflowSkipException,
        TaskDeferred,
    )
else:  # Airflow 3.1
    from airflow.exceptions import (  # type: ignore[no-redef]
        AirflowFailException,
        AirflowSensorTimeout,
        AirflowSkipException,
        TaskDeferred,
    )

try:  # Airflow >= 3.3
    from airflow.triggers.shared_stream import AdvanceItem, SharedStreamProducer

    HAS_SHARED_STREAMS = True
except ImportError:  # Airflow 3.1-3.2: every trigger polls the store on its own
    HAS_SHARED_STREAMS = False
    SharedStreamProducer = object  # type: ignore[misc,assignment]
    AdvanceItem = Any  # type: ignore[misc,assignment]


def _connection_type(conn_type: str) -> dict[str, Any]:
    from airflow_provider_carerix.get_provider_info import get_provider_info

    [entry] = [c for c in get_provider_info()["connection-types"] if c["connection-type"] == conn_type]
    return entry


def connection_form_widgets(hook_class: type) -> dict[str, Any]:
    """The ``conn-fields`` of provider info as the WTForms fields Airflow 3.1 asks hooks for.

    Used as ``get_connection_form_widgets`` on 3.1 only, so provider info stays the single description of
    the form. Imports are inside: Airflow's API server substitutes its own stand-ins for these classes while
    it calls this.
    """
    from flask_appbuilder.fieldwidgets import BS3PasswordFieldWidget, BS3TextFieldWidget
    from flask_babel import lazy_gettext
    from wtforms import BooleanField, IntegerField, PasswordField, StringField

    widgets: dict[str, Any] = {}
    for name, spec in _connection_type(hook_class.conn_type).get("conn-fields", {}).items():  # type: ignore[attr-defined]
        schema = spec.get("schema", {})
        types = schema.get("type", "string")
        types = [types] if isinstance(types, str) else types
        label, description = lazy_gettext(spec["label"]), spec.get("description", "")
        if schema.get("format") == "password":
            widgets[name] = PasswordField(label, description=description, widget=BS3PasswordFieldWidget())
        elif "boolean" in types:
            widgets[name] = BooleanField(label, description=description)
        elif "integer" in types:
            widgets[name] = IntegerField(label, description=description, widget=BS3TextFieldWidget())
        else:
            widgets[name] = StringField(label, description=description, widget=BS3TextFieldWidget())
    return widgets


def ui_field_behaviour(hook_class: type) -> dict[str, Any]:
    """The ``ui-field-behaviour`` of provider info in the underscore spelling Airflow 3.1 asks hooks for."""
    behaviour = _connection_type(hook_class.conn_type)["ui-field-behaviour"]  # type: ignore[attr-defined]
    return {key.replace("-", "_"): value for key, value in behaviour.items()}


def airflow_stats() -> Any:
    """Airflow's ``Stats`` for this process, set up from ``[metrics]`` if no Airflow component did.

    * 3.1: ``airflow.stats.Stats`` sets itself up from ``[metrics]`` on first use.
    * 3.2 and 3.3 keep two of them: the core's (set up by the scheduler, the triggerer, which its trigger
      runner inherits by fork, the DAG processor and the API server) and the Task SDK's (set up in tasks and
      wherever the SDK's serde is imported). The one already set up in this process is used, the SDK's first,
      so no second OpenTelemetry meter provider is made; in a process of its own (``carerix-receiver
      serve``), the SDK's is set up here, as Airflow's components set up theirs.
    """
    import importlib

    if not AIRFLOW_V_3_2_PLUS:
        return importlib.import_module("airflow.stats").Stats

    def set_up(module: Any) -> bool:
        if AIRFLOW_V_3_3_PLUS:
            return getattr(module, "_factory", None) is not None
        return type.__getattribute__(module.Stats, "factory") is not None

    sdk = importlib.import_module("airflow.sdk._shared.observability.metrics.stats")
    for name in (
        "airflow.sdk._shared.observability.metrics.stats",
        "airflow._shared.observability.metrics.stats",
    ):
        try:
            module = importlib.import_module(name)
            if set_up(module):
                return module.Stats
        except (ImportError, AttributeError):
            continue
    from airflow.configuration import conf
    from airflow.sdk.observability.metrics import stats_utils

    if AIRFLOW_V_3_3_PLUS:
        sdk.initialize(
            factory=stats_utils.get_stats_factory(),
            export_legacy_names=conf.getboolean("metrics", "legacy_names_on", fallback=True),
        )
    else:  # 3.2: the factory takes the Stats class (DogStatsD needs it)
        sdk.Stats.initialize(factory=stats_utils.get_stats_factory(sdk.Stats))  # type: ignore[call-arg]
    return sdk.Stats


__all__ = [
    "AIRFLOW_V_3_2_PLUS",
    "AIRFLOW_V_3_3_PLUS",
    "HAS_SHARED_STREAMS",
    "AdvanceItem",
    "AirflowException",
    "AirflowFailException",
    "AirflowSensorTimeout",
    "AirflowSkipException",
    "Asset",
    "AssetWatcher",
    "BaseEventTrigger",
    "BaseHook",
    "BaseOperator",
    "BaseSensorOperator",
    "BaseTrigger",
    "PokeReturnValue",
    "SharedStreamProducer",
    "TaskDeferred",
    "TriggerEvent",
    "airflow_stats",
    "connection_form_widgets",
    "hookimpl",
    "ui_field_behaviour",
]
