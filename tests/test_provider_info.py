"""Provider registration as Airflow sees it: the entry point, Airflow's own schema, importable paths, the form."""

from __future__ import annotations

import importlib
import json
import re
from importlib.metadata import EntryPoint, entry_points
from importlib.resources import files
from typing import Any

import jsonschema
import pytest

DISTRIBUTION = "airflow-provider-carerix"
EXPECTED_FIELDS = {"client_id", "client_secret", "realm", "identity_host", "auth_url", "scope"}


def _entry_point() -> EntryPoint:
    [ep] = [
        ep
        for ep in entry_points(group="apache_airflow_provider")
        if ep.dist is not None and ep.dist.name == DISTRIBUTION
    ]
    return ep


@pytest.fixture(scope="module")
def info() -> dict[str, Any]:
    return _entry_point().load()()


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_info_is_valid_against_airflows_schema(info: dict[str, Any]) -> None:
    schema = json.loads((files("airflow") / "provider_info.schema.json").read_text())
    jsonschema.validate(info, schema)


def test_package_name_is_the_distribution_name(info: dict[str, Any]) -> None:
    ep = _entry_point()
    assert ep.dist is not None
    assert info["package-name"] == _canonical(ep.dist.name) == DISTRIBUTION


def _class_paths(info: dict[str, Any]) -> list[str]:
    paths = [c["hook-class-name"] for c in info.get("connection-types", [])]
    paths += [p["plugin-class"] for p in info.get("plugins", [])]
    return paths


def _modules(info: dict[str, Any]) -> list[str]:
    return [
        m
        for key in ("hooks", "operators", "sensors", "triggers")
        for e in info.get(key, [])
        for m in e["python-modules"]
    ]


def test_every_listed_module_and_class_imports(info: dict[str, Any]) -> None:
    modules, classes = _modules(info), _class_paths(info)
    assert "airflow_provider_carerix.hooks.carerix" in modules
    assert classes
    for module in modules:
        importlib.import_module(module)
    for path in classes:
        module, _, name = path.rpartition(".")
        assert isinstance(getattr(importlib.import_module(module), name), type), path


def test_every_module_with_a_hook_operator_sensor_or_trigger_is_listed(info: dict[str, Any]) -> None:
    """Airflow finds a provider's hooks, operators, sensors and triggers through this list only."""
    import pkgutil

    import airflow_provider_carerix
    from airflow_provider_carerix.version_compat import BaseHook, BaseOperator, BaseTrigger

    listed = set(_modules(info))
    found = set()
    for module_info in pkgutil.walk_packages(airflow_provider_carerix.__path__, "airflow_provider_carerix."):
        if module_info.name.split(".")[1] not in ("hooks", "operators", "sensors", "triggers"):
            continue
        module = importlib.import_module(module_info.name)
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and value.__module__ == module.__name__
                and issubclass(value, (BaseHook, BaseOperator, BaseTrigger))
            ):
                found.add(module.__name__)
    assert found == listed
    assert (
        "airflow_provider_carerix.operators.recovery" in found
        and "airflow_provider_carerix.hooks.event_store" in found
    )


def test_connection_type_matches_the_hook(info: dict[str, Any]) -> None:
    from airflow_provider_carerix.hooks.carerix import CarerixHook

    [conn] = [c for c in info["connection-types"] if c["connection-type"] == "carerix"]
    assert conn["connection-type"] == CarerixHook.conn_type == "carerix"
    assert conn["hook-class-name"] == f"{CarerixHook.__module__}.{CarerixHook.__name__}"
    assert conn["hook-name"] == CarerixHook.hook_name == "Carerix"
    assert CarerixHook.conn_name_attr == "carerix_conn_id"
    assert CarerixHook.default_conn_name == "carerix_default"


def test_the_event_store_connection_type_matches_its_hook(info: dict[str, Any]) -> None:
    """``airflow connections add --conn-type carerix_event_store`` must be a known type: Airflow's CLI
    silently stores an unknown one as ``generic``."""
    from airflow_provider_carerix.hooks.event_store import CarerixEventStoreHook

    [conn] = [c for c in info["connection-types"] if c["connection-type"] == "carerix_event_store"]
    assert conn["connection-type"] == CarerixEventStoreHook.conn_type
    assert conn["hook-class-name"] == f"{CarerixEventStoreHook.__module__}.{CarerixEventStoreHook.__name__}"
    assert conn["hook-name"] == CarerixEventStoreHook.hook_name


def test_connection_form_fields(info: dict[str, Any]) -> None:
    [conn] = [c for c in info["connection-types"] if c["connection-type"] == "carerix"]
    fields = conn["conn-fields"]
    assert set(fields) == EXPECTED_FIELDS
    assert fields["client_secret"]["schema"]["format"] == "password"
    for name, spec in fields.items():
        assert spec["label"]
        assert "null" in spec["schema"]["type"], name  # every extra is optional in the form
        if name != "client_secret":
            # Airflow masks any field whose name says token/secret/password: keep non-secrets readable.
            assert not re.search("token|secret|password|passwd|api_key", name), name
            assert spec["schema"].get("format") != "password", name
    behaviour = conn["ui-field-behaviour"]
    assert {"login", "password", "schema", "port"} <= set(behaviour["hidden-fields"])
    assert "host" not in behaviour["hidden-fields"]
    assert behaviour["placeholders"]["host"] == "https://api.carerix.io"
    # Airflow 3 shows placeholders for standard fields only; examples of extra fields are in descriptions.
    assert set(behaviour["placeholders"]) <= {"description", "host", "schema", "login", "password", "port"}


def test_airflow_serves_the_connection_form() -> None:
    """What the 3.3 UI gets from ``GET /ui/connections/hook_meta``: built from provider info alone."""
    from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService
    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    manager.initialize_providers_list()
    assert DISTRIBUTION in manager.providers
    [meta] = [m for m in HookMetaService.hook_meta_data() if m.connection_type == "carerix"]
    assert meta.hook_name == "Carerix"
    assert set(meta.extra_fields or {}) == EXPECTED_FIELDS
    assert meta.extra_fields["client_secret"]["schema"]["format"] == "password"
    fields = meta.standard_fields
    assert fields is not None
    assert fields.host.hidden is False and fields.host.title == "API base URL"
    assert fields.login.hidden and fields.password.hidden


@pytest.fixture(scope="module")
def served_hook_meta(airflow_db: None) -> list[dict[str, Any]]:
    """``GET /ui/connections/hook_meta`` from Airflow's own API server app (in process, all users admin)."""
    from fastapi.testclient import TestClient

    from airflow_provider_carerix.version_compat import AIRFLOW_V_3_2_PLUS

    if not AIRFLOW_V_3_2_PLUS:
        # Airflow 3.1 answers this in-process call with 401 even in all-admins mode, and builds the connection
        # form from the hook instead (checked by test_airflow_serves_the_connection_form).
        pytest.skip("Airflow 3.1 builds the connection form from the hook, not from served provider info")

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "True")
        from airflow.api_fastapi.app import create_app

        with TestClient(create_app("core")) as client:
            response = client.get("/ui/connections/hook_meta")
    assert response.status_code == 200, response.text[:500]
    return response.json()


def test_the_api_server_serves_the_form_with_help_for_every_field(
    served_hook_meta: list[dict[str, Any]],
) -> None:
    [meta] = [m for m in served_hook_meta if m["connection_type"] == "carerix"]
    assert meta["hook_name"] == "Carerix"
    assert meta["hook_class_name"] == "airflow_provider_carerix.hooks.carerix.CarerixHook"
    extras = meta["extra_fields"]
    assert set(extras) == EXPECTED_FIELDS
    for name, field in extras.items():
        assert field["schema"]["title"], name
        assert field["description"], f"{name} has no help text"
    assert extras["client_secret"]["schema"]["format"] == "password"
    assert "secret" in extras["client_secret"]["description"].lower()
    for name in ("client_id", "realm", "identity_host", "auth_url"):
        assert "e.g." in extras[name]["description"], name  # the example a placeholder would have shown
    assert "urn:cx/webhooks:data:manage" in extras["scope"]["description"]
    host = meta["standard_fields"]["host"]
    assert host == {"hidden": False, "title": "API base URL", "placeholder": "https://api.carerix.io"}
    assert all(meta["standard_fields"][f]["hidden"] for f in ("login", "password", "port", "url_schema"))


def test_default_conn_name_as_served(served_hook_meta: list[dict[str, Any]]) -> None:
    """Airflow 3.3.2 serves ``default_conn_name: null`` for every connection type, whatever the hook declares.

    ``HookMetaService.hook_meta_data`` (airflow/api_fastapi/core_api/services/ui/connections.py) passes
    ``default_conn_name=None`` for all hooks, and the 3.3.2 UI never reads the field; the hook itself
    declares ``carerix_default`` (checked above). Should Airflow start serving it, it must be ours.
    """
    [meta] = [m for m in served_hook_meta if m["connection_type"] == "carerix"]
    if any(m["default_conn_name"] for m in served_hook_meta):
        assert meta["default_conn_name"] == "carerix_default"
    else:
        assert meta["default_conn_name"] is None
        assert len(served_hook_meta) > 1  # Airflow's own connection types too: not a provider problem


def test_airflow_connections_test_from_the_cli(emulator: Any, tmp_path: Any) -> None:
    """The way to check a connection while the 3.3.2 UI's Test button sends ``port: 0`` (a 400)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    airflow = Path(sys.executable).parent / "airflow"
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path),
        "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
    }
    command = [str(airflow), "connections", "test", "carerix_default"]
    good = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert good.returncode == 0 and "Connection success!" in good.stdout, good.stdout + good.stderr[-2000:]

    conn = json.loads(os.environ["AIRFLOW_CONN_CARERIX_DEFAULT"])
    conn["extra"]["client_secret"] = "wrong-secret-for-this-test"
    env["AIRFLOW_CONN_CARERIX_DEFAULT"] = json.dumps(conn)
    bad = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
    from airflow_provider_carerix.version_compat import AIRFLOW_V_3_3_PLUS

    if AIRFLOW_V_3_3_PLUS:
        assert bad.returncode != 0, bad.stdout
    else:  # before 3.3 the command reports the failure but exits 0
        assert "Connection success!" not in bad.stdout and "invalid_client" in bad.stdout, bad.stdout
    assert "wrong-secret-for-this-test" not in bad.stdout + bad.stderr
