"""The Carerix page: its queries on SQLite and PostgreSQL, and the page in a real Airflow API server and browser.

The browser test logs in to a real ``airflow api-server`` (simple auth manager, a known password), opens the
Carerix entry of Airflow's navigation (``/plugin/carerix``, which embeds ``/carerix/ui/``) in headless
Chromium, and checks what a person would see. The screenshot is kept in ``.artifacts/`` (or
``$CARERIX_TEST_ARTIFACTS``). Chromium and its driver come from Debian's packages: installed by the test when
missing and possible (root with apt-get, said on the terminal when it happens), skipped otherwise outside CI,
a failure under ``CI=true``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from airflow_provider_carerix.definitions.models import EventPayload
from airflow_provider_carerix.store import EventStore
from airflow_provider_carerix.store import schema as store_module
from airflow_provider_carerix.ui import sections
from airflow_provider_carerix.ui.queries import EventBrowser, EventQuery
from tests.fixtures.airflow_stack import ROOT, AirflowStack, wait_for
from tests.guide import guide_event

PASSWORD = "carerix-ui-test-pw"
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# What the browser test installs with apt-get when they are missing and it may (README.md says so too).
CHROMIUM_PACKAGES = ("chromium", "chromium-driver")


def fill(store: EventStore, count: int = 30) -> list[dict[str, Any]]:
    """``count`` events: two thirds ``cremployee:updated`` (entities 1000..), one third ``crmatch:created``."""
    sent = []
    for i in range(count):
        event = guide_event(entity_id=1000 + i)
        if i % 3 == 2:
            event["type"] = "crmatch:created"
        raw = json.dumps(event)
        store.insert(raw, EventPayload.model_validate_json(raw))
        sent.append(event)
    return sent


@pytest.fixture(params=["sqlite", "postgresql"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EventStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'events.db'}"
    else:
        url = request.getfixturevalue("postgres_database")
    store = EventStore(url)
    try:
        yield store
    finally:
        store.close()


# -- queries, on both backends ---------------------------------------------------------------------------------


def test_events_are_paginated_newest_first_with_a_keyset(any_store: EventStore) -> None:
    sent = fill(any_store, 30)
    browser = EventBrowser(any_store)
    first = browser.events(EventQuery(limit=12))
    second = browser.events(EventQuery(limit=12, before=first["next_before"]))
    third = browser.events(EventQuery(limit=12, before=second["next_before"]))
    seen = [e["event_id"] for page in (first, second, third) for e in page["items"]]
    assert seen == [e["id"] for e in reversed(sent)]  # every event once, newest first
    assert third["next_before"] is None  # the last page says so
    assert "payload" not in first["items"][0]  # payloads only on demand


def test_filters_by_type_entity_and_time(any_store: EventStore) -> None:
    sent = fill(any_store, 30)
    browser = EventBrowser(any_store)
    matches = browser.events(EventQuery(event_type="CRMATCH:created", limit=200))["items"]
    assert [e["event_id"] for e in matches] == [
        e["id"] for e in reversed(sent) if e["type"] == "crmatch:created"
    ]
    one = browser.events(EventQuery(entity_id="1007"))["items"]
    assert [e["entity_id"] for e in one] == ["1007"]
    now = datetime.now(timezone.utc)
    assert len(browser.events(EventQuery(since=now - timedelta(minutes=5), limit=200))["items"]) == 30
    assert browser.events(EventQuery(since=now + timedelta(minutes=5)))["items"] == []
    assert browser.events(EventQuery(until=now - timedelta(minutes=5)))["items"] == []
    assert browser.event_types() == ["cremployee:updated", "crmatch:created"]


def test_payload_on_demand_is_what_carerix_sent(any_store: EventStore) -> None:
    sent = fill(any_store, 3)
    browser = EventBrowser(any_store)
    newest = browser.events(EventQuery(limit=1))["items"][0]
    assert browser.event(newest["sequence"])["payload"] == sent[-1]
    assert browser.event(newest["sequence"] + 100) is None


def test_chart_counts_every_event_in_its_minute_by_type(any_store: EventStore) -> None:
    fill(any_store, 30)
    spread = datetime.now(timezone.utc).replace(second=30, microsecond=0)
    with any_store.engine.begin() as conn:  # move ten events into other minutes, two into the far past
        for minutes_ago, sequence in [(1, 1), (1, 2), (7, 3), (60, 4), (600, 5), (23 * 60, 6), (25 * 60, 7)]:
            conn.execute(
                sa.update(store_module.events)
                .where(store_module.events.c.sequence == sequence)
                .values(received_at=spread - timedelta(minutes=minutes_ago))
            )
    chart = EventBrowser(any_store).per_minute()
    assert chart["total"] == 29  # 25 hours ago is outside the last 24
    minute = (spread - timedelta(minutes=7)).strftime("%Y-%m-%dT%H:%M")
    assert chart["series"]["crmatch:created"][minute] == 1  # sequence 3 is the guide's third: crmatch
    by_type = {t: sum(v.values()) for t, v in chart["series"].items()}
    assert by_type == {"cremployee:updated": 19, "crmatch:created": 10}


def test_chart_keeps_settled_minutes_and_counts_new_events(any_store: EventStore) -> None:
    fill(any_store, 6)
    with any_store.engine.begin() as conn:  # three of them an hour ago: settled, counted once and kept
        conn.execute(
            sa.update(store_module.events)
            .where(store_module.events.c.sequence <= 3)
            .values(received_at=datetime.now(timezone.utc) - timedelta(hours=1))
        )
    browser = EventBrowser(any_store)
    assert browser.per_minute()["total"] == 6
    fill(any_store, 4)  # arrive now: the next call must count them although the day was counted before
    assert browser.per_minute()["total"] == 10
    assert browser.per_minute()["total"] == 10  # and not twice


def test_consumers_show_lag_and_owner(any_store: EventStore) -> None:
    fill(any_store, 30)
    any_store.advance_cursor("employees:processed", 12)
    any_store.advance_cursor("everything:processed", 30)
    any_store.advance_cursor("employees", 30)  # delivered cursor: not a consumer row of its own
    rows = {c["name"]: c for c in sections.consumers(any_store)}
    assert set(rows) == {"employees", "everything"}
    assert rows["everything"]["lag"] == 0
    assert rows["employees"]["processed"] == 12
    assert rows["employees"]["lag"] == 18  # no filter recorded: every later event counts


def test_consumer_lag_counts_only_its_own_events(any_store: EventStore) -> None:
    from airflow_provider_carerix.hooks.event_store import CarerixEventStoreHook
    from airflow_provider_carerix.store.filters import EventFilter

    fill(any_store, 30)
    hook = CarerixEventStoreHook(store_conn_id=None, store_url=any_store.url)
    matches = EventFilter.build(["crmatch:created"])
    hook.ensure_consumer("new_matches")  # as a watcher starting: at the end of the log, filter unknown yet
    fill(any_store, 30)  # ten of them crmatch:created
    [row] = sections.consumers(any_store)
    assert (row["name"], row["lag"], row["event_types"]) == ("new_matches", 30, ["*"])
    with hook.claim("new_matches", matches, owner="matches_dag") as claimed:  # a claim records the filter
        assert len(claimed) == 10
    fill(any_store, 30)
    [row] = sections.consumers(any_store)
    assert (row["lag"], row["dag_id"], row["event_types"]) == (10, "matches_dag", ["crmatch:created"])
    hook.close()


def test_health_reports_the_last_event(any_store: EventStore) -> None:
    assert EventBrowser(any_store).health()["last_sequence"] == 0
    fill(any_store, 4)
    health = EventBrowser(any_store).health()
    assert health["store"] == "ok" and health["last_sequence"] == 4 and health["events_last_hour"] == 4


@pytest.mark.parametrize(
    ("path", "parameter"),
    [
        ("/ui/api/events?since=9999-12-31T23:59:59-05:00", "since"),
        ("/ui/api/events?until=0001-01-01T00:00:00%2B05:00", "until"),
        (f"/ui/api/events?before={2**63}", "before"),
        (f"/ui/api/events/{2**63}", "sequence"),
        (f"/ui/api/events/{-(2**63) - 1}", "sequence"),
    ],
)
def test_out_of_range_parameters_are_400_naming_the_parameter(
    any_store: EventStore, path: str, parameter: str
) -> None:
    """Served by uvicorn on loopback (the page's routes as the API server mounts them, access allowed)."""
    import httpx

    from airflow_provider_carerix.ui.app import create_ui_app
    from tests.fixtures.receiver import start_receiver_app

    fill(any_store, 3)
    running = start_receiver_app(create_ui_app(any_store, authorize=lambda: None))
    try:
        response = httpx.get(running.url + path, timeout=30)
        assert response.status_code == 400, (path, response.status_code, response.text)
        assert response.json()["detail"].startswith(f"{parameter}: ")
        # The largest values that are in range still work (nothing found, not an error).
        assert httpx.get(running.url + f"/ui/api/events?before={2**63 - 1}", timeout=30).status_code == 200
        assert httpx.get(running.url + f"/ui/api/events/{2**63 - 1}", timeout=30).status_code == 404
        since = "9999-12-31T23:59:59Z"
        assert httpx.get(running.url + f"/ui/api/events?since={since}", timeout=30).json()["items"] == []
    finally:
        running.stop()


def test_webhooks_as_the_last_sync_left_them(
    emulator: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from airflow_provider_carerix.cli import app

    monkeypatch.setenv("AIRFLOW_VAR_CARERIX_RECEIVER_URL", "https://receiver.example.com/events")
    monkeypatch.setenv("AIRFLOW_VAR_CARERIX_RECEIVER_SECRET", "ui-test-secret")
    store_url = f"sqlite:///{tmp_path / 'events.db'}"
    spec = str(ROOT / "example_dags" / "specs" / "carerix_webhooks.yaml")
    first = CliRunner().invoke(app, ["apply", "--yes", "--store", store_url, spec])
    assert first.exit_code == 0, first.output
    [application] = emulator.applications()
    app_id = str(application.get("_id", application.get("id")))
    created = emulator.webhooks(app_id)
    # The first sync created the application and its six webhooks: the page shows them at once.
    with EventStore(store_url) as store:
        after_first = {w["webhook_id"]: w for w in sections.webhooks(store)}
    assert len(created) == 6 and set(after_first) == {w["_id"] for w in created}
    assert {(w["status"], w["sync_action"], w["application_id"]) for w in after_first.values()} == {
        ("enabled", "create", app_id)
    }
    emulator.set_webhook_status(app_id, created[0]["_id"], "disabled")
    second = CliRunner().invoke(app, ["apply", "--yes", "--store", store_url, spec])
    assert second.exit_code == 0, second.output
    with EventStore(store_url) as store:
        seen = {w["webhook_id"]: w for w in sections.webhooks(store)}
    assert set(seen) == {w["_id"] for w in created}
    enabled = seen[created[0]["_id"]]
    assert (enabled["status"], enabled["sync_action"]) == ("enabled", "enable")
    assert {w["sync_action"] for w in seen.values()} == {"unchanged", "enable"}
    assert "ui-test-secret" not in json.dumps(list(seen.values()))  # header values never reach the page
    assert all(w["application_name"] == "airflow-carerix" and w["filters"] for w in seen.values())
    # A third run with nothing to change records the same webhooks again, all unchanged.
    third = CliRunner().invoke(app, ["apply", "--yes", "--store", store_url, spec])
    assert third.exit_code == 0, third.output
    with EventStore(store_url) as store:
        assert {w["webhook_id"]: w["sync_action"] for w in sections.webhooks(store)} == {
            w["_id"]: "unchanged" for w in created
        }


# -- the page in a real API server -------------------------------------------------------------------------


@dataclass
class Served:
    stack: AirflowStack
    store_url: str
    sent: list[dict[str, Any]]

    def get(self, path: str, token: str | None = None) -> tuple[int, Any]:
        request = urllib.request.Request(self.stack.api_url + path)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                body = response.read()
                status = response.status
        except urllib.error.HTTPError as exc:
            body, status = exc.read(), exc.code
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body.decode(errors="replace")

    def token(self) -> str:
        request = urllib.request.Request(
            self.stack.api_url + "/auth/token",
            data=json.dumps({"username": "admin", "password": PASSWORD}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return str(json.loads(response.read())["access_token"])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """``airflow api-server`` with default settings but a real login (no all-admins mode)."""
    home = tmp_path_factory.mktemp("ui")
    store_url = f"sqlite:///{home / 'events.db'}"
    with EventStore(store_url) as store:
        sent = fill(store, 30)
        store.advance_cursor("carerix_candidates:processed", 20)
    passwords = home / "passwords.json"
    passwords.write_text(json.dumps({"admin": PASSWORD}))
    stack = AirflowStack.create(
        home / "airflow",
        env={
            "CARERIX_EVENT_STORE_URL": store_url,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        },
    )
    try:
        stack.migrate()
        stack.start_component("api-server")

        def up() -> bool:
            stack.check_alive()
            try:
                with urllib.request.urlopen(stack.api_url + "/api/v2/monitor/health", timeout=5):
                    return True
            except OSError:
                return False

        wait_for(up, "the API server", timeout=240, interval=1.0)
        yield Served(stack, store_url, sent)
    finally:
        stack.stop()


@pytest.mark.airflow_e2e
@pytest.mark.timeout(600)
def test_page_and_its_data_need_an_airflow_login(served: Served) -> None:
    for path in (
        "/carerix/ui/",
        "/carerix/ui/api/events",
        "/carerix/ui/api/events/1",
        "/carerix/ui/api/chart",
        "/carerix/ui/api/consumers",
        "/carerix/ui/api/webhooks",
        "/carerix/ui/api/health",
        "/carerix/ui/api/store",
    ):
        status, body = served.get(path)
        assert status == 401, (path, status)
        assert "cremployee" not in json.dumps(body)
    status, _ = served.get("/carerix/ui/api/events", token="not-a-jwt")
    assert status in (401, 403)


@pytest.mark.airflow_e2e
@pytest.mark.timeout(600)
def test_page_api_in_the_api_server(served: Served) -> None:
    token = served.token()
    status, page = served.get("/carerix/ui/api/events?limit=10", token)
    assert status == 200
    assert [e["event_id"] for e in page["items"]] == [e["id"] for e in reversed(served.sent)][:10]
    status, payload = served.get(f"/carerix/ui/api/events/{page['items'][0]['sequence']}", token)
    assert payload["payload"] == served.sent[-1]
    status, consumers = served.get("/carerix/ui/api/consumers", token)
    assert [(c["name"], c["lag"]) for c in consumers] == [("carerix_candidates", 10)]
    status, store = served.get("/carerix/ui/api/store", token)
    with EventStore(served.store_url) as direct:
        assert store["store_id"] == direct.identity().store_id  # the page names the store it reads
    assert store["source"] == "environment variable CARERIX_EVENT_STORE_URL"
    assert store["url"] == served.store_url and store["receivers"] == []
    status, body = served.get("/carerix/ui/api/events?since=yesterday", token)
    assert status == 422 and "since" in json.dumps(body)
    status, plugins = served.get("/api/v2/plugins", token)
    views = [v for p in plugins["plugins"] for v in p["external_views"]]
    assert {"name": "Carerix", "href": "/carerix/ui/", "url_route": "carerix"}.items() <= views[0].items()


def _on_the_terminal(config: pytest.Config) -> Callable[[str], None]:
    """Say something on the terminal while the test runs, past pytest's output capture."""
    capture = config.pluginmanager.getplugin("capturemanager")
    reporter = config.pluginmanager.getplugin("terminalreporter")

    def say(message: str) -> None:
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            if reporter is not None:
                reporter.write_line(message)
            else:
                print(message, file=sys.stderr, flush=True)

    return say


def _chromium(say: Callable[[str], None]) -> tuple[str, str]:
    """Debian's chromium and chromedriver; installed when missing and this process may install packages.

    Installing system packages is never silent: ``say`` tells the person running the tests first, and after.
    """
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if browser and driver:
        return browser, driver
    if os.geteuid() == 0 and shutil.which("apt-get"):
        say(
            "test_ui: running as root without chromium/chromedriver: installing Debian's chromium and "
            "chromium-driver with apt-get (apt-get update, then apt-get install) for the browser test"
        )
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
        installed = subprocess.run(
            ["apt-get", "install", "-y", "-qq", *CHROMIUM_PACKAGES],
            env=env,
            capture_output=True,
            text=True,
            timeout=1200,
        )
        browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
        if browser and driver:
            say(f"test_ui: installed {browser} and {driver} with apt-get")
            return browser, driver
        say(f"test_ui: apt-get install failed (exit {installed.returncode}): {installed.stderr[-500:]}")
    if CI:
        pytest.fail("CI needs Debian's chromium and chromium-driver for the UI test (apt-get install failed)")
    pytest.skip("chromium/chromedriver not installed (apt-get install chromium chromium-driver)")


def test_installing_chromium_as_root_is_said_before_apt_get_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """`make test` as root installs system packages when the browser is missing: never silently."""
    happened: list[str] = []
    installed: set[str] = set()

    def which(name: str) -> str | None:
        return "/usr/bin/apt-get" if name == "apt-get" else (f"/usr/bin/{name}" if installed else None)

    def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        happened.append(" ".join(argv))
        if argv[:2] == ["apt-get", "install"]:
            installed.update(argv[4:])
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(shutil, "which", which)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(subprocess, "run", run)
    assert _chromium(lambda message: happened.append(f"said: {message}")) == (
        "/usr/bin/chromium",
        "/usr/bin/chromedriver",
    )
    assert happened[0].startswith("said: ") and "apt-get" in happened[0] and "chromium-driver" in happened[0]
    assert happened[1:3] == ["apt-get update -qq", "apt-get install -y -qq chromium chromium-driver"]
    assert happened[3] == "said: test_ui: installed /usr/bin/chromium and /usr/bin/chromedriver with apt-get"


@pytest.mark.airflow_e2e
@pytest.mark.timeout(900)
def test_a_person_sees_events_consumers_and_the_chart(served: Served, pytestconfig: pytest.Config) -> None:
    browser, driver_path = _chromium(_on_the_terminal(pytestconfig))
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1800",
    ):
        options.add_argument(arg)
    chrome = webdriver.Chrome(service=Service(driver_path), options=options)
    artifacts = Path(os.environ.get("CARERIX_TEST_ARTIFACTS") or ROOT / ".artifacts")
    artifacts.mkdir(parents=True, exist_ok=True)
    try:
        wait = WebDriverWait(chrome, 120)
        chrome.get(served.stack.api_url + "/")
        wait.until(lambda d: d.find_elements(By.NAME, "username"))  # not logged in: Airflow's login page
        for _attempt in range(3):
            # Airflow's login page is a React app that may render its form again after it loaded: type, check
            # the fields hold it, submit, and type again if the page did not move on.
            for name, value in (("username", "admin"), ("password", PASSWORD)):
                field = wait.until(lambda d, n=name: d.find_element(By.NAME, n))
                field.clear()
                field.send_keys(value)
            if chrome.find_element(By.NAME, "password").get_attribute("value") != PASSWORD:
                continue
            chrome.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
            with contextlib.suppress(Exception):
                WebDriverWait(chrome, 30).until(lambda d: "/auth/login" not in d.current_url)
            if "/auth/login" not in chrome.current_url:
                break
        assert "/auth/login" not in chrome.current_url, "Airflow's login did not succeed"
        # Airflow's navigation embeds this page (external view "Carerix"); the test opens it directly, with the
        # session cookie the login set, so what it checks is the page, not Airflow's iframe routing.
        chrome.get(served.stack.api_url + "/carerix/ui/")
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-loaded") == "true")

        rows = chrome.find_elements(By.CSS_SELECTOR, "#events tbody tr")
        assert len(rows) == 25  # one page
        newest = served.sent[-1]
        assert newest["type"] in rows[0].text and newest["data"]["entityId"] in rows[0].text
        consumers = chrome.find_element(By.ID, "consumers").text
        assert "carerix_candidates" in consumers and "10" in consumers  # 30 stored, 20 processed
        assert len(chrome.find_elements(By.CSS_SELECTOR, "#chart rect")) >= 2  # one bar per type and minute
        assert "30 events" in chrome.find_element(By.CSS_SELECTOR, "#chart .legend").text

        rows[0].find_element(By.TAG_NAME, "button").click()  # the payload, on demand
        shown = wait.until(lambda d: d.find_elements(By.ID, "payload-json"))[0].text
        assert json.loads(shown) == newest

        chrome.find_element(By.ID, "older").click()
        wait.until(lambda d: "sequences 5…1" in d.find_element(By.ID, "pageinfo").text)
        chrome.save_screenshot(str(artifacts / "carerix-ui-page.png"))
    finally:
        chrome.quit()
