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


def test_connection_type_matches_the_hook(info: dict[str, Any]) -> None:
    from airflow_provider_carerix.hooks.carerix import CarerixHook

    [conn] = info["connection-types"]
    assert conn["connection-type"] == CarerixHook.conn_type == "carerix"
    assert conn["hook-class-name"] == f"{CarerixHook.__module__}.{CarerixHook.__name__}"
    assert conn["hook-name"] == CarerixHook.hook_name == "Carerix"
    assert CarerixHook.conn_name_attr == "carerix_conn_id"
    assert CarerixHook.default_conn_name == "carerix_default"


def test_connection_form_fields(info: dict[str, Any]) -> None:
    [conn] = info["connection-types"]
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
