"""CarerixHook.get_entities / iter_entities against the emulator: batching and its limits, pagination, deleted
records, the data scope, 429/503 retries, GraphQL errors and partial data, and personal data kept out of logs.

Figures behind the defaults (``benchmarks/data.py`` measures them): ids go 100 to a request, an ``OR`` chain
of the numeric key in one page of 100, because public client code reports Carerix caps pages at 100 [U]: a
longer chain would need more pages, so no fewer requests, and a shorter one more requests.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from airflow_provider_carerix.definitions.entities import EntityError
from airflow_provider_carerix.emulator import DATA_SCOPE, MANAGE_SCOPE, CarerixEmulator
from airflow_provider_carerix.exceptions import CarerixGraphQLError, CarerixScopeError
from airflow_provider_carerix.hooks import carerix as carerix_module
from airflow_provider_carerix.hooks.carerix import CarerixHook, resolve_settings

BOTH_SCOPES = f"{MANAGE_SCOPE} {DATA_SCOPE}"


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    recorded: list[float] = []
    monkeypatch.setattr(carerix_module, "_sleep", recorded.append)
    return recorded


@pytest.fixture
def start(emulator_factory: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """An emulator (options as CarerixEmulator's) behind carerix_default, the connection asking for both scopes."""

    def started(**options: Any) -> CarerixEmulator:
        emulator = emulator_factory(**options)
        monkeypatch.setenv("AIRFLOW_CONN_CARERIX_DEFAULT", emulator.connection_json(scope=BOTH_SCOPES))
        return emulator

    return started


def graphql_requests(emulator: CarerixEmulator) -> int:
    return emulator.count("POST", "/graphql")


def hook() -> CarerixHook:
    return CarerixHook(retry_backoff=0.001, timeout=10)


# ------------------------------------------------------------------------------------------ batching


def test_ids_are_fetched_a_hundred_to_a_request(start: Any) -> None:
    emulator = start(data_sizes={"cremployee": 300})
    ids = [str(n) for n in range(1, 251)] + ["7", "250", "9999"]  # repeats asked once; 9999 does not exist
    records = hook().get_entities("cremployee", ids, ["firstName", "toUser.lastName"])
    assert graphql_requests(emulator) == 3
    assert sorted(records, key=int) == [str(n) for n in range(1, 251)]
    expected = {r["employeeID"]: r for r in emulator.records("cremployee")}
    for entity_id, record in records.items():
        assert record["employeeID"] == int(entity_id)
        assert record["firstName"] == expected[int(entity_id)]["firstName"]
        assert set(record) == {
            "_id",
            "employeeID",
            "creationDate",
            "modificationDate",
            "deleted",
            "firstName",
            "toUser",
        }


def test_a_page_smaller_than_the_batch_is_followed(start: Any) -> None:
    emulator = start(max_page_size=30)
    records = hook().get_entities("cremployee", range(1, 101))
    assert sorted(map(int, records)) == list(range(1, 101))
    assert graphql_requests(emulator) == 4  # one batch of 100 ids, in pages of 30, 30, 30, 10


def test_a_chain_longer_than_the_server_takes_is_a_typed_error_a_smaller_batch_avoids(start: Any) -> None:
    emulator = start(max_qualifier_terms=50)
    with pytest.raises(CarerixGraphQLError) as caught:
        hook().get_entities("cremployee", range(1, 101))
    error = caught.value
    assert error.entity == "cremployee" and error.ids == [str(n) for n in range(1, 101)]
    assert "more than 50 comparisons" in str(error) and "for cremployee ids 1, 2, 3" in str(error)
    assert len(hook().get_entities("cremployee", range(1, 101), batch_size=50)) == 100
    assert graphql_requests(emulator) == 1 + 2


def test_entities_without_a_key_are_read_by_id_under_aliases(start: Any) -> None:
    emulator = start()
    records = hook().get_entities("crmatch", ["3", "5", "404"], batch_size=2)
    assert set(records) == {"3", "5"} and records["3"]["toEmployee"]["employeeID"]
    assert graphql_requests(emulator) == 2


def test_webhook_spelling_of_fields_and_entities(start: Any) -> None:
    start()
    records = hook().get_entities("cremployee:updated", ["4"], ["touser.lastname", "TOSTATUSNODE.value"])
    assert set(records["4"]["toUser"]) == {"lastName"} and "value" in records["4"]["toStatusNode"]


def test_bad_entity_field_or_id_fails_before_any_request(start: Any) -> None:
    emulator = start()
    with pytest.raises(EntityError, match=r"unknown Carerix entity 'crplacement'.*known are"):
        hook().get_entities("crplacement", ["1"])
    with pytest.raises(EntityError, match="CREmployee has no field 'lastname2'"):
        hook().get_entities("cremployee", ["1"], ["lastname2"])
    with pytest.raises(EntityError, match="'1 OR deleted = 1' is not a number"):
        hook().get_entities("cremployee", ["2", "1 OR deleted = 1"])
    assert graphql_requests(emulator) == 0 and emulator.token_requests == 0


# ------------------------------------------------------------------------------------------ deleted records


def test_deleted_records_only_when_asked(start: Any) -> None:
    emulator = start()
    emulator.delete_record("cremployee", 8)
    assert set(hook().get_entities("cremployee", ["7", "8"])) == {"7"}
    both = hook().get_entities("cremployee", ["7", "8"], deleted=True)
    assert (both["7"]["deleted"], both["8"]["deleted"]) == (0, 1)


# ------------------------------------------------------------------------------------------ scope


def test_a_token_without_the_data_scope_names_the_scope_to_add(
    emulator_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator = emulator_factory()  # the connection asks for the default scope only
    with pytest.raises(CarerixScopeError) as caught:
        hook().get_entities("cremployee", ["1"])
    assert caught.value.status_code == 403 and caught.value.scope == DATA_SCOPE
    assert f"add {DATA_SCOPE} to the scope field of the connection 'carerix_default'" in str(caught.value)
    assert graphql_requests(emulator) == 1  # a 403 is not retried
    # The connection asks for it, but the client does not hold it in Carerix: the message says so instead.
    other = emulator_factory(client_scopes=(MANAGE_SCOPE,))
    monkeypatch.setenv("AIRFLOW_CONN_CARERIX_DEFAULT", other.connection_json(scope=BOTH_SCOPES))
    with pytest.raises(CarerixScopeError, match="did not grant it: give the client demo-client that scope"):
        hook().get_entities("cremployee", ["1"])


def test_scopes_are_space_separated_and_normalised(emulator: CarerixEmulator) -> None:
    conn = type(
        "Conn", (), {"conn_id": "c", "login": None, "password": None, "host": emulator.url, "port": None}
    )()
    conn.extra_dejson = {
        "client_id": "a",
        "client_secret": "b",
        "realm": "r",
        "scope": f" {MANAGE_SCOPE},\n{DATA_SCOPE} ",
    }
    settings = resolve_settings(conn)
    assert settings.scope == BOTH_SCOPES and settings.scopes == [MANAGE_SCOPE, DATA_SCOPE]


def test_one_token_serves_the_delivery_log_and_the_records(start: Any) -> None:
    emulator = start()
    h = hook()
    list(h.iter_delivery_jobs())
    h.get_entities("cremployee", ["1"])
    assert emulator.token_requests == 1


# ------------------------------------------------------------------------------------------ retries and errors


@pytest.mark.parametrize("status", [429, 503])
def test_429_and_503_are_retried_with_the_hooks_policy(start: Any, sleeps: list[float], status: int) -> None:
    emulator = start()
    emulator.inject_fault(status=status, times=2, path_contains="/graphql", retry_after=3)
    assert set(hook().get_entities("cremployee", ["1", "2"])) == {"1", "2"}
    assert [r.status for r in emulator.requests if "/graphql" in r.path] == [status, status, 200]
    assert sleeps == [3.0, 3.0]  # Retry-After honoured


def test_partial_data_is_an_error_naming_the_records(start: Any) -> None:
    emulator = start()
    emulator.break_records("cremployee", ["12"], "could not load toUser")
    with pytest.raises(CarerixGraphQLError) as caught:
        hook().get_entities("cremployee", ["11", "12", "13"])
    error = caught.value
    assert error.partial and error.entity == "cremployee" and error.ids == ["11", "12", "13"]
    assert error.errors[0]["path"] == ["crEmployeePage", "items", 1]
    assert "could not load toUser at crEmployeePage.items.1" in str(error)
    assert "partial data was not used" in str(error)


def test_a_null_item_without_an_error_is_not_taken_as_complete(
    start: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    start()
    h = hook()
    answer = {
        "crEmployeePage": {"items": [{"_id": "1", "employeeID": 1}, None], "last": True, "totalPages": 1}
    }
    monkeypatch.setattr(h, "graphql", lambda query, variables=None: answer)
    with pytest.raises(CarerixGraphQLError, match=r"an item is null at crEmployeePage\.items\.1"):
        h.get_entities("cremployee", ["1", "2"])


def test_graphql_errors_are_typed_and_keep_every_message(start: Any) -> None:
    emulator = start()
    emulator.inject_graphql_error("Service unavailable: SERVICE_ERROR")
    with pytest.raises(CarerixGraphQLError) as caught:
        hook().get_entities("crvacancy", ["1"])
    assert caught.value.messages == ["Service unavailable: SERVICE_ERROR"]
    assert not caught.value.partial and caught.value.entity == "crvacancy"


# ------------------------------------------------------------------------------------------ changed since


def test_iter_entities_pages_newest_first_and_never_skips(start: Any) -> None:
    emulator = start()
    now = datetime.now(timezone.utc).replace(microsecond=0)
    for n, entity_id in enumerate(range(20, 30)):
        emulator.update_record(
            "cremployee", entity_id, {"city": "Delft"}, deliver=False, at=now - timedelta(minutes=n)
        )
    emulator.delete_record("cremployee", 31, deliver=False, at=now)
    since = now - timedelta(minutes=9, seconds=30)  # 20..29 changed at now-0..now-9 min
    h = hook()
    assert [r["employeeID"] for r in h.iter_entities("cremployee", modified_since=since)] == list(
        range(20, 30)
    )
    with_deleted = [
        r["employeeID"] for r in h.iter_entities("cremployee", modified_since=since, deleted=True)
    ]
    assert with_deleted[:2] == [20, 31] and len(with_deleted) == 11
    # A record changed while paging moves to the front: the rest shift back and are seen again, not skipped.
    pages = h.iter_entities("cremployee", modified_since=since, page_size=3)
    seen = [next(pages)["employeeID"] for _ in range(3)]
    emulator.update_record("cremployee", 27, {"city": "Leiden"}, deliver=False)
    seen += [r["employeeID"] for r in pages]
    assert set(seen) == set(range(20, 30)) - {27} | ({27} & set(seen[:3]))
    assert len(seen) == len(set(seen))


def test_records_never_reach_the_log(start: Any, caplog: pytest.LogCaptureFixture) -> None:
    emulator = start()
    caplog.set_level(logging.DEBUG)
    records = hook().get_entities("cremployee", ["1", "2", "3"])
    private = {str(r[k]) for r in emulator.records("cremployee")[:3] for k in ("lastName", "emailAddress")}
    assert records and private
    assert not [line for line in caplog.messages for value in private if value in line]
    assert any("cremployee: 3 of 3 record(s) found in 1 request(s)" in m for m in caplog.messages)
