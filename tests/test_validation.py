"""Every validation rule: a failing input and the exact message a user sees."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_carerix.definitions.models import Webhook
from airflow_provider_carerix.definitions.validation import (
    MAX_FILTERS,
    Problem,
    SpecValidationError,
    explain_templates,
    is_local_host,
    normalize_event_type,
    targets_public_carerix,
    validate_webhook,
)

UNKNOWN_HINT = " (set allow_unknown_event_types to accept entities this provider does not know)"


def webhook(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "url": "https://receiver.example.com/events",
        "_kind": "Webhook",
        "filters": [{"eventType": "crjob:updated", "condition": "data.tostatusnode eq '1234'"}],
        "customHeaders": [{"name": "X-Carerix-Secret", "value": "s3cret"}],
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not ...}


def messages(body: Any, **kwargs: Any) -> list[str]:
    return [str(p) for p in validate_webhook(body, **kwargs)]


def test_a_correct_webhook_has_no_problems() -> None:
    assert validate_webhook(webhook()) == []
    assert validate_webhook(Webhook.model_validate(webhook())) == []
    assert validate_webhook(webhook(customHeaders=...)) == []


def test_every_problem_is_reported_at_its_path_in_the_document() -> None:
    """A document's webhooks are validated with their path: each problem names where it is, and every one
    is reported (not just the first of a list)."""
    body = webhook(
        kind="Application",  # Carerix's other spelling of _kind
        _kind=...,
        colour="red",
        name=5,
        status="paused",
        url="receiver.example.com/events",  # no scheme
        filters=[{"eventType": "nope"}, {"eventType": "crjob:updated"}, {"eventType": "alsonope"}],
        customHeaders=[
            {"name": "X-A", "value": ""},
            {"name": "X-B", "value": "ok"},
            {"name": "X-C", "value": " "},
        ],
    )
    problems = validate_webhook(body, path="webhooks[3]")
    paths = [p.path for p in problems]
    assert all(path.startswith("webhooks[3].") for path in paths), paths
    assert "webhooks[3]._kind" in paths and "webhooks[3].colour" in paths
    assert "webhooks[3].name" in paths and "webhooks[3].status" in paths
    assert "webhooks[3].url" in paths
    assert "webhooks[3].filters[0].eventType" in paths and "webhooks[3].filters[2].eventType" in paths
    header_paths = [path for path in paths if path.startswith("webhooks[3].customHeaders")]
    assert len(header_paths) == 2 and header_paths[0] != header_paths[1], header_paths
    assert validate_webhook(webhook(kind="Webhook", _kind=...)) == []
    assert [p.path for p in validate_webhook(webhook(url="https:///events"))] == ["url"]  # a scheme, no host
    assert messages(
        webhook(url="receiver.example.com:8090/events")
    ) == [  # no scheme: the host is taken for one
        "url: url must be an absolute http(s) URL like https://host/path, got 'receiver.example.com:8090/events'"
    ]


def test_python_field_names_are_accepted_too() -> None:
    body = {"url": "https://x.example", "filters": [{"event_type": "crjob:updated"}], "custom_headers": []}
    assert validate_webhook(body) == []


def test_problems_under_python_field_names_are_reported_at_those_names() -> None:
    """The path names the key the user wrote, so they find it in their own file."""
    body = {
        "url": "https://x.example",
        "filters": [{"event_type": "crjob:update"}],
        "custom_headers": [{"name": "X Secret", "value": "v"}],
    }
    assert [p.path for p in validate_webhook(body, path="webhooks[1]")] == [
        "webhooks[1].filters[0].event_type",
        "webhooks[1].custom_headers[0].name",
    ]


def test_a_webhook_model_is_validated_as_the_body_it_sends() -> None:
    """A model is checked in Carerix's field names and JSON form, as ``to_api()`` sends it: problems carry
    Carerix's names, a field left empty (null) is absent, and a value is checked as the JSON it becomes."""
    model = Webhook.model_validate(
        {
            "url": "https://receiver.example.com/events",
            "filters": [{"event_type": "crjob:update"}],
            "custom_headers": [{"name": "X Secret", "value": "v"}],
            "_createdDateTime": "2026-01-02T03:04:05Z",
            "description": None,  # an extra field Carerix returned empty
            "name": b"jobs",  # sent as the string "jobs"
        }
    )
    assert model.to_api()["name"] == "jobs" and "description" not in model.to_api()
    assert messages(model) == [
        "filters[0].eventType: unknown action 'update' in eventType 'crjob:update': did you mean 'updated'?",
        "customHeaders[0].name: header name 'X Secret' is not an HTTP token: ' ' at 1 is not allowed "
        "(letters, digits and !#$%&'*+-.^_`|~ only)",
    ]
    assert validate_webhook(model) == validate_webhook(model.to_api())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("crjob:updated", "crjob:updated"),
        ("CREmployee:Updated", "cremployee:updated"),
        ("crmatch:*", "crmatch:*"),
        ("crpublication:created", "crpublication:created"),
        ("CRTODO:DELETED", "crtodo:deleted"),
    ],
)
def test_normalize_event_type(text: str, expected: str) -> None:
    assert normalize_event_type(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "cremploye:updated",
            "unknown entity 'cremploye' in eventType 'cremploye:updated': did you mean 'cremployee'?",
        ),
        (
            "candidate:updated",
            "unknown entity 'candidate' in eventType 'candidate:updated': did you mean 'cremployee'?",
        ),
        (
            "employee:updated",
            "unknown entity 'employee' in eventType 'employee:updated': did you mean 'cremployee'?",
        ),
        (
            "crvacancies:created",
            "unknown entity 'crvacancies' in eventType 'crvacancies:created': did you mean 'crvacancy'?",
        ),
        ("crzzz:created", "unknown entity 'crzzz' in eventType 'crzzz:created'"),
        # An everyday name behind Carerix's "cr" prefix is still recognised.
        (
            "crcandidate:updated",
            "unknown entity 'crcandidate' in eventType 'crcandidate:updated': did you mean 'cremployee'?",
        ),
        (
            "CRActivity:created",
            "unknown entity 'cractivity' in eventType 'CRActivity:created': did you mean 'crtodo'?",
        ),
    ],
)
def test_unknown_entities_get_the_closest_suggestion(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        normalize_event_type(text)
    assert str(info.value) == message + UNKNOWN_HINT


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("crjob:update", "unknown action 'update' in eventType 'crjob:update': did you mean 'updated'?"),
        (
            "crjob:changed",
            "unknown action 'changed' in eventType 'crjob:changed': use created, updated, deleted or *",
        ),
        ("crjob", "eventType must look like '<entity>:<action>' (e.g. 'crjob:updated'), got 'crjob'"),
        (
            "crjob:updated:x",
            "eventType must look like '<entity>:<action>' (e.g. 'crjob:updated'), got 'crjob:updated:x'",
        ),
        ("crjob:updated ", "eventType 'crjob:updated ' has trailing whitespace"),
        (" crjob:updated", "eventType ' crjob:updated' has leading whitespace"),
        ("crjob: updated", "eventType 'crjob: updated' contains whitespace"),
        ("cr-job:updated", "eventType 'cr-job:updated' has an invalid entity name 'cr-job'"),
        (":updated", "eventType ':updated' has an invalid entity name ''"),
    ],
)
def test_malformed_event_types(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        normalize_event_type(text, allow_unknown=True)
    assert str(info.value) == message


def test_unknown_entities_are_accepted_on_opt_in() -> None:
    assert normalize_event_type("CRSomethingNew:created", allow_unknown=True) == "crsomethingnew:created"
    assert normalize_event_type("cr_custom_2:updated", allow_unknown=True) == "cr_custom_2:updated"
    body = webhook(filters=[{"eventType": "crsomethingnew:created"}])
    assert validate_webhook(body, allow_unknown_event_types=True) == []
    assert messages(body) == [
        "filters[0].eventType: unknown entity 'crsomethingnew' in eventType 'crsomethingnew:created'"
        + UNKNOWN_HINT
    ]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (..., "url: url is required: the address Carerix POSTs events to"),
        (None, "url: url is required: the address Carerix POSTs events to"),
        (42, "url: url must be a string, got number"),
        (
            "yourwebhookurl.test",
            "url: url must be an absolute http(s) URL like https://host/path, got 'yourwebhookurl.test'",
        ),
        ("/events", "url: url must be an absolute http(s) URL like https://host/path, got '/events'"),
        ("ftp://example.com/x", "url: url must use http or https, not 'ftp'"),
        (
            "https:///path",
            "url: url 'https:///path' has no host",
        ),
        ("https://:8080/x", "url: url 'https://:8080/x' has no host"),
        (
            "https://example.com:99999/x",
            "url: url 'https://example.com:99999/x' is not a valid URL: Port out of range 0-65535",
        ),
        (" https://example.com", "url: url ' https://example.com' has leading or trailing whitespace"),
        ("https://example.com/a b", "url: url 'https://example.com/a b' contains whitespace"),
    ],
)
def test_url_rules(url: Any, message: str) -> None:
    assert messages(webhook(url=url)) == [message]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8090/events",
        "HTTPS://Example.COM",
        "{{ var.value.carerix_receiver_url }}",
        "{{ x }}/events",
    ],
)
def test_good_and_template_urls(url: str) -> None:
    assert validate_webhook(webhook(url=url)) == []


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        (..., "filters: filters is required: a webhook needs at least one filter (an eventType)"),
        ([], "filters: a webhook needs at least one filter (an eventType)"),
        ({"eventType": "crjob:updated"}, "filters: filters must be a list, got mapping"),
        (["crjob:updated"], "filters[0]: a filter must be a mapping with an eventType, got string"),
        ([{"condition": "data.x eq '1'"}], "filters[0]: eventType is required, e.g. 'crjob:updated'"),
        (
            [{"eventType": 5}],
            "filters[0].eventType: eventType must be a string like 'crjob:updated', got number",
        ),
        (
            [{"eventType": "crjob:updated", "conditon": "data.x eq '1'"}],
            "filters[0].conditon: unknown field 'conditon': did you mean 'condition'?",
        ),
        (
            [{"eventType": "crjob:updated"}, {"eventType": "CRJOB:updated"}],
            "filters[1]: duplicate filter: same as filters[0]",
        ),
        (
            [
                {"eventType": "crjob:updated", "condition": "data.x eq '1'"},
                {"eventType": "crjob:updated", "condition": "data.x EQ '1'"},
            ],
            "filters[1]: duplicate filter: same as filters[0]",
        ),
    ],
)
def test_filter_rules(filters: Any, message: str) -> None:
    assert messages(webhook(filters=filters)) == [message]


def test_every_filter_is_checked_after_one_that_is_not_a_mapping() -> None:
    assert messages(webhook(filters=["crjob:updated", {"eventType": "crjob:update"}])) == [
        "filters[0]: a filter must be a mapping with an eventType, got string",
        "filters[1].eventType: unknown action 'update' in eventType 'crjob:update': did you mean 'updated'?",
    ]


def test_filters_without_an_event_type_are_not_called_duplicates() -> None:
    """Only filters with a valid eventType are compared: the missing eventType is the problem to fix."""
    filters = [{"condition": "data.x eq '1'"}, {"condition": "data.x eq '1'"}]
    assert messages(webhook(filters=filters)) == [
        "filters[0]: eventType is required, e.g. 'crjob:updated'",
        "filters[1]: eventType is required, e.g. 'crjob:updated'",
    ]


def test_at_most_ten_filters() -> None:
    filters = [
        {"eventType": "crjob:updated", "condition": f"data.x eq '{i}'"} for i in range(MAX_FILTERS + 1)
    ]
    assert messages(webhook(filters=filters)) == [
        "filters: a webhook may have at most 10 filters (Carerix's limit), got 11"
    ]
    assert validate_webhook(webhook(filters=filters[:MAX_FILTERS])) == []


@pytest.mark.parametrize(
    ("condition", "message", "offset"),
    [
        ("data.tostatusnode eq '1234' ", "trailing space at 27: remove the space(s) after the condition", 27),
        ("data.tostatusnode  eq '1234'", "double space at 17: use a single space", 17),
        (" data.tostatusnode eq '1234'", "leading space: remove the space(s) before the condition", 0),
        ("data.tostatusnode equals '1234'", "unknown operator 'equals': did you mean 'eq'?", 18),
        ("data.tostatusnode eq '1234", "unterminated string: the quote at 21 is never closed", 21),
        ("", "condition is empty: leave it out to receive every event of this type", None),
        ("   ", "condition is empty: leave it out to receive every event of this type", None),
        (1234, "condition must be a string, got number", None),
    ],
)
def test_condition_rules(condition: Any, message: str, offset: int | None) -> None:
    problems = validate_webhook(webhook(filters=[{"eventType": "crjob:updated", "condition": condition}]))
    assert [(p.path, p.message, p.offset) for p in problems] == [("filters[0].condition", message, offset)]
    if offset is not None:
        assert problems[0].detail is not None and problems[0].detail.endswith("^")


def test_null_condition_means_no_condition() -> None:
    assert validate_webhook(webhook(filters=[{"eventType": "crjob:updated", "condition": None}])) == []


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"name": "X"}, "customHeaders: customHeaders must be a list of name/value mappings, got mapping"),
        (["X-A: b"], "customHeaders[0]: a custom header must be a mapping with name and value, got string"),
        ([{"value": "v"}], "customHeaders[0]: a custom header needs a name"),
        ([{"name": "X-A"}], "customHeaders[0]: a custom header needs a value"),
        ([{"name": "", "value": "v"}], "customHeaders[0].name: header name is empty"),
        ([{"name": 7, "value": "v"}], "customHeaders[0].name: header name must be a string, got number"),
        (
            [{"name": "X Secret", "value": "v"}],
            "customHeaders[0].name: header name 'X Secret' is not an HTTP token: ' ' at 1 is not allowed "
            "(letters, digits and !#$%&'*+-.^_`|~ only)",
        ),
        (
            [{"name": "X-Secret:", "value": "v"}],
            "customHeaders[0].name: header name 'X-Secret:' is not an HTTP token: ':' at 8 is not allowed "
            "(letters, digits and !#$%&'*+-.^_`|~ only)",
        ),
        (
            [{"name": "Cx-Signature", "value": "v"}],
            "customHeaders[0].name: header name 'Cx-Signature' is reserved: Carerix sets Cx-Signature itself",
        ),
        (
            [{"name": "cx-payload-schema-version", "value": "v"}],
            "customHeaders[0].name: header name 'cx-payload-schema-version' is reserved: "
            "Carerix sets Cx-Payload-Schema-Version itself",
        ),
        (
            [{"name": "CONTENT-TYPE", "value": "v"}],
            "customHeaders[0].name: header name 'CONTENT-TYPE' is reserved: Carerix sets Content-Type itself",
        ),
        (
            [{"name": "X-Secret", "value": "a"}, {"name": "x-secret", "value": "b"}],
            "customHeaders[1].name: duplicate header name 'x-secret' (also customHeaders[0].name; "
            "header names are case-insensitive)",
        ),
        (
            [{"name": "X-A", "value": 12}],
            "customHeaders[0].value: header value must be a string (quote it), got number",
        ),
        (
            [{"name": "X-A", "value": "a\r\nX-Evil: 1"}],
            "customHeaders[0].value: header value contains a line break or NUL character",
        ),
        ([{"name": "X-A", "value": "v", "secret": True}], "customHeaders[0].secret: unknown field 'secret'"),
    ],
)
def test_custom_header_rules(headers: Any, message: str) -> None:
    assert messages(webhook(customHeaders=headers)) == [message]


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (
            ["X-A: b", {"name": "X B", "value": ""}],
            [
                "customHeaders[0]: a custom header must be a mapping with name and value, got string",
                "customHeaders[1].name: header name 'X B' is not an HTTP token: ' ' at 1 is not allowed "
                "(letters, digits and !#$%&'*+-.^_`|~ only)",
                "customHeaders[1].value: value of header 'X B' is empty: a receiver checking it refuses every "
                "delivery",
            ],
        ),
        (
            [{"header_name": "X-A", "header_value": "v"}],
            [
                "customHeaders[0].header_name: unknown field 'header_name': did you mean 'name'?",
                "customHeaders[0].header_value: unknown field 'header_value': did you mean 'value'?",
                "customHeaders[0]: a custom header needs a name",
                "customHeaders[0]: a custom header needs a value",
            ],
        ),
    ],
)
def test_every_header_problem_is_reported(headers: Any, expected: list[str]) -> None:
    assert messages(webhook(customHeaders=headers)) == expected


@pytest.mark.parametrize(
    ("header", "name_problem"),
    [
        ({"value": ""}, "customHeaders[0]: a custom header needs a name"),
        ({"name": "", "value": ""}, "customHeaders[0].name: header name is empty"),
        ({"name": 7, "value": ""}, "customHeaders[0].name: header name must be a string, got number"),
    ],
)
def test_an_empty_value_of_a_header_without_a_usable_name(header: dict[str, Any], name_problem: str) -> None:
    assert messages(webhook(customHeaders=[header])) == [
        name_problem,
        "customHeaders[0].value: value of the header is empty: a receiver checking it refuses every delivery",
    ]


def test_a_bad_header_name_points_at_its_character() -> None:
    """The offset lets a spec file's problem point at the column of the refused character."""
    problems = validate_webhook(webhook(customHeaders=[{"name": "X-Secret:", "value": "v"}]))
    assert [(p.path, p.offset) for p in problems] == [("customHeaders[0].name", 8)]


def test_header_values_may_hold_jinja() -> None:
    headers = [{"name": "X-Carerix-Secret", "value": "{{ var.value.carerix_receiver_secret }}"}]
    assert validate_webhook(webhook(customHeaders=headers)) == []


@pytest.mark.parametrize(("value", "what"), [("", "is empty"), ("  \t ", "is only whitespace")])
def test_an_empty_header_value_is_an_error_naming_the_header(value: str, what: str) -> None:
    headers = [{"name": "X-Ok", "value": "v"}, {"name": "X-Carerix-Secret", "value": value}]
    assert messages(webhook(customHeaders=headers)) == [
        f"customHeaders[1].value: value of header 'X-Carerix-Secret' {what}: "
        "a receiver checking it refuses every delivery"
    ]


@pytest.mark.parametrize(
    ("template", "variables"),
    [
        ("{{ var.value.carerix_receiver_secret }}", "Variable 'carerix_receiver_secret'"),
        ("{{ var.value.get('hook_secret', '') }}", "Variable 'hook_secret'"),
        ('{{ var.json.cfg["secret"] }}', "Variable 'cfg'"),
        ("{{ var.value['a.b'] }}{{ var.value.c }}", "Variables 'a.b', 'c'"),
    ],
)
def test_a_problem_in_a_rendered_value_names_its_template_and_variable(template: str, variables: str) -> None:
    rendered = webhook(customHeaders=[{"name": "X-Secret", "value": ""}])
    source = webhook(customHeaders=[{"name": "X-Secret", "value": template}])
    [problem] = explain_templates(validate_webhook(rendered), source)
    assert problem.message == (
        "value of header 'X-Secret' is empty: a receiver checking it refuses every delivery "
        f"(rendered from {template!r}: set the Airflow {variables})"
    )


def test_a_value_rendered_from_a_block_template_names_it() -> None:
    template = "{% if params.secret %}s{% endif %}"
    rendered = webhook(customHeaders=[{"name": "X-Secret", "value": ""}])
    source = webhook(customHeaders=[{"name": "X-Secret", "value": template}])
    [problem] = explain_templates(validate_webhook(rendered), source)
    assert problem.message.endswith(f"every delivery (rendered from {template!r})")


def test_templates_of_a_list_of_webhooks_are_found_by_index() -> None:
    rendered = [webhook(), webhook(customHeaders=[{"name": "X-Secret", "value": ""}])]
    source = [webhook(), webhook(customHeaders=[{"name": "X-Secret", "value": "{{ var.value.s }}"}])]
    problems = [p for i, body in enumerate(rendered) for p in validate_webhook(body, path=f"[{i}]")]
    assert [str(p) for p in explain_templates(problems, source)] == [
        "[1].customHeaders[0].value: value of header 'X-Secret' is empty: a receiver checking it refuses "
        "every delivery (rendered from '{{ var.value.s }}': set the Airflow Variable 's')"
    ]


def test_template_notes_only_for_values_that_were_templates() -> None:
    rendered = webhook(url="ftp://x", customHeaders=[{"name": "X-Secret", "value": ""}])
    source = webhook(url="ftp://x", customHeaders=[{"name": "X-Secret", "value": "{{ ds }}"}])
    url_problem, header_problem = explain_templates(validate_webhook(rendered), source)
    assert "rendered from" not in url_problem.message
    assert header_problem.message.endswith("(rendered from '{{ ds }}')")  # no Variable in it: none named


# ------------------------------------------------------------------------------ reachability from Carerix


@pytest.mark.parametrize(
    ("api_url", "public"),
    [
        ("https://api.carerix.io", True),
        ("api.carerix.io", True),
        ("https://carerix-proxy.corp.example.com/api", True),
        ("http://127.0.0.1:8123", False),  # the emulator
        ("http://localhost:8123", False),
        ("http://[::1]:8123", False),
        ("http://10.1.2.3", False),
        ("http://carerix-emulator:8080", False),  # a container network name
        ("http://emulator.test", False),
        ("http://[::1", True),  # not a URL at all: treated as Carerix itself, so the strict checks apply
    ],
)
def test_which_connections_are_carerix_itself(api_url: str, public: bool) -> None:
    assert targets_public_carerix(api_url) is public


@pytest.mark.parametrize(
    ("host", "local"),
    [
        ("localhost.", True),  # a fully qualified name: the trailing dot changes nothing
        ("receiver.", True),
        ("api.carerix.io.", False),
        ("LOCALHOST", True),
        ("", True),
        ("[]", True),
        ("[::1]", True),
        ("[2606:4700:4700::1111]", False),  # a public IPv6 address in URL brackets
        (" 10.0.0.1 ", True),
        ("8.8.8.8", False),
        ("Receiver.Example.COM", False),
        ("db.INTERNAL", True),
        ("API.TESTX", False),  # only brackets and a final dot are stripped, not letters: not under .test
    ],
)
def test_local_hosts_are_decided_from_the_text(host: str, local: bool) -> None:
    assert is_local_host(host) is local


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:8090/events", "127.0.0.1 is a loopback address"),
        ("https://127.0.0.1:8090/events", "127.0.0.1 is a loopback address"),
        ("https://[::1]/events", "::1 is a loopback address"),
        ("https://10.0.0.5/events", "10.0.0.5 is a private address"),
        ("https://192.168.1.20/events", "192.168.1.20 is a private address"),
        ("https://172.16.0.1/events", "172.16.0.1 is a private address"),
        ("https://[fd00::5]/events", "fd00::5 is a private address"),
        ("https://169.254.169.254/latest", "169.254.169.254 is a link-local address"),
        ("https://100.64.0.1/events", "100.64.0.1 is a non-public address"),
        ("https://localhost:8090/events", "'localhost' is a local host name"),
        ("https://receiver/events", "'receiver' is a local host name"),
        ("https://airflow.internal/events", "'airflow.internal' is a non-public domain"),
        ("https://receiver.local/events", "'receiver.local' is a non-public domain"),
        (
            "http://receiver.example.com/events",
            "it uses plain http: deliveries (with their secret header) would cross the internet unencrypted",
        ),
    ],
)
def test_urls_carerix_cannot_reach_are_refused_for_carerix_itself(url: str, reason: str) -> None:
    assert messages(webhook(url=url), require_public_url=True) == [
        f"url: url {url!r} cannot be reached by Carerix: {reason}; use a public https URL of your receiver, "
        "or allow such URLs explicitly (--allow-unreachable-urls, or allow_unreachable_urls=True on the "
        "operator) if Carerix really reaches it"
    ]
    assert validate_webhook(webhook(url=url)) == []  # the emulator and local test hosts: allowed


def test_an_unreachable_url_is_shown_without_credentials_or_query() -> None:
    [message] = messages(webhook(url="http://user:pw@10.1.1.1:8090/e?token=abc"), require_public_url=True)
    assert message.startswith("url: url 'http://***@10.1.1.1:8090/e?***' cannot be reached by Carerix")
    assert "pw" not in message and "abc" not in message


@pytest.mark.parametrize(
    "url",
    ["https://receiver.example.com/events", "https://8.8.8.8/x", "https://AIRFLOW.Example.COM:8443/carerix"],
)
def test_public_https_urls_are_fine_for_carerix_itself(url: str) -> None:
    assert validate_webhook(webhook(url=url), require_public_url=True) == []


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"filter": []}, "filter: unknown field 'filter': did you mean 'filters'?"),
        ({"customHeader": []}, "customHeader: unknown field 'customHeader': did you mean 'customHeaders'?"),
        ({"_kind": "Application"}, "_kind: _kind must be 'Webhook', got 'Application'"),
        ({"status": "paused"}, "status: status must be one of enabled, disabled, error, got 'paused'"),
        ({"name": " label"}, "name: name must be a non-empty label without surrounding spaces"),
    ],
)
def test_webhook_level_rules(overrides: dict[str, Any], message: str) -> None:
    assert messages(webhook(**overrides)) == [message]


def test_non_mapping_webhook() -> None:
    assert messages(["url"], path="webhooks[3]") == [
        "webhooks[3]: a webhook must be a mapping with url and filters, got list"
    ]


def test_problems_are_collected_and_prefixed_with_the_path() -> None:
    body = {
        "url": "yourwebhookurl.test",
        "filters": [
            {"eventType": "cremploye:updated", "condition": "data.tostatusnode eq '1234' "},
            {"eventType": "crjob:update"},
        ],
        "customHeaders": [{"name": "Content-Type", "value": "x"}],
    }
    assert messages(body, path="webhooks[0]") == [
        "webhooks[0].url: url must be an absolute http(s) URL like https://host/path, got 'yourwebhookurl.test'",
        "webhooks[0].filters[0].eventType: unknown entity 'cremploye' in eventType 'cremploye:updated': "
        "did you mean 'cremployee'?" + UNKNOWN_HINT,
        "webhooks[0].filters[0].condition: trailing space at 27: remove the space(s) after the condition",
        "webhooks[0].filters[1].eventType: unknown action 'update' in eventType 'crjob:update': did you mean 'updated'?",
        "webhooks[0].customHeaders[0].name: header name 'Content-Type' is reserved: Carerix sets Content-Type itself",
    ]


def test_problem_text_and_error() -> None:
    assert str(Problem("a.b", "bad")) == "a.b: bad"
    assert str(Problem("", "bad", file="f.yaml")) == "f.yaml: bad"
    assert str(Problem("a", "bad", file="f.yaml", line=3, column=7)) == "f.yaml:3:7: a: bad"
    error = SpecValidationError([Problem("a", "x"), Problem("b", "y")])
    assert isinstance(error, ValueError)
    assert len(error.problems) == 2
    assert str(error) == "2 problems in webhook definitions:\n  a: x\n  b: y"


@pytest.mark.parametrize(
    ("filters", "got"),
    [(True, "boolean"), (1.5, "number"), (7, "number"), ("x", "string"), ({1, 2}, "set")],
)
def test_wrong_types_are_named_in_json_terms(filters: Any, got: str) -> None:
    problems = validate_webhook({"url": "https://x.example/a", "filters": filters})
    assert [str(p) for p in problems] == [f"filters: filters must be a list, got {got}"]


def test_header_value_null_is_named_null() -> None:
    problems = validate_webhook(
        {
            "url": "https://x.example/a",
            "filters": [{"eventType": "crjob:updated"}],
            "customHeaders": [{"name": "X", "value": None}],
        }
    )
    assert [str(p) for p in problems] == [
        "customHeaders[0].value: header value must be a string (quote it), got null"
    ]


def test_error_text_counts_problems_in_the_singular_and_plural() -> None:
    one = SpecValidationError([Problem("url", "bad")])
    assert str(one) == "1 problem in webhook definitions:\n  url: bad"
    two = SpecValidationError([Problem("url", "bad"), Problem("", "worse")])
    assert str(two) == "2 problems in webhook definitions:\n  url: bad\n  worse"
