"""Carerix's records over GraphQL, and changes to them that deliver the matching webhook events.

Root fields served, for each entity webhooks name (``dataset.ENTITY_ROOTS``): ``crX(_id, language)`` (one
record, ``null`` if there is none or it is deleted) and ``crXPage(qualifier, pageable, norestrict, language)``
(Carerix's page object: ``items, page, size, totalElements, totalPages, numberOfElements, first, last,
sort``). As at Carerix: deleted records only with ``norestrict: true``; ``pageable`` defaults to page 0 of 20
and is capped at ``max_page_size`` (100) without a word; the qualifier is Carerix's language, the part
:mod:`.qualifier` parses (anything else is an error for the field, as graphql-java reports a resolver's
failure: ``data.crXPage = null`` beside an error naming the path). ``break_records`` makes chosen records
fail to resolve (partial data); ``inject_graphql_error`` answers whole requests with GraphQL errors.

Changing a record (:meth:`RecordsMixin.update_record`, ``create_record``, ``delete_record``, or
``/_emulator/records/...``) stamps its ``modificationDate`` and delivers ``<entity>:updated`` (``:created``,
``:deleted``) with ``data.entityId`` and the lowercase ``changedFields`` Carerix writes (a candidate's name is
on its user: ``touser.lastname``, as in the guide's sample). ``deliver=False`` changes a record without an event,
which is what Carerix does for fields and entities no webhook reports (what the coverage sweep is for).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone
from functools import partial
from typing import Any

from airflow_provider_carerix.definitions.entities import format_carerix_date, load_schema, parse_carerix_date
from airflow_provider_carerix.emulator.dataset import ENTITY_ROOTS, MIRRORED_USER_FIELDS, TYPES, EntityRoot
from airflow_provider_carerix.emulator.graphql import Broken, FieldError, GraphQLMixin
from airflow_provider_carerix.emulator.qualifier import QualifierError, parse_qualifier
from airflow_provider_carerix.emulator.state import GRAPHQL_PATH, Delivery, Fault, _Response

__all__ = ["RecordsMixin"]

#: Fields a change cannot set: ids, keys and what Carerix stamps itself.
_FIXED = frozenset(
    {"_id", "_kind", "creationDate", "modificationDate", "deleted", "dataNodeID", "statusInfoID"}
    | {r.key for r in ENTITY_ROOTS.values() if r.key}
)


def _root(entity: str) -> EntityRoot:
    root = ENTITY_ROOTS.get(str(entity).lower())
    if root is None:
        raise KeyError(f"unknown entity {entity!r}: the emulator serves {', '.join(sorted(ENTITY_ROOTS))}")
    return root


def _is_object(kind: str) -> bool:
    return kind.strip("[]!") in TYPES


def view(record: dict[str, Any] | None, type_name: str) -> dict[str, Any] | None:
    """A record as the control API shows it: its fields, references as ``{"_id": ...}``."""
    if record is None:
        return None
    out: dict[str, Any] = {}
    for name, kind in TYPES[type_name].items():
        value = record.get(name)
        out[name] = ({"_id": value["_id"]} if value is not None else None) if _is_object(kind) else value
    return out


def _read(record: dict[str, Any] | None, path: str) -> Any:
    value: Any = record
    for segment in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(segment)
    return value


def _check_path(type_name: str, path: str) -> None:
    """A qualifier or sort key path must exist (Carerix's schema) and be held by the emulator."""
    schema = load_schema()
    current = type_name
    for segment in path.split("."):
        held = TYPES.get(current, {})
        if segment not in held:
            if segment in schema.fields(current):
                raise QualifierError(
                    f"the emulator holds no {current}.{segment} (in Carerix's schema, not served here)"
                )
            raise QualifierError(f"unknown key path {path!r}: {current} has no {segment!r}")
        current = held[segment].strip("[]!")


class RecordsMixin(GraphQLMixin):
    """The record store behind the ``crX``/``crXPage`` root fields, and record changes that deliver events."""

    def _graphql_root(self) -> dict[str, Any]:
        roots = super()._graphql_root()
        for root in ENTITY_ROOTS.values():
            roots[root.query] = partial(self._record_by_id, root)
            roots[root.page_query] = partial(self._record_page, root)
        return roots

    # ------------------------------------------------------------------------------------------ reading

    def _of(self, root: EntityRoot, *, deleted: bool) -> list[dict[str, Any]]:
        records = [
            r
            for r in self._records[root.type_name].values()
            if (root.role is None or r.get("__role") == root.role) and (deleted or not r.get("deleted"))
        ]
        key = root.key or "_id"
        return sorted(records, key=lambda r: int(r.get(key) or 0))

    def _record_by_id(self, root: EntityRoot, args: dict[str, Any]) -> Any:
        record = next((r for r in self._of(root, deleted=False) if r["_id"] == str(args["_id"])), None)
        if record is not None and (root.type_name, record["_id"]) in self._broken:
            raise FieldError(self._broken[(root.type_name, record["_id"])])
        return record

    def _record_page(self, root: EntityRoot, args: dict[str, Any]) -> dict[str, Any]:
        where = f"Exception while fetching data (/{root.page_query})"
        pageable = args.get("pageable") or {}
        page = pageable.get("page")
        size = pageable.get("size")
        page = 0 if page is None else page
        size = 20 if size is None else size
        if page < 0:
            raise FieldError(f"{where} : Page index must not be less than zero")
        if size < 1:
            raise FieldError(f"{where} : Page size must not be less than one")
        if self.max_page_size is not None:
            size = min(size, self.max_page_size)
        records = self._of(root, deleted=bool(args.get("norestrict")))
        qualifier = args.get("qualifier")
        if qualifier is not None:
            try:
                predicate = parse_qualifier(
                    qualifier,
                    check_path=partial(_check_path, root.type_name),
                    reader=_read,
                    max_terms=self.max_qualifier_terms,
                )
            except QualifierError as exc:
                raise FieldError(f"{where} : {exc}") from None
            records = [r for r in records if predicate(r)]
        orders = pageable.get("sort") or []
        for order in reversed(orders):
            try:
                _check_path(root.type_name, order["property"])
            except QualifierError as exc:
                raise FieldError(f"{where} : cannot sort: {exc}") from None
            records.sort(
                key=partial(_sort_key, str(order["property"])), reverse=order.get("direction") == "DESC"
            )
        total = len(records)
        pages = (total + size - 1) // size
        chunk = records[page * size : (page + 1) * size]
        return {
            "items": [
                Broken(self._broken[(root.type_name, r["_id"])])
                if (root.type_name, r["_id"]) in self._broken
                else r
                for r in chunk
            ],
            "page": page,
            "size": size,
            "totalElements": total,
            "totalPages": pages,
            "numberOfElements": len(chunk),
            "first": page == 0,
            "last": page >= pages - 1,
            "sort": ", ".join(f"{o['property']}: {o.get('direction') or 'ASC'}" for o in orders)
            or "UNSORTED",
        }

    # ------------------------------------------------------------------------------------------ inspection

    def records(self, entity: str, *, deleted: bool = True) -> list[dict[str, Any]]:
        """Every record of an entity as the control API shows it (references as ``{"_id"}``)."""
        root = _root(entity)
        with self._lock:
            return [view(r, root.type_name) or {} for r in self._of(root, deleted=deleted)]

    def record(self, entity: str, entity_id: str | int) -> dict[str, Any] | None:
        """One record (deleted ones too), or ``None``."""
        root = _root(entity)
        with self._lock:
            return view(self._find(root, entity_id), root.type_name)

    def _find(self, root: EntityRoot, entity_id: str | int) -> dict[str, Any] | None:
        record = self._records[root.type_name].get(str(entity_id))
        if record is None or (root.role is not None and record.get("__role") != root.role):
            return None
        return record

    # ------------------------------------------------------------------------------------------ faults

    def break_records(self, entity: str, ids: Iterable[str | int], message: str = "Internal error") -> None:
        """Make these records fail to resolve (``null`` and an error with its path: partial data)."""
        root = _root(entity)
        with self._lock:
            for entity_id in ids:
                self._broken[(root.type_name, str(entity_id))] = (
                    f"Exception while fetching data (/{root.page_query}) : {message}"
                )

    def inject_graphql_error(self, message: str = "Internal server error", times: int = 1) -> Fault:
        """The next ``times`` GraphQL requests are answered ``200 {"data": null, "errors": [...]}``."""
        body = {
            "data": None,
            "errors": [{"message": message, "extensions": {"classification": "INTERNAL_ERROR"}}],
        }
        fault = Fault(status=200, times=times, method="POST", path_contains=GRAPHQL_PATH, body=body)
        with self._lock:
            self._faults.append(fault)
        return fault

    # ------------------------------------------------------------------------------------------ changes

    def _coerce(self, type_name: str, name: str, value: Any) -> Any:
        kind = TYPES[type_name].get(name)
        if kind is None or name in _FIXED:
            raise ValueError(f"{type_name}.{name} cannot be set through the emulator")
        base = kind.strip("[]!")
        if value is None:
            if kind.endswith("!"):
                raise ValueError(f"{type_name}.{name} must not be null")
            return None
        if base in TYPES:
            target = self._records[base].get(str(value))
            if target is None:
                raise ValueError(f"{type_name}.{name}: no {base} with _id {value!r}")
            return target
        if base == "Int":
            return int(value)
        if base == "NSCalendarDate":
            if isinstance(value, datetime):
                return format_carerix_date(value)
            parse_carerix_date(value)
            return str(value)
        return str(value)

    def _stamp(self, at: datetime | None) -> tuple[str, str]:
        """(modificationDate, event time) of a change made ``at`` (default now), to the second."""
        when = (at or datetime.now(timezone.utc)).astimezone(timezone.utc).replace(microsecond=0)
        return format_carerix_date(when), when.strftime("%Y-%m-%dT%H:%M:%SZ")

    def update_record(
        self,
        entity: str,
        entity_id: str | int,
        fields: dict[str, Any],
        *,
        deliver: bool = True,
        at: datetime | None = None,
        tenant: str = "demo",
    ) -> list[Delivery]:
        """Change fields of a record (references by the target's ``_id``); deliver ``<entity>:updated``.

        ``changedFields`` are lowercase, with ``modificationdate``; a candidate's name and contact fields are
        reported on its user (``touser``, ``touser.lastname``, ``touser.modificationdate``), as Carerix does.
        ``deliver=False``: no event (a change no webhook reports). ``at``: when (the ``modificationDate``).
        """
        root = _root(entity)
        stamp, event_time = self._stamp(at)
        with self._lock:
            record = self._find(root, entity_id)
            if record is None:
                raise KeyError(f"no {entity} record {entity_id!r}")
            values = {name: self._coerce(root.type_name, name, value) for name, value in fields.items()}
            changed: list[str] = []
            data: dict[str, Any] = {"entityId": str(entity_id)}
            for name, value in values.items():
                record[name] = value
                if root.type_name == "CREmployee" and name in MIRRORED_USER_FIELDS:
                    user = record["toUser"]
                    user[name] = value
                    user["modificationDate"] = stamp
                    for path in ("touser.attributechanges", "touser", f"touser.{name.lower()}"):
                        if path not in changed:
                            changed.append(path)
                    if "touser.modificationdate" not in changed:
                        changed.append("touser.modificationdate")
                    continue
                changed.append(name.lower())
                if isinstance(value, dict):  # a reference: conditions read its id (data.tostatusnode eq '3')
                    data[name.lower()] = value["_id"]
            record["modificationDate"] = stamp
            changed.append("modificationdate")
            data["changedFields"] = changed
        if not deliver:
            return []
        return self.deliver(f"{root.entity}:updated", data, tenant=tenant, event_time=event_time)

    def create_record(
        self,
        entity: str,
        fields: dict[str, Any] | None = None,
        *,
        deliver: bool = True,
        at: datetime | None = None,
        tenant: str = "demo",
    ) -> tuple[str, list[Delivery]]:
        """A new record (the next free key); delivers ``<entity>:created``. Returns (its id, deliveries)."""
        root = _root(entity)
        stamp, event_time = self._stamp(at)
        with self._lock:
            existing = self._records[root.type_name]
            key = root.key or "_id"
            number = max((int(r.get(key) or 0) for r in existing.values()), default=0) + 1
            if root.type_name == "CRUser":
                number = max(number, 5001)
            record: dict[str, Any] = {"_id": str(number), "_kind": root.type_name}
            if root.key:
                record[root.key] = number
            record.update(creationDate=stamp, modificationDate=stamp)
            if "deleted" in TYPES[root.type_name]:
                record["deleted"] = 0
            if root.role:
                record["__role"] = root.role
            if root.type_name == "CREmployee":
                user_id = max(int(u["userID"]) for u in self._records["CRUser"].values()) + 1
                user: dict[str, Any] = {
                    "_id": str(user_id),
                    "_kind": "CRUser",
                    "userID": user_id,
                    "deleted": 0,
                }
                user.update(creationDate=stamp, modificationDate=stamp, toEmployee=record, __role="candidate")
                self._records["CRUser"][user["_id"]] = user
                record["toUser"] = user
            values = {
                name: self._coerce(root.type_name, name, value) for name, value in (fields or {}).items()
            }
            for name, value in values.items():
                record[name] = value
                if root.type_name == "CREmployee" and name in MIRRORED_USER_FIELDS:
                    record["toUser"][name] = value
            existing[record["_id"]] = record
            entity_id = str(record.get(key))
        if not deliver:
            return entity_id, []
        return entity_id, self.deliver(
            f"{root.entity}:created", {"entityId": entity_id}, tenant=tenant, event_time=event_time
        )

    def delete_record(
        self,
        entity: str,
        entity_id: str | int,
        *,
        deliver: bool = True,
        at: datetime | None = None,
        tenant: str = "demo",
    ) -> list[Delivery]:
        """Delete a record (``deleted: 1``, still readable with ``norestrict``; a match, which has no
        ``deleted``, is gone); delivers ``<entity>:deleted``."""
        root = _root(entity)
        stamp, event_time = self._stamp(at)
        with self._lock:
            record = self._find(root, entity_id)
            if record is None:
                raise KeyError(f"no {entity} record {entity_id!r}")
            if "deleted" in TYPES[root.type_name]:
                record["deleted"] = 1
                record["modificationDate"] = stamp
            else:
                del self._records[root.type_name][record["_id"]]
        if not deliver:
            return []
        return self.deliver(
            f"{root.entity}:deleted", {"entityId": str(entity_id)}, tenant=tenant, event_time=event_time
        )

    # ------------------------------------------------------------------------------------------ control API

    def _records_control(self, method: str, action: str, data: dict[str, Any]) -> _Response:
        """``/_emulator/records/{entity}[/{id}]`` (GET, POST, PATCH, DELETE) and ``/_emulator/break-records``."""
        from dataclasses import asdict

        parts = action.split("/")
        try:
            if parts[0] == "break-records" and method == "POST":
                self.break_records(
                    str(data.get("entity")),
                    data.get("ids") or [],
                    str(data.get("message") or "Internal error"),
                )
                return _Response(204)
            at = datetime.fromisoformat(str(data["at"]).replace("Z", "+00:00")) if data.get("at") else None
            deliver, tenant = bool(data.get("deliver", True)), str(data.get("tenant") or "demo")
            if len(parts) == 2 and method == "GET":
                return _Response(200, {"records": self.records(parts[1])})
            if len(parts) == 2 and method == "POST":
                new_id, deliveries = self.create_record(
                    parts[1], data.get("fields") or {}, deliver=deliver, at=at, tenant=tenant
                )
                return _Response(201, {"id": new_id, "deliveries": [asdict(d) for d in deliveries]})
            if len(parts) == 3 and method == "GET":
                found = self.record(parts[1], parts[2])
                return (
                    _Response(200, found)
                    if found is not None
                    else _Response(404, {"error": "no such record"})
                )
            if len(parts) == 3 and method == "PATCH":
                deliveries = self.update_record(
                    parts[1], parts[2], data.get("fields") or {}, deliver=deliver, at=at, tenant=tenant
                )
                return _Response(200, {"deliveries": [asdict(d) for d in deliveries]})
            if len(parts) == 3 and method == "DELETE":
                deliveries = self.delete_record(parts[1], parts[2], deliver=deliver, at=at, tenant=tenant)
                return _Response(200, {"deliveries": [asdict(d) for d in deliveries]})
        except KeyError as exc:
            return _Response(404, {"error": str(exc.args[0]) if exc.args else "not found"})
        except ValueError as exc:
            return _Response(400, {"error": str(exc)})
        return _Response(404, {"error": "unknown control endpoint"})


def _sort_key(path: str, record: dict[str, Any]) -> tuple[bool, Any]:
    """Nulls first; dates as Carerix writes them sort as text; references by their ``_id``."""
    value = _read(record, path)
    if isinstance(value, dict):
        return True, str(value.get("_id"))
    return value is not None, value if value is not None else ""
