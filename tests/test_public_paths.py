"""Every import path a user is shown keeps working: the public ones the provider promises, and every
``import``/``from ... import`` of this package that the README and docs/ show (the layout may move code
behind them, never the paths)."""

from __future__ import annotations

import importlib
import re
from importlib.metadata import entry_points
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

PROMISED = {
    "airflow_provider_carerix.events": ["CarerixEvents"],
    "airflow_provider_carerix.hooks.carerix": ["CarerixHook"],
    "airflow_provider_carerix.hooks.event_store": ["CarerixEventStoreHook", "ClaimedEvent", "CarerixEvent"],
    "airflow_provider_carerix.operators.webhooks": [
        "CarerixSyncWebhooksOperator",
        "CarerixCreateApplicationOperator",
        "CarerixCreateWebhookOperator",
        "CarerixDeleteWebhookOperator",
    ],
    "airflow_provider_carerix.operators.recovery": ["CarerixRecoverEventsOperator"],
    "airflow_provider_carerix.operators.sweep": ["CarerixCoverageSweepOperator"],
    "airflow_provider_carerix.sensors.events": ["CarerixEventSensor"],
    "airflow_provider_carerix.triggers.events": ["CarerixEventTrigger", "CarerixEventSensorTrigger"],
    "airflow_provider_carerix.receiver": ["create_app", "ReceiverAuth", "main"],
    "airflow_provider_carerix.receiver.validation": ["parse_event", "DeliveryRejected"],
    "airflow_provider_carerix.receiver.auth": ["ReceiverAuth", "load_public_key", "verify_signature"],
    "airflow_provider_carerix.store": ["EventStore", "StoredEvent", "StoreUnavailable"],
    "airflow_provider_carerix.emulator": ["CarerixEmulator", "main"],
    "airflow_provider_carerix.plugins": ["CarerixPlugin"],
    "airflow_provider_carerix.get_provider_info": ["get_provider_info"],
}

_IMPORT = re.compile(
    r"^\s*(from (airflow_provider_carerix[\w.]*) import \(?([\w, \n]+?)\)?$|import (airflow_provider_carerix[\w.]*))",
    re.M,
)


def documented_imports() -> set[tuple[str, str | None]]:
    found: set[tuple[str, str | None]] = set()
    for page in PAGES:
        for block in re.findall(r"```python\n(.*?)```", page.read_text(), re.S):
            for match in _IMPORT.finditer(block):
                if match.group(4):
                    found.add((match.group(4), None))
                    continue
                for name in match.group(3).replace("\n", " ").split(","):
                    name = name.strip().split(" as ")[0]
                    if name:
                        found.add((match.group(2), name))
    return found


@pytest.mark.parametrize(("module", "names"), sorted(PROMISED.items()))
def test_promised_paths_import(module: str, names: list[str]) -> None:
    imported = importlib.import_module(module)
    for name in names:
        assert hasattr(imported, name), f"{module}.{name}"


def test_every_import_the_docs_show_works() -> None:
    shown = documented_imports()
    assert ("airflow_provider_carerix.events", "CarerixEvents") in shown  # the parser reads the pages
    broken = []
    for module, name in sorted(shown, key=str):
        try:
            imported = importlib.import_module(module)
        except ImportError as exc:
            broken.append(f"{module}: {exc}")
            continue
        if name is not None and not hasattr(imported, name):
            try:
                importlib.import_module(f"{module}.{name}")
            except ImportError:
                broken.append(f"{module}.{name}")
    assert not broken, broken


def test_console_scripts_and_the_plugin_entry_point_resolve() -> None:
    scripts = {ep.name: ep for ep in entry_points(group="console_scripts") if ep.name.startswith("carerix-")}
    assert set(scripts) == {"carerix-webhooks", "carerix-receiver", "carerix-emulator"}
    for ep in scripts.values():
        assert callable(ep.load())
    [plugin] = [ep for ep in entry_points(group="airflow.plugins") if ep.name == "carerix"]
    assert plugin.load().__name__ == "CarerixPlugin"
