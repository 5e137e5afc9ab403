"""CarerixHook against the emulator over real HTTP: tokens, retries, robustness, typed errors, no leaked secrets."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests
from airflow.sdk import Connection

from airflow_provider_carerix.definitions.models import Application, Webhook
from airflow_provider_carerix.emulator import CarerixEmulator
from airflow_provider_carerix.exceptions import (
    CarerixApiError,
    CarerixAuthError,
    CarerixConfigError,
    CarerixConnectionError,
    CarerixNotFoundError,
)
from airflow_provider_carerix.hooks import carerix as carerix_module
from airflow_provider_carerix.hooks.carerix import CarerixHook, resolve_settings

WEBHOOK = {
    "url": "https://receiver.example.com/events",
    "_kind": "Webhook",
    "filters": [{"eventType": "crjob:updated", "condition": "data.tostatusnode eq '1234'"}],
    "customHeaders": [{"name": "X-Carerix-Secret", "value": "header-secret-value"}],
}


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The retry policy's waits, recorded instead of slept (so retry tests are fast and exact)."""
    recorded: list[float] = []
    monkeypatch.setattr(carerix_module, "_sleep", recorded.append)
    return recorded


def make_hook(conn_id: str = "carerix_default", **kwargs: Any) -> CarerixHook:
    kwargs.setdefault("retry_backoff", 0.001)
    kwargs.setdefault("timeout", 5.0)
    return CarerixHook(carerix_conn_id=conn_id, **kwargs)


def set_conn(monkeypatch: pytest.MonkeyPatch, conn_id: str, **conn: Any) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "carerix", **conn}))


def statuses(emulator: CarerixEmulator, path_contains: str = "/webhooks/v1") -> list[tuple[str, int]]:
    return [(r.method, r.status) for r in emulator.requests if path_contains in r.path]


# ------------------------------------------------------------------------------------------ connection


@pytest.mark.parametrize(
    ("identity_host", "token_url"),
    [
        (None, "https://id.carerix.io/auth/realms/csmdemo/protocol/openid-connect/token"),
        ("id", "https://id.carerix.io/auth/realms/csmdemo/protocol/openid-connect/token"),
        ("id-2", "https://id-2.carerix.io/auth/realms/csmdemo/protocol/openid-connect/token"),
        ("id-3.carerix.io", "https://id-3.carerix.io/auth/realms/csmdemo/protocol/openid-connect/token"),
        (
            "https://id-4.carerix.io/",
            "https://id-4.carerix.io/auth/realms/csmdemo/protocol/openid-connect/token",
        ),
        (
            "https://id-s1.carerix.io/auth",
            "https://id-s1.carerix.io/auth/realms/csmdemo/protocol/openid-connect/token",
        ),
        ("http://127.0.0.1:8089", "http://127.0.0.1:8089/auth/realms/csmdemo/protocol/openid-connect/token"),
    ],
)
def test_identity_host_variants_give_the_guides_token_url(identity_host: str | None, token_url: str) -> None:
    extra = {"client_id": "urn:acme/app", "client_secret": "s3cret-value", "realm": "csmdemo"}
    if identity_host is not None:
        extra["identity_host"] = identity_host
    settings = resolve_settings(Connection(conn_id="c", conn_type="carerix", extra=json.dumps(extra)))
    assert settings.token_url == token_url
    assert settings.scope == "urn:cx/webhooks:data:manage"


@pytest.mark.parametrize(
    ("host", "port", "api_url"),
    [
        (None, None, "https://api.carerix.io/webhooks/v1"),
        ("api.carerix.io", None, "https://api.carerix.io/webhooks/v1"),
        ("https://api.carerix.io/", None, "https://api.carerix.io/webhooks/v1"),
        ("https://api.carerix.io/webhooks/v1/", None, "https://api.carerix.io/webhooks/v1"),
        ("http://localhost:8089", None, "http://localhost:8089/webhooks/v1"),
        ("localhost", 8443, "https://localhost:8443/webhooks/v1"),
    ],
)
def test_host_forms(host: str | None, port: int | None, api_url: str) -> None:
    conn = Connection(
        conn_id="c",
        conn_type="carerix",
        host=host,
        port=port,
        extra=json.dumps({"client_id": "a", "client_secret": "bbbbbb", "realm": "r"}),
    )
    assert resolve_settings(conn).api_url == api_url


def test_host_with_a_foreign_scheme_is_a_config_error() -> None:
    conn = Connection(
        conn_id="c",
        conn_type="carerix",
        host="ftp://api.carerix.io",
        extra=json.dumps({"client_id": "a", "client_secret": "bbbbbb", "realm": "r"}),
    )
    with pytest.raises(CarerixConfigError) as info:
        resolve_settings(conn)
    assert info.value.field == "host"


@pytest.mark.parametrize("missing", ["client_id", "client_secret", "realm"])
def test_missing_field_is_named_before_any_request(
    emulator: CarerixEmulator, monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    extra = {
        "client_id": "demo-client",
        "client_secret": "demo-secret",
        "realm": "demo",
        "identity_host": emulator.url,
    }
    del extra[missing]
    set_conn(monkeypatch, "carerix_partial", host=emulator.url, extra=extra)
    hook = make_hook("carerix_partial")
    with pytest.raises(CarerixConfigError) as info:
        hook.list_applications()
    assert info.value.field == missing
    assert missing in str(info.value)
    assert "demo-secret" not in str(info.value)
    assert emulator.requests == []
    ok, message = make_hook("carerix_partial").test_connection()
    assert not ok and missing in message
    assert emulator.requests == []


def test_auth_url_wins_over_realm_and_identity_host(
    emulator: CarerixEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_conn(
        monkeypatch,
        "carerix_auth_url",
        host=emulator.url,
        extra={
            "client_id": "demo-client",
            "client_secret": "demo-secret",
            "realm": "no-such-realm",
            "identity_host": "http://127.0.0.1:9",
            "auth_url": emulator.token_url,
        },
    )
    hook = make_hook("carerix_auth_url")
    assert hook.settings.token_url == emulator.token_url
    assert hook.list_applications() == []
    assert emulator.token_requests == 1


def test_login_and_password_stand_in_for_client_id_and_secret(
    emulator: CarerixEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_CARERIX_URI", emulator.connection_uri())
    hook = make_hook("carerix_uri")
    assert hook.connection.login == "demo-client"
    assert "client_id" not in hook.connection.extra_dejson
    created = hook.create_application("from-uri")
    assert [a.name for a in hook.list_applications()] == ["from-uri"]
    assert created.id == emulator.applications()[0]["_id"]


# ------------------------------------------------------------------------------------------ tokens


def test_many_calls_cost_one_token_request(emulator: CarerixEmulator) -> None:
    app = make_hook().create_application("one-token")
    for _ in range(3):
        hook = make_hook()  # a new hook per task run shares the process-wide token
        hook.list_applications()
        hook.create_webhook(str(app.id), WEBHOOK)
        hook.list_webhooks(str(app.id))
    assert emulator.count(path_contains="/webhooks/v1") == 10
    assert emulator.token_requests == 1


def test_concurrent_hooks_fetch_one_token(emulator: CarerixEmulator) -> None:
    errors: list[BaseException] = []

    def work() -> None:
        try:
            make_hook().list_applications()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert emulator.count(method="GET", path_contains="/applications") == 8
    assert emulator.token_requests == 1


def test_token_is_renewed_before_it_expires(emulator: CarerixEmulator, clock: _Clock) -> None:
    hook = make_hook()
    hook.list_applications()
    # Past the lifetime: the cached token is stale on both sides, the hook's clock and Carerix's (which forgets
    # it). Moved by hand: a real 1 s lifetime could also run out during the first call on a loaded machine.
    clock.now += emulator.token_lifetime + 1
    emulator.expire_tokens()
    hook.list_applications()
    assert emulator.token_requests == 2
    # Renewed up front, so the API never saw the expired token.
    assert statuses(emulator) == [("GET", 200), ("GET", 200)]


class _Clock:
    """The hook module's clock, moved by hand: token freshness without sleeping past anything."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.wall = 1_700_000_000.0  # 2023-11-14T22:13:20Z, for Retry-After dates

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.wall

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    fake = _Clock()
    monkeypatch.setattr(carerix_module, "time", fake)  # only the hook's view of time; the emulator's is real
    return fake


@pytest.mark.parametrize(
    ("lifetime", "renew_after"),
    [
        (300, 270.0),  # the 30 s margin
        (120, 108.0),  # a tenth of the lifetime when that is shorter than 30 s
        (20, 18.0),
        (1, 0.9),  # a lifetime shorter than a second: renewed at 0.9 s, not at some minimum
    ],
)
def test_token_is_renewed_a_margin_before_it_expires(
    emulator_factory: Callable[..., CarerixEmulator], clock: _Clock, lifetime: int, renew_after: float
) -> None:
    emulator = emulator_factory(token_lifetime=lifetime)
    hook = make_hook()
    hook.list_applications()
    assert emulator.token_requests == 1
    fetched_at = clock.now
    clock.now = fetched_at + renew_after / 2  # still inside the margin's safe side: the cached token is used
    hook.list_applications()
    make_hook().list_applications()  # another hook in the same process shares it
    assert emulator.token_requests == 1
    clock.now = fetched_at + renew_after  # exactly the refresh point, before Carerix's expiry: renewed
    hook.list_applications()
    assert emulator.token_requests == 2
    hook.list_applications()  # and the new token is cached for its own lifetime
    assert emulator.token_requests == 2
    assert statuses(emulator) == [("GET", 200)] * 5


def test_refresh_true_fetches_even_with_a_fresh_token(emulator: CarerixEmulator, clock: _Clock) -> None:
    hook = make_hook()
    first = hook.get_access_token()
    assert hook.get_access_token() == first
    second = hook.get_access_token(refresh=True)
    assert second != first and emulator.token_requests == 2
    assert hook.get_access_token() == second  # the refreshed token replaced the cached one


def test_401_refreshes_the_token_once_and_repeats_the_call(emulator: CarerixEmulator) -> None:
    hook = make_hook()
    app = hook.create_application("a")
    emulator.expire_tokens()  # the server forgets the token the hook still considers fresh
    assert hook.get_application(str(app.id)).name == "a"
    assert statuses(emulator) == [("POST", 201), ("GET", 401), ("GET", 200)]
    assert emulator.token_requests == 2


def test_a_persistent_401_is_an_auth_error_after_one_refresh(
    emulator: CarerixEmulator, sleeps: list[float]
) -> None:
    emulator.inject_fault(status=401, times=10, path_contains="/webhooks/v1")
    with pytest.raises(CarerixAuthError) as info:
        make_hook().list_applications()
    assert info.value.status_code == 401
    assert statuses(emulator) == [("GET", 401), ("GET", 401)]
    assert emulator.token_requests == 2
    assert sleeps == []  # 401 is not a retryable failure


def test_wrong_secret_is_an_auth_error_without_the_secret(
    emulator: CarerixEmulator, monkeypatch: pytest.MonkeyPatch, sleeps: list[float]
) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_CARERIX_DEFAULT", emulator.connection_json(client_secret="wrong-secret-42")
    )
    with pytest.raises(CarerixAuthError) as info:
        make_hook().list_applications()
    assert info.value.status_code == 401
    assert "invalid_client" in str(info.value)
    assert "wrong-secret-42" not in str(info.value)
    assert emulator.token_requests == 1 and sleeps == []
    assert statuses(emulator) == []  # the API itself was never called


def test_unknown_realm_is_an_auth_error_that_says_so(
    emulator: CarerixEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = json.loads(emulator.connection_json())
    payload["extra"]["realm"] = "typo"
    monkeypatch.setenv("AIRFLOW_CONN_CARERIX_DEFAULT", json.dumps(payload))
    with pytest.raises(CarerixAuthError) as info:
        make_hook().list_applications()
    assert info.value.status_code == 404
    assert "realm" in str(info.value)


@pytest.mark.parametrize(
    ("status", "hint"),
    [
        (400, "the identity server refused the request"),
        (401, "client_id or client_secret is wrong"),
        (403, "the client may not use the client-credentials grant"),
        (404, "no such realm at this identity host: check realm, identity_host or auth_url"),
        (418, "I'm a Teapot"),  # no hint of ours: the HTTP reason, still an auth error
    ],
)
def test_a_refused_token_request_is_an_auth_error_with_a_hint(
    emulator: CarerixEmulator, sleeps: list[float], status: int, hint: str
) -> None:
    """What a data engineer reads when the connection is wrong: the status and what to check, at once."""
    emulator.inject_fault(status=status, times=10, path_contains="openid-connect/token")
    with pytest.raises(CarerixAuthError) as info:
        make_hook().get_access_token()
    assert (info.value.status_code, info.value.reason) == (status, hint)
    assert f"({hint})" in str(info.value) and '"error": "injected fault"' in str(
        info.value
    )  # the server's body
    assert info.value.method == "POST" and info.value.url.endswith("/protocol/openid-connect/token")
    assert emulator.token_requests == 1 and sleeps == []


def test_an_identity_server_failing_is_retried_then_an_api_error_not_an_auth_error(
    emulator: CarerixEmulator, sleeps: list[float]
) -> None:
    """A 5xx from the identity server is an outage, not wrong credentials: retried (a token request is safe to
    repeat, even for a 500), then not a CarerixAuthError (which tells the user to fix the connection)."""
    emulator.inject_fault(status=500, times=100, path_contains="openid-connect/token")
    with pytest.raises(CarerixApiError) as info:
        make_hook(retry_attempts=3).get_access_token()
    assert not isinstance(info.value, CarerixAuthError)
    assert info.value.status_code == 500 and len(sleeps) == 2 and emulator.token_requests == 3
    emulator.clear_faults()
    assert make_hook().get_access_token() in emulator.issued_tokens


@pytest.mark.parametrize("status", [400, 401, 500])
def test_an_identity_server_echoing_the_secret_never_puts_it_in_the_error(
    emulator: CarerixEmulator, sleeps: list[float], status: int
) -> None:
    """Some identity servers and proxies echo the request form in their error page: the client secret must
    not reach the exception (task logs, the UI) in either kind of error."""
    echo = {"error": "invalid_client", "error_description": "no client with the secret demo-secret"}
    emulator.inject_fault(status=status, times=10, path_contains="openid-connect/token", body=echo)
    with pytest.raises(CarerixApiError) as info:
        make_hook(retry_attempts=1).get_access_token()
    assert info.value.status_code == status and "invalid_client" in str(info.value)
    assert "demo-secret" not in str(info.value) and "demo-secret" not in repr(info.value.body)


def test_a_token_answer_without_a_token_is_an_auth_error(
    emulator: CarerixEmulator, sleeps: list[float]
) -> None:
    """A 200 from the identity server that holds no access_token (a proxy's page, a wrong URL): an auth error
    naming the token URL, not a KeyError."""
    emulator.inject_fault(status=200, times=1, path_contains="openid-connect/token")
    hook = make_hook()
    with pytest.raises(CarerixAuthError) as info:
        hook.get_access_token()
    error = info.value
    assert (error.status_code, error.method, error.url) == (200, "POST", hook.settings.token_url)
    assert error.reason == "the answer holds no access_token" and sleeps == []


def test_a_token_without_a_lifetime_is_kept_for_five_minutes(
    emulator: CarerixEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    emulator.token_lifetime = 0  # "expires_in": 0, as if absent
    caplog.set_level(logging.INFO, logger="airflow_provider_carerix.hooks.carerix")
    make_hook().get_access_token()
    assert [r.getMessage() for r in caplog.records if r.name == "airflow_provider_carerix.hooks.carerix"] == [
        "Obtained a Carerix access token for client demo-client (valid 300s)"
    ]


def test_fetching_a_token_is_logged_with_the_client_and_lifetime_never_the_secret(
    emulator: CarerixEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="airflow_provider_carerix.hooks.carerix")
    hook = make_hook()
    token = hook.get_access_token()
    settings = hook.settings
    logs = [
        (r.levelname.lower(), r.getMessage())
        for r in caplog.records
        if r.name == "airflow_provider_carerix.hooks.carerix"
    ]
    assert logs == [
        (
            "debug",
            f"Fetching a Carerix access token for client {settings.client_id} from {settings.token_url}",
        ),
        ("info", f"Obtained a Carerix access token for client {settings.client_id} (valid 300s)"),
    ]
    assert token not in caplog.text and settings.client_secret not in caplog.text


def test_token_without_the_management_scope_gets_403(
    emulator: CarerixEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = json.loads(emulator.connection_json())
    payload["extra"]["scope"] = "openid"
    monkeypatch.setenv("AIRFLOW_CONN_CARERIX_DEFAULT", json.dumps(payload))
    with pytest.raises(CarerixAuthError) as info:
        make_hook().list_applications()
    assert info.value.status_code == 403
    assert "urn:cx/webhooks:data:manage" in str(info.value)


def test_a_refused_token_does_not_evict_the_newer_one_another_call_fetched(emulator: CarerixEmulator) -> None:
    # A 401 on a call that carried an old token must not throw away the token a concurrent call already
    # renewed: every thread would otherwise fetch its own.
    hook = make_hook()
    old = hook.get_access_token()
    new = hook.get_access_token(refresh=True)
    hook._invalidate_token(old)
    assert hook.get_access_token() == new and emulator.token_requests == 2
    hook._invalidate_token(new)  # the cached token itself refused: dropped, the next call fetches one
    assert hook.get_access_token() not in (old, new) and emulator.token_requests == 3
    carerix_module.clear_token_cache()
    hook._invalidate_token(new)  # nothing cached: nothing to drop, no error
    assert emulator.token_requests == 3


def test_the_call_repeated_after_a_401_keeps_the_retry_policy(
    emulator: CarerixEmulator, sleeps: list[float]
) -> None:
    emulator.inject_fault(status=401, times=1, method="GET")
    emulator.inject_fault(status=500, times=1, method="GET")  # a read: retried, also after the refresh
    assert make_hook().list_applications() == []
    assert statuses(emulator) == [("GET", 401), ("GET", 500), ("GET", 200)]
    assert emulator.token_requests == 2 and len(sleeps) == 1


# ------------------------------------------------------------------------------------------ retries


def test_429_is_retried_after_retry_after(emulator: CarerixEmulator, sleeps: list[float]) -> None:
    emulator.inject_fault(status=429, times=2, method="GET", retry_after=7)
    assert make_hook().list_applications() == []
    assert statuses(emulator) == [("GET", 429), ("GET", 429), ("GET", 200)]
    assert sleeps == [7.0, 7.0]


def test_retry_after_is_capped(emulator: CarerixEmulator, sleeps: list[float]) -> None:
    emulator.inject_fault(status=429, times=1, method="GET", retry_after=3600)
    make_hook(retry_max_wait=2.5).list_applications()
    assert sleeps == [2.5]


def test_5xx_is_retried_with_growing_backoff(emulator: CarerixEmulator, sleeps: list[float]) -> None:
    emulator.inject_fault(status=500, times=1, method="GET")
    emulator.inject_fault(status=502, times=1, method="GET")
    emulator.inject_fault(status=504, times=1, method="GET")
    assert make_hook(retry_backoff=0.01).list_applications() == []
    assert statuses(emulator) == [("GET", 500), ("GET", 502), ("GET", 504), ("GET", 200)]
    assert len(sleeps) == 3 and sleeps[0] < sleeps[1] < sleeps[2]


def test_attempts_are_bounded(emulator: CarerixEmulator, sleeps: list[float]) -> None:
    emulator.inject_fault(status=503, times=100, method="GET")
    with pytest.raises(CarerixApiError) as info:
        make_hook(retry_attempts=3).list_applications()
    assert info.value.status_code == 503
    assert emulator.count(method="GET") == 3
    assert len(sleeps) == 2


def test_slow_read_is_retried(emulator: CarerixEmulator, sleeps: list[float]) -> None:
    # The retried call must answer within the timeout: 2 s for a local call, not 0.3 s (a loaded machine can
    # take that long); the slow answer takes three times as long.
    emulator.inject_fault(status=None, times=1, method="GET", delay=6.0)
    assert make_hook(timeout=2.0).list_applications() == []
    assert len(sleeps) == 1


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [
        ("Tue, 14 Nov 2023 22:13:40 GMT", 20.0),  # an HTTP date 20 s after the (fixed) clock
        ("Tue, 14 Nov 2023 22:13:00 GMT", 0.0),  # a date in the past: retry at once
        ("-5", 0.0),
        ("0", 0.0),
        ("2.5", 2.5),
    ],
)
def test_retry_after_as_seconds_or_http_date(
    emulator: CarerixEmulator, sleeps: list[float], clock: _Clock, retry_after: str, expected: float
) -> None:
    emulator.inject_fault(status=503, times=1, method="GET", retry_after=retry_after)
    assert make_hook().list_applications() == []
    assert sleeps == [expected]


def test_unreadable_retry_after_falls_back_to_the_backoff(
    emulator: CarerixEmulator, sleeps: list[float]
) -> None:
    emulator.inject_fault(status=429, times=1, method="GET", retry_after="soon")
    assert make_hook(retry_backoff=2.0).list_applications() == []
    [wait] = sleeps
    assert 2.0 <= wait <= 2.2


def test_backoff_doubles_from_the_first_wait_with_at_most_a_tenth_of_jitter_and_is_capped(
    emulator: CarerixEmulator, sleeps: list[float]
) -> None:
    emulator.inject_fault(status=500, times=4, method="GET")
    assert make_hook(retry_backoff=1.0, retry_max_wait=5.0).list_applications() == []
    assert len(sleeps) == 4
    for wait, base in zip(sleeps[:3], (1.0, 2.0, 4.0), strict=True):
        assert base <= wait <= base * 1.1
    assert sleeps[3] == 5.0  # 8 s and more are capped


def test_a_501_on_a_create_is_not_retried(emulator: CarerixEmulator, sleeps: list[float]) -> None:
    hook = make_hook()
    app = hook.create_application("a")
    emulator.inject_fault(status=501, times=1, method="POST", path_contains="/webhooks")
    with pytest.raises(CarerixApiError) as info:
        hook.create_webhook(str(app.id), WEBHOOK)
    assert info.value.status_code == 501 and sleeps == []


def _wait_for(predicate: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


@pytest.mark.parametrize("status", [500, 502, 504])
def test_create_is_not_retried_into_a_duplicate(
    emulator: CarerixEmulator, sleeps: list[float], status: int
) -> None:
    # Processed, then the answer is an error: what a gateway error in front of a working Carerix looks like.
    emulator.inject_fault(status=status, method="POST", path_contains="/applications", processed=True)
    with pytest.raises(CarerixApiError) as info:
        make_hook().create_application("once")
    assert info.value.status_code == status
    assert emulator.count(method="POST", path_contains="/applications") == 1
    assert [a["name"] for a in emulator.applications()] == ["once"]
    assert sleeps == []


def test_create_is_not_retried_after_a_read_timeout(emulator: CarerixEmulator, sleeps: list[float]) -> None:
    emulator.inject_fault(status=None, method="POST", path_contains="/applications", delay=1.0)
    with pytest.raises(CarerixConnectionError) as info:
        make_hook(timeout=0.3).create_application("slow")
    assert "ReadTimeout: " in str(info.value)  # says what went wrong
    _wait_for(lambda: emulator.count(method="POST", path_contains="/applications") >= 1)
    assert sleeps == []
    assert emulator.count(method="POST", path_contains="/applications") == 1
    assert [a["name"] for a in emulator.applications()] == ["slow"]


@pytest.mark.parametrize("status", [429, 503])
def test_create_is_retried_when_the_answer_means_not_processed(
    emulator: CarerixEmulator, sleeps: list[float], status: int
) -> None:
    emulator.inject_fault(status=status, method="POST", path_contains="/webhooks", retry_after=1)
    hook = make_hook()
    app = hook.create_application("a")
    webhook = hook.create_webhook(str(app.id), WEBHOOK)
    assert webhook.id and webhook.url == WEBHOOK["url"]
    assert len(emulator.webhooks(str(app.id))) == 1
    assert sleeps == [1.0]


def test_create_is_retried_when_the_connection_was_never_opened(
    emulator: CarerixEmulator, monkeypatch: pytest.MonkeyPatch, sleeps: list[float]
) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    set_conn(
        monkeypatch,
        "carerix_dead_api",
        host=dead,
        extra={"client_id": "demo-client", "client_secret": "demo-secret", "auth_url": emulator.token_url},
    )
    with pytest.raises(CarerixConnectionError) as info:
        make_hook("carerix_dead_api", retry_attempts=3).create_application("never-sent")
    assert info.value.status_code is None
    assert len(sleeps) == 2  # refused connections cannot have created anything, so they were retried


def test_a_connection_error_without_details_is_not_taken_for_an_unsent_request() -> None:
    # Only a connection error that proves the request never left makes a create safe to repeat.
    assert carerix_module._should_retry(requests.ConnectionError(), idempotent=False) is False
    assert carerix_module._should_retry(requests.ConnectionError(), idempotent=True) is True


def test_a_400_is_an_api_error_at_once(emulator: CarerixEmulator, sleeps: list[float]) -> None:
    hook = make_hook()
    app = hook.create_application("kept")
    emulator.inject_fault(status=400, times=1, method="DELETE")  # a call whose answer has no body to read
    with pytest.raises(CarerixApiError) as info:
        hook.delete_application(str(app.id))
    assert info.value.status_code == 400 and sleeps == []
    assert statuses(emulator) == [("POST", 201), ("DELETE", 400)]
    assert [a["name"] for a in emulator.applications()] == ["kept"]


# ------------------------------------------------------------------------------------------ API shapes


def test_full_round_trip_returns_models(emulator: CarerixEmulator) -> None:
    hook = make_hook()
    app = hook.create_application("round-trip")
    assert isinstance(app, Application) and app.id and app.name == "round-trip"
    created = hook.create_webhook(str(app.id), Webhook.model_validate(WEBHOOK))
    assert isinstance(created, Webhook) and created.id
    assert created.custom_headers[0].value == "header-secret-value"
    [listed] = hook.list_webhooks(str(app.id))
    assert listed.id == created.id and listed.status == "enabled"
    hook.disable_webhook(str(app.id), str(created.id))
    assert hook.get_webhook(str(app.id), str(created.id)).status == "disabled"
    hook.enable_webhook(str(app.id), str(created.id))
    assert emulator.webhooks(str(app.id))[0]["status"] == "enabled"
    hook.delete_webhook(str(app.id), str(created.id))
    assert hook.list_webhooks(str(app.id)) == []
    hook.delete_application(str(app.id))
    assert hook.list_applications() == []


def test_404_is_not_found(emulator: CarerixEmulator, sleeps: list[float]) -> None:
    hook = make_hook()
    with pytest.raises(CarerixNotFoundError) as info:
        hook.get_application("no-such-application")
    assert info.value.status_code == 404
    assert info.value.method == "GET"
    assert "no-such-application" in info.value.url
    app = hook.create_application("a")
    with pytest.raises(CarerixNotFoundError):
        hook.delete_webhook(str(app.id), "no-such-webhook")
    assert sleeps == []


def test_full_lists_cost_one_request(emulator: CarerixEmulator) -> None:
    hook = make_hook()
    app = hook.create_application("a")
    for i in range(3):
        hook.create_webhook(str(app.id), {**WEBHOOK, "url": f"https://r.example.com/{i}"})
    emulator.reset_log()
    webhooks = hook.list_webhooks(str(app.id))
    assert sorted(w.url for w in webhooks) == [f"https://r.example.com/{i}" for i in range(3)]
    assert emulator.count(method="GET") == 1
    assert "fields=" in emulator.requests[0].query


def test_slim_lists_fall_back_to_fetching_each(emulator_factory: Callable[..., CarerixEmulator]) -> None:
    emulator = emulator_factory(slim=True)
    hook = make_hook()
    app = hook.create_application("slim-app")
    for i in range(3):
        hook.create_webhook(str(app.id), {**WEBHOOK, "url": f"https://r.example.com/{i}"})
    emulator.reset_log()
    webhooks = hook.list_webhooks(str(app.id))
    assert sorted(w.url for w in webhooks) == [f"https://r.example.com/{i}" for i in range(3)]
    assert all(w.filters and w.custom_headers and w.status == "enabled" for w in webhooks)
    assert emulator.count(method="GET") == 4  # the list, then each webhook
    assert [a.name for a in hook.list_applications()] == ["slim-app"]


def test_items_wrapped_lists_and_plain_id(emulator_factory: Callable[..., CarerixEmulator]) -> None:
    emulator = emulator_factory(list_shape="items", id_key="id")
    hook = make_hook()
    app = hook.create_application("wrapped")
    webhook = hook.create_webhook(str(app.id), WEBHOOK)
    assert app.id == emulator.applications()[0]["_id"]
    assert webhook.id == emulator.webhooks(str(app.id))[0]["_id"]
    [listed_app] = hook.list_applications()
    [listed] = hook.list_webhooks(str(app.id))
    assert (listed_app.id, listed_app.name) == (app.id, "wrapped")
    assert listed.id == webhook.id and listed.url == WEBHOOK["url"]
    assert "id" not in (listed.model_extra or {})
    assert hook.get_webhook(str(app.id), str(webhook.id)).id == webhook.id


@pytest.mark.parametrize("trailing_slash", ["with", "without"])
def test_collection_paths_with_or_without_trailing_slash(
    emulator_factory: Callable[..., CarerixEmulator], trailing_slash: str
) -> None:
    emulator = emulator_factory(trailing_slash=trailing_slash)
    hook = make_hook()
    app = hook.create_application("slashes")
    hook.create_webhook(str(app.id), WEBHOOK)
    assert [a.name for a in hook.list_applications()] == ["slashes"]
    assert len(hook.list_webhooks(str(app.id))) == 1
    assert len(emulator.applications()) == 1 and len(emulator.webhooks(str(app.id))) == 1


# ------------------------------------------------------------------------------------------ test_connection


def test_test_connection_reports_success(emulator: CarerixEmulator) -> None:
    emulator.add_application("existing")
    ok, message = make_hook().test_connection()
    assert ok, message
    assert "1 webhook application" in message
    assert "demo-secret" not in message


def test_test_connection_fetches_a_fresh_token(
    emulator: CarerixEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_hook().list_applications()
    ok, _ = make_hook().test_connection()
    assert ok and emulator.token_requests == 2


def test_test_connection_reports_failure_without_secrets(
    emulator: CarerixEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_CARERIX_DEFAULT", emulator.connection_json(client_secret="not-the-secret")
    )
    ok, message = make_hook().test_connection()
    assert not ok
    assert "401" in message and "not-the-secret" not in message


# ------------------------------------------------------------------------------------------ secrets


def test_no_secret_or_token_in_logs_or_errors(
    emulator: CarerixEmulator,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    sleeps: list[float],
) -> None:
    caplog.set_level(logging.DEBUG)  # the hook's module logger, requests/urllib3, the emulator
    hook = make_hook()
    app = hook.create_application("a")
    hook.create_webhook(str(app.id), WEBHOOK)
    emulator.expire_tokens()
    hook.list_webhooks(str(app.id))
    emulator.inject_fault(status=500, times=10, method="GET")
    errors: list[str] = []
    with pytest.raises(CarerixApiError) as info:
        hook.list_applications()
    errors.append(str(info.value))
    monkeypatch.setenv(
        "AIRFLOW_CONN_CARERIX_DEFAULT", emulator.connection_json(client_secret="other-secret-77")
    )
    with pytest.raises(CarerixAuthError) as auth_info:
        make_hook().get_access_token()
    errors.append(str(auth_info.value))

    hook_text = "\n".join(
        r.getMessage() for r in caplog.records if r.name == "airflow_provider_carerix.hooks.carerix"
    )
    text = caplog.text
    assert "Obtained a Carerix access token" in hook_text  # the hook's own logs were captured
    assert "retrying" in hook_text
    assert "Carerix refused the access token (HTTP 401); fetching a new one" in hook_text  # says why
    assert "openid-connect/token" in caplog.text
    tokens = emulator.issued_tokens
    assert len(tokens) == 2
    for secret in ["demo-secret", "other-secret-77", "header-secret-value", *tokens]:
        assert secret not in text
        for error in errors:
            assert secret not in error


def test_client_secret_and_tokens_are_registered_with_the_masker(
    emulator: CarerixEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    masked: list[str | None] = []
    monkeypatch.setattr(carerix_module, "_mask_secret", masked.append)
    token = make_hook().get_access_token()
    assert "demo-secret" in masked
    assert token in masked and token in emulator.issued_tokens


def test_webhooks_of_a_missing_application_are_not_found(emulator: CarerixEmulator) -> None:
    hook = make_hook()
    with pytest.raises(CarerixNotFoundError) as info:
        hook.list_webhooks("no-such-application")
    assert "no-such-application" in info.value.url
    with pytest.raises(CarerixNotFoundError):
        hook.create_webhook("no-such-application", WEBHOOK)
    assert emulator.webhooks("no-such-application") == []


def test_graphql_goes_to_the_endpoint_beside_the_management_api(emulator: CarerixEmulator) -> None:
    hook = make_hook()
    data = hook.graphql("{ webhookDeliveryJobPage { totalPages } }")
    assert isinstance(data["webhookDeliveryJobPage"], dict)
    [graphql] = [r for r in emulator.requests if "graphql" in r.path]
    assert (graphql.method, graphql.path, graphql.status) == ("POST", carerix_module.GRAPHQL_PATH, 200)
