"""The small part of GraphQL the emulator needs to answer Carerix's delivery log and record queries.

Why not a GraphQL library: none ships with Airflow, and the emulator must stay dependency-light. This covers
what a client of the delivery log sends: one query operation (named or not) with variable definitions, fields
with arguments (variables, strings, numbers, booleans, null, enums, lists, input objects), aliases and nested
selection sets. Like a real server it answers only the selected fields and refuses unknown fields, a scalar
with a selection or an object without one, so a client query that would fail at Carerix fails here too.
Fragments, directives and mutations are not supported (an error says so).

Errors come in the two shapes a GraphQL server answers with: a request it cannot validate (unknown field or
argument, an argument of the wrong type) is refused whole (``{"errors": [...], "data": null}``); a field that
fails while the rest resolves (:class:`FieldError`, an item a resolver marks :class:`Broken`) is ``null`` in
``data`` with an error naming its ``path``, beside everything else: partial data, which a client must not take
for a complete answer.

:class:`GraphQLMixin` serves the delivery log, ``webhookDeliveryJobPage``; the record queries (``crEmployee``,
``crEmployeePage``, ...) are :mod:`.records`'.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from airflow_provider_carerix.emulator.dataset import ENTITY_ROOTS, PAGE_FIELDS, TYPES
from airflow_provider_carerix.emulator.delivery import DeliveryMixin

__all__ = ["SCHEMA", "Broken", "FieldError", "GraphQLError", "GraphQLMixin", "execute", "root_fields"]


class GraphQLError(Exception):
    """A query the emulator refuses; answered as ``{"errors": [{"message": ...}]}``."""


class FieldError(GraphQLError):
    """A root field that failed to resolve: ``null`` in ``data``, its error beside the other fields' data."""


@dataclass(frozen=True)
class Broken:
    """A list item that failed to resolve (what a resolver returns in its place): ``null`` plus an error."""

    message: str


#: What graphql-java (the engine Carerix's error shapes point to) calls a resolver's failure.
_FETCH_ERROR = {"classification": "DataFetchingException"}


_PAGE_FIELDS: dict[str, str | None] = {
    "page": None,
    "size": None,
    "sort": None,
    "totalElements": None,
    "totalPages": None,
    "numberOfElements": None,
    "first": None,
    "last": None,
}

#: Object types and their fields as in Carerix's published schema: ``None`` is a scalar, a string the type of
#: an object field. Only what the delivery log needs.
SCHEMA: dict[str, dict[str, str | None]] = {
    "Query": {"webhookDeliveryJobPage": "WebhookDeliveryJobPage"},
    "WebhookDeliveryJobPage": {**_PAGE_FIELDS, "items": "WebhookDeliveryJob"},
    "WebhookDeliveryJob": {
        "_id": None,
        "_kind": None,
        "_createdDateTime": None,
        "headers": "CustomHeader",
        "payload": None,
        "url": None,
        "webhook": "Webhook",
        "attempts": "WebhookDeliveryJobAttemptPage",
    },
    "WebhookDeliveryJobAttemptPage": {**_PAGE_FIELDS, "items": "WebhookDeliveryJobAttempt"},
    "WebhookDeliveryJobAttempt": {
        "_id": None,
        "_kind": None,
        "_createdDateTime": None,
        "deliveryStatus": None,
        "responseStatusCode": None,
        "responseHeaders": None,
        "responsePayload": None,
    },
    "Webhook": {
        "_id": None,
        "_kind": None,
        "_createdDateTime": None,
        "_updatedDateTime": None,
        "application": "WebhookApplication",
        "url": None,
        "status": None,
        "filters": "WebhookFilter",
        "customHeaders": "CustomHeader",
    },
    "WebhookApplication": {"_id": None, "_kind": None, "name": None},
    "WebhookFilter": {"eventType": None, "condition": None},
    "CustomHeader": {"name": None, "value": None},
}

_SCALARS = frozenset({"ID", "String", "Int", "Float", "Boolean", "NSCalendarDate"})
for _type, _fields in TYPES.items():
    SCHEMA[_type] = {
        name: (None if kind.strip("[]!") in _SCALARS else kind.strip("[]!")) for name, kind in _fields.items()
    }
for _root in ENTITY_ROOTS.values():
    SCHEMA[f"{_root.type_name}Page"] = {**dict.fromkeys(PAGE_FIELDS), "items": _root.type_name}
    SCHEMA["Query"][_root.query] = _root.type_name
    SCHEMA["Query"][_root.page_query] = f"{_root.type_name}Page"

#: Arguments each root field takes (anything else is an error, as at a real server).
ROOT_ARGUMENTS: dict[str, frozenset[str]] = {"webhookDeliveryJobPage": frozenset({"pageable"})}

#: The argument types of the record queries, as Carerix's schema declares them; checked before resolving.
_PAGE_ARGUMENTS = {
    "language": "Language",
    "norestrict": "Boolean",
    "pageable": "Pageable",
    "qualifier": "String",
}
ARGUMENT_TYPES: dict[str, dict[str, str]] = {}
for _root in ENTITY_ROOTS.values():
    _todo = {"ekey": "ToDoEkeyEnum"} if _root.query == "crToDo" else {}
    ARGUMENT_TYPES[_root.query] = {"_id": "ID!", **_todo, "language": "Language"}
    ARGUMENT_TYPES[_root.page_query] = {**_todo, **_PAGE_ARGUMENTS}
    ROOT_ARGUMENTS[_root.query] = frozenset(ARGUMENT_TYPES[_root.query])
    ROOT_ARGUMENTS[_root.page_query] = frozenset(ARGUMENT_TYPES[_root.page_query])

_ENUMS = {
    "Direction": ("ASC", "DESC"),
    "Language": (
        "DUTCH",
        "ENGLISH",
        "FRENCH",
        "GERMAN",
        "HUNGARIAN",
        "ITALIAN",
        "POLISH",
        "PORTUGUESE",
        "SPANISH",
    ),
    "ToDoEkeyEnum": (
        "activity",
        "campaign",
        "edition",
        "email",
        "meeting",
        "newsLetter",
        "note",
        "system",
        "task",
    ),
}
_INPUTS = {
    "Pageable": {"page": "Int", "size": "Int", "sort": "[Order]"},
    "Order": {"direction": "Direction", "property": "String!"},
}


def _check_value(value: Any, kind: str, where: str) -> None:
    """A GraphQL input value against its declared type (what a server validates before resolving)."""
    if value is None:
        if kind.endswith("!"):
            raise GraphQLError(f"Validation error: {where} of type {kind} must not be null")
        return
    base = kind.rstrip("!")
    if base.startswith("["):
        items = value if isinstance(value, list) else [value]  # input coercion: one value is a list of one
        for n, item in enumerate(items):
            _check_value(item, base[1:-1], f"{where}[{n}]")
        return
    ok = {
        "Int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "Boolean": lambda v: isinstance(v, bool),
        "String": lambda v: isinstance(v, str),
        "ID": lambda v: isinstance(v, (str, int)) and not isinstance(v, bool),
    }.get(base)
    if ok is not None:
        if not ok(value):
            raise GraphQLError(f"Validation error: {where} is not a valid '{base}': {value!r}")
        return
    if base in _ENUMS:
        if value not in _ENUMS[base]:
            raise GraphQLError(
                f"Validation error: {where} is not a valid '{base}' (one of {', '.join(_ENUMS[base])})"
            )
        return
    if base in _INPUTS:
        if not isinstance(value, dict):
            raise GraphQLError(f"Validation error: {where} is not a valid '{base}' input object")
        unknown = set(value) - set(_INPUTS[base])
        if unknown:
            raise GraphQLError(
                f"Validation error: field(s) {sorted(unknown)} are not defined by type '{base}' ({where})"
            )
        for name, field_kind in _INPUTS[base].items():
            _check_value(value.get(name), field_kind, f"{where}.{name}")
        return
    raise GraphQLError(f"Validation error: unknown type {base!r} at {where}")  # pragma: no cover


_TOKEN = re.compile(
    r"""
    (?P<skip>[\s,]+|\#[^\n]*)
    | (?P<spread>\.\.\.)
    | (?P<punct>[{}()\[\]:!$=@])
    | (?P<string>"(?:[^"\\\n]|\\.)*")
    | (?P<number>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
    | (?P<name>[_A-Za-z][_0-9A-Za-z]*)
    """,
    re.VERBOSE,
)


@dataclass
class _Field:
    alias: str
    name: str
    arguments: dict[str, Any]
    selections: list[_Field] | None


class _Variable:
    def __init__(self, name: str) -> None:
        self.name = name


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise GraphQLError(f"Syntax Error: unexpected character {text[pos]!r} at offset {pos}")
        pos = match.end()
        kind = match.lastgroup or ""
        if kind == "skip":
            continue
        if kind == "spread":
            raise GraphQLError("fragments are not supported by the emulator")
        out.append((kind, match.group()))
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.pos = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, value: str | None = None, kind: str | None = None) -> str:
        token = self.peek()
        if (
            token is None
            or (value is not None and token[1] != value)
            or (kind is not None and token[0] != kind)
        ):
            want = value or kind
            got = "end of query" if token is None else repr(token[1])
            raise GraphQLError(f"Syntax Error: expected {want}, got {got}")
        self.pos += 1
        return token[1]

    def at(self, value: str) -> bool:
        token = self.peek()
        return token is not None and token[1] == value and token[0] == "punct"

    def document(self) -> tuple[list[_Field], dict[str, Any]]:
        defaults: dict[str, Any] = {}
        token = self.peek()
        if token is not None and token[0] == "name":
            operation = self.take(kind="name")
            if operation != "query":
                raise GraphQLError(f"only queries are supported by the emulator, not {operation!r}")
            token = self.peek()
            if token is not None and token[0] == "name":
                self.take(kind="name")
            if self.at("("):
                self.take("(")
                while not self.at(")"):
                    self.take("$")
                    name = self.take(kind="name")
                    self.take(":")
                    self.type_ref()
                    if self.at("="):
                        self.take("=")
                        defaults[name] = self.value(const=True)
                self.take(")")
        if self.at("@"):
            raise GraphQLError("directives are not supported by the emulator")
        selections = self.selection_set()
        if self.peek() is not None:
            raise GraphQLError("only one operation per request is supported by the emulator")
        return selections, defaults

    def type_ref(self) -> None:
        if self.at("["):
            self.take("[")
            self.type_ref()
            self.take("]")
        else:
            self.take(kind="name")
        if self.at("!"):
            self.take("!")

    def selection_set(self) -> list[_Field]:
        self.take("{")
        fields: list[_Field] = []
        while not self.at("}"):
            name = self.take(kind="name")
            alias = name
            if self.at(":"):
                self.take(":")
                name = self.take(kind="name")
            arguments: dict[str, Any] = {}
            if self.at("("):
                self.take("(")
                while not self.at(")"):
                    arg = self.take(kind="name")
                    self.take(":")
                    arguments[arg] = self.value(const=False)
                self.take(")")
            if self.at("@"):
                raise GraphQLError("directives are not supported by the emulator")
            selections = self.selection_set() if self.at("{") else None
            fields.append(_Field(alias, name, arguments, selections))
        self.take("}")
        if not fields:
            raise GraphQLError("Syntax Error: empty selection set")
        return fields

    def value(self, *, const: bool) -> Any:
        token = self.peek()
        if token is None:
            raise GraphQLError("Syntax Error: expected a value, got end of query")
        kind, text = token
        if kind == "punct" and text == "$":
            if const:
                raise GraphQLError("Syntax Error: a variable is not allowed here")
            self.take("$")
            return _Variable(self.take(kind="name"))
        if kind == "punct" and text == "[":
            self.take("[")
            items = []
            while not self.at("]"):
                items.append(self.value(const=const))
            self.take("]")
            return items
        if kind == "punct" and text == "{":
            self.take("{")
            obj: dict[str, Any] = {}
            while not self.at("}"):
                key = self.take(kind="name")
                self.take(":")
                obj[key] = self.value(const=const)
            self.take("}")
            return obj
        self.pos += 1
        if kind == "string":
            import json

            return json.loads(text)
        if kind == "number":
            return float(text) if any(c in text for c in ".eE") else int(text)
        if kind == "name":
            return {"true": True, "false": False, "null": None}.get(text, text)  # else an enum value
        raise GraphQLError(f"Syntax Error: unexpected {text!r}")


def _substitute(value: Any, variables: dict[str, Any]) -> Any:
    if isinstance(value, _Variable):
        return variables.get(value.name)
    if isinstance(value, list):
        return [_substitute(v, variables) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, variables) for k, v in value.items()}
    return value


def _project(
    value: Any,
    type_name: str,
    selections: list[_Field],
    path: str,
    trail: list[str | int] | None = None,
    errors: list[dict[str, Any]] | None = None,
) -> Any:
    trail = trail if trail is not None else [path]
    if value is None:
        return None
    if isinstance(value, Broken):
        if errors is not None:
            errors.append({"message": value.message, "path": trail, "extensions": _FETCH_ERROR})
        return None
    if isinstance(value, list):
        return [_project(v, type_name, selections, path, [*trail, n], errors) for n, v in enumerate(value)]
    fields = SCHEMA[type_name]
    out: dict[str, Any] = {}
    for field in selections:
        if field.name == "__typename":
            out[field.alias] = type_name
            continue
        if field.name not in fields:
            raise GraphQLError(f"Cannot query field {field.name!r} on type {type_name!r} ({path})")
        if field.arguments:
            raise GraphQLError(f"Unknown argument on field {type_name}.{field.name} ({path})")
        child = fields[field.name]
        if child is None and field.selections is not None:
            raise GraphQLError(f"Field {field.name!r} of type {type_name!r} must not have a selection")
        if child is not None and field.selections is None:
            raise GraphQLError(
                f"Field {field.name!r} of type {type_name!r} must have a selection of subfields"
            )
        raw = value.get(field.name) if isinstance(value, dict) else None
        out[field.alias] = (
            raw
            if child is None
            else _project(
                raw, child, field.selections or [], f"{path}.{field.name}", [*trail, field.alias], errors
            )
        )
    return out


def root_fields(request: dict[str, Any]) -> list[str] | None:
    """The root field names a request asks for (``None`` if it does not parse: ``execute`` says why)."""
    query = request.get("query")
    if not isinstance(query, str):
        return None
    try:
        selections, _ = _Parser(query).document()
    except GraphQLError:
        return None
    return [f.name for f in selections]


def execute(request: dict[str, Any], resolvers: dict[str, Callable[[dict[str, Any]], Any]]) -> dict[str, Any]:
    """Run ``{"query", "variables"}`` against root ``resolvers``; a GraphQL response (errors included)."""
    query = request.get("query")
    variables = request.get("variables") or {}
    if not isinstance(query, str) or not query.strip():
        return {"errors": [{"message": "'query' must be a non-empty string"}], "data": None}
    if not isinstance(variables, dict):
        return {"errors": [{"message": "'variables' must be an object"}], "data": None}
    errors: list[dict[str, Any]] = []
    try:
        selections, defaults = _Parser(query).document()
        variables = {**defaults, **variables}
        data: dict[str, Any] = {}
        checked = []
        for field in selections:
            if field.name == "__typename":
                data[field.alias] = "Query"
                continue
            if field.name not in SCHEMA["Query"] or field.name not in resolvers:
                raise GraphQLError(f"Cannot query field {field.name!r} on type 'Query'")
            unknown = set(field.arguments) - ROOT_ARGUMENTS.get(field.name, frozenset())
            if unknown:
                raise GraphQLError(f"Unknown argument(s) {sorted(unknown)} on field 'Query.{field.name}'")
            if field.selections is None:
                raise GraphQLError(f"Field {field.name!r} must have a selection of subfields")
            arguments = _substitute(field.arguments, variables)
            for name, kind in ARGUMENT_TYPES.get(field.name, {}).items():
                _check_value(arguments.get(name), kind, f"argument '{name}' of '{field.name}'")
            checked.append((field, arguments))
        # Every field's arguments are checked before any resolves: a bad query is refused, never half answered.
        for field, arguments in checked:
            try:
                result = resolvers[field.name](arguments)
            except FieldError as exc:
                errors.append({"message": str(exc), "path": [field.alias], "extensions": _FETCH_ERROR})
                data[field.alias] = None
                continue
            data[field.alias] = _project(
                result,
                SCHEMA["Query"][field.name] or "",
                field.selections or [],
                field.name,
                [field.alias],
                errors,
            )
    except GraphQLError as exc:
        return {"errors": [{"message": str(exc)}], "data": None}
    return {"data": data, "errors": errors} if errors else {"data": data}


class GraphQLMixin(DeliveryMixin):
    """The root resolvers of the emulator's GraphQL endpoint: the delivery log, one page at a time."""

    def _graphql_root(self) -> dict[str, Any]:
        return {"webhookDeliveryJobPage": lambda args: self._job_page(args)}

    def _job_page(self, args: dict[str, Any]) -> dict[str, Any]:
        """``webhookDeliveryJobPage(pageable: Pageable)``: Spring-style pages, optionally sorted by a field."""
        pageable = args.get("pageable") or {}
        page = int(pageable.get("page") or 0)
        size = int(pageable.get("size") or 20)
        if page < 0 or size < 1:
            raise GraphQLError("pageable: page must be >= 0 and size >= 1")
        jobs = list(self._jobs.values())
        orders = pageable.get("sort") or []
        sort_keys = {"_createdDateTime": "created", "_id": "id"}
        for order in reversed(orders):
            prop = str(order.get("property") or "")
            if prop not in sort_keys:
                raise GraphQLError(f"cannot sort delivery jobs by {prop!r}")
            descending = str(order.get("direction") or "ASC").upper() == "DESC"
            jobs.sort(key=attrgetter(sort_keys[prop]), reverse=descending)
        total = len(jobs)
        pages = (total + size - 1) // size
        chunk = [self._job_view(job) for job in jobs[page * size : (page + 1) * size]]
        return {
            "items": chunk,
            "page": page,
            "size": size,
            "totalElements": total,
            "totalPages": pages,
            "numberOfElements": len(chunk),
            "first": page == 0,
            "last": page >= pages - 1,
            "sort": ", ".join(
                f"{o.get('property')}: {str(o.get('direction') or 'ASC').upper()}" for o in orders
            ),
        }
