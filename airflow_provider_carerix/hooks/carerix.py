"""Hook for Carerix's Webhooks Management API (``https://api.carerix.io/webhooks/v1``) and its GraphQL API.

Carerix publishes little about this API beyond a getting-started guide, so the hook is written to survive
what is not promised: list answers as a bare array or wrapped in ``items``, list entries that carry only
``_kind``/``_id``, ids as ``_id`` or ``id``, collection paths with or without a trailing slash. Everything
else follows the usual shape of Airflow's HTTP hooks (see the dbt Cloud provider): a cached connection, a
``requests`` auth class that sets the bearer token, one ``requests.Session`` per hook, one tenacity retry
policy, typed errors. The GraphQL calls (the delivery log, and the records behind events, whose batching and
paging live in :mod:`.carerix_data`) go through the same session, token cache and retry policy.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit, urlunsplit

import requests
import tenacity
from requests.auth import AuthBase
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from airflow_provider_carerix import __version__
from airflow_provider_carerix.definitions.entities import DEFAULT_BATCH_SIZE
from airflow_provider_carerix.definitions.models import (
    Application,
    DeliveryJob,
    SignatureVerification,
    Webhook,
)
from airflow_provider_carerix.exceptions import (
    CarerixApiError,
    CarerixAuthError,
    CarerixConfigError,
    CarerixConnectionError,
    CarerixError,
    CarerixGraphQLError,
    CarerixNotFoundError,
    api_error,
    scrub,
)
from airflow_provider_carerix.version_compat import (
    AIRFLOW_V_3_2_PLUS,
    BaseHook,
    connection_form_widgets,
    ui_field_behaviour,
)

if TYPE_CHECKING:
    from airflow.sdk import Connection

log = logging.getLogger(__name__)

DEFAULT_HOST = "https://api.carerix.io"
DEFAULT_IDENTITY_HOST = "https://id.carerix.io"
DEFAULT_SCOPE = "urn:cx/webhooks:data:manage"
#: What reading records needs besides (``get_entities``, the coverage sweep): the scope public client code reads
#: Carerix's data with [T]; Carerix publishes no read-only one. Add it to the connection's ``scope``.
DATA_SCOPE = "urn:cx/cx5Wrapper:data:manage"
API_PATH = "/webhooks/v1"
GRAPHQL_PATH = "/graphql/v1/graphql"
#: The delivery-log query. Carerix documents the ``WebhookDeliveryJobPage`` type and the ``Pageable`` input
#: (``page`` from 0, ``size`` default 20, ``sort: [Order]``) but, as read in 2026-11, not the arguments of
#: ``webhookDeliveryJobPage`` itself. Assumed: ``pageable: Pageable`` like Carerix's other ``xxxPage`` queries;
#: no ``qualifier`` is sent (its syntax for delivery jobs is unknown), so filtering by time happens here.
DELIVERY_JOBS_QUERY = """
query CarerixDeliveryJobs($pageable: Pageable) {
  webhookDeliveryJobPage(pageable: $pageable) {
    page
    size
    totalElements
    totalPages
    numberOfElements
    last
    items {
      _id
      _createdDateTime
      payload
      webhook { _id }
      attempts { items { _id _createdDateTime deliveryStatus responseStatusCode } }
    }
  }
}
"""
#: What list calls ask for, so one GET returns full objects where the API supports ``?fields=``.
WEBHOOK_FIELDS = "url,filters,customHeaders,status"
APPLICATION_FIELDS = "name"
#: A token is replaced this long before Carerix says it expires (capped at a tenth of its lifetime), so a
#: request never leaves with a token that dies in flight.
TOKEN_REFRESH_MARGIN = 30.0

# ``id``, ``id-2``, ``id-s1``: the short names of Carerix's identity hosts, as in the guide's token URLs.
_SHORT_IDENTITY_HOST = re.compile(r"^id(-[a-z0-9]+)?$", re.IGNORECASE)


def _mask_secret(value: str | None) -> None:
    """Register a value with Airflow's secrets masker, so it shows as ``***`` in task logs."""
    if not value:
        return
    try:
        from airflow.sdk.log import mask_secret
    except ImportError:  # pragma: no cover - older layouts
        try:
            from airflow.utils.log.secrets_masker import mask_secret  # type: ignore[no-redef]
        except ImportError:
            return
    mask_secret(value)


# ---------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class CarerixSettings:
    """A ``carerix`` connection resolved into what the hook needs; built without any network call."""

    api_url: str
    token_url: str
    client_id: str
    client_secret: str = field(repr=False)
    scope: str  # one or more scopes, space-separated (OAuth2's own form), whitespace normalised

    @property
    def scopes(self) -> list[str]:
        return self.scope.split()


def _clean(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _with_scheme(url: str, field_name: str) -> str:
    """``api.carerix.io`` means ``https://api.carerix.io``; only http and https make sense."""
    if "://" not in url:
        url = "https://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise CarerixConfigError(
            field_name, f"{field_name} must be an http(s) URL or a host name, got {url!r}"
        )
    return url.rstrip("/")


def identity_host_url(value: str | None) -> str:
    """The identity host as a base URL: ``id-2``, ``id-2.carerix.io`` and ``https://id-2.carerix.io/`` agree."""
    text = _clean(value) or DEFAULT_IDENTITY_HOST
    if _SHORT_IDENTITY_HOST.match(text):
        text = f"{text.lower()}.carerix.io"
    url = _with_scheme(text, "identity_host")
    # People paste the Keycloak base (".../auth") from their login URL; the realm path is added below.
    return url[: -len("/auth")] if url.endswith("/auth") else url


def resolve_settings(conn: Connection, conn_id: str | None = None) -> CarerixSettings:
    """Read a ``carerix`` connection; a missing required field raises :class:`CarerixConfigError` naming it."""
    name = conn_id or getattr(conn, "conn_id", None) or "carerix_default"
    extras = conn.extra_dejson or {}

    def extra(key: str) -> str | None:
        # Airflow < 2.3 stored form fields as ``extra__<conn_type>__<key>``; accept both spellings.
        return _clean(extras.get(key)) or _clean(extras.get(f"extra__carerix__{key}"))

    client_id = extra("client_id") or _clean(conn.login)
    if not client_id:
        raise CarerixConfigError(
            "client_id",
            f"Carerix connection {name!r} has no client_id: set the extra 'client_id' (or the login).",
        )
    client_secret = extra("client_secret") or _clean(conn.password)
    if not client_secret:
        raise CarerixConfigError(
            "client_secret",
            f"Carerix connection {name!r} has no client_secret: set the extra 'client_secret' (or the password).",
        )
    auth_url = extra("auth_url")
    if auth_url:
        token_url = _with_scheme(auth_url, "auth_url")
    else:
        realm = extra("realm")
        if not realm:
            raise CarerixConfigError(
                "realm",
                f"Carerix connection {name!r} has no realm: set the extra 'realm' (your tenant's Keycloak "
                "realm, e.g. 'csmdemo'), or a full 'auth_url'.",
            )
        base = identity_host_url(extra("identity_host"))
        token_url = f"{base}/auth/realms/{quote(realm, safe='')}/protocol/openid-connect/token"

    api_url = _with_scheme(_clean(conn.host) or DEFAULT_HOST, "host")
    parts = urlsplit(api_url)
    if conn.port and parts.port is None:
        parts = parts._replace(netloc=f"{parts.netloc}:{conn.port}")
    path = parts.path.rstrip("/")
    if not path.endswith(API_PATH):
        path += API_PATH
    api_url = urlunsplit((parts.scheme, parts.netloc, path, "", ""))
    return CarerixSettings(
        api_url=api_url,
        token_url=token_url,
        client_id=client_id,
        client_secret=client_secret,
        # Several scopes are written space-separated (OAuth2's form); commas and newlines are read as spaces too.
        scope=" ".join((extra("scope") or DEFAULT_SCOPE).replace(",", " ").split()),
    )


# ---------------------------------------------------------------------------------------------- token cache


@dataclass
class _CachedToken:
    value: str = field(repr=False)
    refresh_at: float


# One cache per process, shared by every hook: tasks build a new hook per run, operators several, and each
# would otherwise fetch its own token. Keyed by (token URL, client id, scope) plus a fingerprint of the secret,
# so a connection with a wrong secret never rides on a token another connection obtained.
_TOKENS: dict[tuple[str, str, str, str], _CachedToken] = {}
_TOKENS_LOCK = threading.Lock()
_FETCH_LOCKS: dict[tuple[str, str, str, str], threading.Lock] = {}


def clear_token_cache() -> None:
    """Forget every cached token (tests; a rotated secret is handled by the fingerprint already)."""
    with _TOKENS_LOCK:
        _TOKENS.clear()


def _token_key(settings: CarerixSettings) -> tuple[str, str, str, str]:
    fingerprint = hashlib.sha256(settings.client_secret.encode()).hexdigest()[:16]
    return (settings.token_url, settings.client_id, settings.scope, fingerprint)


# ---------------------------------------------------------------------------------------------- retries


class _RetryableStatus(Exception):
    """An answer that may succeed when asked again (429, 5xx); carries it to the retry policy."""

    def __init__(self, response: requests.Response) -> None:
        super().__init__(response.status_code)
        self.response = response


def _not_sent(exc: BaseException) -> bool:
    """Whether a connection error happened before the request left: nothing can have been processed."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, (NewConnectionError, ConnectTimeoutError))


def _should_retry(exc: BaseException, *, idempotent: bool) -> bool:
    """The retry predicate, for every call the hook makes.

    Reads, deletes, enable/disable and token requests are idempotent: asking again cannot change more than
    asking once, so they are retried on connection errors, timeouts, 429 and 5xx.

    A POST that creates an application or a webhook is not: if Carerix processed it and only the answer got
    lost (a read timeout, a dropped connection, a 500/502/504 from a gateway in front of a working backend),
    a retry would create a duplicate, and Carerix has no idempotency keys. So a create is retried only when it
    provably was not processed: the connection could not be opened (the request never left), or the answer
    was 429 or 503, which by HTTP semantics mean "not processed, try later". That last part is an assumption
    about Carerix (it is what rate limiters and load balancers do); everything else surfaces as an error, and
    the sync engine's next run re-reads the state instead of guessing.
    """
    if isinstance(exc, _RetryableStatus):
        return idempotent or exc.response.status_code in (429, 503)
    if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
        return idempotent or _not_sent(exc)
    return False


def _retry_after(response: requests.Response) -> float | None:
    """``Retry-After`` in seconds (delta or HTTP date), or ``None`` when absent or unreadable."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError):
        return None


def _sleep(seconds: float) -> None:
    """The retry policy's sleep; a module function so tests can record waits instead of taking them."""
    time.sleep(seconds)


# ---------------------------------------------------------------------------------------------- hook


class CarerixBearerAuth(AuthBase):
    """Puts the hook's current access token on each request, fetching one only when the cache has none."""

    def __init__(self, hook: CarerixHook) -> None:
        self._hook = hook

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._hook.get_access_token()}"
        return request


def _items(payload: Any) -> list[dict[str, Any]]:
    """List entries from a bare array or an object wrapping one (``items``, or ``data``/``results``)."""
    if isinstance(payload, dict):
        for key in ("items", "data", "results"):
            if isinstance(payload.get(key), list):
                payload = payload[key]
                break
    if not isinstance(payload, list):
        raise ValueError("not a list")
    entries = []
    for entry in payload:
        if isinstance(entry, str):  # a list of bare ids
            entries.append({"_id": entry})
        elif isinstance(entry, dict):
            entries.append(entry)
    return entries


def _entry_id(entry: dict[str, Any]) -> str | None:
    value = entry.get("_id", entry.get("id"))
    return None if value is None else str(value)


def _with_id(entry: dict[str, Any], object_id: str) -> dict[str, Any]:
    """``entry`` with its id under ``_id`` only (an ``id`` key would otherwise linger as an extra field)."""
    out = {k: v for k, v in entry.items() if k != "id"}
    out["_id"] = object_id
    return out


class CarerixHook(BaseHook):
    """Talks to Carerix's Webhooks Management API with a ``carerix`` connection.

    :param carerix_conn_id: the ``carerix`` connection (API host, OAuth2 client, realm, identity host).
    :param timeout: seconds for connect and for each read, on every call; Carerix is never waited on forever.
    :param retry_attempts: attempts per call in total (first try included) for retryable failures.
    :param retry_backoff: first wait between attempts in seconds, doubling each time.
    :param retry_max_wait: cap on any single wait, ``Retry-After`` included.
    """

    conn_name_attr = "carerix_conn_id"
    default_conn_name = "carerix_default"
    conn_type = "carerix"
    hook_name = "Carerix"

    if not AIRFLOW_V_3_2_PLUS:
        # Airflow 3.1 builds the connection form from the hook; 3.2+ reads the same fields from provider info.
        get_connection_form_widgets: Any = classmethod(connection_form_widgets)
        get_ui_field_behaviour: Any = classmethod(ui_field_behaviour)

    def __init__(
        self,
        carerix_conn_id: str = default_conn_name,
        *,
        timeout: float = 30.0,
        retry_attempts: int = 5,
        retry_backoff: float = 0.5,
        retry_max_wait: float = 30.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.carerix_conn_id = carerix_conn_id
        self.timeout = timeout
        self.retry_attempts = max(1, retry_attempts)
        self.retry_backoff = retry_backoff
        self.retry_max_wait = retry_max_wait
        # Which collection paths end in "/" (the guide writes "/applications/"); flipped on a 404/405.
        self._slash = {"applications": True, "webhooks": False}

    # ------------------------------------------------------------------------------------------ plumbing

    @cached_property
    def connection(self) -> Connection:
        return self.get_connection(self.carerix_conn_id)

    @cached_property
    def settings(self) -> CarerixSettings:
        settings = resolve_settings(self.connection, self.carerix_conn_id)
        _mask_secret(settings.client_secret)
        return settings

    @cached_property
    def session(self) -> requests.Session:
        session = requests.Session()
        session.headers.update(
            {"Accept": "application/json", "User-Agent": f"airflow-provider-carerix/{__version__}"}
        )
        return session

    def get_conn(self) -> requests.Session:
        """The hook's HTTP session (authentication is added per request by :class:`CarerixBearerAuth`)."""
        return self.session

    def close(self) -> None:
        if "session" in self.__dict__:
            self.session.close()

    def _secrets(self, *extra: str | None) -> list[str | None]:
        known = [self.settings.client_secret] if "settings" in self.__dict__ else []
        with _TOKENS_LOCK:
            known += [t.value for t in _TOKENS.values()]
        return [*known, *extra]

    def _wait(self, retry_state: tenacity.RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, _RetryableStatus):
            after = _retry_after(exc.response)
            if after is not None:
                return min(after, self.retry_max_wait)
        delay = self.retry_backoff * 2 ** (retry_state.attempt_number - 1)
        return min(self.retry_max_wait, delay + random.uniform(0, delay / 10))

    def _log_retry(self, retry_state: tenacity.RetryCallState) -> None:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        what = f"HTTP {exc.response.status_code}" if isinstance(exc, _RetryableStatus) else type(exc).__name__
        wait = retry_state.next_action.sleep if retry_state.next_action else 0.0
        method, url = retry_state.args[0], retry_state.args[1]
        log.warning(
            "Carerix %s %s: %s; retrying in %.2fs (attempt %d of %d)",
            method,
            url,
            what,
            wait,
            retry_state.attempt_number + 1,
            self.retry_attempts,
        )

    def _send_once(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        response = self.session.request(method, url, timeout=self.timeout, **kwargs)
        if response.status_code == 429 or response.status_code >= 500:
            raise _RetryableStatus(response)
        return response

    def _send(self, method: str, url: str, *, idempotent: bool, **kwargs: Any) -> requests.Response:
        """One HTTP call under the retry policy; returns the last answer, raises only for no answer."""
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(lambda exc: _should_retry(exc, idempotent=idempotent)),
            stop=tenacity.stop_after_attempt(self.retry_attempts),
            wait=self._wait,
            sleep=_sleep,
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            return retrying(self._send_once, method, url, **kwargs)
        except _RetryableStatus as exc:
            return exc.response
        except requests.RequestException as exc:
            raise CarerixConnectionError(
                None, method, url, reason=f"{type(exc).__name__}: {exc}", secrets=self._secrets()
            ) from None

    def _error(self, response: requests.Response, method: str, url: str) -> CarerixApiError:
        return api_error(
            response.status_code, method, url, response.text, reason=response.reason, secrets=self._secrets()
        )

    # ------------------------------------------------------------------------------------------ token

    def get_access_token(self, *, refresh: bool = False) -> str:
        """A bearer token for the connection's client, from the shared cache while it is fresh.

        ``refresh=True`` fetches a new one even if the cache holds one (``test_connection`` uses it, so a
        wrong secret is not hidden behind a token obtained earlier).
        """
        settings = self.settings
        key = _token_key(settings)
        if not refresh:
            with _TOKENS_LOCK:
                cached = _TOKENS.get(key)
            if cached is not None and time.monotonic() < cached.refresh_at:
                return cached.value
        with _TOKENS_LOCK:
            fetch_lock = _FETCH_LOCKS.setdefault(key, threading.Lock())
        # One fetch per key at a time: threads that waited find the token the first one fetched.
        with fetch_lock:
            if not refresh:
                with _TOKENS_LOCK:
                    cached = _TOKENS.get(key)
                if cached is not None and time.monotonic() < cached.refresh_at:
                    return cached.value
            value, expires_in = self._fetch_token(settings)
            margin = min(TOKEN_REFRESH_MARGIN, expires_in / 10)
            with _TOKENS_LOCK:
                _TOKENS[key] = _CachedToken(value, time.monotonic() + max(0.0, expires_in - margin))
            return value

    def _invalidate_token(self, value: str) -> None:
        """Drop a token the API refused, unless another thread already replaced it."""
        key = _token_key(self.settings)
        with _TOKENS_LOCK:
            cached = _TOKENS.get(key)
            if cached is not None and cached.value == value:
                del _TOKENS[key]

    def _fetch_token(self, settings: CarerixSettings) -> tuple[str, float]:
        # Client credentials in the form body (what Carerix's guide and Keycloak accept); token requests are
        # safe to retry: a second token costs nothing.
        form = {
            "grant_type": "client_credentials",
            "client_id": settings.client_id,
            "client_secret": settings.client_secret,
            "scope": settings.scope,
        }
        log.debug(
            "Fetching a Carerix access token for client %s from %s", settings.client_id, settings.token_url
        )
        response = self._send("POST", settings.token_url, idempotent=True, data=form)
        if response.status_code != 200:
            hint = {
                400: "the identity server refused the request",
                401: "client_id or client_secret is wrong",
                403: "the client may not use the client-credentials grant",
                404: "no such realm at this identity host: check realm, identity_host or auth_url",
            }.get(response.status_code)
            error = api_error(
                response.status_code,
                "POST",
                settings.token_url,
                response.text,
                reason=hint or response.reason,
                secrets=self._secrets(),
            )
            if response.status_code < 500 and not isinstance(error, CarerixAuthError):
                error = CarerixAuthError(
                    error.status_code,
                    "POST",
                    error.url,
                    error.body,
                    reason=error.reason,
                    secrets=self._secrets(),
                )
            raise error
        try:
            payload = response.json()
            value = str(payload["access_token"])
        except (ValueError, KeyError, TypeError):
            raise CarerixAuthError(
                200, "POST", settings.token_url, reason="the answer holds no access_token"
            ) from None
        _mask_secret(value)
        try:
            expires_in = float(payload.get("expires_in") or 300)
        except (TypeError, ValueError):
            expires_in = 300.0
        log.info(
            "Obtained a Carerix access token for client %s (valid %ds)", settings.client_id, int(expires_in)
        )
        return value, expires_in

    # ------------------------------------------------------------------------------------------ API calls

    def _call(
        self,
        method: str,
        path: str,
        *,
        idempotent: bool = True,
        params: dict[str, str] | None = None,
        json: Any = None,
        absolute: bool = False,
    ) -> requests.Response:
        """An authenticated call; a 401 refreshes the token once and repeats the call.

        Repeating after a 401 is safe even for creates: Carerix authenticates before it processes anything.
        ``absolute``: ``path`` is a full URL (the GraphQL endpoint lives beside the Management API).
        """
        url = path if absolute else f"{self.settings.api_url}/{path.lstrip('/')}"
        kwargs: dict[str, Any] = {"auth": CarerixBearerAuth(self)}
        if params:
            kwargs["params"] = params
        if json is not None:
            kwargs["json"] = json
        response = self._send(method, url, idempotent=idempotent, **kwargs)
        if response.status_code == 401:
            sent = str(response.request.headers.get("Authorization") or "").removeprefix("Bearer ")
            log.info("Carerix refused the access token (HTTP 401); fetching a new one and trying once more")
            self._invalidate_token(sent)
            response = self._send(method, url, idempotent=idempotent, **kwargs)
        if response.status_code >= 400:
            raise self._error(response, method, url)
        return response

    def _collection(self, method: str, path: str, kind: str, **kwargs: Any) -> requests.Response:
        """A call on a collection path, trying the other trailing-slash form once on 404/405.

        Safe for creates too: 404 and 405 mean the route did not exist, so nothing was processed.
        """
        slash = self._slash[kind]
        try:
            return self._call(method, path + ("/" if slash else ""), **kwargs)
        except CarerixApiError as exc:
            if exc.status_code not in (404, 405):
                raise
            try:
                response = self._call(method, path + ("" if slash else "/"), **kwargs)
            except CarerixApiError as other:
                # Both forms unknown: the first answer is the honest one (e.g. no such application).
                if other.status_code in (404, 405):
                    raise exc from None
                raise
            self._slash[kind] = not slash
            return response

    @staticmethod
    def _json(response: requests.Response) -> Any:
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise CarerixApiError(
                response.status_code,
                response.request.method or "GET",
                response.url,
                response.text,
                reason="answer is not JSON",
            ) from None

    def _list(self, path: str, kind: str, fields: str) -> list[dict[str, Any]]:
        response = self._collection("GET", path, kind, params={"fields": fields})
        try:
            return _items(self._json(response))
        except ValueError:
            raise CarerixApiError(
                response.status_code, "GET", response.url, response.text, reason="answer is not a list"
            ) from None

    def _created_id(self, response: requests.Response) -> tuple[dict[str, Any], str]:
        body = self._json(response)
        body = body if isinstance(body, dict) else {}
        created = _entry_id(body)
        if created is None and response.headers.get("Location"):
            created = response.headers["Location"].rstrip("/").rsplit("/", 1)[-1]
        if not created:
            raise CarerixApiError(
                response.status_code,
                "POST",
                response.url,
                response.text,
                reason="created, but the answer holds no id",
            )
        return body, created

    # -- applications

    def create_application(self, name: str) -> Application:
        """Create a webhook application. Never retried into a duplicate (see :func:`_should_retry`)."""
        response = self._collection(
            "POST",
            "applications",
            "applications",
            idempotent=False,
            json={"_kind": "Application", "name": name},
        )
        body, created = self._created_id(response)
        return Application.model_validate(_with_id({"_kind": "Application", "name": name, **body}, created))

    def list_applications(self) -> list[Application]:
        """Every application with its name (entries without one are fetched one by one)."""
        applications = []
        for entry in self._list("applications", "applications", APPLICATION_FIELDS):
            app_id = _entry_id(entry)
            if app_id is None:
                continue
            if "name" not in entry:
                applications.append(self.get_application(app_id))
            else:
                applications.append(Application.model_validate(_with_id(entry, app_id)))
        return applications

    def get_application(self, application_id: str) -> Application:
        response = self._call("GET", f"applications/{quote(application_id, safe='')}")
        body = self._json(response) or {}
        return Application.model_validate(_with_id(body, _entry_id(body) or application_id))

    def get_signing_keys(self, application_id: str) -> list[SignatureVerification]:
        """The public key(s) Carerix signs the application's deliveries with (``signatureVerification``).

        Carerix serves one key per application; a list anyway, so an answer carrying several (a rotation in
        progress) loses none. Empty when the application has no key (Carerix's schema says it always has one).
        """
        response = self._call("GET", f"applications/{quote(application_id, safe='')}")
        body = self._json(response) or {}
        found = body.get("signatureVerification") if isinstance(body, dict) else None
        entries = found if isinstance(found, list) else [found]
        keys = [SignatureVerification.model_validate(e) for e in entries if isinstance(e, dict)]
        return [k for k in keys if k.public_key]

    def delete_application(self, application_id: str) -> None:
        self._call("DELETE", f"applications/{quote(application_id, safe='')}")

    # -- delivery log (GraphQL)

    @property
    def graphql_url(self) -> str:
        """Carerix's GraphQL endpoint, on the API host beside ``/webhooks/v1``."""
        return self.settings.api_url[: -len(API_PATH)] + GRAPHQL_PATH

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run a GraphQL query with the connection's token and retry policy; ``data`` or a typed error.

        A query is a read, so it is retried like one. GraphQL reports errors in a 200 answer: any error, also
        beside data (partial data), raises :class:`CarerixGraphQLError` with every message and path, never
        the payload.
        """
        url = self.graphql_url
        response = self._call("POST", url, absolute=True, json={"query": query, "variables": variables or {}})
        body = self._json(response)
        errors = body.get("errors") if isinstance(body, dict) else None
        data = body.get("data") if isinstance(body, dict) else None
        if errors or not isinstance(data, dict):
            raise CarerixGraphQLError(
                url,
                errors if isinstance(errors, list) else [],
                partial=isinstance(data, dict) and any(v is not None for v in data.values()),
                secrets=self._secrets(),
            )
        return data

    def iter_delivery_jobs(
        self, *, since: datetime | None = None, page_size: int = 100
    ) -> Iterator[DeliveryJob]:
        """Carerix's delivery log, newest first: one job per event and webhook, with every attempt.

        Pages through ``webhookDeliveryJobPage`` sorted by creation time, descending, so jobs queued while
        paging push older ones to later pages (seen twice, never skipped). With ``since``, jobs queued before
        it are left out, and paging stops at the first page wholly older than ``since`` (only while the
        answers are in the order asked for: a server that ignores the sort is paged to the end).
        """
        page = 0
        previous: datetime | None = None
        ordered = True
        while True:
            data = self.graphql(
                DELIVERY_JOBS_QUERY,
                {
                    "pageable": {
                        "page": page,
                        "size": page_size,
                        "sort": [{"property": "_createdDateTime", "direction": "DESC"}],
                    }
                },
            )
            result = data.get("webhookDeliveryJobPage") or {}
            items = result.get("items") or []
            older = 0
            for item in items:
                job = DeliveryJob.model_validate(item)
                if job.created is not None:
                    if previous is not None and job.created > previous:
                        ordered = False
                    previous = job.created
                if since is not None and job.created is not None and job.created < since:
                    older += 1
                    continue
                yield job
            total_pages = result.get("totalPages")
            if (
                not items
                or result.get("last") is True
                or (isinstance(total_pages, int) and page + 1 >= total_pages)
                or (since is not None and ordered and older == len(items))
            ):
                return
            page += 1

    # -- records (GraphQL): the batching, paging and error handling live in hooks/carerix_data.py

    def get_entities(
        self,
        entity: str,
        ids: Iterable[str | int],
        fields: Iterable[str] | None = None,
        *,
        deleted: bool = False,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> dict[str, dict[str, Any]]:
        """``{id: record}`` for the ids that exist, in as few requests as the qualifier allows.

        :param entity: as webhooks name it (``cremployee``, ``crvacancy``, ``crjob``, ``crmatch``,
            ``crpublication``, ``crcompany``, ``crcontact``, ``crtodo``; ``cremployee:updated`` works too).
        :param ids: the events' ``data.entityId`` values (the numeric key; duplicates are asked once).
        :param fields: dotted GraphQL paths (``toStatusNode.value``), any case (``touser.lastname``);
            ``None``: the entity's defaults. The ids, ``creationDate``, ``modificationDate`` and ``deleted``
            always come along.
        :param deleted: also records of deleted entities (``norestrict``), with ``deleted: 1``.
        :param batch_size: ids per request (an ``OR`` chain of the key; one page).

        Records hold personal data: keep them out of logs and XCom (docs/data.md). Errors: an unknown entity
        or field, or an id that is not a number, raises ``EntityError`` before any request; GraphQL errors and
        partial data raise :class:`CarerixGraphQLError` naming the entity and ids; a token without the data
        scope raises ``CarerixScopeError`` naming the scope to add.
        """
        from airflow_provider_carerix.hooks.carerix_data import get_entities

        return get_entities(self, entity, ids, fields, deleted=deleted, batch_size=batch_size)

    def iter_entities(
        self,
        entity: str,
        *,
        modified_since: datetime,
        fields: Iterable[str] | None = None,
        deleted: bool = False,
        page_size: int = DEFAULT_BATCH_SIZE,
    ) -> Iterator[dict[str, Any]]:
        """Records changed at or after ``modified_since``, newest ``modificationDate`` first, each once.

        Paged newest first: a record changed while paging moves to the first page (already read), so others
        shift to later pages and may be seen twice (yielded once), never skipped; the changed record itself
        is for the next call. ``deleted=True`` includes deleted records (a deletion is a change too).
        """
        from airflow_provider_carerix.hooks.carerix_data import iter_entities

        return iter_entities(
            self, entity, modified_since=modified_since, fields=fields, deleted=deleted, page_size=page_size
        )

    # -- webhooks

    def _webhooks_path(self, application_id: str) -> str:
        return f"applications/{quote(application_id, safe='')}/webhooks"

    def create_webhook(self, application_id: str, webhook: Webhook | dict[str, Any]) -> Webhook:
        """Create a webhook; returned with its id. Never retried into a duplicate (see :func:`_should_retry`)."""
        model = webhook if isinstance(webhook, Webhook) else Webhook.model_validate(webhook)
        body = model.to_create_body()
        response = self._collection(
            "POST", self._webhooks_path(application_id), "webhooks", idempotent=False, json=body
        )
        answer, created = self._created_id(response)
        return Webhook.model_validate(_with_id({**body, **answer}, created))

    def list_webhooks(self, application_id: str) -> list[Webhook]:
        """Every webhook of an application, complete (entries without url/filters are fetched one by one)."""
        webhooks = []
        for entry in self._list(self._webhooks_path(application_id), "webhooks", WEBHOOK_FIELDS):
            webhook_id = _entry_id(entry)
            if webhook_id is None:
                continue
            if "url" not in entry or "filters" not in entry:
                webhooks.append(self.get_webhook(application_id, webhook_id))
            else:
                webhooks.append(Webhook.model_validate(_with_id(entry, webhook_id)))
        return webhooks

    def get_webhook(self, application_id: str, webhook_id: str) -> Webhook:
        response = self._call("GET", f"{self._webhooks_path(application_id)}/{quote(webhook_id, safe='')}")
        body = self._json(response) or {}
        return Webhook.model_validate(_with_id(body, _entry_id(body) or webhook_id))

    def delete_webhook(self, application_id: str, webhook_id: str) -> None:
        self._call("DELETE", f"{self._webhooks_path(application_id)}/{quote(webhook_id, safe='')}")

    def enable_webhook(self, application_id: str, webhook_id: str) -> None:
        # Setting a state is idempotent, so these POSTs may be retried like reads.
        self._call("POST", f"{self._webhooks_path(application_id)}/{quote(webhook_id, safe='')}/enable")

    def disable_webhook(self, application_id: str, webhook_id: str) -> None:
        self._call("POST", f"{self._webhooks_path(application_id)}/{quote(webhook_id, safe='')}/disable")

    # ------------------------------------------------------------------------------------------ UI

    def test_connection(self) -> tuple[bool, str]:
        """Fetch a fresh token and list applications: proves credentials, realm, scope and API host."""
        try:
            settings = self.settings
            self.get_access_token(refresh=True)
            count = len(self._list("applications", "applications", APPLICATION_FIELDS))
        except CarerixError as exc:
            return False, str(exc)
        except Exception as exc:
            return False, scrub(f"{type(exc).__name__}: {exc}", self._secrets())
        return True, (
            f"Connected to {settings.api_url} as client {settings.client_id}: "
            f"{count} webhook application(s) visible."
        )


__all__ = [
    "DATA_SCOPE",
    "DEFAULT_SCOPE",
    "CarerixBearerAuth",
    "CarerixHook",
    "CarerixNotFoundError",
    "CarerixSettings",
    "clear_token_cache",
    "identity_host_url",
    "resolve_settings",
]
