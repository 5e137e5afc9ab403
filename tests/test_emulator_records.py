"""The emulator's records over GraphQL, as Carerix serves them: pages, qualifiers, norestrict, scopes, partial
errors, and record changes that deliver the matching events."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from airflow_provider_carerix.emulator import DATA_SCOPE, MANAGE_SCOPE, CarerixEmulator
from tests.test_emulator import Receiver

PAGE = (
    "query($q: String, $p: Pageable, $n: Boolean) { crEmployeePage(qualifier: $q, pageable: $p, norestrict: $n) "
    "{ page size totalElements totalPages numberOfElements first last sort items { _id employeeID deleted "
    "toUser { lastName } modificationDate } } }"
)


def ask(
    emulator: CarerixEmulator,
    query: str,
    variables: dict[str, Any] | None = None,
    *,
    scopes: tuple[str, ...] = (DATA_SCOPE,),
) -> requests.Response:
    headers = {"Authorization": f"Bearer {emulator.issue_token(scopes=scopes)}"}
    return requests.post(
        emulator.graphql_url, json={"query": query, "variables": variables or {}}, headers=headers, timeout=10
    )


def page(emulator: CarerixEmulator, **variables: Any) -> dict[str, Any]:
    answer = ask(emulator, PAGE, variables).json()
    assert "errors" not in answer, answer
    return answer["data"]["crEmployeePage"]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def test_pages_are_capped_silently_and_say_where_they_are(emulator_factory: Any) -> None:
    emulator = emulator_factory(data_sizes={"cremployee": 130})
    first = page(emulator, p={"page": 0, "size": 500})
    assert (first["size"], first["totalElements"], first["totalPages"], first["last"]) == (100, 130, 2, False)
    assert [i["employeeID"] for i in first["items"]] == list(range(1, 101))
    second = page(emulator, p={"page": 1, "size": 500})
    assert [i["employeeID"] for i in second["items"]] == list(range(101, 131))
    assert (second["numberOfElements"], second["first"], second["last"]) == (30, False, True)
    default = page(emulator)
    assert (default["page"], default["size"], len(default["items"])) == (0, 20, 20)


def test_or_chains_sort_and_dates_filter(emulator: CarerixEmulator) -> None:
    chain = " OR ".join(f"employeeID = {n}" for n in (7, 3, 120))
    found = page(emulator, q=chain, p={"sort": [{"property": "employeeID", "direction": "DESC"}]})
    assert [i["employeeID"] for i in found["items"]] == [120, 7, 3]
    assert found["sort"] == "employeeID: DESC"
    cutoff = sorted(r["modificationDate"] for r in emulator.records("cremployee"))[-5]
    recent = page(emulator, q=f"modificationDate >= (NSCalendarDate) '{cutoff}'", p={"size": 100})
    assert len(recent["items"]) == 5 and all(i["modificationDate"] >= cutoff for i in recent["items"])
    nested = page(emulator, q="(toUser.userID = 1003 or toUser.userID == 1004) AND deleted = 0")
    assert [i["employeeID"] for i in nested["items"]] == [3, 4]


@pytest.mark.parametrize(
    ("qualifier", "message"),
    [
        ("employeeID in (1, 2)", "cannot parse qualifier"),
        ("lastName like 'Bo*'", "expected a comparison operator"),
        ("NOT employeeID = 1", "expected a key path"),
        ("employeeId = 1", "unknown key path 'employeeId'"),
        ("informalName = 'x'", "the emulator holds no CREmployee.informalName"),
        ("modificationDate >= (NSCalendarDate) '2026-13-01 00:00:00'", "is not a date"),
        ("employeeID = 1 OR", "expected a key path"),
        ("(employeeID = 1", "expected ')'"),
        ("", "it is empty"),
    ],
)
def test_qualifiers_outside_the_language_are_field_errors(
    emulator: CarerixEmulator, qualifier: str, message: str
) -> None:
    answer = ask(emulator, PAGE, {"q": qualifier}).json()
    assert answer["data"] == {"crEmployeePage": None}
    (error,) = answer["errors"]
    assert message in error["message"] and error["path"] == ["crEmployeePage"]


def test_or_chain_limit_when_one_is_set(emulator_factory: Any) -> None:
    emulator = emulator_factory(max_qualifier_terms=3)
    assert len(page(emulator, q="employeeID = 1 OR employeeID = 2 OR employeeID = 3")["items"]) == 3
    answer = ask(
        emulator, PAGE, {"q": "employeeID = 1 OR employeeID = 2 OR employeeID = 3 OR employeeID = 4"}
    ).json()
    assert "more than 3 comparisons" in answer["errors"][0]["message"]


def test_arguments_are_validated_like_carerixs_schema(emulator: CarerixEmulator) -> None:
    for variables, message in [
        ({"p": {"size": "10"}}, "not a valid 'Int'"),
        ({"p": {"limit": 10}}, "not defined by type 'Pageable'"),
        ({"p": {"sort": [{"direction": "DESC"}]}}, "must not be null"),
        ({"p": {"sort": [{"property": "employeeID", "direction": "down"}]}}, "not a valid 'Direction'"),
        ({"n": "yes"}, "not a valid 'Boolean'"),
    ]:
        answer = ask(emulator, PAGE, variables).json()
        assert answer["data"] is None and message in answer["errors"][0]["message"], variables
    answer = ask(emulator, "{ crEmployee { _id } }").json()
    assert "must not be null" in answer["errors"][0]["message"]
    answer = ask(emulator, '{ crEmployeePage(filter: "x") { page } }').json()
    assert "Unknown argument(s) ['filter']" in answer["errors"][0]["message"]


def test_deleted_records_only_with_norestrict(emulator: CarerixEmulator) -> None:
    emulator.delete_record("cremployee", 2, deliver=False)
    assert [i["employeeID"] for i in page(emulator, q="employeeID = 2 OR employeeID = 3")["items"]] == [3]
    both = page(emulator, q="employeeID = 2 OR employeeID = 3", n=True)["items"]
    assert [(i["employeeID"], i["deleted"]) for i in both] == [(2, 1), (3, 0)]
    single = ask(emulator, '{ a: crEmployee(_id: "2") { _id } b: crEmployee(_id: 3) { _id } }').json()
    assert single == {"data": {"a": None, "b": {"_id": "3"}}}


def test_matches_have_no_key_and_contacts_are_only_contacts(emulator: CarerixEmulator) -> None:
    answer = ask(
        emulator, '{ a: crMatch(_id: "3") { _id toEmployee { employeeID } statusInfo { statusName } } }'
    ).json()
    assert answer["data"]["a"]["_id"] == "3" and answer["data"]["a"]["statusInfo"]["statusName"]
    assert (
        "Cannot query field 'matchID'"
        in ask(emulator, '{ crMatch(_id: "3") { matchID } }').json()["errors"][0]["message"]
    )
    contacts = ask(
        emulator, "{ crContactPage(pageable: {size: 100}) { totalElements items { userID } } }"
    ).json()
    assert contacts["data"]["crContactPage"]["totalElements"] == 30
    assert all(i["userID"] >= 5001 for i in contacts["data"]["crContactPage"]["items"])


def test_scopes_each_root_field_needs(emulator: CarerixEmulator) -> None:
    webhooks_only = ask(emulator, PAGE, scopes=(MANAGE_SCOPE,))
    assert webhooks_only.status_code == 403 and DATA_SCOPE in webhooks_only.json()["message"]
    data_only = ask(emulator, "{ webhookDeliveryJobPage { page } }", scopes=(DATA_SCOPE,))
    assert data_only.status_code == 403 and MANAGE_SCOPE in data_only.json()["message"]
    both = ask(
        emulator,
        "{ webhookDeliveryJobPage { page } crEmployee(_id: 1) { _id } }",
        scopes=(MANAGE_SCOPE, DATA_SCOPE),
    )
    assert both.status_code == 200 and both.json()["data"]["crEmployee"] == {"_id": "1"}


def test_broken_records_give_partial_data_with_paths(emulator: CarerixEmulator) -> None:
    emulator.break_records("cremployee", [2], "lazy loading failed")
    answer = ask(emulator, PAGE, {"q": "employeeID = 1 OR employeeID = 2 OR employeeID = 3"}).json()
    items = answer["data"]["crEmployeePage"]["items"]
    assert [i and i["employeeID"] for i in items] == [1, None, 3]
    (error,) = answer["errors"]
    assert error["path"] == ["crEmployeePage", "items", 1] and "lazy loading failed" in error["message"]
    single = ask(emulator, '{ crEmployee(_id: "2") { _id } ok: crEmployee(_id: "1") { _id } }').json()
    assert single["data"] == {"crEmployee": None, "ok": {"_id": "1"}} and single["errors"][0]["path"] == [
        "crEmployee"
    ]
    emulator.inject_graphql_error("Service unavailable: SERVICE_ERROR")
    whole = ask(emulator, PAGE).json()
    assert whole["data"] is None and whole["errors"][0]["message"] == "Service unavailable: SERVICE_ERROR"


def _webhook(emulator: CarerixEmulator, url: str, event_type: str, condition: str | None = None) -> None:
    headers = {"Authorization": f"Bearer {emulator.issue_token()}"}
    app = requests.post(
        f"{emulator.api_url}/applications/",
        json={"_kind": "Application", "name": "a"},
        headers=headers,
        timeout=5,
    ).json()
    flt: dict[str, Any] = {"eventType": event_type, **({"condition": condition} if condition else {})}
    requests.post(
        f"{emulator.api_url}/applications/{app['_id']}/webhooks",
        json={"_kind": "Webhook", "url": url, "filters": [flt]},
        headers=headers,
        timeout=5,
    ).raise_for_status()


def test_changing_a_record_delivers_the_event_that_names_it(
    emulator: CarerixEmulator, receiver: Receiver
) -> None:
    _webhook(emulator, receiver.url, "cremployee:*")
    (delivery,) = emulator.update_record("cremployee", 17, {"lastName": "Zwart", "city": "Delft"})
    assert delivery.ok
    event = receiver.received[-1][1]
    assert event["type"] == "cremployee:updated" and event["data"]["entityId"] == "17"
    assert event["data"]["changedFields"] == [
        "touser.attributechanges",
        "touser",
        "touser.lastname",
        "touser.modificationdate",
        "touser.city",
        "modificationdate",
    ]
    fetched = page(emulator, q="employeeID = 17")["items"][0]
    assert fetched["toUser"]["lastName"] == "Zwart"
    # The event's time is the record's modificationDate, the same instant.
    from airflow_provider_carerix.definitions.entities import parse_carerix_date

    assert parse_carerix_date(fetched["modificationDate"]).strftime("%Y-%m-%dT%H:%M:%SZ") == event["time"]
    assert emulator.update_record("cremployee", 17, {"mobileNumber": "+31 6 1"}, deliver=False) == []
    assert len(receiver.received) == 1
    new_id, (created,) = emulator.create_record("cremployee", {"firstName": "Noor"})
    assert created.event["type"] == "cremployee:created" and created.event["data"] == {"entityId": new_id}
    assert page(emulator, q=f"employeeID = {new_id}")["items"][0]["toUser"]["lastName"] is None
    (deleted,) = emulator.delete_record("cremployee", new_id)
    assert deleted.event["type"] == "cremployee:deleted"


def test_conditions_see_the_reference_a_change_sets(emulator: CarerixEmulator, receiver: Receiver) -> None:
    _webhook(emulator, receiver.url, "crjob:updated", "data.tostatusnode eq '6'")
    assert emulator.update_record("crjob", 4, {"toStatusNode": 5}) == []
    (delivery,) = emulator.update_record("crjob", 4, {"toStatusNode": 6})
    assert delivery.event["data"] == {
        "entityId": "4",
        "tostatusnode": "6",
        "changedFields": ["tostatusnode", "modificationdate"],
    }


def test_record_control_api_over_http(emulator: CarerixEmulator, receiver: Receiver) -> None:
    _webhook(emulator, receiver.url, "crcompany:updated")
    base = f"{emulator.url}/_emulator/records/crcompany"
    r = requests.patch(
        f"{base}/3", json={"fields": {"name": "Nieuw BV"}, "at": "2026-11-02T10:00:00Z"}, timeout=5
    )
    assert r.status_code == 200 and r.json()["deliveries"][0]["event"]["time"] == "2026-11-02T10:00:00Z"
    assert requests.get(f"{base}/3", timeout=5).json()["modificationDate"] == "2026-11-02 11:00:00"
    assert requests.patch(f"{base}/3", json={"fields": {"companyID": 9}}, timeout=5).status_code == 400
    assert requests.patch(f"{base}/999", json={"fields": {"name": "x"}}, timeout=5).status_code == 404
    assert requests.get(f"{emulator.url}/_emulator/records/crplacement", timeout=5).status_code == 404
    requests.post(
        f"{emulator.url}/_emulator/break-records", json={"entity": "crcompany", "ids": [3]}, timeout=5
    )
    answer = ask(emulator, "{ crCompany(_id: 3) { name } }").json()
    assert answer["data"] == {"crCompany": None}
    requests.post(f"{emulator.url}/_emulator/reset", timeout=5)
    assert ask(emulator, "{ crCompany(_id: 3) { name } }").json()["data"]["crCompany"]["name"] != "Nieuw BV"
