"""The sync engine: the pure diff, then plan/apply against an in-memory fake (call counting, crash points).

Runs through real Airflow against the emulator live in ``test_operators.py``; these pin the rules.
"""

from __future__ import annotations

import itertools
import json
import logging
from datetime import datetime, timezone
from typing import Any

import pytest

from airflow_provider_carerix.definitions.models import Application, Webhook
from airflow_provider_carerix.definitions.redaction import display_url
from airflow_provider_carerix.exceptions import CarerixNotFoundError
from airflow_provider_carerix.provisioning.sync import (
    Action,
    SyncError,
    apply,
    diff_webhooks,
    plan,
    sync,
    webhook_key,
)

SECRET = "s3cr3t-header-value"
URL = "https://receiver.example.com/events"


def wh(
    url: str = URL,
    filters: list[tuple[str, str | None]] | None = None,
    headers: list[tuple[str, str]] | None = None,
    *,
    id: str | None = None,
    status: str | None = None,
    created: datetime | None = None,
) -> Webhook:
    return Webhook(
        id=id,
        url=url,
        filters=[
            {"eventType": et, **({"condition": c} if c is not None else {})}
            for et, c in (filters or [("crjob:updated", None)])
        ],
        customHeaders=[{"name": n, "value": v} for n, v in (headers or [])],
        status=status,
        _createdDateTime=created,
    )


def kinds(actions: list[Any]) -> list[tuple[str, str | None]]:
    return [(a.action.value, a.actual.id if a.actual else None) for a in actions]


# ---------------------------------------------------------------------------------------------- keys


def test_key_ignores_event_type_case_filter_order_header_order_and_name_case() -> None:
    a = wh(
        filters=[("CRJob:Updated", "data.tostatusnode EQ '1234'"), ("crmatch:created", None)],
        headers=[("X-A", "1"), ("x-b", "2")],
    )
    b = wh(
        filters=[("crmatch:created", None), ("crjob:updated", "data.tostatusnode eq '1234'")],
        headers=[("X-B", "2"), ("x-a", "1")],
    )
    assert webhook_key(a) == webhook_key(b)


@pytest.mark.parametrize(
    "other",
    [
        wh(url=URL + "/x"),
        wh(filters=[("crjob:created", None)]),
        wh(filters=[("crjob:updated", "data.tostatusnode eq '1'")]),
        wh(headers=[("X-A", "1")]),
    ],
)
def test_key_differs_on_url_filters_and_headers(other: Webhook) -> None:
    assert webhook_key(wh()) != webhook_key(other)


def test_header_values_compare_exactly_and_never_show_in_repr() -> None:
    a, b = wh(headers=[("X-A", SECRET)]), wh(headers=[("X-A", SECRET.upper())])
    assert webhook_key(a) != webhook_key(b)
    assert SECRET not in repr(webhook_key(a))


def test_names_that_only_upper_casing_makes_equal_are_different_webhooks() -> None:
    """Carerix stores webhook bodies unchecked: a dotless i or an eszett made by hand is not the spec's text."""
    spec_side = webhook_key(wh(filters=[("crpublication:created", None)], headers=[("X-STRASSE", "1")]))
    dotless_i = wh(filters=[("crpubl\u0131cat\u0131on:created", None)], headers=[("X-STRASSE", "1")])
    eszett = wh(filters=[("crpublication:created", None)], headers=[("X-Stra\u00dfe", "1")])
    assert webhook_key(dotless_i) != spec_side
    assert webhook_key(eszett) != spec_side


def test_unparsable_condition_from_carerix_never_equals_a_valid_one() -> None:
    broken = wh(filters=[("crjob:updated", "data.tostatusnode equals '1'")])
    valid = wh(filters=[("crjob:updated", "data.tostatusnode eq '1'")])
    assert webhook_key(broken) != webhook_key(valid)


# ---------------------------------------------------------------------------------------------- diff


def test_everything_missing_is_created() -> None:
    desired = [wh(), wh(filters=[("crmatch:created", None)])]
    assert kinds(diff_webhooks(desired, [], prune=True)) == [("create", None), ("create", None)]


def test_identical_is_unchanged_and_disabled_or_error_is_enabled() -> None:
    desired = [wh(), wh(filters=[("crmatch:created", None)]), wh(filters=[("crpublication:created", None)])]
    actual = [
        wh(id="1", status="enabled"),
        wh(filters=[("CRMATCH:created", None)], id="2", status="disabled"),
        wh(filters=[("crpublication:created", None)], id="3", status="error"),
    ]
    assert kinds(diff_webhooks(desired, actual, prune=True)) == [
        ("unchanged", "1"),
        ("enable", "2"),
        ("enable", "3"),
    ]


def test_changed_webhook_at_same_url_is_replaced_by_the_most_similar() -> None:
    desired = [
        wh(filters=[("crjob:updated", "data.tostatusnode eq '9'")]),
        wh(filters=[("crmatch:created", None)]),
    ]
    actual = [
        wh(filters=[("crmatch:created", None)], headers=[("X-A", "old")], id="m"),
        wh(filters=[("crjob:updated", "data.tostatusnode eq '1'")], id="j"),
    ]
    actions = diff_webhooks(desired, actual, prune=False)
    assert kinds(actions) == [("replace", "j"), ("replace", "m")]
    assert actions[0].reason == "conditions changed"
    assert actions[1].reason == "header names changed"


def test_prune_decides_only_about_urls_the_spec_does_not_own() -> None:
    desired = [wh()]
    actual = [
        wh(id="1"),
        wh(filters=[("crmatch:created", None)], id="stale"),  # spec's URL: always removed
        wh(url="https://other.example.com/hook", id="foreign"),
    ]
    assert kinds(diff_webhooks(desired, actual, prune=False)) == [
        ("unchanged", "1"),
        ("delete", "stale"),
        ("keep", "foreign"),
    ]
    pruned = diff_webhooks(desired, actual, prune=True)
    assert kinds(pruned) == [
        ("unchanged", "1"),
        ("delete", "stale"),
        ("delete", "foreign"),
    ]
    # The plan says why each one goes or stays (shown by `plan`, the operator's log and its XCom).
    assert [a.reason for a in pruned[1:]] == ["not in spec, at a URL the spec manages", "not in spec"]
    kept = diff_webhooks(desired, actual, prune=False)
    assert kept[2].reason == "not in spec; prune is off"


def test_identical_duplicates_keep_one_enabled_oldest_and_delete_the_rest() -> None:
    t = [datetime(2024, 1, d, tzinfo=timezone.utc) for d in (1, 2, 3)]
    actual = [
        wh(id="c", created=t[2]),
        wh(id="a", created=t[0], status="disabled"),
        wh(id="b", created=t[1]),
    ]
    assert kinds(diff_webhooks([wh()], actual, prune=False)) == [
        ("unchanged", "b"),
        ("delete", "c"),
        ("delete", "a"),
    ]


def test_nothing_desired_with_prune_deletes_everything() -> None:
    actual = [wh(id="1"), wh(url="https://x.example.com/", id="2")]
    assert kinds(diff_webhooks([], actual, prune=True)) == [("delete", "1"), ("delete", "2")]
    assert kinds(diff_webhooks([], actual, prune=False)) == [("keep", "1"), ("keep", "2")]


def test_plan_lines_hide_header_values_and_url_secrets() -> None:
    desired = [wh(url="https://user:pw@r.example.com/e?token=abc", headers=[("X-Secret", SECRET)])]
    actual = [wh(url="https://user:pw@r.example.com/e?token=abc", headers=[("X-Secret", "old")], id="7")]
    [action] = diff_webhooks(desired, actual, prune=True)
    line = action.line()
    assert line.startswith("~ replace   7 https://***@r.example.com/e?***")
    assert "X-Secret: ***" in line and "header values changed" in line
    for secret in (SECRET, "old", "pw", "abc"):
        assert secret not in line
    assert display_url(None) == "<no url>"


# ---------------------------------------------------------------------------------------------- plan/apply


class FakeSpecApp:
    def __init__(self, name: str, webhooks: list[Webhook]) -> None:
        self.name, self.webhooks = name, webhooks


class FakeSpec:
    def __init__(self, *apps: FakeSpecApp) -> None:
        self.applications = list(apps)


class Crash(Exception):
    pass


class FakeCarerix:
    """In-memory Carerix with the hook's method names, counting calls, able to die before the Nth write."""

    def __init__(self) -> None:
        self.apps: dict[str, str] = {}
        self.hooks: dict[str, dict[str, Webhook]] = {}
        self.reads = 0
        self.writes = 0
        self.crash_before_write: int | None = None
        self._ids = itertools.count(1)

    def _write(self) -> None:
        if self.crash_before_write is not None and self.writes + 1 >= self.crash_before_write:
            self.crash_before_write = None
            raise Crash("injected")
        self.writes += 1

    def list_applications(self) -> list[Application]:
        self.reads += 1
        return [Application(id=i, name=n) for i, n in self.apps.items()]

    def create_application(self, name: str) -> Application:
        self._write()
        app_id = f"app-{next(self._ids)}"
        self.apps[app_id] = name
        self.hooks[app_id] = {}
        return Application(id=app_id, name=name)

    def list_webhooks(self, application_id: str) -> list[Webhook]:
        self.reads += 1
        return [w.model_copy(deep=True) for w in self.hooks[application_id].values()]

    def create_webhook(self, application_id: str, webhook: Webhook | dict[str, Any]) -> Webhook:
        self._write()
        body = webhook if isinstance(webhook, dict) else webhook.to_create_body()
        created = Webhook.model_validate({**body, "_id": f"wh-{next(self._ids)}", "status": "enabled"})
        self.hooks[application_id][created.id or ""] = created
        return created

    def delete_webhook(self, application_id: str, webhook_id: str) -> None:
        self._write()
        if self.hooks[application_id].pop(webhook_id, None) is None:
            raise CarerixNotFoundError(404, "DELETE", "/x", "")

    def enable_webhook(self, application_id: str, webhook_id: str) -> None:
        self._write()
        self.hooks[application_id][webhook_id].status = "enabled"

    def keys(self, app_id: str) -> list[Any]:
        return sorted((webhook_key(w) for w in self.hooks[app_id].values()), key=repr)


def spec_of(*webhooks: Webhook, name: str = "airflow-carerix") -> FakeSpec:
    return FakeSpec(FakeSpecApp(name, list(webhooks)))


DESIRED = [
    wh(filters=[("crjob:updated", "data.tostatusnode eq '1234'")], headers=[("X-Secret", SECRET)]),
    wh(filters=[("crmatch:created", None)]),
    wh(filters=[("crpublication:created", None)]),
]


def test_sync_from_nothing_then_no_change_run_makes_no_writes_and_two_reads() -> None:
    carerix = FakeCarerix()
    first = sync(spec_of(*DESIRED), carerix, say=lambda _: None).summary()
    assert first["application_created"] and len(first["created"]) == 3 and None not in first["created"]
    assert carerix.writes == 4 and carerix.reads == 1  # no webhook list for an application just created

    carerix.reads = carerix.writes = 0
    second = sync(spec_of(*DESIRED), carerix, say=lambda _: None).summary()
    assert carerix.writes == 0 and carerix.reads == 2
    assert sorted(second["unchanged"]) == sorted(first["created"])
    assert second["created"] == second["deleted"] == second["replaced"] == []


def test_dry_run_reads_only_and_reports_what_would_happen() -> None:
    carerix = FakeCarerix()
    lines: list[str] = []
    result = sync(spec_of(*DESIRED), carerix, dry_run=True, say=lines.append)
    assert carerix.writes == 0 and carerix.apps == {}
    assert result.summary() == {
        "application": "airflow-carerix",
        "application_id": None,
        "application_created": True,
        "created": [None, None, None],
        "replaced": [],
        "deleted": [],
        "enabled": [],
        "unchanged": [],
        "kept": [],
        "dry_run": True,
    }
    assert "+ create application 'airflow-carerix'" in lines[0]
    assert SECRET not in "\n".join(lines)


def test_two_applications_with_the_spec_name_fail_before_any_write() -> None:
    carerix = FakeCarerix()
    carerix.create_application("airflow-carerix")
    carerix.create_application("airflow-carerix")
    carerix.writes = 0
    with pytest.raises(SyncError, match="2 applications in Carerix are named 'airflow-carerix'"):
        sync(spec_of(*DESIRED), carerix)
    assert carerix.writes == 0


def test_repeated_webhook_or_application_in_spec_is_rejected_before_any_call() -> None:
    carerix = FakeCarerix()
    spec = FakeSpec(FakeSpecApp("a", [DESIRED[1], DESIRED[1]]), FakeSpecApp("a", []))
    with pytest.raises(SyncError) as err:
        plan(spec, carerix, prune=True)
    assert "webhooks[1]: identical to webhooks[0]" in str(err.value)
    assert "application 'a' appears twice" in str(err.value)
    assert carerix.reads == carerix.writes == 0


def test_several_applications_summary_and_reads() -> None:
    carerix = FakeCarerix()
    spec = FakeSpec(FakeSpecApp("one", DESIRED[:1]), FakeSpecApp("two", DESIRED[1:]))
    sync(spec, carerix, say=lambda _: None)
    carerix.reads = 0
    summary = sync(spec, carerix, say=lambda _: None).summary()
    assert carerix.reads == 3 and carerix.writes == 5
    assert [a["application"] for a in summary["applications"]] == ["one", "two"]
    assert summary["dry_run"] is False
    json.dumps(summary)


def test_replace_creates_the_new_version_before_deleting_the_old() -> None:
    carerix = FakeCarerix()
    sync(spec_of(*DESIRED), carerix, say=lambda _: None)
    [app_id] = carerix.apps
    changed = [wh(filters=[("crjob:updated", "data.tostatusnode eq '5678'")], headers=[("X-Secret", SECRET)])]
    calls: list[str] = []
    real_create, real_delete = carerix.create_webhook, carerix.delete_webhook
    carerix.create_webhook = lambda a, w: calls.append("create") or real_create(a, w)  # type: ignore[method-assign]
    carerix.delete_webhook = lambda a, w: calls.append("delete") or real_delete(a, w)  # type: ignore[method-assign]
    summary = sync(spec_of(changed[0], *DESIRED[1:]), carerix, say=lambda _: None).summary()
    assert calls == ["create", "delete"]
    assert len(summary["replaced"]) == 1 and summary["replaced"][0]["new"] in carerix.hooks[app_id]
    assert carerix.keys(app_id) == sorted((webhook_key(w) for w in [changed[0], *DESIRED[1:]]), key=repr)


@pytest.mark.parametrize(
    ("prune", "crash_at"), [(True, n) for n in range(1, 6)] + [(False, n) for n in range(1, 5)]
)
def test_a_run_that_dies_at_any_write_converges_on_the_next_run(prune: bool, crash_at: int) -> None:
    """Start: one stale version (to replace), one disabled, one duplicate, one foreign; die before write N."""
    carerix = FakeCarerix()
    app_id = carerix.create_application("airflow-carerix").id or ""
    carerix.create_webhook(app_id, wh(filters=[("crjob:updated", "data.tostatusnode eq '1'")]))
    disabled = carerix.create_webhook(app_id, DESIRED[1])
    carerix.hooks[app_id][disabled.id or ""].status = "disabled"
    carerix.create_webhook(app_id, DESIRED[2])
    carerix.create_webhook(app_id, DESIRED[2])
    carerix.create_webhook(app_id, wh(url="https://foreign.example.com/"))

    carerix.writes = 0
    carerix.crash_before_write = crash_at
    with pytest.raises(Crash):
        sync(spec_of(*DESIRED), carerix, prune=prune, say=lambda _: None)
    sync(spec_of(*DESIRED), carerix, prune=prune, say=lambda _: None)

    expected = [webhook_key(w) for w in DESIRED]
    if not prune:
        expected.append(webhook_key(wh(url="https://foreign.example.com/")))
    assert carerix.keys(app_id) == sorted(expected, key=repr)
    assert all(w.enabled for w in carerix.hooks[app_id].values())
    carerix.writes = 0
    again = plan(spec_of(*DESIRED), carerix, prune=prune)
    assert not again.has_changes


def test_delete_of_an_already_deleted_webhook_counts_as_done() -> None:
    carerix = FakeCarerix()
    app_id = carerix.create_application("airflow-carerix").id or ""
    old = carerix.create_webhook(app_id, wh(url="https://gone.example.com/"))
    the_plan = plan(spec_of(), carerix, prune=True)
    del carerix.hooks[app_id][old.id or ""]
    result = apply(the_plan, carerix, say=lambda _: None)
    assert result.summary()["deleted"] == [old.id]


def test_plan_render_no_changes() -> None:
    carerix = FakeCarerix()
    sync(spec_of(*DESIRED), carerix, say=lambda _: None)
    text = plan(spec_of(*DESIRED), carerix, prune=True).render()
    assert "3 unchanged" in text and text.endswith("No changes: Carerix matches the spec.")
    assert all(line.strip().startswith(("application", "= unchanged")) for line in text.splitlines()[:-1])
    assert Action.UNCHANGED.symbol == "="


def test_dry_run_reports_existing_ids_for_every_kind_of_step() -> None:
    carerix = FakeCarerix()
    app_id = carerix.create_application("airflow-carerix").id or ""
    stale = carerix.create_webhook(app_id, wh(filters=[("crjob:updated", "data.tostatusnode eq '1'")]))
    disabled = carerix.create_webhook(app_id, DESIRED[1])
    carerix.hooks[app_id][disabled.id or ""].status = "disabled"
    kept = carerix.create_webhook(app_id, DESIRED[2])
    duplicate = carerix.create_webhook(app_id, DESIRED[2])
    foreign = carerix.create_webhook(app_id, wh(url="https://foreign.example.com/"))
    carerix.writes = 0

    result = sync(spec_of(*DESIRED), carerix, prune=False, dry_run=True, say=lambda _: None)
    assert carerix.writes == 0
    assert result.summary() == {
        "application": "airflow-carerix",
        "application_id": app_id,
        "application_created": False,
        "created": [],
        "replaced": [{"old": stale.id, "new": None}],
        "deleted": [duplicate.id],
        "enabled": [disabled.id],
        "unchanged": [kept.id],
        "kept": [foreign.id],
        "dry_run": True,
    }


def test_several_applications_dry_run_summary_and_json() -> None:
    carerix = FakeCarerix()
    spec = FakeSpec(FakeSpecApp("one", DESIRED[:1]), FakeSpecApp("two", DESIRED[1:]))
    result = sync(spec, carerix, dry_run=True, say=lambda _: None)
    summary = result.summary()
    assert summary["dry_run"] is True
    assert [(a["application"], a["dry_run"], len(a["created"])) for a in summary["applications"]] == [
        ("one", True, 1),
        ("two", True, 2),
    ]
    text = result.to_json()
    assert json.loads(text) == summary
    assert text.startswith('{\n  "applications": [\n    {\n      "application": "one",')


def test_plan_text_and_progress_lines_for_every_kind_of_step() -> None:
    carerix = FakeCarerix()
    app_id = carerix.create_application("airflow-carerix").id or ""
    carerix.create_webhook(
        app_id, wh(filters=[("crjob:updated", "data.tostatusnode eq '1'")], headers=[("X-Secret", "old")])
    )
    disabled = carerix.create_webhook(app_id, DESIRED[1])
    carerix.hooks[app_id][disabled.id or ""].status = "disabled"
    carerix.create_webhook(app_id, DESIRED[2])
    carerix.create_webhook(app_id, DESIRED[2])
    carerix.create_webhook(app_id, wh(url="https://foreign.example.com/"))
    app = FakeSpecApp(
        "airflow-carerix",
        [*DESIRED, wh(url="https://receiver.example.com/other", filters=[("crjob:created", None)])],
    )
    app.labels = ["jobs", None, "publications", "new-jobs"]  # type: ignore[attr-defined]
    lines: list[str] = []
    result = sync(FakeSpec(app), carerix, prune=False, say=lines.append)
    events = "https://receiver.example.com/events"
    assert lines == [
        "Plan:\n"
        "application 'airflow-carerix' (app-1): 1 to create, 1 to replace, 1 to delete, 1 to enable, "
        "1 unchanged, 1 kept\n"
        f"  ! enable    wh-3 {events} [crmatch:created]  (status disabled)\n"
        f"  = unchanged publications: wh-4 {events} [crpublication:created]\n"
        f"  ~ replace   jobs: wh-2 {events} [crjob:updated if data.tostatusnode eq '1'] headers: X-Secret: ***\n"
        f"                with {events} [crjob:updated if data.tostatusnode eq '1234'] headers: X-Secret: ***"
        "  (conditions, header values changed)\n"
        "  + create    new-jobs: https://receiver.example.com/other [crjob:created]\n"
        "  ? keep      wh-6 https://foreign.example.com/ [crjob:updated]  (not in spec; prune is off)\n"
        f"  - delete    wh-5 {events} [crpublication:created]  (duplicate of wh-4)",
        f"created webhook wh-7: {events} [crjob:updated if data.tostatusnode eq '1234'] headers: X-Secret: ***",
        "created webhook wh-8: https://receiver.example.com/other [crjob:created]",
        "enabled webhook wh-3 (was disabled)",
        "deleted webhook wh-2, replaced by wh-7 (conditions, header values changed)",
        "deleted webhook wh-5 (duplicate of wh-4)",
    ]
    assert result.plan.applications[0].application_id == app_id
    assert result.summary() == {
        "application": "airflow-carerix",
        "application_id": app_id,
        "application_created": False,
        "created": ["wh-8"],
        "replaced": [{"old": "wh-2", "new": "wh-7"}],
        "deleted": ["wh-5"],
        "enabled": ["wh-3"],
        "unchanged": ["wh-4"],
        "kept": ["wh-6"],
        "dry_run": False,
    }


def test_new_application_lines_and_a_replace_that_changes_event_types() -> None:
    carerix = FakeCarerix()
    lines: list[str] = []
    sync(spec_of(DESIRED[1], name="fresh"), carerix, say=lines.append)
    assert lines[0] == "Plan:\n+ create application 'fresh': 1 to create\n" + (
        "  + create    https://receiver.example.com/events [crmatch:created]"
    )
    assert lines[1] == "created application 'fresh': app-1"
    lines.clear()
    sync(
        spec_of(wh(filters=[("crmatch:updated", None)], headers=[("X-A", "1")]), name="fresh"),
        carerix,
        say=lines.append,
    )
    assert "(event types, header names changed)" in lines[0]
    lines.clear()
    sync(FakeSpec(FakeSpecApp("fresh", [])), carerix, prune=True, say=lines.append)
    assert lines[0].splitlines()[1] == "application 'fresh' (app-1): 1 to delete"
    lines.clear()
    sync(FakeSpec(FakeSpecApp("fresh", [])), carerix, say=lines.append)
    assert lines == ["Plan:\napplication 'fresh' (app-1): no webhooks\nNo changes: Carerix matches the spec."]


def test_an_application_created_without_an_id_stops_the_sync(caplog: pytest.LogCaptureFixture) -> None:
    class NoId(FakeCarerix):
        def create_application(self, name: str) -> Application:
            super().create_application(name)
            return Application(name=name)

    carerix = NoId()
    with pytest.raises(SyncError, match="Carerix created application 'a' but returned no id"):
        sync(spec_of(*DESIRED, name="a"), carerix)
    assert carerix.writes == 1  # nothing after the application


def test_progress_goes_to_the_log_without_a_say_callback(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="airflow_provider_carerix.provisioning.sync"):
        sync(spec_of(DESIRED[1], name="logged"), FakeCarerix())
    assert "created application 'logged': app-1" in caplog.text


# ---------------------------------------------------------------------------------------------- texts people read


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://token@r.example.com/e", "https://***@r.example.com/e"),  # a user name alone is a secret too
        ("https://:pw@r.example.com/e", "https://***@r.example.com/e"),
        ("https://user:pw@r.example.com:8443/e?k=v#frag", "https://***@r.example.com:8443/e?***"),
        ("https://[2001:db8::1]:8443/e", "https://[2001:db8::1]:8443/e"),
        ("/events?token=abc", "/events?***"),  # no host: nothing is made up for it
        ("https://[2001:db8::1/e", "<invalid url>"),
        ("https://r.example.com:99999/e", "<invalid url>"),  # the port is parsed lazily: still no exception
        ("https://r.example.com:https/e", "<invalid url>"),
        ("", "<no url>"),
        (None, "<no url>"),
    ],
)
def test_display_url_hides_credentials_and_query_and_never_raises(url: str | None, shown: str) -> None:
    assert display_url(url) == shown


def test_plan_lines_of_webhooks_made_by_hand_in_carerix() -> None:
    """Carerix may hold webhooks no spec made: unparsable conditions, no filters, odd URLs. Shown, never fatal."""
    actual = [
        wh(
            url="https://hand.example.com/a",
            filters=[("crjob:updated", "data.tostatusnode   equals   '1'"), ("CRMatch:Created", None)],
            headers=[("X-One", SECRET), ("X-Two", SECRET)],
            id="h1",
        ),
        Webhook(_id="h2", url="https://hand.example.com:99999/b"),
        wh(url="https://hand.example.com/c", filters=[("", None)], id="h3"),
    ]
    assert [a.line() for a in diff_webhooks([], actual, prune=False)] == [
        "? keep      h1 https://hand.example.com/a [crjob:updated if <unparsed> data.tostatusnode equals '1'; "
        "crmatch:created] headers: X-One: ***, X-Two: ***  (not in spec; prune is off)",
        "? keep      h2 <invalid url> [no filters]  (not in spec; prune is off)",
        "? keep      h3 https://hand.example.com/c [no filters]  (not in spec; prune is off)",
    ]


def test_ambiguous_spec_error_lists_every_repeat_verbatim() -> None:
    spec = FakeSpec(
        FakeSpecApp("a", [DESIRED[1], DESIRED[2], DESIRED[1], DESIRED[2]]),
        FakeSpecApp("a", []),
    )
    with pytest.raises(SyncError) as err:
        plan(spec, FakeCarerix(), prune=True)
    assert str(err.value) == (
        "the spec is ambiguous:\n"
        "  applications[0].webhooks[2]: identical to webhooks[0] (same url, filters and headers)\n"
        "  applications[0].webhooks[3]: identical to webhooks[1] (same url, filters and headers)\n"
        "  applications[1].name: application 'a' appears twice"
    )


def test_applications_sharing_the_spec_name_are_named_with_their_ids_verbatim() -> None:
    carerix = FakeCarerix()
    for _ in range(3):
        carerix.create_application("airflow-carerix")
    with pytest.raises(SyncError) as err:
        plan(spec_of(*DESIRED), carerix, prune=True)
    assert str(err.value) == (
        "3 applications in Carerix are named 'airflow-carerix' (app-1, app-2, app-3); the sync will not guess "
        "which one the spec means. Delete or rename the extra ones, then run again."
    )


# ---------------------------------------------------------------------------------------------- more diff rules


def test_among_identical_copies_a_dated_one_is_kept_before_an_undated_one_then_the_smallest_id() -> None:
    t = datetime(2024, 1, 1, tzinfo=timezone.utc)
    assert kinds(diff_webhooks([wh()], [wh(id="a"), wh(id="b", created=t)], prune=False)) == [
        ("unchanged", "b"),
        ("delete", "a"),
    ]
    assert kinds(diff_webhooks([wh()], [wh(id="d"), wh(id="c")], prune=False)) == [
        ("unchanged", "c"),
        ("delete", "d"),
    ]


def test_duplicates_of_every_desired_webhook_are_deleted_and_labels_reach_enable_steps() -> None:
    desired = [wh(), wh(filters=[("crmatch:created", None)])]
    actual = [
        wh(id="1"),
        wh(id="2"),
        wh(filters=[("crmatch:created", None)], id="3", status="disabled"),
        wh(filters=[("crmatch:created", None)], id="4", status="disabled"),
    ]
    actions = diff_webhooks(desired, actual, prune=False, labels=["jobs", "matches"])
    assert kinds(actions) == [("unchanged", "1"), ("enable", "3"), ("delete", "2"), ("delete", "4")]
    assert [a.label for a in actions] == ["jobs", "matches", None, None]
    assert actions[1].line() == f"! enable    matches: 3 {URL} [crmatch:created]  (status disabled)"
    assert [a.reason for a in actions[2:]] == ["duplicate of 1", "duplicate of 3"]


def test_sync_prunes_unless_told_not_to_and_the_plan_records_the_choice() -> None:
    carerix = FakeCarerix()
    app_id = carerix.create_application("airflow-carerix").id or ""
    foreign = carerix.create_webhook(app_id, wh(url="https://foreign.example.com/"))
    assert plan(spec_of(*DESIRED), carerix, prune=False).prune is False
    assert plan(spec_of(*DESIRED), carerix, prune=True).prune is True
    result = sync(spec_of(*DESIRED), carerix, say=lambda _: None)
    assert result.plan.prune is True
    assert result.summary()["deleted"] == [foreign.id]
    assert foreign.id not in carerix.hooks[app_id]


def test_dry_run_says_so_first_and_returns_the_plan_it_printed() -> None:
    carerix = FakeCarerix()
    lines: list[str] = []
    result = sync(spec_of(DESIRED[1], name="fresh"), carerix, dry_run=True, say=lines.append)
    assert lines == [
        "Plan (dry run, nothing will change):\n"
        "+ create application 'fresh': 1 to create\n"
        f"  + create    {URL} [crmatch:created]"
    ]
    assert result.plan.render() == lines[0].split("\n", 1)[1]
    assert result.plan.prune is True and result.dry_run is True


# ---------------------------------------------------------------------------------------------- snapshot


def test_snapshot_after_the_first_apply_holds_the_new_application_and_every_webhook_it_created() -> None:
    """The Carerix page must show what the first sync made, not wait for a second one to list it."""
    carerix = FakeCarerix()
    result = sync(spec_of(*DESIRED), carerix, say=lambda _: None)
    [app_id] = carerix.apps
    snapshot = result.snapshot()
    assert list(snapshot) == [app_id]
    assert [row["webhook_id"] for row in snapshot[app_id]] == result.summary()["created"]
    assert {row["webhook_id"] for row in snapshot[app_id]} == set(carerix.hooks[app_id])
    assert snapshot[app_id][0] == {
        "webhook_id": result.summary()["created"][0],
        "application_name": "airflow-carerix",
        "url": URL,
        "filters": [{"eventType": "crjob:updated", "condition": "data.tostatusnode eq '1234'"}],
        "status": "enabled",
        "sync_action": "create",
    }
    assert {row["sync_action"] for row in snapshot[app_id]} == {"create"}
    assert SECRET not in json.dumps(snapshot)


def test_snapshot_is_what_carerix_has_after_the_run_per_application_without_header_values() -> None:
    """Recorded by the operator and `apply` for the UI page: ids, masked URLs, filters, status, the step taken."""
    carerix = FakeCarerix()
    app_id = carerix.create_application("existing").id or ""
    unchanged = carerix.create_webhook(app_id, DESIRED[0])
    disabled = carerix.create_webhook(app_id, DESIRED[1])
    carerix.hooks[app_id][disabled.id or ""].status = "disabled"
    foreign = carerix.create_webhook(
        app_id, wh(url="https://user:pw@foreign.example.com/x?token=abc", headers=[("X-Secret", SECRET)])
    )
    carerix.hooks[app_id][foreign.id or ""].status = None
    no_url = carerix.create_webhook(app_id, wh(url="https://foreign.example.com/y"))
    carerix.hooks[app_id][no_url.id or ""].url = None
    stale = carerix.create_webhook(app_id, wh(filters=[("crmatch:updated", None)]))  # at the spec's URL
    changed = wh(filters=[("crpublication:created", "data.statusinfo eq '1'")])
    spec = FakeSpec(
        FakeSpecApp("new", [DESIRED[2]]),
        FakeSpecApp("existing", [DESIRED[2], DESIRED[0], DESIRED[1], changed]),
    )
    dry = sync(spec, carerix, prune=False, dry_run=True, say=lambda _: None)
    # A dry run changed nothing: the application to create has no id yet, the rest is what the plan saw.
    assert list(dry.snapshot()) == [app_id]
    assert [(r["webhook_id"], r["sync_action"]) for r in dry.snapshot()[app_id]] == [
        (unchanged.id, "unchanged"),
        (disabled.id, "enable"),
        (stale.id, "replace"),
        (foreign.id, "keep"),
        (no_url.id, "keep"),
    ]
    assert dry.snapshot()[app_id][1]["status"] == "disabled"

    result = sync(spec, carerix, prune=False, say=lambda _: None)
    snapshot = result.snapshot()
    [new_id] = [i for i, name in carerix.apps.items() if name == "new"]
    assert set(snapshot) == {app_id, new_id}
    for application_id, rows in snapshot.items():  # exactly what Carerix has now
        assert {r["webhook_id"] for r in rows} == set(carerix.hooks[application_id])
    [created] = result.applications[1].created
    [replacement] = result.applications[1].replaced
    event_filter = {"eventType": "crjob:updated"}
    assert snapshot[app_id] == [
        {
            "webhook_id": unchanged.id,
            "application_name": "existing",
            "url": URL,
            "filters": [{"eventType": "crjob:updated", "condition": "data.tostatusnode eq '1234'"}],
            "status": "enabled",
            "sync_action": "unchanged",
        },
        {
            "webhook_id": disabled.id,
            "application_name": "existing",
            "url": URL,
            "filters": [{"eventType": "crmatch:created"}],
            "status": "enabled",  # as the run left it
            "sync_action": "enable",
        },
        {
            "webhook_id": replacement["new"],
            "application_name": "existing",
            "url": URL,
            "filters": [{"eventType": "crpublication:created"}],
            "status": "enabled",
            "sync_action": "replace",
        },
        {
            "webhook_id": created,
            "application_name": "existing",
            "url": URL,
            "filters": [{"eventType": "crpublication:created", "condition": "data.statusinfo eq '1'"}],
            "status": "enabled",
            "sync_action": "create",
        },
        {
            "webhook_id": foreign.id,
            "application_name": "existing",
            "url": "https://***@foreign.example.com/x?***",
            "filters": [event_filter],
            "status": "enabled",
            "sync_action": "keep",
        },
        {
            "webhook_id": no_url.id,
            "application_name": "existing",
            "url": None,
            "filters": [event_filter],
            "status": "enabled",
            "sync_action": "keep",
        },
    ]
    assert replacement["old"] == stale.id and stale.id not in {r["webhook_id"] for r in snapshot[app_id]}
    assert SECRET not in json.dumps(snapshot)

    # A run with nothing to do writes nothing and records the same webhooks as unchanged or kept.
    again = sync(spec, carerix, prune=False, say=lambda _: None).snapshot()
    assert {a: {r["webhook_id"] for r in rows} for a, rows in again.items()} == {
        a: {r["webhook_id"] for r in rows} for a, rows in snapshot.items()
    }
    assert {r["sync_action"] for rows in again.values() for r in rows} == {"unchanged", "keep"}
