"""The emulator's records and the provider's queries against Carerix's own schema.

``airflow_provider_carerix/definitions/carerix_schema.graphql`` is cut (``scripts/carerix_schema.py``) from the
full introspection dump of Carerix's live GraphQL schema in the public repository ``jwvantriet/confair-api``
(``docs/carerix-schema.graphql``; the file's header names the commit). Everything the emulator serves and
everything the provider asks for must be in it, with the same types: a field name guessed wrong here would
pass against the emulator and fail against Carerix.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from airflow_provider_carerix.definitions import entities
from airflow_provider_carerix.emulator import dataset, graphql

SCHEMA = entities.load_schema()


def test_the_schema_copy_names_its_source() -> None:
    assert "jwvantriet/confair-api docs/carerix-schema.graphql" in SCHEMA.source
    # The copy keeps whole record types: CREmployee alone has over 500 fields in the dump.
    assert len(SCHEMA.fields("CREmployee")) > 500


@pytest.mark.parametrize("type_name", sorted(dataset.TYPES))
def test_every_emulated_field_is_in_carerix_schema_with_its_type(type_name: str) -> None:
    declared = SCHEMA.fields(type_name)
    assert declared, f"{type_name} is not in the schema copy"
    wrong = {
        name: (kind, declared[name].type if name in declared else None)
        for name, kind in dataset.TYPES[type_name].items()
        if name not in declared or declared[name].type != kind
    }
    assert wrong == {}, "emulator type differs from Carerix's (emulator, schema)"


@pytest.mark.parametrize("root", sorted(dataset.ENTITY_ROOTS.values(), key=lambda r: r.entity), ids=str)
def test_root_fields_page_objects_and_arguments_match(root: dataset.EntityRoot) -> None:
    query = SCHEMA.fields("Query")
    single, page = query[root.query], query[root.page_query]
    assert single.type == root.type_name
    page_type = page.type
    assert SCHEMA.fields(page_type)["items"].type == f"[{root.type_name}]"
    assert {n: f.type for n, f in SCHEMA.fields(page_type).items() if n != "items"} == dataset.PAGE_FIELDS
    assert graphql.ARGUMENT_TYPES[root.query] == single.args
    assert graphql.ARGUMENT_TYPES[root.page_query] == page.args
    if root.key:
        assert SCHEMA.fields(root.type_name)[root.key].type == "Int!"


def test_pageable_order_and_enums_match() -> None:
    for name, fields in graphql._INPUTS.items():
        assert {n: f.type for n, f in SCHEMA.fields(name).items()} == fields
    for name, values in graphql._ENUMS.items():
        assert SCHEMA.enums[name] == values


@pytest.mark.parametrize("name", sorted(entities.ENTITIES))
def test_each_entity_reads_real_fields_the_emulator_serves(name: str) -> None:
    ent = entities.ENTITIES[name]
    assert SCHEMA.fields("Query")[ent.query].type == ent.type_name
    assert SCHEMA.fields("Query")[ent.page_query].args.keys() >= {"qualifier", "pageable", "norestrict"}
    if ent.key:
        assert SCHEMA.fields(ent.type_name)[ent.key].type == "Int!"
    assert ("deleted" in SCHEMA.fields(ent.type_name)) == ent.deletable
    for path in [*ent.always, *ent.default_fields]:
        current = ent.type_name
        for segment in entities.resolve_path(ent.type_name, path).split("."):
            assert segment in dataset.TYPES[current], f"the emulator does not serve {current}.{segment}"
            current = dataset.TYPES[current][segment].strip("[]!")


def test_changed_fields_map_to_graphql_paths_case_insensitively() -> None:
    # The guide's sample event for cremployee:updated.
    changed = [
        "touser.attributechanges",
        "touser",
        "touser.lastname",
        "modificationdate",
        "touser.modificationdate",
    ]
    resolved, unresolved = entities.graphql_paths("cremployee", changed)
    assert resolved == ["toUser", "toUser.lastName", "modificationDate", "toUser.modificationDate"]
    assert unresolved == ["touser.attributechanges"]  # a paged list, not a plain field
    assert entities.selection("cremployee", ["touser.lastname", "tostatusnode"]).endswith(
        "toUser { lastName } toStatusNode { _id } }"
    )


def test_ambiguous_and_unknown_names_are_errors_that_say_so() -> None:
    with pytest.raises(entities.EntityError, match=r"ambiguous on CRToDo \(toDoID and todoID\)"):
        entities.resolve_path("CRToDo", "todoid")
    assert entities.resolve_path("CRToDo", "todoID") == "todoID"
    with pytest.raises(entities.EntityError, match="CREmployee has no field 'lastname2'"):
        entities.resolve_path("CREmployee", "lastname2")
    with pytest.raises(entities.EntityError, match="known are crcampaign, crcompany, crcontact, cremployee"):
        entities.entity("crplacement")
    with pytest.raises(entities.EntityError, match="not a dotted path"):
        entities.selection("cremployee", ["firstName } crJobPage { items { _id"])


def test_ids_reach_the_qualifier_only_as_numbers() -> None:
    assert entities.ids_qualifier("cremployee", ["1", 22]) == "employeeID = 1 OR employeeID = 22"
    for bad in ("1 OR deleted = 1", "-1", "1.5", "", "٣"):
        with pytest.raises(entities.EntityError, match="is not a number"):
            entities.ids_qualifier("cremployee", [bad])
    with pytest.raises(entities.EntityError, match="no numeric key"):
        entities.ids_qualifier("crmatch", ["1"])


def test_dates_are_amsterdam_wall_time_and_the_repeated_hour_asks_earlier() -> None:
    summer = datetime(2026, 7, 1, 12, 0, 5, 999, tzinfo=timezone.utc)
    assert entities.format_carerix_date(summer) == "2026-07-01 14:00:05"
    assert entities.parse_carerix_date("2026-07-01 14:00:05") == summer.replace(microsecond=0)
    assert entities.parse_carerix_date("2026-01-10 09:00:00") == datetime(2026, 1, 10, 8, tzinfo=timezone.utc)
    assert (
        entities.modified_since_qualifier(summer)
        == "modificationDate >= (NSCalendarDate) '2026-07-01 14:00:05'"
    )
    # 2026-10-25 02:00-03:00 happens twice in Amsterdam (00:30 UTC is the first 02:30, 01:30 UTC the second)
    # and nobody knows which one Carerix reads '02:30' as: whichever it picks, the asked time is never later.
    for instant in (
        datetime(2026, 10, 25, 0, 30, tzinfo=timezone.utc),
        datetime(2026, 10, 25, 1, 30, tzinfo=timezone.utc),
    ):
        asked = datetime.strptime(
            entities.modified_since_qualifier(instant).split("'")[1], "%Y-%m-%d %H:%M:%S"
        )
        for fold in (0, 1):
            assert asked.replace(tzinfo=entities.AMSTERDAM, fold=fold) <= instant, (instant, fold)
