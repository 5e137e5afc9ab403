"""Operators that provision Carerix webhooks: single steps, and a declarative sync of a whole spec.

Header values are how a receiver authenticates Carerix, so they are secrets: every operator registers them with
Airflow's secrets masker as soon as templates are rendered (before Airflow stores the rendered fields and
before anything is logged), and the operators return ids only, never URLs or headers, to XCom.

When the connection points at Carerix itself (not the emulator or another local address), webhook URLs
Carerix cannot deliver to (loopback, private or link-local addresses, ``localhost``, plain ``http://``) fail
the task without retries, like any other problem in a definition; ``allow_unreachable_urls=True`` permits them
for setups where Carerix does reach such an address.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import yaml
from airflow.sdk.log import mask_secret

from airflow_provider_carerix.definitions.conditions import parse
from airflow_provider_carerix.definitions.spec import Spec, load_spec
from airflow_provider_carerix.definitions.validation import (
    SpecValidationError,
    explain_templates,
    targets_public_carerix,
    validate_webhook,
)
from airflow_provider_carerix.exceptions import CarerixNotFoundError
from airflow_provider_carerix.hooks.event_store import DEFAULT_CONN_ID as DEFAULT_STORE_CONN_ID
from airflow_provider_carerix.operators.base import CarerixBaseOperator
from airflow_provider_carerix.provisioning.sync import SyncError, sync
from airflow_provider_carerix.version_compat import AirflowFailException

if TYPE_CHECKING:
    import jinja2
    from airflow.sdk import Context

SPEC_EXTENSIONS = (".yaml", ".yml", ".json")


def _mask(value: object) -> None:
    """Register a secret with the task's and the supervisor's masker (the latter redacts rendered fields)."""
    if isinstance(value, str) and value:
        mask_secret(value)


def _as_bool(value: object, name: str) -> bool:
    """Template fields render to text ("True"), so a flag given as ``{{ params.prune }}`` arrives as a string."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", "", "none"):
        return False
    raise ValueError(f"{name} must be true or false, got {value!r}")


def normalize_headers(
    custom_headers: Mapping[str, str] | Sequence[Mapping[str, str]] | None,
) -> list[dict[str, str]]:
    """``{"X-Secret": "..."}`` or Carerix's ``[{"name": ..., "value": ...}]``, as Carerix's list."""
    if not custom_headers:
        return []
    if isinstance(custom_headers, Mapping):
        return [{"name": str(k), "value": str(v)} for k, v in custom_headers.items()]
    return [dict(h) for h in custom_headers]


def mask_spec_headers(spec: object) -> None:
    """Mask every header value of a rendered spec (dict, or YAML/JSON text), before anything is validated.

    Runs on unvalidated input on purpose: a spec that fails validation is still logged in the error, and
    its header values must be hidden there too.
    """
    if isinstance(spec, str):
        try:
            spec = yaml.safe_load(spec)
        except yaml.YAMLError:
            return
    if isinstance(spec, Mapping):
        for value in spec.values():
            mask_spec_headers(value)
        headers = spec.get("customHeaders", spec.get("custom_headers"))
        if isinstance(headers, Mapping):
            for value in headers.values():
                _mask(value)
        elif isinstance(headers, list):
            for header in headers:
                if isinstance(header, Mapping):
                    _mask(header.get("value"))
    elif isinstance(spec, list):
        for item in spec:
            mask_spec_headers(item)


class _CarerixOperator(CarerixBaseOperator):
    def _require_public_urls(self, allow_unreachable_urls: bool) -> bool:
        """Whether webhook URLs must be reachable from the internet: the connection is Carerix itself."""
        return not allow_unreachable_urls and targets_public_carerix(self.hook.settings.api_url)


class CarerixCreateApplicationOperator(_CarerixOperator):
    """Create a webhook application; its id goes to XCom for the webhook operators downstream.

    Not idempotent on purpose (Carerix allows several applications with one name): to keep one application
    per name across runs, use :class:`CarerixSyncWebhooksOperator`, which finds it by name.
    """

    template_fields: Sequence[str] = ("name",)

    def __init__(self, *, name: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.name = name

    def execute(self, context: Context) -> str:
        application = self.hook.create_application(self.name)
        self.log.info("Created Carerix webhook application %r: %s", self.name, application.id)
        return str(application.id)


class CarerixCreateWebhookOperator(_CarerixOperator):
    """Create one webhook, after checking it locally: Carerix accepts anything and a typo never fires."""

    template_fields: Sequence[str] = ("application_id", "url", "filters", "custom_headers")

    def __init__(
        self,
        *,
        application_id: str,
        url: str,
        filters: Sequence[Mapping[str, Any]],
        custom_headers: Mapping[str, str] | Sequence[Mapping[str, str]] | None = None,
        allow_unknown_event_types: bool = False,
        allow_unreachable_urls: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.application_id = application_id
        self.url = url
        self.filters = filters
        self.custom_headers = custom_headers
        self.allow_unknown_event_types = allow_unknown_event_types
        self.allow_unreachable_urls = allow_unreachable_urls
        self._templates: dict[str, Any] | None = None

    def render_template_fields(self, context: Context, jinja_env: jinja2.Environment | None = None) -> None:
        # Kept to name the template (and Variable) a value came from when it renders invalid or empty.
        self._templates = {"url": self.url, "customHeaders": normalize_headers(self.custom_headers)}
        super().render_template_fields(context, jinja_env)
        for header in normalize_headers(self.custom_headers):
            _mask(header.get("value"))

    def body(self) -> dict[str, Any]:
        """The create body, validated: every problem at once, before any call."""
        for header in normalize_headers(self.custom_headers):
            _mask(header.get("value"))
        body: dict[str, Any] = {
            "_kind": "Webhook",
            "url": self.url,
            "filters": [dict(f) for f in self.filters],
        }
        if headers := normalize_headers(self.custom_headers):
            body["customHeaders"] = headers
        problems = validate_webhook(
            body,
            allow_unknown_event_types=self.allow_unknown_event_types,
            require_public_url=self._require_public_urls(self.allow_unreachable_urls),
        )
        if problems:
            _fail_without_retry(SpecValidationError(explain_templates(problems, self._templates)))
        for f in body["filters"]:
            f["eventType"] = f["eventType"].strip().lower()
            if f.get("condition") is not None:
                f["condition"] = str(parse(f["condition"]))  # canonical, as the sync compares them
        return body

    def execute(self, context: Context) -> str:
        body = self.body()
        webhook = self.hook.create_webhook(str(self.application_id), body)
        self.log.info("Created webhook %s in application %s", webhook.id, self.application_id)
        return str(webhook.id)


class CarerixDeleteWebhookOperator(_CarerixOperator):
    """Delete one webhook. Already gone counts as done, so a retried task does not fail on its own success."""

    template_fields: Sequence[str] = ("application_id", "webhook_id")

    def __init__(self, *, application_id: str, webhook_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.application_id = application_id
        self.webhook_id = webhook_id

    def execute(self, context: Context) -> None:
        try:
            self.hook.delete_webhook(str(self.application_id), str(self.webhook_id))
        except CarerixNotFoundError:
            self.log.info("Webhook %s was already deleted", self.webhook_id)
            return
        self.log.info("Deleted webhook %s from application %s", self.webhook_id, self.application_id)


class CarerixSyncWebhooksOperator(_CarerixOperator):
    """Converge Carerix onto a spec: create what is missing, replace what changed, prune what is not declared.

    ``spec`` is a dict, or a path to a YAML/JSON spec file (relative to the DAG folder or a
    ``template_searchpath``, or absolute). The file is a Jinja template, like any ``template_ext`` file, so
    ``{{ var.value.carerix_receiver_secret }}`` in it resolves at run time; the path itself may be a template
    too (``"{{ params.spec }}"``). The whole spec is validated before the first call to Carerix, including
    header values that rendered empty (the problem names the Variable to set) and, against Carerix itself,
    receiver URLs it cannot reach (``allow_unreachable_urls`` permits them). Returns the summary (ids per
    action), never URLs or header values.

    After a real run it records each application's signing key in the event store (found as every component
    finds it: the ``store_conn_id`` connection, default ``carerix_event_store``, then ``event_store_url`` or
    ``[carerix] event_store_url``), where receivers read it to verify ``Cx-Signature``; pass
    ``record_signing_keys=False`` when no receiver of this deployment reads that store.
    """

    template_fields: Sequence[str] = ("spec", "prune", "dry_run")
    template_ext: Sequence[str] = SPEC_EXTENSIONS
    template_fields_renderers = {"spec": "yaml"}
    ui_color = "#e8f4fd"

    def __init__(
        self,
        *,
        spec: Mapping[str, Any] | str | Path,
        prune: bool | str = True,
        dry_run: bool | str = False,
        allow_unknown_event_types: bool = False,
        allow_unreachable_urls: bool = False,
        record_signing_keys: bool = True,
        event_store_url: str | None = None,
        store_conn_id: str | None = DEFAULT_STORE_CONN_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.spec: str | Mapping[str, Any] = str(spec) if isinstance(spec, Path) else spec
        self.record_signing_keys = record_signing_keys
        self.event_store_url = event_store_url
        self.store_conn_id = store_conn_id
        self.prune = prune
        # A template field of this name is public API; it hides BaseOperator.dry_run(), a method Airflow 3
        # never calls on a task (``airflow tasks test`` renders templates itself).
        self.dry_run = dry_run  # type: ignore[method-assign,assignment]
        self.allow_unknown_event_types = allow_unknown_event_types
        self.allow_unreachable_urls = allow_unreachable_urls
        self._spec_source: str | None = str(self.spec) if _is_spec_path(self.spec) else None
        self._spec_template: str | Mapping[str, Any] | None = None  # the spec before rendering

    def resolve_template_files(self) -> None:
        # Airflow's loader only finds files under the DAG folder / template_searchpath; read absolute paths here.
        if _is_spec_path(self.spec) and Path(str(self.spec)).is_absolute():
            self._spec_source = str(self.spec)
            self.spec = Path(str(self.spec)).read_text(encoding="utf-8")
        super().resolve_template_files()

    def render_template(
        self,
        content: Any,
        context: Context,
        jinja_env: jinja2.Environment | None = None,
        seen_oids: set[int] | None = None,
    ) -> Any:
        if isinstance(content, str) and _is_spec_path(content) and Path(content).is_absolute():
            jinja_env = jinja_env or self.get_template_env()
            return self._render(jinja_env.from_string(Path(content).read_text(encoding="utf-8")), context)
        if isinstance(content, str) and "://" in content and content.endswith(SPEC_EXTENSIONS):
            # A URL inside a dict spec that happens to end in .json is text, not a template file.
            jinja_env = jinja_env or self.get_template_env()
            return self._render(jinja_env.from_string(content), context)
        return super().render_template(content, context, jinja_env, seen_oids)

    def render_template_fields(self, context: Context, jinja_env: jinja2.Environment | None = None) -> None:
        if not _is_spec_path(self.spec):
            self._spec_template = copy.deepcopy(self.spec)
        super().render_template_fields(context, jinja_env)
        if _is_spec_path(self.spec):
            # The path was itself a template ("{{ params.spec }}"): now load and render the file it names.
            jinja_env = jinja_env or self.get_template_env()
            self._spec_source = str(self.spec)
            self._spec_template = _template_text(str(self.spec), jinja_env)
            self.spec = self.render_template(self.spec, context, jinja_env)
        mask_spec_headers(self.spec)

    def load(self) -> Spec:
        spec = self.spec
        if _is_spec_path(spec):  # executed without rendering (e.g. operator.execute() called directly)
            self._spec_source = str(spec)
            spec = Path(str(spec)).read_text(encoding="utf-8")
        mask_spec_headers(spec)
        return load_spec(
            spec,
            allow_unknown_event_types=self.allow_unknown_event_types,
            filename=self._spec_source,
            require_public_urls=self._require_public_urls(self.allow_unreachable_urls),
            template=self._spec_template,
        )

    def execute(self, context: Context) -> dict[str, Any]:
        prune = _as_bool(self.prune, "prune")
        dry_run = _as_bool(self.dry_run, "dry_run")
        try:
            spec = self.load()  # every problem, before any call to Carerix
        except SpecValidationError as error:
            _fail_without_retry(error)
        try:
            result = sync(spec, self.hook, prune=prune, dry_run=dry_run, say=self.log.info)
        except SyncError as error:  # ambiguous (e.g. two applications with the name): a person must decide
            _fail_without_retry(error)
        if self.record_signing_keys and not dry_run:
            from airflow_provider_carerix.hooks.event_store import CarerixEventStoreHook
            from airflow_provider_carerix.provisioning.signing_keys import record_signing_keys

            store_hook = CarerixEventStoreHook(
                store_conn_id=self.store_conn_id, store_url=self.event_store_url
            )
            try:
                store = store_hook.store
                record_signing_keys(
                    self.hook, [a.application_id for a in result.applications], store, say=self.log.info
                )
                for application_id, rows in result.snapshot().items():
                    store.record_webhooks(application_id, rows)
            finally:
                store_hook.close()
        summary = result.summary()
        self.log.info("Summary: %s", result.to_json())
        return summary


def _fail_without_retry(error: Exception) -> NoReturn:
    """A wrong spec stays wrong on retry: fail the task at once, with every problem in the message."""
    raise AirflowFailException(str(error)) from error


def _is_spec_path(value: object) -> bool:
    return isinstance(value, str) and "\n" not in value and value.strip().endswith(SPEC_EXTENSIONS)


def _template_text(path: str, jinja_env: jinja2.Environment) -> str | None:
    """A spec file's text before rendering, found as Airflow's template loader finds it."""
    if Path(path).is_absolute():
        return Path(path).read_text(encoding="utf-8")
    if jinja_env.loader is None:
        return None
    try:
        return jinja_env.loader.get_source(jinja_env, path)[0]
    except Exception:  # jinja2.TemplateNotFound: rendering reports it next, with Airflow's own message
        return None
