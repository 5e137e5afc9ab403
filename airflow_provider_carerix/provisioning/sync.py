"""Declarative webhook sync: converge Carerix onto a spec, the same way from a DAG and from a terminal.

The engine is split in two so that the interesting part is testable without any network:

* :func:`diff_webhooks` is pure. It compares the webhooks a spec wants with the webhooks Carerix has and
  returns the actions that turn one into the other.
* :func:`plan` reads Carerix through the hook (one list of applications, one list of webhooks per existing
  application, nothing else) and :func:`apply` performs a plan's writes.

Identity. Carerix webhooks have no name, and there is no update endpoint, so a webhook *is* its content:
url + filters + custom headers. Two webhooks are the same when their normalised keys are equal (event type
lowercase, condition in canonical text, filter order and header order irrelevant, header names
case-insensitive, header values compared exactly). The URL is what a spec "owns": every webhook Carerix has
at a URL the spec mentions is either one of the spec's webhooks or a stale version of one, and is removed
whatever ``prune`` says. ``prune`` only decides about webhooks at URLs the spec does not mention (someone
else's webhooks in the same application).

Crash safety. Every run recomputes the plan from what Carerix has, and every write moves Carerix closer to
the spec, so a run that dies halfway leaves a state the next run finishes. Writes are ordered creates, then
enables, then deletes (see :func:`apply` for why), and identical duplicates (e.g. a create whose answer was
lost) are collapsed to one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol

from airflow_provider_carerix import metrics
from airflow_provider_carerix.definitions import conditions
from airflow_provider_carerix.definitions.models import Application, Webhook
from airflow_provider_carerix.definitions.redaction import MASK, display_url
from airflow_provider_carerix.exceptions import CarerixError, CarerixNotFoundError

if TYPE_CHECKING:
    from airflow_provider_carerix.definitions.spec import Spec

log = logging.getLogger(__name__)


class SyncError(CarerixError):
    """The sync cannot decide safely (e.g. two applications share the spec's name); nothing was changed."""


class WebhookApi(Protocol):
    """The part of :class:`~airflow_provider_carerix.hooks.carerix.CarerixHook` the sync uses."""

    def list_applications(self) -> list[Application]: ...

    def create_application(self, name: str) -> Application: ...

    def list_webhooks(self, application_id: str) -> list[Webhook]: ...

    def create_webhook(self, application_id: str, webhook: Webhook | dict[str, Any]) -> Webhook: ...

    def delete_webhook(self, application_id: str, webhook_id: str) -> None: ...

    def enable_webhook(self, application_id: str, webhook_id: str) -> None: ...


# --------------------------------------------------------------------------------------------------------
# Normalised identity
# --------------------------------------------------------------------------------------------------------


def canonical_condition(text: str | None) -> str | None:
    """The condition's canonical text; an empty condition is no condition.

    A webhook made by hand in Carerix may hold a condition that does not parse: it then keeps its raw text
    (whitespace collapsed), which can never equal a valid spec condition, so it is replaced, not kept.
    """
    if text is None or not text.strip():
        return None
    try:
        return str(conditions.parse(text))
    except ValueError:
        return "<unparsed> " + " ".join(text.split())


@dataclass(frozen=True)
class WebhookKey:
    """What makes two webhooks the same. Header values are part of it but never shown (``repr=False``)."""

    url: str
    filters: tuple[tuple[str, str | None], ...]
    headers: tuple[tuple[str, str], ...] = field(repr=False)

    @property
    def header_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.headers)

    @property
    def event_types(self) -> frozenset[str]:
        return frozenset(event_type for event_type, _ in self.filters)


def webhook_key(webhook: Webhook) -> WebhookKey:
    filters = sorted(
        ((f.event_type or "").strip().lower(), canonical_condition(f.condition)) for f in webhook.filters
    )
    headers = sorted((h.name.strip().lower(), h.value) for h in webhook.custom_headers)
    return WebhookKey(
        url=(webhook.url or "").strip(),
        filters=tuple((et, cond) for et, cond in filters),
        headers=tuple(headers),
    )


# --------------------------------------------------------------------------------------------------------
# Plan
# --------------------------------------------------------------------------------------------------------


class Action(str, Enum):
    CREATE = "create"
    REPLACE = "replace"
    DELETE = "delete"
    ENABLE = "enable"
    UNCHANGED = "unchanged"
    KEEP = "keep"  # not in the spec, at a URL the spec does not own, and prune is off

    @property
    def symbol(self) -> str:
        return {"create": "+", "replace": "~", "delete": "-", "enable": "!", "unchanged": "=", "keep": "?"}[
            self.value
        ]

    @property
    def writes(self) -> bool:
        return self in (Action.CREATE, Action.REPLACE, Action.DELETE, Action.ENABLE)


@dataclass
class WebhookAction:
    """One step of a plan. ``desired`` is the spec's webhook, ``actual`` the one Carerix has."""

    action: Action
    desired: Webhook | None = None
    actual: Webhook | None = None
    reason: str = ""
    label: str | None = None  # the spec's optional `name` of the desired webhook, for people reading plans

    def line(self) -> str:
        """A plan line that can be logged: header values and URL secrets (userinfo, query) are hidden."""
        head = f"{self.action.symbol} {self.action.value:<9}"
        if self.label:
            head += f" {self.label}:"
        if self.action is Action.CREATE:
            assert self.desired is not None
            return f"{head} {describe_webhook(self.desired)}"
        assert self.actual is not None
        text = f"{head} {self.actual.id} {describe_webhook(self.actual)}"
        if self.action is Action.REPLACE:
            assert self.desired is not None
            text += f"\n    {'':<9}   with {describe_webhook(self.desired)}"
        if self.reason:
            text += f"  ({self.reason})"
        return text


def describe_webhook(webhook: Webhook) -> str:
    filters = []
    for f in webhook.filters:
        condition = canonical_condition(f.condition)
        filters.append(f"{(f.event_type or '').lower()}" + (f" if {condition}" if condition else ""))
    text = f"{display_url(webhook.url)} [{'; '.join(filters) or 'no filters'}]"
    if webhook.custom_headers:
        text += " headers: " + ", ".join(f"{h.name}: {MASK}" for h in webhook.custom_headers)
    return text


def _differences(old: WebhookKey, new: WebhookKey) -> str:
    changed = []
    if old.event_types != new.event_types:
        changed.append("event types")
    elif old.filters != new.filters:
        changed.append("conditions")
    if old.header_names != new.header_names:
        changed.append("header names")
    elif old.headers != new.headers:
        changed.append("header values")
    return (", ".join(changed) or "content") + " changed"


def _keep_order(webhook: Webhook) -> tuple[bool, str, str]:
    """Among identical copies keep an enabled one, then the oldest, then the smallest id (deterministic)."""
    created = webhook.created.isoformat() if webhook.created else "~"
    return (not webhook.enabled, created, webhook.id or "")


def diff_webhooks(
    desired: Sequence[Webhook],
    actual: Sequence[Webhook],
    *,
    prune: bool,
    labels: Sequence[str | None] | None = None,
) -> list[WebhookAction]:
    """The actions that turn ``actual`` into ``desired``. Pure: no I/O, deterministic.

    ``desired`` must not hold two webhooks with the same key (:func:`require_unambiguous` rejects that).
    """
    label_of = {id(w): label for w, label in zip(desired, labels or [], strict=False)}
    desired_keys = [webhook_key(w) for w in desired]
    owned_urls = {k.url for k in desired_keys}
    by_key: dict[WebhookKey, list[Webhook]] = {}
    for webhook in actual:
        by_key.setdefault(webhook_key(webhook), []).append(webhook)

    matched: list[WebhookAction] = []
    duplicates: list[WebhookAction] = []
    unmatched: list[tuple[Webhook, WebhookKey]] = []
    for webhook, key in zip(desired, desired_keys, strict=True):
        copies = sorted(by_key.pop(key, []), key=_keep_order)
        if not copies:
            unmatched.append((webhook, key))
            continue
        keep, extras = copies[0], copies[1:]
        if keep.enabled:
            matched.append(WebhookAction(Action.UNCHANGED, webhook, keep))
        else:
            matched.append(WebhookAction(Action.ENABLE, webhook, keep, f"status {keep.status}"))
        duplicates += [WebhookAction(Action.DELETE, None, x, f"duplicate of {keep.id}") for x in extras]

    leftovers = [(w, webhook_key(w)) for copies in by_key.values() for w in copies]
    changes: list[WebhookAction] = []
    for webhook, key in unmatched:
        # Pair with a stale webhook at the same URL (the old version of this one), the most similar first.
        candidates = [(w, k) for w, k in leftovers if k.url == key.url]
        if not candidates:
            changes.append(WebhookAction(Action.CREATE, webhook))
            continue
        old, old_key = max(
            candidates,
            key=lambda c: (
                len(c[1].event_types & key.event_types),
                len(set(c[1].filters) & set(key.filters)),
            ),
        )
        leftovers.remove((old, old_key))
        changes.append(WebhookAction(Action.REPLACE, webhook, old, _differences(old_key, key)))

    for webhook, key in leftovers:
        if key.url in owned_urls:
            changes.append(
                WebhookAction(Action.DELETE, None, webhook, "not in spec, at a URL the spec manages")
            )
        elif prune:
            changes.append(WebhookAction(Action.DELETE, None, webhook, "not in spec"))
        else:
            changes.append(WebhookAction(Action.KEEP, None, webhook, "not in spec; prune is off"))
    for step in matched + changes:
        step.label = label_of.get(id(step.desired)) if step.desired is not None else None
    return matched + changes + duplicates


@dataclass
class ApplicationPlan:
    name: str
    application_id: str | None
    actions: list[WebhookAction]

    @property
    def create_application(self) -> bool:
        return self.application_id is None

    def of(self, *kinds: Action) -> list[WebhookAction]:
        return [a for a in self.actions if a.action in kinds]

    @property
    def has_changes(self) -> bool:
        return self.create_application or any(a.action.writes for a in self.actions)

    def lines(self) -> list[str]:
        counts = ", ".join(
            f"{len(self.of(kind))} {label}"
            for kind, label in (
                (Action.CREATE, "to create"),
                (Action.REPLACE, "to replace"),
                (Action.DELETE, "to delete"),
                (Action.ENABLE, "to enable"),
                (Action.UNCHANGED, "unchanged"),
                (Action.KEEP, "kept"),
            )
            if self.of(kind)
        )
        if self.create_application:
            head = f"+ create application {self.name!r}"
        else:
            head = f"application {self.name!r} ({self.application_id})"
        return [f"{head}: {counts or 'no webhooks'}"] + ["  " + a.line() for a in self.actions]


@dataclass
class SyncPlan:
    applications: list[ApplicationPlan]
    prune: bool

    @property
    def has_changes(self) -> bool:
        return any(a.has_changes for a in self.applications)

    def lines(self) -> list[str]:
        return [line for app in self.applications for line in app.lines()]

    def render(self) -> str:
        text = "\n".join(self.lines())
        return text + ("" if self.has_changes else "\nNo changes: Carerix matches the spec.")


def _snapshot_row(application_name: str, action: Action, webhook: Webhook) -> dict[str, Any]:
    """One webhook as the Carerix page shows it: masked URL, filters, status; never header values."""
    return {
        "webhook_id": webhook.id,
        "application_name": application_name,
        "url": display_url(webhook.url) if webhook.url else None,
        "filters": [
            {"eventType": f.event_type, **({"condition": f.condition} if f.condition else {})}
            for f in webhook.filters
        ],
        "status": webhook.status or "enabled",
        "sync_action": action.value,
    }


def require_unambiguous(spec: Spec) -> None:
    """What validation of single webhooks cannot see: repeats, which would make the sync ambiguous."""
    problems: list[str] = []
    seen_apps: set[str] = set()
    for i, app in enumerate(spec.applications):
        if app.name in seen_apps:
            problems.append(f"applications[{i}].name: application {app.name!r} appears twice")
        seen_apps.add(app.name)
        seen: dict[WebhookKey, int] = {}
        for j, webhook in enumerate(app.webhooks):
            key = webhook_key(webhook)
            if key in seen:
                problems.append(
                    f"applications[{i}].webhooks[{j}]: identical to webhooks[{seen[key]}] "
                    "(same url, filters and headers)"
                )
            seen.setdefault(key, j)
    if problems:
        raise SyncError("the spec is ambiguous:\n" + "\n".join(f"  {p}" for p in problems))


def plan(spec: Spec, hook: WebhookApi, *, prune: bool) -> SyncPlan:
    """Read Carerix and compute what to do. Reads only: one list of applications, one list per application."""
    require_unambiguous(spec)
    existing: dict[str, list[Application]] = {}
    for application in hook.list_applications():
        existing.setdefault(application.name or "", []).append(application)

    # Decide every application before reading any webhooks, so an ambiguity fails before anything else.
    ids: list[str | None] = []
    for app in spec.applications:
        found = existing.get(app.name, [])
        if len(found) > 1:
            raise SyncError(
                f"{len(found)} applications in Carerix are named {app.name!r} "
                f"({', '.join(str(a.id) for a in found)}); the sync will not guess which one the spec means. "
                "Delete or rename the extra ones, then run again."
            )
        ids.append(found[0].id if found else None)

    plans = []
    for app, app_id in zip(spec.applications, ids, strict=True):
        actual = hook.list_webhooks(app_id) if app_id else []
        actions = diff_webhooks(app.webhooks, actual, prune=prune, labels=getattr(app, "labels", None))
        plans.append(ApplicationPlan(app.name, app_id, actions))
    return SyncPlan(plans, prune)


# --------------------------------------------------------------------------------------------------------
# Apply
# --------------------------------------------------------------------------------------------------------


@dataclass
class ApplicationResult:
    name: str
    application_id: str | None
    application_created: bool = False
    created: list[str | None] = field(default_factory=list)
    replaced: list[dict[str, str | None]] = field(default_factory=list)
    deleted: list[str | None] = field(default_factory=list)
    enabled: list[str | None] = field(default_factory=list)
    unchanged: list[str | None] = field(default_factory=list)
    kept: list[str | None] = field(default_factory=list)
    # What Carerix has of this application after the run, each with the step that left it so: created and
    # replacement webhooks with their new ids, enabled ones enabled, deleted ones gone. Not in the summary.
    webhooks: list[tuple[Action, Webhook]] = field(default_factory=list, repr=False)

    def summary(self, dry_run: bool) -> dict[str, Any]:
        return {
            "application": self.name,
            "application_id": self.application_id,
            "application_created": self.application_created,
            "created": self.created,
            "replaced": self.replaced,
            "deleted": self.deleted,
            "enabled": self.enabled,
            "unchanged": self.unchanged,
            "kept": self.kept,
            "dry_run": dry_run,
        }


@dataclass
class SyncResult:
    plan: SyncPlan
    applications: list[ApplicationResult]
    dry_run: bool

    def summary(self) -> dict[str, Any]:
        """JSON-ready; ids only, never URLs or headers. One application: flat; several: under ``applications``."""
        if len(self.applications) == 1:
            return self.applications[0].summary(self.dry_run)
        return {"applications": [a.summary(self.dry_run) for a in self.applications], "dry_run": self.dry_run}

    def to_json(self) -> str:
        return json.dumps(self.summary(), indent=2)

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        """Each application's webhooks as this run left them (no header values), for the event store's page.

        After a real run that is what Carerix has now, so an application and webhooks the run created show
        at once, not only after the next sync; a dry run changed nothing, so it is what the plan saw.
        """
        return {
            app.application_id: [_snapshot_row(app.name, action, w) for action, w in app.webhooks if w.id]
            for app in self.applications
            if app.application_id is not None  # a dry run of an application that does not exist yet
        }


def _planned_result(app_plan: ApplicationPlan) -> ApplicationResult:
    """What a dry run reports: ids that exist; ``None`` for webhooks that would be created."""
    result = ApplicationResult(app_plan.name, app_plan.application_id, app_plan.create_application)
    for step in app_plan.actions:
        actual_id = step.actual.id if step.actual else None
        if step.action is Action.CREATE:
            result.created.append(None)
        elif step.action is Action.REPLACE:
            result.replaced.append({"old": actual_id, "new": None})
        elif step.action is Action.DELETE:
            result.deleted.append(actual_id)
        elif step.action is Action.ENABLE:
            result.enabled.append(actual_id)
        elif step.action is Action.UNCHANGED:
            result.unchanged.append(actual_id)
        else:
            result.kept.append(actual_id)
        if step.actual is not None:  # nothing was written: Carerix still has everything the plan saw
            result.webhooks.append((step.action, step.actual))
    return result


def _apply_application(
    app_plan: ApplicationPlan, hook: WebhookApi, say: Callable[[str], None]
) -> ApplicationResult:
    result = ApplicationResult(app_plan.name, app_plan.application_id)
    app_id = app_plan.application_id
    if app_id is None:
        # Found by name on every run: if this run dies after this call, the next one finds it and goes on.
        app_id = hook.create_application(app_plan.name).id
        if not app_id:
            raise SyncError(f"Carerix created application {app_plan.name!r} but returned no id")
        result.application_id, result.application_created = app_id, True
        say(f"created application {app_plan.name!r}: {app_id}")

    # Order: creates (new and replacement webhooks), then enables, then deletes (replaced, stale, duplicate,
    # pruned). A replace is create-then-delete, not delete-then-create: between the two calls both versions
    # deliver (receivers must tolerate duplicates anyway, Carerix delivers at least once), whereas the other
    # order loses every event in between, and if the run dies there, until the next run (a day for @daily).
    # Dying between the two leaves the new version (matching the spec, kept) plus the old one at a URL the
    # spec owns, which the next run deletes whatever `prune` says: it converges, with no duplicate left.
    replacements: dict[int, Webhook] = {}
    for index, step in enumerate(app_plan.actions):
        if step.action in (Action.CREATE, Action.REPLACE):
            assert step.desired is not None
            created = hook.create_webhook(app_id, step.desired.to_create_body())
            say(f"created webhook {created.id}: {describe_webhook(step.desired)}")
            replacements[index] = created
            if step.action is Action.CREATE:
                result.created.append(created.id)
    for step in app_plan.of(Action.ENABLE):
        assert step.actual is not None and step.actual.id
        hook.enable_webhook(app_id, step.actual.id)
        say(f"enabled webhook {step.actual.id} (was {step.actual.status})")
        result.enabled.append(step.actual.id)
    for index, step in enumerate(app_plan.actions):
        if step.action not in (Action.REPLACE, Action.DELETE):
            continue
        assert step.actual is not None and step.actual.id
        try:
            hook.delete_webhook(app_id, step.actual.id)
        except CarerixNotFoundError:
            pass  # already gone (a concurrent run, or by hand): the goal is reached either way
        if step.action is Action.REPLACE:
            new_id = replacements[index].id
            say(f"deleted webhook {step.actual.id}, replaced by {new_id} ({step.reason})")
            result.replaced.append({"old": step.actual.id, "new": new_id})
        else:
            say(f"deleted webhook {step.actual.id} ({step.reason})")
            result.deleted.append(step.actual.id)
    result.unchanged = [s.actual.id for s in app_plan.of(Action.UNCHANGED) if s.actual]
    result.kept = [s.actual.id for s in app_plan.of(Action.KEEP) if s.actual]
    for index, step in enumerate(app_plan.actions):
        if index in replacements:
            result.webhooks.append((step.action, replacements[index]))
        elif step.action is Action.ENABLE and step.actual is not None:
            result.webhooks.append((step.action, step.actual.model_copy(update={"status": "enabled"})))
        elif step.action in (Action.UNCHANGED, Action.KEEP) and step.actual is not None:
            result.webhooks.append((step.action, step.actual))
    return result


def apply(sync_plan: SyncPlan, hook: WebhookApi, *, say: Callable[[str], None] | None = None) -> SyncResult:
    """Perform a plan's writes. Applications with nothing to change cost no call at all."""
    say = say or log.info
    results = []
    for app_plan in sync_plan.applications:
        if app_plan.has_changes:
            results.append(_apply_application(app_plan, hook, say))
        else:
            results.append(_planned_result(app_plan))
        for action in Action:
            metrics.incr(metrics.SYNC_WEBHOOKS, len(app_plan.of(action)), action=action.value)
    return SyncResult(sync_plan, results, dry_run=False)


def sync(
    spec: Spec,
    hook: WebhookApi,
    *,
    prune: bool = True,
    dry_run: bool = False,
    say: Callable[[str], None] | None = None,
) -> SyncResult:
    """Plan, log the plan, and (unless ``dry_run``) apply it: the one code path of the operator and the CLI."""
    say = say or log.info
    sync_plan = plan(spec, hook, prune=prune)
    say(("Plan (dry run, nothing will change):\n" if dry_run else "Plan:\n") + sync_plan.render())
    if dry_run:
        return SyncResult(sync_plan, [_planned_result(a) for a in sync_plan.applications], dry_run=True)
    return apply(sync_plan, hook, say=say)
