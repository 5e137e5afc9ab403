"""Spec documents: the YAML/JSON files that declare which webhooks each Carerix application should have.

A spec is validated as a whole and every problem is reported with ``file:line:column``, because these files
are edited by hand and Carerix itself never says that a webhook is wrong. Positions come from PyYAML's node
marks (JSON is YAML, so JSON files get them too, once ``json`` itself accepted the text; JSON syntax errors
come from ``json.JSONDecodeError`` with a hint for the usual typos).

Jinja text (``{{ ... }}``) is left untouched: the operator renders templates before loading, and the CLI's
``validate`` checks files as written. A caller that rendered the document passes the unrendered one as
``template``, so a problem in a rendered value names the template and the Airflow Variable it came from.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from airflow_provider_carerix.definitions.conditions import parse
from airflow_provider_carerix.definitions.models import Webhook
from airflow_provider_carerix.definitions.validation import (
    UNKNOWN_EVENT_TYPES_HINT,
    Problem,
    SpecValidationError,
    _join,
    _suggestion,
    _type_name,
    explain_templates,
    normalize_event_type,
    validate_webhook,
)

__all__ = ["ApplicationSpec", "CheckResult", "Spec", "check_spec", "load_spec"]

_TOP_KEYS = ("applications", "application", "webhooks", "allow_unknown_event_types")
_APPLICATION_KEYS = ("name", "webhooks")


@dataclass(frozen=True)
class ApplicationSpec:
    """One application and the webhooks it should have (normalised: lowercase event types, canonical
    conditions). ``labels[i]`` is the optional ``name`` of ``webhooks[i]`` in the spec: a label for people
    and plans, never sent to Carerix."""

    name: str
    webhooks: list[Webhook]
    labels: list[str | None] = field(default_factory=list)


@dataclass(frozen=True)
class Spec:
    applications: list[ApplicationSpec]
    allow_unknown_event_types: bool = False
    source: str | None = None

    @property
    def webhook_count(self) -> int:
        return sum(len(a.webhooks) for a in self.applications)


@dataclass(frozen=True)
class CheckResult:
    """What ``check_spec`` found in one document: a spec, or a bare Carerix webhook body (``kind``)."""

    source: str | None
    kind: str  # "spec", "webhook" (a single Carerix webhook body) or "unreadable"
    problems: list[Problem]
    spec: Spec | None
    webhook_count: int


# ------------------------------------------------------------------------------------------------ reading


def _looks_like_text(source: str) -> bool:
    stripped = source.lstrip()
    return not stripped or "\n" in source or stripped.startswith(("{", "[")) or ": " in source


def _is_json(text: str, filename: str | None) -> bool:
    if filename and filename.lower().endswith(".json"):
        return True
    if filename and filename.lower().endswith((".yaml", ".yml")):
        return False
    return text.lstrip().startswith(("{", "["))


def _open_brackets(text: str) -> str:
    """The closers a truncated JSON text still needs, innermost first (strings skipped)."""
    stack: list[str] = []
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            stack.append("}" if ch == "{" else "]")
        elif ch in "}]" and stack:
            stack.pop()
    return "".join(reversed(stack))


_Fix = tuple[int, int, str]  # (position, characters removed, text inserted)


def _diagnose_json(error: json.JSONDecodeError, text: str) -> tuple[int, str, _Fix | None]:
    """Where the fault is, a message with what usually causes it, and a repair to look for more faults."""
    pos, msg = error.pos, error.msg
    found = text[pos] if pos < len(text) else ""
    before = pos - 1
    while before >= 0 and text[before].isspace():
        before -= 1
    prev = text[before] if before >= 0 else ""
    if (
        prev == ","
        and found
        and found in "}]"
        and msg.startswith(("Expecting property name", "Expecting value"))
    ):
        return before, f"invalid JSON: trailing comma before '{found}'", (before, 1, "")
    if not found and not msg.startswith("Unterminated"):
        closers = _open_brackets(text)
        if closers:
            shown = " and ".join(f"'{c}'" for c in closers)
            return before + 1, f"invalid JSON: the file ends before the closing {shown}", (pos, 0, closers)
        return pos, f"invalid JSON: unexpected end of file ({msg})", None
    if msg == "Expecting value" and (found.isalnum() or found in "/:."):
        end = pos
        while end < len(text) and text[end] not in ",}]\n":
            end += 1
        word = text[pos:end].strip()
        if word.endswith('"'):
            return (
                pos,
                f"invalid JSON: expecting a value, found {word!r}: is the opening '\"' missing?",
                (pos, 0, '"'),
            )
        return pos, f"invalid JSON: expecting a value, found {word!r}: strings need double quotes", None
    if msg.startswith("Expecting ',' delimiter"):
        return pos, f"invalid JSON: {msg}: is a ',' missing between two entries?", None
    return pos, f"invalid JSON: {msg}", None


def _line_column(text: str, position: int) -> tuple[int, int]:
    """1-based line and column of the character at ``position`` (0-based) of ``text``."""
    return text.count("\n", 0, position) + 1, position - (text.rfind("\n", 0, position) + 1) + 1


def _json_syntax_problems(text: str, filename: str | None) -> list[Problem]:
    """Every JSON syntax fault we can find: after each, apply the obvious repair and parse again.

    ``json`` stops at the first fault; the guide's example 3 has two (a missing quote and a missing brace),
    and a user should not need two rounds to learn that. Repairs are only used to find later faults; their
    positions are mapped back to the original text.
    """
    problems: list[Problem] = []
    edits: list[_Fix] = []
    current = text
    for _ in range(20):
        try:
            json.loads(current)
            break
        except json.JSONDecodeError as error:
            position, message, fix = _diagnose_json(error, current)
        for at, removed, inserted in reversed(edits):
            if position >= at + len(inserted):
                position += removed - len(inserted)
            elif position > at:
                position = at
        line, column = _line_column(text, position)
        problems.append(Problem("", message, file=filename, line=line, column=column))
        if fix is None:
            break
        at, removed, inserted = fix
        current = current[:at] + inserted + current[at + removed :]
        edits.append(fix)
    return problems


def _yaml_syntax_problem(error: yaml.MarkedYAMLError, text: str, filename: str | None) -> Problem:
    mark = error.problem_mark or error.context_mark
    parts = [p for p in (error.context, error.problem) if p]
    message = "invalid YAML: " + ": ".join(parts)
    if mark is not None:
        lines = text.splitlines()
        if (0 <= mark.line < len(lines) and "{{" in lines[mark.line]) or "unhashable" in message:
            message += " (quote values that contain Jinja '{{ ... }}')"
    return Problem(
        "",
        message,
        file=filename,
        line=mark.line + 1 if mark else None,
        column=mark.column + 1 if mark else None,
    )


def _reader_problem(error: yaml.reader.ReaderError, text: str, filename: str | None) -> Problem:
    """A control character (or a lone surrogate): PyYAML names its index, people need its line and column."""
    line, column = _line_column(text, error.position)
    return Problem(
        "",
        f"invalid YAML: unacceptable character #x{error.character:04x}: {error.reason}",
        file=filename,
        line=line,
        column=column,
    )


class _Positions:
    """Where each JSON path of a document is: the key node (for mapping entries) and the value node."""

    def __init__(self, root: yaml.Node, text: str) -> None:
        self.text = text
        self.nodes: dict[str, tuple[yaml.Node | None, yaml.Node]] = {}
        self.duplicates: list[Problem] = []
        self._walk(root, "", None)

    def _walk(self, node: yaml.Node, path: str, key_node: yaml.Node | None) -> None:
        self.nodes.setdefault(path, (key_node, node))
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Node] = {}
            for key, value in node.value:
                name = key.value if isinstance(key, yaml.ScalarNode) else None
                if name is None:
                    continue
                if name in seen:
                    first = seen[name].start_mark.line + 1
                    self.duplicates.append(
                        Problem(
                            _join(path, name),
                            f"duplicate key {name!r} (first at line {first}; only the last one would count)",
                            line=key.start_mark.line + 1,
                            column=key.start_mark.column + 1,
                        )
                    )
                    continue
                seen[name] = key
                self._walk(value, _join(path, name), key)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self._walk(item, _join(path, index), None)

    def locate(self, problem: Problem) -> tuple[int, int] | None:
        path = problem.path
        while path not in self.nodes:
            if not path:
                return None
            path = _parent(path)
        key_node, value_node = self.nodes[path]
        exact = path == problem.path
        if exact and problem.offset is not None and isinstance(value_node, yaml.ScalarNode):
            return _scalar_position(value_node, self.text, problem.offset)
        if key_node is not None and (
            not isinstance(value_node, yaml.ScalarNode)
            or not exact
            or problem.message.startswith("unknown field")
        ):
            return key_node.start_mark.line + 1, key_node.start_mark.column + 1
        return value_node.start_mark.line + 1, value_node.start_mark.column + 1


def _parent(path: str) -> str:
    if path.endswith("]"):
        return path[: path.rindex("[")]
    return path[: path.rindex(".")] if "." in path else ""


def _scalar_position(node: yaml.ScalarNode, text: str, offset: int) -> tuple[int, int]:
    """Line/column of character ``offset`` of a scalar's value, undoing quoting; the scalar's start if unsure."""
    start, end = node.start_mark, node.end_mark
    fallback = start.line + 1, start.column + 1
    if start.line != end.line:
        return fallback
    raw = text[start.index : end.index]
    if node.style is None:
        source = offset
    elif node.style in ("'", '"'):
        source, consumed = 1, 0
        while consumed < offset and source < len(raw):
            if node.style == "'" and raw[source : source + 2] == "''":
                source += 2
            elif node.style == '"' and raw[source] == "\\":
                width = {"x": 4, "u": 6, "U": 10}.get(raw[source + 1 : source + 2], 2)
                source += width
            else:
                source += 1
            consumed += 1
    else:
        return fallback
    return start.line + 1, start.column + 1 + source


def _parse_text(text: str, filename: str | None) -> tuple[Any, _Positions | None, list[Problem]]:
    data: Any
    if _is_json(text, filename):
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            return None, None, _json_syntax_problems(text, filename)
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError:  # valid JSON PyYAML cannot read (rare: tabs); no positions then
            return data, None, []
        return data, _Positions(root, text) if root is not None else None, []
    try:
        loader = yaml.SafeLoader(text)
    except yaml.reader.ReaderError as error:  # a character YAML refuses anywhere, found before parsing
        return None, None, [_reader_problem(error, text, filename)]
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as error:
        return None, None, [_yaml_syntax_problem(error, text, filename)]
    except yaml.YAMLError as error:
        return None, None, [Problem("", f"invalid YAML: {error}", file=filename)]
    finally:
        loader.dispose()
    return data, _Positions(root, text) if root is not None else None, []


# --------------------------------------------------------------------------------------------- validation


def _check_name(value: Any, path: str, what: str) -> list[Problem]:
    if value is None:
        return [Problem(path, f"{what} name is required")]
    if not isinstance(value, str):
        return [Problem(path, f"{what} name must be a string, got {_type_name(value)}")]
    if not value.strip():
        return [Problem(path, f"{what} name is empty")]
    if value != value.strip():
        return [Problem(path, f"{what} name {value!r} has leading or trailing whitespace")]
    return []


def _unknown(mapping: Mapping[str, Any], known: tuple[str, ...], path: str) -> list[Problem]:
    return [
        Problem(_join(path, str(key)), f"unknown field {key!r}{_suggestion(str(key), known, cutoff=0.5)}")
        for key in mapping
        if key not in known
    ]


def _normalised_webhook(raw: Mapping[str, Any], allow_unknown: bool) -> Webhook:
    """A validated definition as the model Carerix gets: lowercase event types, canonical conditions."""
    filters = []
    for item in raw.get("filters") or []:
        event_type = normalize_event_type(
            item.get("eventType", item.get("event_type")), allow_unknown=allow_unknown
        )
        entry: dict[str, Any] = {"eventType": event_type}
        if item.get("condition") is not None:
            entry["condition"] = str(parse(item["condition"]))
        filters.append(entry)
    headers = raw.get("customHeaders", raw.get("custom_headers")) or []
    body: dict[str, Any] = {
        "url": raw["url"],
        "filters": filters,
        "customHeaders": [{"name": h["name"], "value": h["value"]} for h in headers],
    }
    if raw.get("status") is not None:
        body["status"] = raw["status"]
    return Webhook.model_validate(body)


def _identity(webhook: Webhook) -> str:
    return json.dumps(webhook.to_create_body(), sort_keys=True)


def _check_application(
    name: Any,
    webhooks: Any,
    name_path: str,
    webhooks_path: str,
    allow_unknown: bool,
    require_public: bool,
    unknown_hint: str,
) -> tuple[list[Problem], ApplicationSpec | None, int]:
    problems = _check_name(name, name_path, "application")
    if webhooks is None:
        return [*problems, Problem(webhooks_path, "webhooks is required (a list; [] means none)")], None, 0
    if not isinstance(webhooks, list):
        return (
            [*problems, Problem(webhooks_path, f"webhooks must be a list, got {_type_name(webhooks)}")],
            None,
            0,
        )
    models: list[Webhook] = []
    labels: list[str | None] = []
    seen_labels: dict[str, int] = {}
    seen_bodies: dict[str, int] = {}
    for index, raw in enumerate(webhooks):
        path = _join(webhooks_path, index)
        found = validate_webhook(
            raw,
            path=path,
            allow_unknown_event_types=allow_unknown,
            require_public_url=require_public,
            unknown_event_types_hint=unknown_hint,
        )
        problems += found
        if found:
            continue
        label = raw.get("name")
        if label is not None:
            if label in seen_labels:
                problems.append(
                    Problem(
                        _join(path, "name"),
                        f"duplicate webhook name {label!r} (also {webhooks_path}[{seen_labels[label]}])",
                    )
                )
            seen_labels.setdefault(label, index)
        model = _normalised_webhook(raw, allow_unknown)
        identity = _identity(model)
        if identity in seen_bodies:
            problems.append(
                Problem(
                    path, f"duplicate webhook: same definition as {webhooks_path}[{seen_bodies[identity]}]"
                )
            )
        seen_bodies.setdefault(identity, index)
        models.append(model)
        labels.append(label)
    if problems:
        return problems, None, len(webhooks)
    return [], ApplicationSpec(name=name, webhooks=models, labels=labels), len(webhooks)


def _check_document(
    data: Any, allow_unknown: bool, require_public: bool, unknown_hint: str
) -> tuple[str, list[Problem], Spec | None, int]:
    if data is None:
        return (
            "spec",
            [
                Problem(
                    "", "the document is empty: expected 'applications:' or 'application:' and 'webhooks:'"
                )
            ],
            None,
            0,
        )
    if not isinstance(data, Mapping):
        return (
            "spec",
            [
                Problem(
                    "",
                    f"a spec must be a mapping with 'applications' (or 'application' and 'webhooks'), got {_type_name(data)}",
                )
            ],
            None,
            0,
        )
    if "applications" not in data and "application" not in data and ({"_kind", "url", "filters"} & set(data)):
        # A bare Carerix webhook body (like the guide's examples): validate it as such.
        return (
            "webhook",
            validate_webhook(
                dict(data),
                allow_unknown_event_types=allow_unknown,
                require_public_url=require_public,
                unknown_event_types_hint=unknown_hint,
            ),
            None,
            1,
        )
    problems: list[Problem] = []
    opt_in = data.get("allow_unknown_event_types", False)
    if not isinstance(opt_in, bool):
        problems.append(
            Problem("allow_unknown_event_types", f"must be true or false, got {_type_name(opt_in)}")
        )
        opt_in = False
    allow = allow_unknown or opt_in
    applications: list[ApplicationSpec] = []
    count = 0
    if "applications" in data:
        problems += _unknown(data, ("applications", "allow_unknown_event_types"), "")
        items = data["applications"]
        if not isinstance(items, list) or not items:
            problems.append(
                Problem("applications", "applications must be a non-empty list of {name, webhooks}")
            )
            items = []
        names: dict[str, int] = {}
        for index, item in enumerate(items):
            path = _join("applications", index)
            if not isinstance(item, Mapping):
                problems.append(
                    Problem(
                        path,
                        f"an application must be a mapping with name and webhooks, got {_type_name(item)}",
                    )
                )
                continue
            problems += _unknown(item, _APPLICATION_KEYS, path)
            found, app, n = _check_application(
                item.get("name"),
                item.get("webhooks"),
                _join(path, "name"),
                _join(path, "webhooks"),
                allow,
                require_public,
                unknown_hint,
            )
            problems += found
            count += n
            name = item.get("name")
            if isinstance(name, str) and name in names:
                problems.append(
                    Problem(
                        _join(path, "name"),
                        f"duplicate application name {name!r} (also applications[{names[name]}])",
                    )
                )
            if isinstance(name, str):
                names.setdefault(name, index)
            if app is not None:
                applications.append(app)
    elif "application" in data:
        problems += _unknown(data, _TOP_KEYS[1:], "")
        found, app, count = _check_application(
            data["application"],
            data.get("webhooks"),
            "application",
            "webhooks",
            allow,
            require_public,
            unknown_hint,
        )
        problems += found
        if app is not None:
            applications.append(app)
    else:
        problems += _unknown(data, _TOP_KEYS, "")
        problems.append(
            Problem("", "a spec needs 'applications:' (a list) or 'application:' and 'webhooks:'")
        )
    if problems:
        return "spec", problems, None, count
    return "spec", [], Spec(applications=applications, allow_unknown_event_types=opt_in), count


def _parsed_template(template: str | Mapping[str, Any] | None) -> Any:
    if not isinstance(template, str):
        return template
    try:
        return yaml.safe_load(template)
    except yaml.YAMLError:  # Jinja outside quoted values (e.g. {% for %}): no per-value sources then
        return None


def check_spec(
    source: str | Path | Mapping[str, Any],
    *,
    allow_unknown_event_types: bool = False,
    filename: str | None = None,
    require_public_urls: bool = False,
    template: str | Mapping[str, Any] | None = None,
    unknown_event_types_hint: str = UNKNOWN_EVENT_TYPES_HINT,
) -> CheckResult:
    """Validate a spec (or a bare webhook body) and return every problem, located, instead of raising.

    ``source`` is a path, YAML/JSON text (anything with a line break, starting with ``{``/``[``, or
    containing ``": "``), or an already-parsed mapping. ``filename`` names text sources in problems.
    ``require_public_urls``: the spec is bound for Carerix itself, so every webhook URL must be one Carerix
    can reach from the internet. ``template``: the document before Jinja rendering (text or mapping).
    ``unknown_event_types_hint``: how the caller's users accept an unknown entity (the command line names its
    flag; see :data:`~airflow_provider_carerix.definitions.validation.UNKNOWN_EVENT_TYPES_HINT`).
    """
    text: str | None = None
    if isinstance(source, Path) or (isinstance(source, str) and not _looks_like_text(source)):
        filename = filename or str(source)
        try:
            text = Path(source).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            reason = getattr(error, "strerror", None) or str(error)
            return CheckResult(
                filename, "unreadable", [Problem("", f"cannot read: {reason}", file=filename)], None, 0
            )
    elif isinstance(source, str):
        text = source
    if text is not None:
        data, positions, problems = _parse_text(text, filename)
        if problems:
            return CheckResult(filename, "spec", problems, None, 0)
    else:
        data, positions = source, None
    kind, problems, spec, count = _check_document(
        data, allow_unknown_event_types, require_public_urls, unknown_event_types_hint
    )
    if template is not None:
        problems = explain_templates(problems, _parsed_template(template))
    if positions is not None:
        problems = positions.duplicates + problems
        located = []
        for problem in problems:
            if problem.line is None:
                where = positions.locate(problem)
                if where is not None:
                    problem = replace(problem, line=where[0], column=where[1])
            located.append(replace(problem, file=filename))
        problems = sorted(located, key=lambda p: (p.line or 0, p.column or 0))
    elif filename is not None:
        problems = [replace(p, file=filename) for p in problems]
    if problems:
        spec = None
    elif spec is not None:
        spec = replace(spec, source=filename)
    return CheckResult(filename, kind, problems, spec, count)


def load_spec(
    source: str | Path | Mapping[str, Any],
    *,
    allow_unknown_event_types: bool = False,
    filename: str | None = None,
    require_public_urls: bool = False,
    template: str | Mapping[str, Any] | None = None,
    unknown_event_types_hint: str = UNKNOWN_EVENT_TYPES_HINT,
) -> Spec:
    """Load and validate a spec; raises :class:`SpecValidationError` carrying every problem, located.

    Keywords as for :func:`check_spec`.
    """
    result = check_spec(
        source,
        allow_unknown_event_types=allow_unknown_event_types,
        filename=filename,
        require_public_urls=require_public_urls,
        template=template,
        unknown_event_types_hint=unknown_event_types_hint,
    )
    if result.problems:
        raise SpecValidationError(result.problems)
    if result.spec is None:  # a bare webhook body: valid, but it names no application to put it in
        raise SpecValidationError(
            [
                Problem(
                    "",
                    "this is a single webhook body, not a spec: put it under 'webhooks:' "
                    "next to 'application: NAME'",
                    file=result.source,
                )
            ]
        )
    return result.spec
