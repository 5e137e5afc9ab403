"""Metrics: every one documented, and sent through Airflow's own StatsD client by real processes.

A StatsD listener on 127.0.0.1 (``tests/fixtures/statsd.py``) receives what a real ``carerix-receiver serve``
process sends, and what a real trigger (and a claim) sends in a process of its own: each process reads
``[metrics]`` from its environment at start, as Airflow's components and the standalone receiver do.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from airflow_provider_carerix import metrics
from airflow_provider_carerix.definitions.models import EventPayload
from airflow_provider_carerix.store import EventStore
from tests.fixtures.receiver import start_receiver_process
from tests.fixtures.statsd import StatsdListener

ROOT = Path(__file__).resolve().parent.parent
SECRET = "metrics-secret-" + uuid.uuid4().hex[:8]
HEADERS = {"X-Carerix-Secret": SECRET, "Content-Type": "application/json"}
DOC = ROOT / "docs" / "monitoring.md"


def body(event_id: str | None = None, event_type: str = "cremployee:updated") -> bytes:
    return json.dumps(
        {
            "id": event_id or str(uuid.uuid4()),
            "time": "2024-02-14T14:24:40Z",
            "type": event_type,
            "applicationId": "app-1",
            "webhookId": "wh-1",
            "tenant": "demo",
            "data": {"entityId": "1", "lastName": "Private-Name"},
        }
    ).encode()


# -- the list and the docs -----------------------------------------------------------------------------------


def documented() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Name -> (kind, tags) of every row of the metrics table in docs/monitoring.md."""
    rows = {}
    for line in DOC.read_text().splitlines():
        match = re.match(r"^\| `(carerix\.[a-z_.]+)` \| (\w+) \| [^|]+ \| ([^|]+) \|", line)
        if match:
            tags = tuple(re.findall(r"`(\w+)`", match[3]))
            rows[match[1]] = (match[2], tags)
    return rows


def test_every_metric_is_documented_with_its_kind_and_tags() -> None:
    listed = {m.name: (m.kind, m.tags) for m in metrics.METRICS}
    assert documented() == listed
    assert len(listed) == len(metrics.METRICS)  # no name listed twice


def test_names_are_under_one_prefix_and_tags_never_ids() -> None:
    for metric in metrics.METRICS:
        assert re.fullmatch(r"carerix\.[a-z_]+\.[a-z_]+", metric.name), metric.name
        for tag in metric.tags:
            # Closed sets of words, or a name a person chose: never an id of an event, entity or webhook.
            assert tag in ("reason", "cause", "outcome", "action", "kind", "problem", "consumer"), tag


# -- a real receiver process ---------------------------------------------------------------------------------


def _deliveries(url: str) -> None:
    event_id = str(uuid.uuid4())
    assert httpx.post(f"{url}/events", content=body(event_id), headers=HEADERS).status_code == 201
    assert httpx.post(f"{url}/events", content=body(), headers=HEADERS).status_code == 201
    assert httpx.post(f"{url}/events", content=body(event_id), headers=HEADERS).status_code == 200
    assert (
        httpx.post(
            f"{url}/events", content=body(), headers={**HEADERS, "X-Carerix-Secret": "wrong"}
        ).status_code
        == 401
    )
    assert (
        httpx.post(
            f"{url}/events", content=body(), headers={**HEADERS, "Content-Type": "text/plain"}
        ).status_code
        == 415
    )
    assert httpx.post(f"{url}/events", content=b"{", headers=HEADERS).status_code == 400


def test_a_receiver_process_sends_its_metrics_to_statsd(statsd: StatsdListener, tmp_path: Path) -> None:
    receiver = start_receiver_process(
        f"sqlite:///{tmp_path / 'events.db'}", secrets=[SECRET], log_dir=tmp_path, env=statsd.env()
    )
    try:
        _deliveries(receiver.url)
        statsd.wait_for(
            lambda s: (
                s.total("airflow.carerix.receiver.duplicates") >= 1
                and s.total("airflow.carerix.receiver.refused.bad_request") >= 1
            ),
            "receiver metrics",
        )
    finally:
        receiver.stop()
    assert statsd.total("airflow.carerix.receiver.stored") == 2
    assert statsd.total("airflow.carerix.receiver.duplicates") == 1
    assert statsd.total("airflow.carerix.receiver.refused.unauthenticated") == 1
    assert statsd.total("airflow.carerix.receiver.refused.media_type") == 1
    assert statsd.total("airflow.carerix.receiver.refused.bad_request") == 1
    commits = statsd.values("airflow.carerix.receiver.commit")
    assert len(commits) == 3 and all(kind == "ms" and value > 0 for value, kind in commits)
    assert statsd.values("airflow.carerix.receiver.group_size") == [(1.0, "g")] * 3  # one at a time
    everything = "\n".join(statsd.received())
    assert "Private-Name" not in everything and "wh-1" not in everything and "app-1" not in everything


def test_with_influxdb_tags_the_reason_is_a_tag(statsd: StatsdListener, tmp_path: Path) -> None:
    receiver = start_receiver_process(
        f"sqlite:///{tmp_path / 'events.db'}",
        secrets=[SECRET],
        log_dir=tmp_path,
        env=statsd.env(influxdb=True, prefix="cx"),
    )
    try:
        response = httpx.post(
            f"{receiver.url}/events", content=body(), headers={**HEADERS, "X-Carerix-Secret": "x"}
        )
        assert response.status_code == 401
        statsd.wait_for(
            lambda s: s.total("cx.carerix.receiver.refused,reason=unauthenticated") >= 1, "a tagged refusal"
        )
    finally:
        receiver.stop()


def test_with_metrics_off_a_receiver_sends_nothing(statsd: StatsdListener, tmp_path: Path) -> None:
    env = {**statsd.env(), "AIRFLOW__METRICS__STATSD_ON": "False"}
    receiver = start_receiver_process(
        f"sqlite:///{tmp_path / 'events.db'}", secrets=[SECRET], log_dir=tmp_path, env=env
    )
    try:
        _deliveries(receiver.url)
    finally:
        receiver.stop()
    assert statsd.received() == []


# -- a real trigger and a claim, in a process of their own ----------------------------------------------------

TRIGGER_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from airflow_provider_carerix.hooks.event_store import CarerixEventStoreHook
    from airflow_provider_carerix.store.filters import EventFilter
    from airflow_provider_carerix.triggers.events import CarerixEventTrigger

    url, want = sys.argv[1], int(sys.argv[2])

    async def watch():
        trigger = CarerixEventTrigger(
            event_types=["cremployee:*"], consumer="metrics.watch", store_url=url, start_from="earliest",
            poll_interval=0.05,
        )
        fired = 0
        events = trigger.run()
        async for _ in events:
            fired += 1
            if fired == want:
                break
        await events.aclose()
        return fired

    print("fired", asyncio.run(watch()))
    hook = CarerixEventStoreHook(store_conn_id=None, store_url=url)
    with hook.claim("metrics.watch", EventFilter.build(["cremployee:*"]), owner="metrics_dag") as claim:
        print("claimed", len(claim))
    hook.close()
    """
)


def _store_events(url: str, types: list[str]) -> None:
    with EventStore(url) as store:
        for event_type in types:
            raw = body(event_type=event_type)
            store.insert(raw, EventPayload.model_validate_json(raw))


def test_a_trigger_and_a_claim_send_their_metrics_to_statsd(statsd: StatsdListener, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'events.db'}"
    _store_events(url, ["cremployee:updated", "crjob:updated", "cremployee:created", "cremployee:updated"])
    script = tmp_path / "watch.py"
    script.write_text(TRIGGER_SCRIPT)
    env = {**_child_env(), **statsd.env()}
    out = subprocess.run(
        [sys.executable, str(script), url, "3"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "fired 3" in out.stdout and "claimed 3" in out.stdout
    statsd.wait_for(
        lambda s: s.values("airflow.carerix.claim.duration.metrics__watch.processed"), "claim metrics"
    )
    # The consumer's name is a name segment on plain StatsD (its dot as __), never an event's id.
    assert statsd.total("airflow.carerix.watcher.fired.metrics__watch") == 3
    assert statsd.total("airflow.carerix.watcher.polls.ok") >= 1
    lags = statsd.values("airflow.carerix.watcher.lag.metrics__watch")
    assert lags and all(kind == "ms" and value > 0 for value, kind in lags)
    assert statsd.total("airflow.carerix.claim.events.metrics__watch") == 3
    assert [k for _, k in statsd.values("airflow.carerix.claim.lease_wait.metrics__watch")] == ["ms"]
    assert [k for _, k in statsd.values("airflow.carerix.claim.duration.metrics__watch.processed")] == ["ms"]


def _child_env() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


# -- inside Airflow: the triggerer's watcher and the task's claim ---------------------------------------------


@pytest.mark.airflow_e2e
@pytest.mark.timeout(900)  # starts Airflow
def test_airflow_components_send_the_metrics_where_metrics_go(
    airflow_stack: Any, statsd: StatsdListener, tmp_path: Path
) -> None:
    """The 3.2+ triggerer sets Airflow's core Stats up and forks its trigger runner; a task sets the SDK's up:
    the watcher and the claim each find the one their process uses."""
    from tests.fixtures.airflow_stack import AirflowStack, wait_for
    from tests.fixtures.receiver import start_receiver

    store_url = f"sqlite:///{tmp_path / 'carerix_events.db'}"
    store = EventStore(store_url)
    store.ping()
    receiver_url, stop_receiver = start_receiver(store_url, SECRET)
    try:
        stack: AirflowStack = airflow_stack(env={"CARERIX_EVENT_STORE_URL": store_url, **statsd.env()})
        stack.wait_healthy()
        wait_for(
            lambda: store.get_cursor("carerix_cremployee_updated:origin") > 0, "the watcher", timeout=300
        )
        for _ in range(3):
            response = httpx.post(f"{receiver_url}/events", content=body(), headers=HEADERS, timeout=30)
            assert response.status_code == 201
        statsd.wait_for(
            lambda s: s.total("airflow.carerix.claim.events.carerix_cremployee_updated") >= 3,
            "the task's claim metrics",
            timeout=300,
        )
    finally:
        stop_receiver()
        store.close()
    assert statsd.total("airflow.carerix.watcher.fired.carerix_cremployee_updated") >= 3
    assert statsd.total("airflow.carerix.watcher.polls.ok") > 0
    assert statsd.values("airflow.carerix.watcher.lag.carerix_cremployee_updated")
    assert statsd.values("airflow.carerix.claim.duration.carerix_cremployee_updated.processed")
    assert statsd.values("airflow.carerix.claim.lease_wait.carerix_cremployee_updated")


def test_a_backend_without_its_client_package_is_reported_off_not_pretended(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Airflow logs an error and counts into a no-op when ``statsd`` is missing: the start-up line says so."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "statsd" else real(name, *a)
    )
    monkeypatch.setenv("AIRFLOW__METRICS__STATSD_ON", "True")
    metrics.reset()
    try:
        with caplog.at_level("WARNING", logger="airflow_provider_carerix.metrics"):
            where = metrics.describe()
        assert (
            where.startswith("off")
            and "statsd is not installed" in where
            and "apache-airflow[statsd]" in where
        )
        assert any("statsd package is not installed" in r.getMessage() for r in caplog.records)
        metrics.incr(metrics.RECEIVER_STORED)  # a no-op, never an error
    finally:
        monkeypatch.undo()
        metrics.reset()
