"""Spec documents: both layouts, normalisation, and problems located at file:line:column."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from airflow_provider_carerix.definitions.models import Webhook
from airflow_provider_carerix.definitions.spec import ApplicationSpec, Spec, check_spec, load_spec
from airflow_provider_carerix.definitions.validation import SpecValidationError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "example_dags" / "specs" / "carerix_webhooks.yaml"
GUIDE = Path(__file__).resolve().parent / "data" / "guide"

FULL = """\
applications:
  - name: airflow-carerix
    webhooks:
      - url: https://receiver.example.com/events
        filters:
          - eventType: CRJob:Updated
            condition: data.tostatusnode EQ '1234' OR data.tostatusnode eq '5678'
        customHeaders:
          - name: X-Carerix-Secret
            value: "{{ var.value.carerix_receiver_secret }}"
  - name: second
    webhooks: []
"""


def problems_of(text: str, name: str = "spec.yaml") -> list[str]:
    return [str(p) for p in check_spec(text, filename=name).problems]


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_full_layout_loads_normalised() -> None:
    spec = load_spec(FULL)
    assert isinstance(spec, Spec)
    assert [a.name for a in spec.applications] == ["airflow-carerix", "second"]
    app = spec.applications[0]
    assert isinstance(app, ApplicationSpec)
    assert app.labels == [None]
    (hook,) = app.webhooks
    assert isinstance(hook, Webhook)
    assert hook.to_create_body() == {
        "_kind": "Webhook",
        "url": "https://receiver.example.com/events",
        "filters": [
            {
                "eventType": "crjob:updated",
                "condition": "data.tostatusnode eq '1234' or data.tostatusnode eq '5678'",
            }
        ],
        "customHeaders": [{"name": "X-Carerix-Secret", "value": "{{ var.value.carerix_receiver_secret }}"}],
    }
    assert spec.applications[1].webhooks == []
    assert spec.webhook_count == 1


def test_shorthand_layout_and_labels() -> None:
    text = """\
application: airflow-carerix
webhooks:
  - name: publications
    url: http://127.0.0.1:8090/events
    filters:
      - eventType: crpublication:created
"""
    spec = load_spec(text)
    assert [a.name for a in spec.applications] == ["airflow-carerix"]
    assert spec.applications[0].labels == ["publications"]
    assert "name" not in spec.applications[0].webhooks[0].to_create_body()


def test_dict_source_and_json_file(tmp_path: Path) -> None:
    data = {
        "application": "a",
        "webhooks": [{"url": "https://x.example", "filters": [{"eventType": "crjob:*"}]}],
    }
    assert load_spec(data).applications[0].webhooks[0].filters[0].event_type == "crjob:*"
    path = write(tmp_path, "spec.json", json.dumps(data, indent=2))
    spec = load_spec(path)
    assert spec.source == str(path)
    assert load_spec(str(path)) == spec


def test_example_spec_is_valid_and_holds_the_guides_six_examples() -> None:
    spec = load_spec(EXAMPLE)
    (app,) = spec.applications
    assert app.name == "airflow-carerix"
    assert [(w.filters[0].event_type, w.filters[0].condition) for w in app.webhooks] == [
        ("crjob:updated", "data.tostatusnode eq '1234' or data.tostatusnode eq '5678'"),
        ("cremployee:updated", "data.touser.tosinglestatusnode eq '1234'"),
        ("crmatch:updated", None),
        ("crmatch:updated", "data.statusinfo eq '1234'"),
        ("crmatch:created", None),
        ("crpublication:created", None),
    ]
    for hook in app.webhooks:
        # No silent fallbacks: without the Variables a sync fails instead of creating dead webhooks.
        assert hook.url == "{{ var.value.carerix_receiver_url }}"
        assert [(h.name, h.value) for h in hook.custom_headers] == [
            ("X-Carerix-Secret", "{{ var.value.carerix_receiver_secret }}")
        ]


def test_load_spec_raises_with_every_problem_located(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "spec.yaml",
        """\
application: airflow-carerix
webhooks:
  - url: yourwebhookurl.test
    filters:
      - eventType: cremploye:updated
        condition: data.tostatusnode equals '1234'
""",
    )
    with pytest.raises(SpecValidationError) as info:
        load_spec(path)
    assert [str(p) for p in info.value.problems] == [
        f"{path}:3:10: webhooks[0].url: url must be an absolute http(s) URL like https://host/path, "
        "got 'yourwebhookurl.test'",
        f"{path}:5:20: webhooks[0].filters[0].eventType: unknown entity 'cremploye' in eventType "
        "'cremploye:updated': did you mean 'cremployee'? (set allow_unknown_event_types to accept entities "
        "this provider does not know)",
        f"{path}:6:38: webhooks[0].filters[0].condition: unknown operator 'equals': did you mean 'eq'?",
    ]
    assert [(p.line, p.column) for p in info.value.problems] == [(3, 10), (5, 20), (6, 38)]


def test_condition_columns_undo_yaml_and_json_quoting() -> None:
    # plain, double-quoted, single-quoted with '' escapes: the column is the faulty character's.
    text = """\
application: a
webhooks:
  - url: https://x.example
    filters:
      - eventType: crjob:updated
        condition: data.x  eq '1'
      - eventType: crjob:created
        condition: "data.x  eq '1'"
      - eventType: crjob:deleted
        condition: 'data.x eq ''1''  or data.y eq ''2'''
"""
    assert problems_of(text) == [
        "spec.yaml:6:26: webhooks[0].filters[0].condition: double space at 6: use a single space",
        "spec.yaml:8:27: webhooks[0].filters[1].condition: double space at 6: use a single space",
        "spec.yaml:10:36: webhooks[0].filters[2].condition: double space at 13: use a single space",
    ]
    lines = text.splitlines()
    assert lines[5][25:27] == "  " and lines[7][26:28] == "  " and lines[9][35:37] == "  "


def test_allow_unknown_event_types_top_level_and_argument() -> None:
    text = (
        "application: a\nwebhooks:\n  - url: https://x.example\n    filters: [{eventType: crnew:created}]\n"
    )
    assert problems_of(text) == [
        "spec.yaml:4:27: webhooks[0].filters[0].eventType: unknown entity 'crnew' in eventType 'crnew:created' "
        "(set allow_unknown_event_types to accept entities this provider does not know)"
    ]
    assert load_spec(text, allow_unknown_event_types=True).webhook_count == 1
    spec = load_spec("allow_unknown_event_types: true\n" + text)
    assert spec.allow_unknown_event_types is True
    assert problems_of("allow_unknown_event_types: 'yes'\n" + text)[0] == (
        "spec.yaml:1:28: allow_unknown_event_types: must be true or false, got string"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "",
            ["spec.yaml: the document is empty: expected 'applications:' or 'application:' and 'webhooks:'"],
        ),
        (
            "- a\n- b\n",
            [
                "spec.yaml:1:1: a spec must be a mapping with 'applications' (or 'application' and 'webhooks'), got list"
            ],
        ),
        (
            "apps: []\n",
            [
                "spec.yaml:1:1: apps: unknown field 'apps': did you mean 'applications'?",
                "spec.yaml:1:1: a spec needs 'applications:' (a list) or 'application:' and 'webhooks:'",
            ],
        ),
        (
            "applications: []\n",
            ["spec.yaml:1:1: applications: applications must be a non-empty list of {name, webhooks}"],
        ),
        (
            "applications:\n  - name: a\n    webhooks: []\n  - name: a\n    webhooks: []\n    hooks: []\n",
            [
                "spec.yaml:4:11: applications[1].name: duplicate application name 'a' (also applications[0])",
                "spec.yaml:6:5: applications[1].hooks: unknown field 'hooks': did you mean 'webhooks'?",
            ],
        ),
        (
            "applications:\n  - webhooks: []\n",
            ["spec.yaml:2:5: applications[0].name: application name is required"],
        ),
        (
            "application: ' a'\nwebhooks: []\n",
            ["spec.yaml:1:14: application: application name ' a' has leading or trailing whitespace"],
        ),
        ("application: a\n", ["spec.yaml:1:1: webhooks: webhooks is required (a list; [] means none)"]),
        ("application: a\nwebhooks: {}\n", ["spec.yaml:2:1: webhooks: webhooks must be a list, got mapping"]),
        (
            "application: a\napplications: []\nwebhooks: []\n",
            [
                "spec.yaml:1:1: application: unknown field 'application': did you mean 'applications'?",
                "spec.yaml:2:1: applications: applications must be a non-empty list of {name, webhooks}",
                "spec.yaml:3:1: webhooks: unknown field 'webhooks'",
            ],
        ),
        (
            "application: a\nwebhooks:\n  - url: https://x.example\n    url: https://y.example\n    filters: [{eventType: crjob:created}]\n",
            [
                "spec.yaml:4:5: webhooks[0].url: duplicate key 'url' (first at line 3; only the last one would count)"
            ],
        ),
        (
            "application: a\nwebhooks:\n"
            "  - {name: one, url: 'https://x.example', filters: [{eventType: crjob:created}]}\n"
            "  - {name: one, url: 'https://x.example', filters: [{eventType: CRJOB:created}]}\n",
            [
                "spec.yaml:4:5: webhooks[1]: duplicate webhook: same definition as webhooks[0]",
                "spec.yaml:4:12: webhooks[1].name: duplicate webhook name 'one' (also webhooks[0])",
            ],
        ),
    ],
)
def test_document_rules(text: str, expected: list[str]) -> None:
    assert problems_of(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "application: a\nwebhooks:\n  - url: {{ var.value.url }}\n",
            "spec.yaml:3:11: invalid YAML: while constructing a mapping: found unhashable key "
            "(quote values that contain Jinja '{{ ... }}')",
        ),
        (
            "application: a\nwebhooks:\n  - url: x\n   filters: 1\n",
            "spec.yaml:4:4: invalid YAML: while parsing a block collection: "
            "expected <block end>, but found '<block mapping start>'",
        ),
        (
            "a: [\n",
            "spec.yaml:2:1: invalid YAML: while parsing a flow node: expected the node content, but found '<stream end>'",
        ),
    ],
)
def test_yaml_syntax_errors(text: str, expected: str) -> None:
    assert problems_of(text) == [expected]


def test_templated_values_are_kept_verbatim() -> None:
    text = (
        'application: a\nwebhooks:\n  - url: "{{ var.value.url }}"\n    filters: [{eventType: crjob:created}]\n'
        '    customHeaders: [{name: X-S, value: "{{ conn.carerix.password }}"}]\n'
    )
    (hook,) = load_spec(text).applications[0].webhooks
    assert hook.url == "{{ var.value.url }}"
    assert hook.custom_headers[0].value == "{{ conn.carerix.password }}"


# The guide's bodies, verbatim: JSON syntax errors and the trailing space, located.
GUIDE_EXPECTED = {
    "popular-example1.json": [],
    "popular-example2.json": [],
    "popular-example3.json": [
        "popular-example3.json:2:8: invalid JSON: expecting a value, found 'https://yourwebhookurl.test\"': "
        "is the opening '\"' missing?",
        "popular-example3.json:14:2: invalid JSON: the file ends before the closing '}'",
    ],
    "popular-example4.json": [
        "popular-example4.json:2:8: invalid JSON: expecting a value, found 'https://yourwebhookurl.test\"': "
        "is the opening '\"' missing?"
    ],
    "popular-example5.json": [
        "popular-example5.json:2:8: invalid JSON: expecting a value, found 'https://yourwebhookurl.test\"': "
        "is the opening '\"' missing?"
    ],
    "popular-example6.json": [
        "popular-example6.json:2:8: invalid JSON: expecting a value, found 'https://yourwebhookurl.test\"': "
        "is the opening '\"' missing?"
    ],
    "step2-example1.json": [
        "step2-example1.json:7:42: filters[0].condition: trailing space at 27: remove the space(s) after the condition"
    ],
    "step2-example2.json": ["step2-example2.json:6:29: invalid JSON: trailing comma before '}'"],
}


@pytest.mark.parametrize("name", sorted(GUIDE_EXPECTED))
def test_guide_bodies(name: str) -> None:
    result = check_spec((GUIDE / name).read_text(), filename=name)
    assert [str(p) for p in result.problems] == GUIDE_EXPECTED[name]


def test_a_valid_bare_webhook_body_is_not_a_spec() -> None:
    result = check_spec(GUIDE / "popular-example1.json")
    assert (result.kind, result.problems, result.webhook_count) == ("webhook", [], 1)
    with pytest.raises(SpecValidationError) as info:
        load_spec(GUIDE / "popular-example1.json")
    assert str(info.value.problems[0]).endswith(
        "this is a single webhook body, not a spec: put it under 'webhooks:' next to 'application: NAME'"
    )


def test_json_syntax_fault_hints() -> None:
    assert problems_of('{"a": [1, 2,\n "b": x}', "x.json") == [
        "x.json:2:5: invalid JSON: Expecting ',' delimiter: is a ',' missing between two entries?"
    ]
    assert problems_of('{"application": "a", "webhooks": [1,]}', "x.json") == [
        "x.json:1:36: invalid JSON: trailing comma before ']'"
    ]
    assert problems_of('{"application": open}', "x.json") == [
        "x.json:1:17: invalid JSON: expecting a value, found 'open': strings need double quotes"
    ]


def test_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    result = check_spec(missing)
    assert result.kind == "unreadable"
    assert [str(p) for p in result.problems] == [f"{missing}: cannot read: No such file or directory"]


def test_condition_columns_through_double_quoted_escapes_and_block_scalars() -> None:
    # \u, \x, \U and \\ escapes take 6, 4, 10 and 2 source characters for one character of the value;
    # a block scalar (> or |) is not mapped character by character: its problems point at the indicator.
    text = """\
application: a
webhooks:
  - url: https://x.example
    filters:
      - eventType: crjob:updated
        condition: "data.x eq '\\u00e9\\x41\\U0001F600\\\\\\t'  or data.y eq '2'"
      - eventType: crjob:created
        condition: >-
          data.x  eq '1'
      - eventType: crjob:deleted
        condition: |-
          data.x eq '1'  or data.y eq '2'
"""
    assert problems_of(text) == [
        "spec.yaml:6:57: webhooks[0].filters[0].condition: double space at 17: use a single space",
        "spec.yaml:8:20: webhooks[0].filters[1].condition: double space at 6: use a single space",
        "spec.yaml:11:20: webhooks[0].filters[2].condition: double space at 13: use a single space",
    ]
    lines = text.splitlines()
    assert lines[5][56:58] == "  " and lines[7][19:21] == ">-" and lines[10][19:21] == "|-"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Brackets and escaped quotes inside strings do not count; the closers are listed innermost first.
        (
            '{"a": "x}\\"[", "b": [1, {"c": 2',
            ["x.json:1:32: invalid JSON: the file ends before the closing '}' and ']' and '}'"],
        ),
        ('{"a": "unterminated', ["x.json:1:7: invalid JSON: Unterminated string starting at"]),
        # After a repair, a later fault is still reported where it is in the original text.
        (
            "[1,}",
            [
                "x.json:1:3: invalid JSON: trailing comma before '}'",
                "x.json:1:4: invalid JSON: Expecting ',' delimiter: is a ',' missing between two entries?",
            ],
        ),
        ("\n[1,]", ["x.json:2:3: invalid JSON: trailing comma before ']'"]),
        ("\n],", ["x.json:2:1: invalid JSON: Expecting value"]),
        ('{"a": ]}', ["x.json:1:7: invalid JSON: Expecting value"]),
        ("{\"a\": 'x'}", ["x.json:1:7: invalid JSON: Expecting value"]),
        ("[1,X]", ["x.json:1:4: invalid JSON: expecting a value, found 'X': strings need double quotes"]),
        ("[aXb]", ["x.json:1:2: invalid JSON: expecting a value, found 'aXb': strings need double quotes"]),
        ("[abc,1]", ["x.json:1:2: invalid JSON: expecting a value, found 'abc': strings need double quotes"]),
        (
            '{"a": abc',
            ["x.json:1:7: invalid JSON: expecting a value, found 'abc': strings need double quotes"],
        ),
    ],
)
def test_json_syntax_faults_located(text: str, expected: list[str]) -> None:
    assert problems_of(text, "x.json") == expected
    assert all(p.path == "" for p in check_spec(text, filename="x.json").problems)


def test_json_syntax_faults_stop_after_twenty() -> None:
    text = "[" + ",".join(["[1,]"] * 25) + "]"
    problems = problems_of(text, "x.json")
    assert len(problems) == 20  # the 20th of 25 faults: the comma of the 20th "[1,]" (column 5 * 19 + 4)
    assert problems[-1] == "x.json:1:99: invalid JSON: trailing comma before ']'"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "a: {{ x }} y\n",
            "spec.yaml:1:12: invalid YAML: while parsing a block mapping: expected <block end>, but found "
            "'<scalar>' (quote values that contain Jinja '{{ ... }}')",
        ),
        (
            "application: a\nwebhooks:\n  - url: {{ x }} y\n",
            "spec.yaml:3:18: invalid YAML: while parsing a block mapping: expected <block end>, but found "
            "'<scalar>' (quote values that contain Jinja '{{ ... }}')",
        ),
    ],
)
def test_yaml_jinja_hint_on_any_line(text: str, expected: str) -> None:
    assert problems_of(text) == [expected]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # PyYAML refuses these before parsing and names a character index: the problem gets line and column.
        (
            "application: a\x07\nwebhooks: []\n",
            "spec.yaml:1:15: invalid YAML: unacceptable character #x0007: special characters are not allowed",
        ),
        (
            "application: a\nwebhooks:\n  - url: 'https://x\x1b.example'\n",
            "spec.yaml:3:20: invalid YAML: unacceptable character #x001b: special characters are not allowed",
        ),
        (
            "\napplication: a\x7f\n",
            "spec.yaml:2:15: invalid YAML: unacceptable character #x007f: special characters are not allowed",
        ),
    ],
)
def test_a_character_yaml_refuses_is_a_located_problem_not_a_crash(text: str, expected: str) -> None:
    result = check_spec(text, filename="spec.yaml")
    assert [str(p) for p in result.problems] == [expected]
    assert (result.kind, result.spec, result.webhook_count, result.problems[0].path) == ("spec", None, 0, "")


LOOPBACK_HOOK = "url: http://127.0.0.1:8090/events\n{indent}filters: [{{eventType: crjob:created}}]\n"
UNREACHABLE = (
    "url 'http://127.0.0.1:8090/events' cannot be reached by Carerix: 127.0.0.1 is a loopback address; "
    "use a public https URL of your receiver, or allow such URLs explicitly (--allow-unreachable-urls, "
    "or allow_unreachable_urls=True on the operator) if Carerix really reaches it"
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "application: a\nwebhooks:\n  - " + LOOPBACK_HOOK.format(indent="    "),
            f"spec.yaml:3:10: webhooks[0].url: {UNREACHABLE}",
        ),
        (
            "applications:\n  - name: a\n    webhooks:\n      - " + LOOPBACK_HOOK.format(indent="        "),
            f"spec.yaml:4:14: applications[0].webhooks[0].url: {UNREACHABLE}",
        ),
        (LOOPBACK_HOOK.format(indent=""), f"spec.yaml:1:6: url: {UNREACHABLE}"),
    ],
)
def test_require_public_urls_reaches_every_layout(text: str, expected: str) -> None:
    assert problems_of(text) == []
    result = check_spec(text, filename="spec.yaml", require_public_urls=True)
    assert [str(p) for p in result.problems] == [expected]
    with pytest.raises(SpecValidationError) as info:
        load_spec(text, filename="spec.yaml", require_public_urls=True)
    assert [str(p) for p in info.value.problems] == [expected]


def test_allow_unknown_event_types_reaches_every_layout() -> None:
    hook = "url: https://x.example\n{indent}filters: [{{eventType: crnew:created}}]\n"
    bare = hook.format(indent="")
    assert check_spec(bare, allow_unknown_event_types=True).problems == []
    assert [str(p) for p in check_spec(bare, filename="hook.yaml").problems] == [
        "hook.yaml:2:23: filters[0].eventType: unknown entity 'crnew' in eventType 'crnew:created' "
        "(set allow_unknown_event_types to accept entities this provider does not know)"
    ]
    # The document's own opt-in holds in the applications layout too (and is not an unknown field there).
    spec = load_spec(
        "allow_unknown_event_types: true\napplications:\n  - name: a\n    webhooks:\n      - "
        + hook.format(indent="        ")
    )
    assert spec.allow_unknown_event_types is True
    assert spec.applications[0].webhooks[0].filters[0].event_type == "crnew:created"


def test_an_invalid_opt_in_does_not_opt_in() -> None:
    text = (
        "allow_unknown_event_types: 'yes'\napplication: a\nwebhooks:\n  - url: https://x.example\n"
        "    filters: [{eventType: crnew:created}]\n"
    )
    assert problems_of(text) == [
        "spec.yaml:1:28: allow_unknown_event_types: must be true or false, got string",
        "spec.yaml:5:27: webhooks[0].filters[0].eventType: unknown entity 'crnew' in eventType 'crnew:created' "
        "(set allow_unknown_event_types to accept entities this provider does not know)",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Problems found before a later check are kept, whichever layout and whatever comes after.
        (
            "allow_unknown_event_types: 1\n",
            [
                "spec.yaml:1:1: a spec needs 'applications:' (a list) or 'application:' and 'webhooks:'",
                "spec.yaml:1:28: allow_unknown_event_types: must be true or false, got number",
            ],
        ),
        (
            "allow_unknown_event_types: 1\napplications:\n  - name: a\n    webhooks: []\n",
            ["spec.yaml:1:28: allow_unknown_event_types: must be true or false, got number"],
        ),
        (
            "applications:\n  - x\n  - name: ' b'\n    webhooks: []\n",
            [
                "spec.yaml:2:5: applications[0]: an application must be a mapping with name and webhooks, "
                "got string",
                "spec.yaml:3:11: applications[1].name: application name ' b' has leading or trailing whitespace",
            ],
        ),
        (
            "application: ' a'\nwebhooks:\n  - url: https://x.example\n    filters: [{eventType: crjob:created}]\n",
            ["spec.yaml:1:14: application: application name ' a' has leading or trailing whitespace"],
        ),
        (
            "application: a\nwebhooks:\n  - url: x\n    filters: [{eventType: crjob:created}]\n"
            "  - url: https://x.example\n    filters: []\n",
            [
                "spec.yaml:3:10: webhooks[0].url: url must be an absolute http(s) URL like https://host/path, "
                "got 'x'",
                "spec.yaml:6:5: webhooks[1].filters: a webhook needs at least one filter (an eventType)",
            ],
        ),
        (
            "applications:\n  - name: a\n",
            ["spec.yaml:2:5: applications[0].webhooks: webhooks is required (a list; [] means none)"],
        ),
        (
            "application: 1\nwebhooks: []\n",
            ["spec.yaml:1:14: application: application name must be a string, got number"],
        ),
        ("application: ''\nwebhooks: []\n", ["spec.yaml:1:14: application: application name is empty"]),
        (
            "application: a\nwebhooks: []\nhooks: []\n",
            ["spec.yaml:3:1: hooks: unknown field 'hooks': did you mean 'webhooks'?"],
        ),
        # A spec that also has a webhook's keys is still a spec: those keys are unknown fields of it.
        (
            "applications:\n  - name: a\n    webhooks: []\nurl: https://x.example\n",
            ["spec.yaml:4:1: url: unknown field 'url'"],
        ),
        (
            "application: a\nwebhooks: []\nurl: https://x.example\n",
            ["spec.yaml:3:1: url: unknown field 'url'"],
        ),
    ],
)
def test_more_document_rules(text: str, expected: list[str]) -> None:
    result = check_spec(text, filename="spec.yaml")
    assert [str(p) for p in result.problems] == expected
    assert (result.kind, result.spec) == ("spec", None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "_kind: Webhook\n",
            [
                "spec.yaml:1:1: url: url is required: the address Carerix POSTs events to",
                "spec.yaml:1:1: filters: filters is required: a webhook needs at least one filter (an eventType)",
            ],
        ),
        (
            "url: https://x.example\n",
            [
                "spec.yaml:1:1: filters: filters is required: a webhook needs at least one filter (an eventType)"
            ],
        ),
        (
            "filters: []\n",
            [
                "spec.yaml:1:1: url: url is required: the address Carerix POSTs events to",
                "spec.yaml:1:1: filters: a webhook needs at least one filter (an eventType)",
            ],
        ),
    ],
)
def test_any_webhook_key_makes_a_bare_webhook_body(text: str, expected: list[str]) -> None:
    result = check_spec(text, filename="spec.yaml")
    assert [str(p) for p in result.problems] == expected
    assert (result.kind, result.webhook_count, result.spec) == ("webhook", 1, None)


@pytest.mark.parametrize(
    ("text", "count"),
    [
        ("", 0),
        ("- a\n", 0),
        ("application: a\n", 0),
        ("application: a\nwebhooks: {}\n", 0),
        ("applications:\n  - name: a\n  - name: b\n    webhooks: 1\n", 0),
        (
            "applications:\n  - name: a\n    webhooks:\n      - {url: 'https://x.example/1', filters: [{eventType: crjob:created}]}\n"
            "  - name: b\n    webhooks:\n      - {url: 'https://x.example/2', filters: [{eventType: crjob:created}]}\n"
            "      - {url: 'https://x.example/3', filters: [{eventType: crjob:created}]}\n"
            "  - name: c\n    webhooks: []\n",
            3,
        ),
        # Counted with problems too: what a CLI summary says was checked.
        (
            "applications:\n  - name: a\n    webhooks: [{url: x}]\n  - name: ' b'\n    webhooks: [1, 2]\n",
            3,
        ),
    ],
)
def test_webhook_count_and_kind_of_a_spec(text: str, count: int) -> None:
    result = check_spec(text, filename="spec.yaml")
    assert (result.kind, result.webhook_count, result.source) == ("spec", count, "spec.yaml")
    assert (result.spec is None) == bool(result.problems)
    if result.spec is not None:
        assert result.spec.source == "spec.yaml"
        assert result.spec.webhook_count == count


@pytest.mark.parametrize("text", ["", "- a\n", "42\n"])
def test_a_document_that_is_no_mapping_is_a_problem_of_the_whole_document(text: str) -> None:
    (problem,) = check_spec(text, filename="spec.yaml").problems
    assert problem.path == ""


@pytest.mark.parametrize("name", ["spec.yaml", "SPEC.YML", "spec.yml"])
def test_a_yaml_file_name_wins_over_a_leading_brace(name: str) -> None:
    # A flow mapping is YAML, not JSON: a .yaml/.yml name (any case) keeps it from the JSON parser.
    result = check_spec("{application: a, webhooks: []}", filename=name)
    assert (result.problems, result.spec is not None) == ([], True)
    assert problems_of("{application: a, webhooks: []}", "spec.json") == [
        "spec.json:1:2: invalid JSON: Expecting property name enclosed in double quotes"
    ]


@pytest.mark.parametrize("text", ['{"a": [1,]}', '\n {"a": [1,]}', "[1,]", "\t[1,]"])
def test_text_starting_with_a_bracket_is_json_without_a_file_name(text: str) -> None:
    # YAML would accept the trailing comma; as JSON it is the usual typo, and said so.
    assert [str(p) for p in check_spec(text).problems] == ["invalid JSON: trailing comma before ']'"]


@pytest.mark.parametrize(
    "text",
    ['{"application":"a","webhooks":[]}', '  {"application":"a","webhooks":[]}', '["a","b"]', " [1]"],
)
def test_one_line_json_is_text_not_a_path(text: str) -> None:
    # Not read as a file name (that would be "unreadable"): a spec, or a list where a spec should be.
    result = check_spec(text)
    assert result.kind == "spec"
    assert (result.spec is not None) == text.lstrip().startswith("{")


def test_one_line_yaml_is_text_not_a_path() -> None:
    result = check_spec("application: a")
    assert (result.kind, [str(p) for p in result.problems]) == (
        "spec",
        ["webhooks: webhooks is required (a list; [] means none)"],
    )


def test_python_field_names_and_status_reach_the_model() -> None:
    text = (
        "application: a\nwebhooks:\n  - url: https://x.example\n"
        "    filters: [{event_type: CRJOB:created, condition: data.x EQ '1'}]\n"
        "    custom_headers: [{name: X-S, value: s}]\n    status: disabled\n"
    )
    (hook,) = load_spec(text).applications[0].webhooks
    assert [(f.event_type, f.condition) for f in hook.filters] == [("crjob:created", "data.x eq '1'")]
    assert [(h.name, h.value) for h in hook.custom_headers] == [("X-S", "s")]
    assert hook.status == "disabled"
    (plain,) = load_spec(text.replace("    status: disabled\n", "")).applications[0].webhooks
    assert plain.status is None


def test_problems_under_a_duplicated_key_point_at_the_first_key() -> None:
    # Only the last value counts (PyYAML), but positions were taken from the first: a problem in the
    # value that counts is put at the nearest key that has a position.
    text = (
        "applications:\n  - name: a\n    webhooks: []\n    webhooks:\n      - url: x\n"
        "        filters: [{eventType: crjob:created}]\n"
    )
    assert problems_of(text) == [
        "spec.yaml:3:5: applications[0].webhooks[0].url: url must be an absolute http(s) URL like "
        "https://host/path, got 'x'",
        "spec.yaml:4:5: applications[0].webhooks: duplicate key 'webhooks' (first at line 3; only the last one "
        "would count)",
    ]
    text = "application: a\nwebhooks: []\nwebhooks:\n  - url: x\n    filters: [{eventType: crjob:created}]\n"
    assert problems_of(text) == [
        "spec.yaml:2:1: webhooks[0].url: url must be an absolute http(s) URL like https://host/path, got 'x'",
        "spec.yaml:3:1: webhooks: duplicate key 'webhooks' (first at line 2; only the last one would count)",
    ]


def test_keys_after_a_duplicate_still_have_positions() -> None:
    text = (
        "application: a\napplication: a\nwebhooks:\n  - url: x\n    filters: [{eventType: crjob:created}]\n"
    )
    result = check_spec(text, filename="spec.yaml")
    assert [str(p) for p in result.problems] == [
        "spec.yaml:2:1: application: duplicate key 'application' (first at line 1; only the last one would count)",
        "spec.yaml:4:10: webhooks[0].url: url must be an absolute http(s) URL like https://host/path, got 'x'",
    ]


def test_a_duplicate_key_alone_fails_the_spec() -> None:
    result = check_spec("application: a\nwebhooks: []\nwebhooks: []\n", filename="spec.yaml")
    assert [str(p) for p in result.problems] == [
        "spec.yaml:3:1: webhooks: duplicate key 'webhooks' (first at line 2; only the last one would count)"
    ]
    assert (result.kind, result.spec, result.webhook_count, result.source) == ("spec", None, 0, "spec.yaml")


def test_any_unhashable_key_gets_the_jinja_hint() -> None:
    # Not only on a line with '{{': a mapping used as a key is what unquoted Jinja turns into.
    assert problems_of("a: { {b: 1}: 2 }\n") == [
        "spec.yaml:1:6: invalid YAML: while constructing a mapping: found unhashable key "
        "(quote values that contain Jinja '{{ ... }}')"
    ]
    assert check_spec("a: { {b: 1}: 2 }\n").problems[0].path == ""


RENDERED = (
    "application: a\nwebhooks:\n  - url: https://x.example\n    filters: [{eventType: crjob:created}]\n"
    "    customHeaders: [{name: X-S, value: ''}]\n"
)
TEMPLATE = RENDERED.replace("value: ''", 'value: "{{ var.value.secret }}"')
EMPTY_SECRET = (
    "spec.yaml:5:40: webhooks[0].customHeaders[0].value: value of header 'X-S' is empty: a receiver checking "
    "it refuses every delivery"
)


def test_problems_in_rendered_values_name_the_template_and_its_variable() -> None:
    explained = (
        f"{EMPTY_SECRET} (rendered from '{{{{ var.value.secret }}}}': set the Airflow Variable 'secret')"
    )
    assert problems_of(RENDERED) == [EMPTY_SECRET]
    for template in (TEMPLATE, yaml.safe_load(TEMPLATE)):
        result = check_spec(RENDERED, filename="spec.yaml", template=template)
        assert [str(p) for p in result.problems] == [explained]
        with pytest.raises(SpecValidationError) as info:
            load_spec(RENDERED, filename="spec.yaml", template=template)
        assert [str(p) for p in info.value.problems] == [explained]
    # A template YAML cannot read (Jinja statements outside values) only loses the explanation.
    result = check_spec(RENDERED, filename="spec.yaml", template="{% for x in y %}\n: [\n")
    assert [str(p) for p in result.problems] == [EMPTY_SECRET]


def test_load_spec_names_the_file_it_was_given() -> None:
    with pytest.raises(SpecValidationError) as info:
        load_spec("application: a\n", filename="apps.yaml")
    assert [str(p) for p in info.value.problems] == [
        "apps.yaml:1:1: webhooks: webhooks is required (a list; [] means none)"
    ]
    assert load_spec("application: a\nwebhooks: []\n", filename="apps.yaml").source == "apps.yaml"


def test_a_bare_webhook_body_is_not_a_spec_with_its_file_named() -> None:
    path = GUIDE / "popular-example1.json"
    with pytest.raises(SpecValidationError) as info:
        load_spec(path)
    assert [(str(p), p.path) for p in info.value.problems] == [
        (
            f"{path}: this is a single webhook body, not a spec: put it under 'webhooks:' next to "
            "'application: NAME'",
            "",
        )
    ]


def test_unreadable_results(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    result = check_spec(missing)
    assert (result.source, result.kind, result.spec, result.webhook_count) == (
        str(missing),
        "unreadable",
        None,
        0,
    )
    assert result.problems[0].path == ""
    binary = write(tmp_path, "bad.yaml", "")
    binary.write_bytes(b"\xffapplication: a\n")
    result = check_spec(binary)
    assert (result.kind, [str(p) for p in result.problems]) == (
        "unreadable",
        [f"{binary}: cannot read: 'utf-8' codec can't decode byte 0xff in position 0: invalid start byte"],
    )


def test_syntax_error_results() -> None:
    for text, name in (('{"a": [1,]}', "x.json"), ("a: [\n", "x.yaml")):
        result = check_spec(text, filename=name)
        assert (result.source, result.kind, result.spec, result.webhook_count) == (name, "spec", None, 0)
        assert len(result.problems) == 1


def test_a_repair_at_the_end_maps_later_faults_back() -> None:
    # The closers are appended at the end; the trailing comma found after that is before them.
    assert problems_of('{"a": [1, {"b": 1,', "x.json") == [
        "x.json:1:19: invalid JSON: the file ends before the closing '}' and ']' and '}'",
        "x.json:1:18: invalid JSON: trailing comma before '}'",
    ]


@pytest.mark.parametrize(
    ("escape", "column"),
    [("\\U0001F600", 43), ("\\u00e9", 39), ("\\x41", 37), ("\\t", 35), ("\\\\", 35), ("a", 34)],
)
def test_each_double_quoted_escape_takes_its_width_in_the_column(escape: str, column: int) -> None:
    # One escape alone before the fault, so that no two wrong widths can cancel out.
    text = (
        "application: a\nwebhooks:\n  - url: https://x.example\n    filters:\n      - eventType: crjob:updated\n"
        f"        condition: \"data.x eq '{escape}'  or data.y eq '2'\"\n"
    )
    assert problems_of(text) == [
        f"spec.yaml:6:{column}: webhooks[0].filters[0].condition: double space at 13: use a single space"
    ]
    assert text.splitlines()[5][column - 1 : column + 1] == "  "


def test_a_spec_file_is_read_as_utf8_whatever_the_locale(tmp_path: Path) -> None:
    # Workers often run with LANG=C; a name with an accent must not make the file unreadable there.
    import locale

    path = write(tmp_path, "spec.yaml", "application: café\nwebhooks: []\n")
    previous = locale.setlocale(locale.LC_CTYPE)
    try:
        locale.setlocale(locale.LC_CTYPE, "C")
        assert locale.getpreferredencoding(False).lower() != "utf-8"  # the default really changed
        spec = load_spec(path)
    finally:
        locale.setlocale(locale.LC_CTYPE, previous)
    assert spec.applications[0].name == "café"
