"""Strict checks of webhook definitions before they reach Carerix.

Carerix accepts any webhook body without checking it, and a mistake (a misspelt event type, a doubled space
in a condition, a relative URL) gives a webhook that silently never fires. Everything here therefore
*collects* problems rather than stopping at the first, and names each by its JSON path, so a user fixes a
definition in one round. The models in :mod:`airflow_provider_carerix.definitions.models` stay lenient on purpose: they
must load whatever Carerix returns.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from airflow_provider_carerix.definitions.conditions import ConditionSyntaxError, parse
from airflow_provider_carerix.definitions.models import Webhook
from airflow_provider_carerix.definitions.redaction import display_url

__all__ = [
    "ACTIONS",
    "ENTITIES",
    "MAX_FILTERS",
    "RESERVED_HEADERS",
    "Problem",
    "SpecValidationError",
    "explain_templates",
    "is_local_host",
    "normalize_event_type",
    "targets_public_carerix",
    "unreachable_reason",
    "validate_webhook",
]

# Entities with webhook support per Carerix's help centre and public client code, plus other Carerix
# ``cr*`` entities that plausibly emit events. Best effort: ``allow_unknown_event_types`` accepts others.
ENTITIES = frozenset(
    {
        "cremployee",
        "crjob",
        "crmatch",
        "crpublication",
        "crcompany",
        "crcontact",
        "crvacancy",
        "crplacement",
        "crcampaign",
        "crtodo",
        "cruser",
        "crattachment",
        "crdatanode",
        "creducation",
        "crexperience",
    }
)
ACTIONS = ("created", "updated", "deleted", "*")
# Everyday names for the entities, which difflib cannot map (``candidate`` looks nothing like ``cremployee``).
_ENTITY_SYNONYMS = {
    "candidate": "cremployee",
    "employee": "cremployee",
    "job": "crjob",
    "order": "crjob",
    "vacancy": "crvacancy",
    "match": "crmatch",
    "publication": "crpublication",
    "company": "crcompany",
    "contact": "crcontact",
    "placement": "crplacement",
    "campaign": "crcampaign",
    "todo": "crtodo",
    "activity": "crtodo",
    "user": "cruser",
}
# Carerix sets these on every delivery itself (GraphQL docs of type ``Webhook``).
RESERVED_HEADERS = ("Cx-Signature", "Cx-Payload-Schema-Version", "Content-Type")
# Seen in public client code, not confirmed by Carerix; a webhook over it is refused, so we refuse it first.
MAX_FILTERS = 10
# RFC 7230 section 3.2.6: token = 1*tchar.
_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_WEBHOOK_KEYS = {
    "url": "url",
    "_kind": "_kind",
    "kind": "_kind",
    "filters": "filters",
    "customHeaders": "customHeaders",
    "custom_headers": "customHeaders",
    "name": "name",
    # Server-owned fields: present on webhooks read back from Carerix, harmless when validated again.
    "_id": "_id",
    "id": "_id",
    "status": "status",
    "_createdDateTime": "_createdDateTime",
    "created": "_createdDateTime",
    "_updatedDateTime": "_updatedDateTime",
    "updated": "_updatedDateTime",
    "application": "application",
}
_FILTER_KEYS = {"eventType": "eventType", "event_type": "eventType", "condition": "condition"}
_HEADER_KEYS = {"name": "name", "value": "value"}
_STATUSES = ("enabled", "disabled", "error")
# Names that never resolve on the public internet (RFC 6761 special-use names, mDNS, common private zones):
# Carerix, which delivers from its own servers, cannot reach a host under them.
_LOCAL_SUFFIXES = (
    ".localhost",
    ".local",
    ".localdomain",
    ".internal",
    ".lan",
    ".home.arpa",
    ".test",
    ".invalid",
    ".example",
)
ALLOW_UNREACHABLE_HINT = (
    "use a public https URL of your receiver, or allow such URLs explicitly "
    "(--allow-unreachable-urls, or allow_unreachable_urls=True on the operator) if Carerix really reaches it"
)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a definition.

    ``offset`` is the 0-based position of the fault inside the string value at ``path`` (for conditions), so
    a spec loader can point at the exact column; ``detail`` holds extra lines to show under the problem (the
    condition with a caret). Neither is part of ``str()``, which stays one line.
    """

    path: str
    message: str
    file: str | None = None
    line: int | None = None
    column: int | None = None
    offset: int | None = None
    detail: str | None = None

    def __str__(self) -> str:
        where = ""
        if self.file is not None:
            where = self.file
            if self.line is not None:
                where += f":{self.line}"
                if self.column is not None:
                    where += f":{self.column}"
            where += ": "
        return f"{where}{self.path}: {self.message}" if self.path else f"{where}{self.message}"


class SpecValidationError(ValueError):
    """Every problem found in a definition (not only the first), one per line in ``str()``."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        count = len(self.problems)
        lines = [f"{count} problem{'s' if count != 1 else ''} in webhook definitions:"]
        lines += [f"  {p}" for p in self.problems]
        super().__init__("\n".join(lines))


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "boolean",
        int: "number",
        float: "number",
        str: "string",
        list: "list",
        dict: "mapping",
    }.get(type(value), type(value).__name__)


def _suggestion(word: str, choices: list[str] | tuple[str, ...], cutoff: float = 0.6) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=cutoff)
    return f": did you mean '{close[0]}'?" if close else ""


def _spacing_problem(text: str) -> str | None:
    if text != text.strip():
        side = "leading" if text[:1].isspace() else "trailing"
        return f"has {side} whitespace"
    if any(ch.isspace() for ch in text):
        return "contains whitespace"
    return None


# How the unknown-entity problem tells people to accept entities the catalogue lacks. Python callers (the
# operators, ``CarerixEvents``) and spec files name the parameter / key; the command line passes the wording
# of its flag (``--allow-unknown-event-types``) instead, as ``unknown_event_types_hint``.
UNKNOWN_EVENT_TYPES_HINT = "set allow_unknown_event_types"


def _event_type_error(
    text: Any, allow_unknown: bool, unknown_hint: str = UNKNOWN_EVENT_TYPES_HINT
) -> tuple[str | None, str | None]:
    """``(normalised, None)`` or ``(None, message)``."""
    if not isinstance(text, str):
        return None, f"eventType must be a string like 'crjob:updated', got {_type_name(text)}"
    spacing = _spacing_problem(text)
    if spacing:
        return None, f"eventType {text!r} {spacing}"
    if text.count(":") != 1:
        return None, f"eventType must look like '<entity>:<action>' (e.g. 'crjob:updated'), got {text!r}"
    entity, action = text.lower().split(":")
    if action not in ACTIONS:
        hint = _suggestion(action, ACTIONS) or ": use created, updated, deleted or *"
        return None, f"unknown action {action!r} in eventType {text!r}{hint}"
    if entity in ENTITIES:
        return f"{entity}:{action}", None
    if not entity or not all(ch.isascii() and (ch.isalnum() or ch == "_") for ch in entity):
        return None, f"eventType {text!r} has an invalid entity name {entity!r}"
    if allow_unknown:
        return f"{entity}:{action}", None
    guess = _ENTITY_SYNONYMS.get(entity) or _ENTITY_SYNONYMS.get(entity.removeprefix("cr"))
    if guess is None and f"cr{entity}" in ENTITIES:
        guess = f"cr{entity}"
    hint = f": did you mean '{guess}'?" if guess else _suggestion(entity, sorted(ENTITIES))
    return None, (
        f"unknown entity {entity!r} in eventType {text!r}{hint} "
        f"({unknown_hint} to accept entities this provider does not know)"
    )


def normalize_event_type(text: str, *, allow_unknown: bool = False) -> str:
    """``CREmployee:Updated`` -> ``cremployee:updated``; raises ``ValueError`` (with a suggestion) if invalid."""
    normalised, error = _event_type_error(text, allow_unknown)
    if error is not None:
        raise ValueError(error)
    assert normalised is not None
    return normalised


def _unknown_keys(item: Mapping[str, Any], known: dict[str, str], path: str) -> list[Problem]:
    problems = []
    for key in item:
        if key not in known:
            hint = _suggestion(str(key), sorted(set(known)), cutoff=0.5)
            problems.append(Problem(_join(path, str(key)), f"unknown field {key!r}{hint}"))
    return problems


def _get(item: Mapping[str, Any], known: dict[str, str], canonical: str) -> tuple[str | None, Any]:
    """The key actually used for ``canonical`` (Carerix or Python spelling) and its value."""
    for key, target in known.items():
        if target == canonical and key in item:
            return key, item[key]
    return None, None


def is_local_host(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine or on a private network.

    Decided from the text alone, without a DNS lookup (validation makes no network calls): addresses that are
    not globally routable (loopback, private, link-local, shared, documentation ranges), ``localhost``,
    special-use domains, and single-label names such as ``receiver`` in a container network.
    """
    name = host.strip().strip("[]").rstrip(".").lower()
    if not name:
        return True
    try:
        return not ipaddress.ip_address(name).is_global
    except ValueError:
        pass
    return name == "localhost" or "." not in name or name.endswith(_LOCAL_SUFFIXES)


def targets_public_carerix(api_url: str) -> bool:
    """Whether a connection's API URL is Carerix itself, which delivers from the internet.

    The emulator and test setups run on local addresses: there, receiver URLs on loopback or private
    addresses work and are allowed.
    """
    try:
        host = urlsplit(api_url if "://" in api_url else f"https://{api_url}").hostname
    except ValueError:
        return True
    return not is_local_host(host or "")


def unreachable_reason(url: str) -> str | None:
    """Why Carerix, delivering from the public internet, cannot use ``url``; ``None`` if it can.

    Only for URLs that passed the syntax checks of :func:`validate_webhook`.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    if is_local_host(host):
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            kind = "a local host name" if "." not in host or host == "localhost" else "a non-public domain"
            return f"{host!r} is {kind}"
        kind = next(
            (
                label
                for label, flag in (
                    ("a loopback", address.is_loopback),
                    ("a link-local", address.is_link_local),
                    ("a private", address.is_private),
                )
                if flag
            ),
            "a non-public",
        )
        return f"{host} is {kind} address"
    if parts.scheme.lower() != "https":
        return (
            "it uses plain http: deliveries (with their secret header) would cross the internet unencrypted"
        )
    return None


def _check_url(url: Any, path: str, require_public: bool = False) -> list[Problem]:
    if url is None:
        return [Problem(path, "url is required: the address Carerix POSTs events to")]
    if not isinstance(url, str):
        return [Problem(path, f"url must be a string, got {_type_name(url)}")]
    if "{{" in url:  # Jinja text, rendered by the operator before the URL is used; checked after rendering.
        return []
    if url != url.strip():
        return [Problem(path, f"url {url!r} has leading or trailing whitespace")]
    if any(ch.isspace() for ch in url):
        return [Problem(path, f"url {url!r} contains whitespace")]
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as error:
        return [Problem(path, f"url {url!r} is not a valid URL: {error}")]
    if parts.scheme.lower() not in ("http", "https"):
        if not parts.scheme or not parts.netloc:
            return [Problem(path, f"url must be an absolute http(s) URL like https://host/path, got {url!r}")]
        return [Problem(path, f"url must use http or https, not {parts.scheme!r}")]
    if not parts.hostname:
        return [Problem(path, f"url {url!r} has no host")]
    if require_public and (reason := unreachable_reason(url)) is not None:
        # Shown without credentials and query (they may hold a token): this message reaches task logs.
        return [
            Problem(
                path,
                f"url {display_url(url)!r} cannot be reached by Carerix: {reason}; {ALLOW_UNREACHABLE_HINT}",
            )
        ]
    return []


def _check_condition(condition: Any, path: str) -> list[Problem]:
    if condition is None:
        return []
    if not isinstance(condition, str):
        return [Problem(path, f"condition must be a string, got {_type_name(condition)}")]
    if not condition.strip():
        return [Problem(path, "condition is empty: leave it out to receive every event of this type")]
    try:
        parse(condition, strict=True)
    except ConditionSyntaxError as error:
        return [Problem(path, error.reason, offset=error.position, detail=error.excerpt)]
    return []


def _check_filters(filters: Any, path: str, allow_unknown: bool, unknown_hint: str) -> list[Problem]:
    if filters is None:
        return [Problem(path, "filters is required: a webhook needs at least one filter (an eventType)")]
    if not isinstance(filters, list):
        return [Problem(path, f"filters must be a list, got {_type_name(filters)}")]
    if not filters:
        return [Problem(path, "a webhook needs at least one filter (an eventType)")]
    problems = []
    if len(filters) > MAX_FILTERS:
        problems.append(
            Problem(
                path,
                f"a webhook may have at most {MAX_FILTERS} filters (Carerix's limit), got {len(filters)}",
            )
        )
    seen: dict[tuple[str, str | None], int] = {}
    for index, item in enumerate(filters):
        item_path = _join(path, index)
        if not isinstance(item, Mapping):
            problems.append(
                Problem(item_path, f"a filter must be a mapping with an eventType, got {_type_name(item)}")
            )
            continue
        problems += _unknown_keys(item, _FILTER_KEYS, item_path)
        key, event_type = _get(item, _FILTER_KEYS, "eventType")
        normalised = None
        if key is None:
            problems.append(Problem(item_path, "eventType is required, e.g. 'crjob:updated'"))
        else:
            normalised, error = _event_type_error(event_type, allow_unknown, unknown_hint)
            if error:
                problems.append(Problem(_join(item_path, key), error))
        condition = item.get("condition")
        condition_problems = _check_condition(condition, _join(item_path, "condition"))
        problems += condition_problems
        if normalised is not None and not condition_problems:
            identity = (normalised, str(parse(condition)) if condition else None)
            if identity in seen:
                problems.append(
                    Problem(item_path, f"duplicate filter: same as {_join(path, seen[identity])}")
                )
            seen.setdefault(identity, index)
    return problems


def _first_non_token_char(name: str) -> int | None:
    return next((i for i, ch in enumerate(name) if ch not in _TCHAR), None)


def _check_headers(headers: Any, path: str) -> list[Problem]:
    if headers is None:
        return []
    if not isinstance(headers, list):
        return [
            Problem(path, f"customHeaders must be a list of name/value mappings, got {_type_name(headers)}")
        ]
    problems = []
    seen: dict[str, int] = {}
    reserved = {h.lower(): h for h in RESERVED_HEADERS}
    for index, item in enumerate(headers):
        item_path = _join(path, index)
        if not isinstance(item, Mapping):
            problems.append(
                Problem(
                    item_path,
                    f"a custom header must be a mapping with name and value, got {_type_name(item)}",
                )
            )
            continue
        problems += _unknown_keys(item, _HEADER_KEYS, item_path)
        name, value = item.get("name"), item.get("value")
        name_path = _join(item_path, "name")
        if name is None:
            problems.append(Problem(item_path, "a custom header needs a name"))
        elif not isinstance(name, str):
            problems.append(Problem(name_path, f"header name must be a string, got {_type_name(name)}"))
        elif not name:
            problems.append(Problem(name_path, "header name is empty"))
        elif (position := _first_non_token_char(name)) is not None:
            problems.append(
                Problem(
                    name_path,
                    f"header name {name!r} is not an HTTP token: {name[position]!r} at {position} is not allowed "
                    "(letters, digits and !#$%&'*+-.^_`|~ only)",
                    offset=position,
                )
            )
        elif name.lower() in reserved:
            problems.append(
                Problem(
                    name_path,
                    f"header name {name!r} is reserved: Carerix sets {reserved[name.lower()]} itself",
                )
            )
        elif name.lower() in seen:
            problems.append(
                Problem(
                    name_path,
                    f"duplicate header name {name!r} (also {_join(_join(path, seen[name.lower()]), 'name')}; "
                    "header names are case-insensitive)",
                )
            )
        else:
            seen[name.lower()] = index
        value_path = _join(item_path, "value")
        if "value" not in item:
            problems.append(Problem(item_path, "a custom header needs a value"))
        elif not isinstance(value, str):
            problems.append(
                Problem(value_path, f"header value must be a string (quote it), got {_type_name(value)}")
            )
        elif any(ch in value for ch in "\r\n\0"):
            problems.append(Problem(value_path, "header value contains a line break or NUL character"))
        elif not value.strip():
            header = f"header {name!r}" if isinstance(name, str) and name else "the header"
            what = "is empty" if not value else "is only whitespace"
            problems.append(
                Problem(
                    value_path, f"value of {header} {what}: a receiver checking it refuses every delivery"
                )
            )
    return problems


def validate_webhook(
    webhook: dict[str, Any] | Webhook,
    *,
    path: str = "",
    allow_unknown_event_types: bool = False,
    require_public_url: bool = False,
    unknown_event_types_hint: str = UNKNOWN_EVENT_TYPES_HINT,
) -> list[Problem]:
    """Every problem with one webhook definition (Carerix's or Python field names), or ``[]`` if it is fine.

    ``path`` prefixes every problem's path, so a caller validating a document gets
    ``webhooks[0].filters[0].condition`` rather than ``filters[0].condition``. ``require_public_url`` is for
    definitions bound for Carerix itself (see :func:`targets_public_carerix`): the URL must then be one
    Carerix can deliver to from the internet (https, a public host). ``unknown_event_types_hint`` is how the
    caller's users accept an entity the catalogue lacks, as an unknown entity's problem words it.
    """
    if isinstance(webhook, Webhook):
        webhook = webhook.model_dump(mode="json", by_alias=True, exclude_none=True)
    if not isinstance(webhook, Mapping):
        return [Problem(path, f"a webhook must be a mapping with url and filters, got {_type_name(webhook)}")]
    problems = _unknown_keys(webhook, _WEBHOOK_KEYS, path)
    kind = webhook.get("_kind", webhook.get("kind"))
    if kind is not None and kind != "Webhook":
        problems.append(Problem(_join(path, "_kind"), f"_kind must be 'Webhook', got {kind!r}"))
    problems += _check_url(webhook.get("url"), _join(path, "url"), require_public_url)
    name = webhook.get("name")
    if name is not None and (not isinstance(name, str) or not name.strip() or name != name.strip()):
        problems.append(
            Problem(_join(path, "name"), "name must be a non-empty label without surrounding spaces")
        )
    status = webhook.get("status")
    if status is not None and status not in _STATUSES:
        problems.append(
            Problem(_join(path, "status"), f"status must be one of {', '.join(_STATUSES)}, got {status!r}")
        )
    key, filters = _get(webhook, _WEBHOOK_KEYS, "filters")
    problems += _check_filters(
        filters, _join(path, key or "filters"), allow_unknown_event_types, unknown_event_types_hint
    )
    key, headers = _get(webhook, _WEBHOOK_KEYS, "customHeaders")
    problems += _check_headers(headers, _join(path, key or "customHeaders"))
    return problems


# Airflow's Variable accessors in a template: var.value.NAME, var.value.get('NAME', ...), var.json.NAME, ...
_VARIABLE = re.compile(
    r"""\bvar\.(?:value|json)\s*(?:\.\s*get\s*\(\s*['"]([^'"]+)['"]|\.\s*([A-Za-z_][A-Za-z0-9_]*)|\[\s*['"]([^'"]+)['"]\s*\])"""
)


def _template_strings(node: Any, path: str, found: dict[str, str]) -> dict[str, str]:
    if isinstance(node, str):
        if "{{" in node or "{%" in node:
            found[path] = node
    elif isinstance(node, Mapping):
        for key, value in node.items():
            _template_strings(value, _join(path, str(key)), found)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            _template_strings(value, _join(path, index), found)
    return found


def explain_templates(problems: list[Problem], template: Any) -> list[Problem]:
    """Say which template (and Airflow Variable) each problem's value was rendered from.

    ``template`` is the document before rendering (parsed). A header value that rendered empty is fixed by
    setting a Variable, not by editing the file, so the problem names the Variable to set.
    """
    sources = _template_strings(template, "", {})
    if not sources:
        return problems
    explained = []
    for problem in problems:
        source = sources.get(problem.path)
        if source is not None:
            names = list(dict.fromkeys(next(n for n in m.groups() if n) for m in _VARIABLE.finditer(source)))
            note = f" (rendered from {source.strip()!r}"
            if names:
                listed = ", ".join(repr(n) for n in names)
                note += f": set the Airflow Variable{'s' if len(names) > 1 else ''} {listed}"
            problem = replace(problem, message=problem.message + note + ")")
        explained.append(problem)
    return explained
