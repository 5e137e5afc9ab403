"""The code docs/data.md shows, run for real against the emulator (``tests/test_docs.py`` keeps the page equal
to these blocks)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_carerix.emulator import DATA_SCOPE, MANAGE_SCOPE, CarerixEmulator


@pytest.fixture
def data_emulator(emulator_factory: Any, monkeypatch: pytest.MonkeyPatch) -> CarerixEmulator:
    emulator = emulator_factory()
    monkeypatch.setenv(
        "AIRFLOW_CONN_CARERIX_DEFAULT", emulator.connection_json(scope=f"{MANAGE_SCOPE} {DATA_SCOPE}")
    )
    return emulator


def test_fetching_records(data_emulator: CarerixEmulator) -> None:
    data_emulator.delete_record("cremployee", 3, deliver=False)
    data_emulator.update_record("cremployee", 2, {"city": "Delft"}, deliver=False)
    # [START howto_get_entities]
    from airflow_provider_carerix.hooks.carerix import CarerixHook

    hook = CarerixHook()  # carerix_default, its scope naming urn:cx/cx5Wrapper:data:manage too
    records = hook.get_entities(
        "cremployee", ["1", "2", "3"], ["firstName", "toUser.lastName", "toStatusNode.value"]
    )
    # {"1": {"_id": "1", "employeeID": 1, "firstName": ..., "toUser": {"lastName": ...}, "toStatusNode": {...},
    #        "creationDate": "2025-11-08 19:06:15", "modificationDate": ..., "deleted": 0}, "2": {...}}
    with_deleted = hook.get_entities("cremployee", ["3"], deleted=True)  # {"3": {..., "deleted": 1}}
    since = datetime.now(timezone.utc) - timedelta(hours=1)
    for record in hook.iter_entities("cremployee", modified_since=since, fields=["city"]):
        print(record["employeeID"], record["modificationDate"])  # newest first
    # [END howto_get_entities]
    assert sorted(records) == ["1", "2"] and records["1"]["toUser"]["lastName"]
    assert with_deleted["3"]["deleted"] == 1


def test_from_a_claim(
    data_emulator: CarerixEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from airflow_provider_carerix.definitions.models import EventPayload
    from airflow_provider_carerix.hooks.carerix import CarerixHook
    from airflow_provider_carerix.store import EventStore

    store_url = f"sqlite:///{tmp_path / 'events.db'}"
    monkeypatch.setenv("CARERIX_EVENT_STORE_URL", store_url)
    from airflow_provider_carerix.events import CarerixEvents

    candidates = CarerixEvents("docs_candidates", event_types=["cremployee:*"], start_from="earliest")
    with EventStore(store_url) as store:
        for n, (kind, entity_id, changed) in enumerate(
            [
                ("updated", "4", ["touser.lastname"]),
                ("updated", "4", ["touser.mobilenumber"]),
                ("updated", "5", ["touser.city"]),
                ("deleted", "6", None),
            ]
        ):
            data: dict[str, Any] = {"entityId": entity_id, **({"changedFields": changed} if changed else {})}
            payload = {
                "id": f"doc-{n}",
                "time": "2026-12-01T09:00:00Z",
                "type": f"cremployee:{kind}",
                "data": data,
            }
            store.insert(json.dumps(payload), EventPayload.model_validate(payload))
    # [START howto_claim_entities]
    with candidates.claim() as claim:
        # One change per candidate: its events, the latest, the union of their changedFields.
        changes = claim.entities("cremployee")
        live = [c for c in changes if not c.deleted]
        named = [c.entity_id for c in live if c.changed("touser.lastname", "tostatusnode")]
        records = CarerixHook().get_entities("cremployee", named, ["toUser.lastName", "toStatusNode.value"])
        deleted = [c.entity_id for c in changes if c.deleted]  # remove these downstream
    # [END howto_claim_entities]
    assert [c.entity_id for c in changes] == ["4", "5", "6"] and set(records) == {"4"} and deleted == ["6"]
    assert changes[0].changed_fields == {"touser.lastname", "touser.mobilenumber"}


def _fetch(ids: list[str]) -> Any:
    import logging

    from airflow_provider_carerix.hooks.carerix import CarerixHook

    log = logging.getLogger("docs")
    # [START howto_data_errors]
    from airflow_provider_carerix.exceptions import CarerixGraphQLError, CarerixScopeError

    try:
        records = CarerixHook().get_entities("cremployee", ids)
    except CarerixScopeError as exc:  # 403: the token lacks the data scope
        log.error("add %s to the connection's scope field", exc.scope)  # urn:cx/cx5Wrapper:data:manage
        raise
    except CarerixGraphQLError as exc:  # GraphQL errors, or data with holes: nothing is returned
        log.error("%s %s: %s (partial data: %s)", exc.entity, exc.ids, exc.messages, exc.partial)
        raise
    # [END howto_data_errors]
    return records


def test_errors(
    emulator: CarerixEmulator, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from airflow_provider_carerix.exceptions import CarerixGraphQLError, CarerixScopeError

    with pytest.raises(
        CarerixScopeError
    ):  # the emulator fixture's connection asks for the Webhooks scope only
        _fetch(["1", "2"])
    assert f"add {DATA_SCOPE} to the connection's scope field" in caplog.text
    monkeypatch.setenv(
        "AIRFLOW_CONN_CARERIX_DEFAULT", emulator.connection_json(scope=f"{MANAGE_SCOPE} {DATA_SCOPE}")
    )
    emulator.break_records("cremployee", ["2"])
    with pytest.raises(CarerixGraphQLError) as caught:
        _fetch(["1", "2"])
    assert caught.value.partial and "cremployee ['1', '2']" in caplog.text
