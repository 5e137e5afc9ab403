"""The records behind Carerix's events: which GraphQL query reads each entity, its key, its fields, and the
query text and qualifiers the hook sends. Pure: no Airflow, no I/O beyond reading the schema file.

A webhook names an entity in its own vocabulary (``cremployee:updated``, ``data.entityId: "17"``,
``changedFields: ["touser.lastname"]``); the GraphQL data API (``/graphql/v1/graphql``) names it
``crEmployeePage``/``CREmployee`` with camelCase key paths (``toUser.lastName``) and filters with Carerix's
``qualifier`` language. This module is that translation, built on the part of Carerix's live schema kept in
``carerix_schema.graphql`` beside it (cut by ``scripts/carerix_schema.py`` from a public introspection dump;
its header names the source), so field names come from Carerix's schema, not from guesses.

What is inferred rather than published is marked [I] (see docs/data.md): ``_id`` is the numeric key as a
string, and several ids are asked for with an ``OR`` chain of the numeric key (no ``in`` operator is
documented).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

__all__ = [
    "AMSTERDAM",
    "DEFAULT_BATCH_SIZE",
    "ENTITIES",
    "Entity",
    "EntityError",
    "FieldDef",
    "Schema",
    "entity",
    "format_carerix_date",
    "ids_qualifier",
    "load_schema",
    "modified_since_qualifier",
    "parse_carerix_date",
]

#: Ids per request, and page size. Public client code reports that Carerix caps ``pageable.size`` at 100
#: ("Page hard limit on Carerix side is 100") [U]; an ``OR`` chain longer than a page would only need more
#: pages (as many requests), so one batch = one full page = one request. ``benchmarks/data.py`` measures it.
DEFAULT_BATCH_SIZE = 100

#: Carerix writes ``NSCalendarDate`` as ``'yyyy-MM-dd HH:mm:ss' at Amsterdam timezone`` (the scalar's
#: description in the schema) and reads qualifier dates the same way.
AMSTERDAM = ZoneInfo("Europe/Amsterdam")
_DATE_FORMAT = "%Y-%m-%d %H:%M:%S"

_SCHEMA_FILE = Path(__file__).with_name("carerix_schema.graphql")
_NAME = re.compile(r"^[_A-Za-z][_0-9A-Za-z]*$")


class EntityError(ValueError):
    """An entity, field or id the provider cannot ask Carerix for; the message says which and what is known."""


# ---------------------------------------------------------------------------------------------- the schema


@dataclass(frozen=True)
class FieldDef:
    """One field of a type as the schema declares it: ``name(args): type``."""

    name: str
    type: str  # as written: "Int!", "[CREmployee]", "CRUser"
    args: dict[str, str] = field(default_factory=dict)

    @property
    def base(self) -> str:
        """The named type without list or non-null marks."""
        return self.type.strip("[]!")

    @property
    def is_list(self) -> bool:
        return self.type.startswith("[")


@dataclass(frozen=True)
class Schema:
    """The definitions of ``carerix_schema.graphql``: object and input types with their fields, enums, scalars."""

    types: dict[str, dict[str, FieldDef]]
    kinds: dict[str, str]  # name -> "type" | "input" | "enum" | "scalar" | "interface"
    enums: dict[str, tuple[str, ...]]
    source: str  # the file's header line naming where the schema came from

    def is_scalar(self, type_name: str) -> bool:
        return self.kinds.get(type_name) in ("scalar", "enum") or type_name in _BUILTIN_SCALARS

    def fields(self, type_name: str) -> dict[str, FieldDef]:
        return self.types.get(type_name, {})


_BUILTIN_SCALARS = frozenset({"ID", "String", "Int", "Float", "Boolean"})
_DEFINITION = re.compile(r"^(?P<kind>type|input|enum|interface)\s+(?P<name>\w+)[^{]*\{\s*$")
_FIELD = re.compile(r"^(?P<name>\w+)(?:\((?P<args>[^)]*)\))?\s*:\s*(?P<type>[\w!\[\]]+)$")


def parse_sdl(text: str) -> Schema:
    """The small SDL subset ``scripts/carerix_schema.py`` writes: one definition per block, one field a line."""
    types: dict[str, dict[str, FieldDef]] = {}
    kinds: dict[str, str] = {}
    enums: dict[str, tuple[str, ...]] = {}
    source = ""
    current: str | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line.startswith("# Cut by") and not source:
            source = line[2:]
        if not line or line.startswith("#"):
            continue
        if current is None:
            if line.startswith("scalar "):
                kinds[line.split()[1]] = "scalar"
                continue
            match = _DEFINITION.match(line)
            if not match:
                raise ValueError(f"carerix_schema.graphql:{number}: unexpected {line!r}")
            current = match["name"]
            kinds[current] = match["kind"]
            types[current] = {}
            if match["kind"] == "enum":
                enums[current] = ()
            continue
        if line == "}":
            current = None
            continue
        if kinds[current] == "enum":
            enums[current] = (*enums[current], line)
            continue
        fm = _FIELD.match(line)
        if not fm:
            raise ValueError(f"carerix_schema.graphql:{number}: unexpected field {line!r}")
        args = dict(re.findall(r"(\w+)\s*:\s*([\w!\[\]]+)", fm["args"] or ""))
        types[current][fm["name"]] = FieldDef(fm["name"], fm["type"], args)
    return Schema(types=types, kinds=kinds, enums=enums, source=source)


@cache
def load_schema() -> Schema:
    """The schema shipped beside this module (parsed once per process)."""
    return parse_sdl(_SCHEMA_FILE.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------- entities


@dataclass(frozen=True)
class Entity:
    """One entity as webhooks name it and as the GraphQL API reads it.

    ``key`` is the numeric key the qualifier batches on (``None``: the schema exposes none, so records are
    read one ``crX(_id:)`` per id, several per request under aliases). ``deletable``: the type has ``deleted``
    and its page query ``norestrict`` (CRMatch has neither).
    """

    name: str
    query: str
    type_name: str
    key: str | None
    default_fields: tuple[str, ...]
    deletable: bool = True

    @property
    def page_query(self) -> str:
        return f"{self.query}Page"

    @property
    def always(self) -> tuple[str, ...]:
        """Fields every fetch selects: the ids, the dates the sweep and idempotent loads need, ``deleted``."""
        base = ["_id", *([self.key] if self.key else []), "creationDate", "modificationDate"]
        return (*base, *(("deleted",) if self.deletable else ()))

    def record_id(self, record: Mapping[str, Any]) -> str:
        """The id a webhook event names this record by (``data.entityId``)."""
        value = record.get(self.key) if self.key else None
        return str(value if value is not None else record.get("_id"))


#: Webhook entity -> query, type and key (Carerix's schema for names and types; [I] for crcampaign, which the
#: notes map to CRToDo: there is no crCampaign query).
ENTITIES: dict[str, Entity] = {
    e.name: e
    for e in (
        Entity(
            "cremployee",
            "crEmployee",
            "CREmployee",
            "employeeID",
            ("firstName", "lastName", "emailAddress", "toStatusNode.value"),
        ),
        Entity(
            "crvacancy",
            "crVacancy",
            "CRVacancy",
            "vacancyID",
            ("jobTitle", "toCompany.companyID", "toStatusNode.value"),
        ),
        Entity(
            "crjob",
            "crJob",
            "CRJob",
            "jobID",
            (
                "name",
                "startDate",
                "endDate",
                "toEmployee.employeeID",
                "toVacancy.vacancyID",
                "toStatusNode.value",
            ),
        ),
        Entity(
            "crmatch",
            "crMatch",
            "CRMatch",
            None,
            ("toEmployee.employeeID", "toVacancy.vacancyID", "statusInfo.statusName"),
            deletable=False,
        ),
        Entity(
            "crpublication",
            "crPublication",
            "CRPublication",
            "publicationID",
            ("publicationStart", "publicationEnd", "toVacancy.vacancyID", "toStatusNode.value"),
        ),
        Entity("crcompany", "crCompany", "CRCompany", "companyID", ("name", "toStatusNode.value")),
        Entity(
            "crcontact",
            "crContact",
            "CRUser",
            "userID",
            ("firstName", "lastName", "emailAddress", "toCompany.companyID"),
        ),
        Entity(
            "crtodo",
            "crToDo",
            "CRToDo",
            "todoID",
            ("subject", "startDate", "endDate", "toEmployee.employeeID"),
        ),
        Entity(
            "crcampaign",
            "crToDo",
            "CRToDo",
            "todoID",
            ("subject", "startDate", "endDate", "toEmployee.employeeID"),
        ),
    )
}


def entity(name: str | Entity) -> Entity:
    """The entity a webhook names (``cremployee``, or ``cremployee:updated``); unknown names list the known."""
    if isinstance(name, Entity):
        return name
    key = str(name).strip().lower().split(":", 1)[0]
    found = ENTITIES.get(key)
    if found is None:
        raise EntityError(
            f"unknown Carerix entity {name!r}: known are {', '.join(sorted(ENTITIES))} (the entity part of a "
            "webhook event type, e.g. cremployee for cremployee:updated)"
        )
    return found


# ---------------------------------------------------------------------------------------------- fields


def _lookup(schema: Schema, type_name: str, segment: str) -> FieldDef | None:
    """A field by exact name, else by a case-insensitive match if exactly one field matches."""
    fields = schema.fields(type_name)
    if segment in fields:
        return fields[segment]
    matches = [f for n, f in fields.items() if n.lower() == segment.lower()]
    if len(matches) > 1:
        names = " and ".join(sorted(f.name for f in matches))
        raise EntityError(f"{segment!r} is ambiguous on {type_name} ({names}): write it as Carerix spells it")
    return matches[0] if matches else None


def resolve_path(type_name: str, path: str) -> str:
    """``path`` spelled as Carerix's schema spells it: ``touser.lastname`` -> ``toUser.lastName`` on CREmployee.

    Each segment matches a field of the type reached so far, case-insensitively (how webhooks write
    ``changedFields``). Only fields without arguments and not lists can be selected; a path may go through a
    type this provider does not know the fields of only to its ``_id``.
    """
    schema = load_schema()
    segments = [s.strip() for s in str(path).split(".")]
    if not segments or any(not _NAME.match(s) for s in segments):
        raise EntityError(f"field {path!r} is not a dotted path of GraphQL names (e.g. toUser.lastName)")
    current, out = type_name, []
    for position, segment in enumerate(segments):
        if current not in schema.types:
            if segment == "_id" and position == len(segments) - 1:
                out.append("_id")
                break
            raise EntityError(
                f"field {path!r}: the fields of {current} are not in this provider's copy of Carerix's schema; "
                f"select {'.'.join(out)}._id, or fetch {current} records themselves"
            )
        found = _lookup(schema, current, segment)
        if found is None:
            raise EntityError(f"field {path!r}: {current} has no field {segment!r}")
        if found.args or found.is_list:
            raise EntityError(
                f"field {path!r}: {current}.{found.name} is a list or takes arguments; this provider selects "
                "plain fields and single references only"
            )
        out.append(found.name)
        current = found.base
    return ".".join(out)


def graphql_paths(name: str | Entity, changed_fields: Iterable[str]) -> tuple[list[str], list[str]]:
    """Webhook ``changedFields`` as GraphQL paths of the entity's type: (resolved, not selectable).

    ``touser.lastname`` -> ``toUser.lastName``; ``touser.attributechanges`` (a paged list) lands in the
    second list, as does a name the schema does not have.
    """
    ent = entity(name)
    resolved: list[str] = []
    unresolved: list[str] = []
    for changed in changed_fields:
        try:
            path = resolve_path(ent.type_name, changed)
        except EntityError:
            unresolved.append(changed)
            continue
        if path not in resolved:
            resolved.append(path)
    return resolved, unresolved


def selection(name: str | Entity, fields: Iterable[str] | None = None) -> str:
    """The selection set for ``fields`` (dotted paths, any case) plus the fields every fetch needs.

    A path ending on a reference (``toStatusNode``) selects its ``_id``.
    """
    ent = entity(name)
    schema = load_schema()
    wanted = [*ent.always, *(ent.default_fields if fields is None else fields)]
    tree: dict[str, Any] = {}
    for path in wanted:
        resolved = resolve_path(ent.type_name, path)
        node, current = tree, ent.type_name
        for segment in resolved.split("."):
            found = schema.fields(current).get(segment)
            current = found.base if found else ""
            node = node.setdefault(segment, {})
        if current and not schema.is_scalar(current):
            node.setdefault("_id", {})

    def render(node: dict[str, Any]) -> str:
        return "{ " + " ".join(k + (" " + render(v) if v else "") for k, v in node.items()) + " }"

    return render(tree)


# ---------------------------------------------------------------------------------------------- dates


def parse_carerix_date(value: Any) -> datetime | None:
    """An ``NSCalendarDate`` (``'2026-12-01 10:15:00'``, Amsterdam time) as an aware UTC datetime.

    ISO 8601 with an offset is read too, in case an answer carries one. In the hour that repeats when
    summer time ends, the earlier of the two instants is taken.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    text = str(value).strip()
    try:
        local = datetime.strptime(text, _DATE_FORMAT)
    except ValueError:
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise EntityError(f"not a Carerix date: {text!r} (expected 'yyyy-MM-dd HH:mm:ss')") from None
        local = parsed if parsed.tzinfo else parsed.replace(tzinfo=AMSTERDAM)
        return local.astimezone(timezone.utc)
    return local.replace(tzinfo=AMSTERDAM, fold=0).astimezone(timezone.utc)


def format_carerix_date(when: datetime) -> str:
    """``when`` as Carerix writes dates: Amsterdam wall time to the second (a naive datetime is UTC)."""
    aware = when if when.tzinfo else when.replace(tzinfo=timezone.utc)
    return aware.astimezone(AMSTERDAM).strftime(_DATE_FORMAT)


def _repeated_hour(local: datetime) -> bool:
    """Whether an Amsterdam wall time occurs twice (the hour summer time ends)."""
    naive = local.replace(tzinfo=None)
    return (
        naive.replace(tzinfo=AMSTERDAM, fold=0).utcoffset()
        != naive.replace(tzinfo=AMSTERDAM, fold=1).utcoffset()
    )


# ---------------------------------------------------------------------------------------------- qualifiers


def _numeric_id(ent: Entity, value: Any) -> int:
    text = str(value).strip()
    if not text.isascii() or not text.isdigit():
        raise EntityError(
            f"{ent.name} id {value!r} is not a number: webhooks name {ent.type_name} records by their "
            f"{ent.key} (data.entityId)"
        )
    return int(text)


def ids_qualifier(name: str | Entity, ids: Iterable[Any]) -> str:
    """``employeeID = 1 OR employeeID = 2``: the records with these ids [I: no ``in`` operator is documented].

    Ids are checked to be numbers, so nothing else can reach the qualifier.
    """
    ent = entity(name)
    if ent.key is None:
        raise EntityError(f"{ent.type_name} exposes no numeric key: read {ent.name} records by _id")
    numbers = [_numeric_id(ent, i) for i in ids]
    if not numbers:
        raise EntityError("ids_qualifier needs at least one id")
    return " OR ".join(f"{ent.key} = {n}" for n in numbers)


def modified_since_qualifier(since: datetime) -> str:
    """``modificationDate >= (NSCalendarDate) '...'``: records changed at or after ``since``.

    Written in Amsterdam time, floored to the second. When that wall time occurs twice (summer time ends),
    an hour earlier is asked for: more records rather than a missed hour.
    """
    aware = since if since.tzinfo else since.replace(tzinfo=timezone.utc)
    local = aware.astimezone(AMSTERDAM)
    if _repeated_hour(local):
        local = (aware - timedelta(hours=1)).astimezone(AMSTERDAM)
    return f"modificationDate >= (NSCalendarDate) '{local.strftime(_DATE_FORMAT)}'"


# ---------------------------------------------------------------------------------------------- queries


def page_query(name: str | Entity, fields: Iterable[str] | None = None) -> str:
    """One page of ``crXPage`` with the qualifier, pageable and norestrict as variables."""
    ent = entity(name)
    return (
        f"query CarerixRecords($qualifier: String, $pageable: Pageable, $norestrict: Boolean) {{ "
        f"{ent.page_query}(qualifier: $qualifier, pageable: $pageable, norestrict: $norestrict) {{ "
        f"page size totalElements totalPages numberOfElements last items {selection(ent, fields)} }} }}"
    )


def by_id_query(name: str | Entity, count: int, fields: Iterable[str] | None = None) -> str:
    """``count`` single-record queries in one request, aliased ``r0``..., ids as variables ``$i0``...."""
    ent = entity(name)
    chosen = selection(ent, fields)
    variables = ", ".join(f"$i{n}: ID!" for n in range(count))
    body = " ".join(f"r{n}: {ent.query}(_id: $i{n}) {chosen}" for n in range(count))
    return f"query CarerixRecordsById({variables}) {{ {body} }}"
