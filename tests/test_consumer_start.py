"""Where a new consumer starts: at deployment by default (paused or not), or where ``start_from`` says.

Airflow pauses new DAGs and runs an asset's watcher only once the DAG is unpaused. The provider's listener
registers the consumer when Airflow first records the DAG's asset, so an event stored between deploying and
unpausing is the DAG's. Checked with Airflow's own DAG sync (``airflow dags reserialize`` in a subprocess, the
plugin loaded from its entry point), real stores on both backends, and real claims.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from airflow_provider_carerix.definitions.models import EventPayload
from airflow_provider_carerix.hooks.event_store import (
    CarerixEventStoreHook,
    normalise_start_from,
    start_sequence,
)
from airflow_provider_carerix.listeners import CarerixAssetListener, carerix_watchers
from airflow_provider_carerix.store import EventStore
from airflow_provider_carerix.store.filters import EventFilter
from tests.guide import guide_event

ROOT = Path(__file__).resolve().parent.parent
EMPLOYEES = EventFilter.build(["cremployee:updated"])


def put(store: EventStore) -> str:
    body = guide_event(int(uuid.uuid4().int % 100000), ["touser"])
    store.insert(json.dumps(body), EventPayload.model_validate(body))
    return body["id"]


def claimed(store_url: str, consumer: str, **kwargs: object) -> list[str]:
    hook = CarerixEventStoreHook(store_url=store_url)
    try:
        with hook.claim(consumer, EMPLOYEES, **kwargs) as claim:  # type: ignore[arg-type]
            return [e.event_id for e in claim]
    finally:
        hook.close()


def test_start_from_choices(store: EventStore, store_url: str) -> None:
    old = [put(store), put(store)]
    time.sleep(1.1)  # received_at has the database clock's resolution; keep the two groups apart
    cutoff = datetime.now(timezone.utc)
    time.sleep(0.1)
    recent = put(store)
    assert claimed(store_url, "earliest", start_from="earliest") == [*old, recent]
    assert claimed(store_url, "at_time", start_from=cutoff.isoformat()) == [recent]
    assert claimed(store_url, "duration", start_from="1h") == [*old, recent]
    assert claimed(store_url, "new", start_from="new") == []
    assert claimed(store_url, "deployed") == []  # the default: where the log ends when it is created
    later = put(store)
    for consumer in ("earliest", "at_time", "duration", "new", "deployed"):
        assert claimed(store_url, consumer) == [later], consumer


def test_start_from_only_applies_to_a_new_consumer(store: EventStore, store_url: str) -> None:
    put(store)
    assert claimed(store_url, "c", start_from="new") == []
    assert claimed(store_url, "c", start_from="earliest") == []  # exists: keeps its position


def test_a_time_after_every_event_and_an_empty_store(store: EventStore) -> None:
    assert start_sequence(store, "earliest") == 0
    assert start_sequence(store, "deployed") == 0
    put(store)
    assert (
        start_sequence(store, (datetime.now(timezone.utc) + timedelta(days=1)).isoformat())
        == store.last_sequence()
    )
    assert start_sequence(store, "2000-01-01T00:00:00Z") == 0


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        (None, "deployed"),
        ("EARLIEST", "earliest"),
        (" new ", "new"),
        ("7d", "7d"),
        ("2026-01-31T08:00:00Z", "2026-01-31T08:00:00Z"),
        (timedelta(hours=2), "7200s"),
        (datetime(2026, 1, 31, 8, 0), "2026-01-31T08:00:00+00:00"),
    ],
)
def test_start_from_is_plain_text_in_trigger_kwargs(given: object, kept: str) -> None:
    assert normalise_start_from(given) == kept  # type: ignore[arg-type]


def test_a_wrong_start_from_fails_the_dag_file_not_the_watcher() -> None:
    from airflow_provider_carerix.events import CarerixEvents

    with pytest.raises(ValueError, match="start_from: expected one of deployed, earliest, new"):
        CarerixEvents("bad_start", event_types=["cremployee:updated"], start_from="yesterday")
    with pytest.raises(ValueError, match="must be positive"):
        normalise_start_from(timedelta(0))
    events = CarerixEvents("good_start", event_types=["cremployee:updated"], start_from="earliest")
    _, kwargs = events.watchers[0].trigger.serialize()
    assert kwargs["start_from"] == "earliest"


def test_the_listener_finds_carerix_watchers_in_a_serialized_asset(store: EventStore, store_url: str) -> None:
    """What Airflow hands ``on_asset_created``: the asset as deserialised from the DAG's JSON."""
    from airflow.sdk import DAG

    try:
        from airflow.serialization.serialized_objects import DagSerialization
    except ImportError:  # Airflow < 3.3
        from airflow.serialization.serialized_objects import SerializedDAG as DagSerialization

    from airflow_provider_carerix.triggers.events import CarerixEventTrigger
    from airflow_provider_carerix.version_compat import Asset, AssetWatcher

    trigger = CarerixEventTrigger(
        event_types=["cremployee:updated"], consumer="listened", store_url=store_url
    )
    asset = Asset("listened", watchers=[AssetWatcher(name="w", trigger=trigger)])
    with DAG("listener_dag", schedule=[asset]) as dag:
        pass
    restored = DagSerialization.from_dict(DagSerialization.to_dict(dag))
    (serialized,) = [a for _, a in restored.timetable.asset_condition.iter_assets()]
    assert [k["consumer"] for k in carerix_watchers(serialized)] == ["listened"]
    assert carerix_watchers(Asset("plain")) == []

    before = put(store)
    CarerixAssetListener().on_asset_created(asset=serialized)
    after = put(store)
    assert claimed(store_url, "listened") == [after]
    assert before not in claimed(store_url, "listened")


def test_the_listener_never_breaks_airflows_dag_sync(caplog: pytest.LogCaptureFixture) -> None:
    from airflow_provider_carerix.triggers.events import CarerixEventTrigger
    from airflow_provider_carerix.version_compat import Asset, AssetWatcher

    trigger = CarerixEventTrigger(
        event_types=["cremployee:updated"], consumer="x", store_conn_id="no_such_conn"
    )
    CarerixAssetListener().on_asset_created(
        asset=Asset("x", watchers=[AssetWatcher(name="w", trigger=trigger)])
    )
    assert "Carerix consumer 'x' not registered at deployment" in caplog.text
    assert "no_such_conn" in caplog.text


DAG_FILE = """
from airflow.sdk import DAG, task
from airflow_provider_carerix.events import CarerixEvents

deployed = CarerixEvents("deploy_test_{suffix}", event_types=["cremployee:updated"]{start_from})

with DAG("deploy_test_{suffix}", schedule=[deployed]):

    @task
    def handle() -> None:
        pass

    handle()
"""


def deploy(dags: Path, store_url: str, suffix: str, start_from: str = "") -> None:
    dags.mkdir(exist_ok=True)
    (dags / f"deploy_test_{suffix}.py").write_text(
        textwrap.dedent(DAG_FILE).format(
            suffix=suffix, start_from=f", start_from={start_from!r}" if start_from else ""
        )
    )


def reserialize(dags: Path, store_url: str) -> None:
    """Sync the DAG files to the metadata DB the way the DAG processor does (new DAGs paused)."""
    env = {
        **os.environ,
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "CARERIX_EVENT_STORE_URL": store_url,
        "PYTHONPATH": str(ROOT),
    }
    result = subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "dags", "reserialize"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_dag_deployed_paused_gets_the_events_stored_before_it_is_unpaused(
    airflow_db: None, store: EventStore, store_url: str, tmp_path: Path
) -> None:
    history = put(store)
    dags = tmp_path / "dags"
    deploy(dags, store_url, "a")
    deploy(dags, store_url, "b", start_from="earliest")
    reserialize(dags, store_url)
    while_paused = put(store)  # no watcher runs yet: the DAG is paused
    # Unpaused later: the watcher (or the first claim) finds the consumer registered at deployment.
    assert claimed(store_url, "deploy_test_a") == [while_paused]
    assert claimed(store_url, "deploy_test_b") == [history, while_paused]
    reserialize(dags, store_url)  # a later sync of the same assets registers nothing again
    assert claimed(store_url, "deploy_test_a") == []
