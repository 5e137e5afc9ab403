"""Signing keys: the hook reads them from Carerix, provisioning records them, the store keeps rotation windows."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from airflow_provider_carerix.cli import app
from airflow_provider_carerix.definitions.models import EventPayload
from airflow_provider_carerix.delivery.signing import SigningKeyCache
from airflow_provider_carerix.hooks.carerix import CarerixHook
from airflow_provider_carerix.provisioning.signing_keys import record_signing_keys
from airflow_provider_carerix.store import EventStore, Provenance, key_fingerprint

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_SPEC = ROOT / "example_dags" / "specs" / "carerix_webhooks.yaml"


def _pem(emulator: Any, app_id: str) -> str:
    return emulator.public_key(app_id)


def test_rotation_keeps_the_previous_key_valid_for_the_window(emulator: Any, store: EventStore) -> None:
    app_id = emulator.add_application("a")
    first = _pem(emulator, app_id)
    assert store.signing_keys(app_id, rotation_window=timedelta(days=1)) == []
    assert store.record_signing_key(app_id, first, "SHA256withRSA") is True
    assert store.record_signing_key(app_id, first, "SHA256withRSA") is False  # seen again: not new
    second = emulator.rotate_key(app_id)
    assert store.record_signing_key(app_id, second) is True
    assert store.signing_keys(app_id, rotation_window=timedelta(days=1)) == [second, first]
    assert store.signing_keys(app_id, rotation_window=timedelta(0)) == [second]
    assert store.signing_keys("other-app", rotation_window=timedelta(days=1)) == []
    # Going back to a key makes it current again and supersedes the other.
    store.record_signing_key(app_id, first)
    assert store.signing_keys(app_id, rotation_window=timedelta(0)) == [first]


def test_fingerprint_ignores_line_breaks_but_not_the_key() -> None:
    body = "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"
    a = f"-----BEGIN PUBLIC KEY-----\n{body}\n-----END PUBLIC KEY-----\n"
    b = f"-----BEGIN PUBLIC KEY-----\r\n{body[:20]}\r\n{body[20:]}\r\n-----END PUBLIC KEY-----"
    assert key_fingerprint(a) == key_fingerprint(b)
    assert key_fingerprint(a) != key_fingerprint(a.replace("A", "B"))


def test_migration_from_schema_1_keeps_events_and_adds_flags(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE carerix_schema_version (id INTEGER PRIMARY KEY, version INTEGER NOT NULL)"
        )
        conn.exec_driver_sql("INSERT INTO carerix_schema_version VALUES (1, 1)")
        conn.exec_driver_sql(
            "CREATE TABLE carerix_events (sequence INTEGER PRIMARY KEY AUTOINCREMENT, event_id VARCHAR(255) "
            "NOT NULL UNIQUE, type VARCHAR(255) NOT NULL, time DATETIME NOT NULL, tenant VARCHAR(255), "
            "application_id VARCHAR(255), webhook_id VARCHAR(255), entity_id VARCHAR(255), "
            "received_at DATETIME NOT NULL, payload TEXT NOT NULL)"
        )
        conn.exec_driver_sql(
            "CREATE TABLE carerix_cursors (name VARCHAR(255) PRIMARY KEY, sequence BIGINT NOT NULL, "
            "updated_at DATETIME NOT NULL)"
        )
        conn.exec_driver_sql(
            "INSERT INTO carerix_events (event_id, type, time, received_at, payload) VALUES "
            "('old-1', 'crjob:created', '2026-01-01 00:00:00', '2026-01-01 00:00:00', '{}')"
        )
    engine.dispose()
    with EventStore(url) as store:
        [old] = store.events_after(0)
        assert (old.event_id, old.signature_verified, old.recovered) == ("old-1", None, False)
        raw = json.dumps({"id": "new-1", "time": "2026-01-02T00:00:00Z", "type": "crjob:created"})
        store.insert_many([(raw, EventPayload.model_validate_json(raw), Provenance(True, recovered=True))])
        [_, new] = store.events_after(0)
        assert (new.signature_verified, new.recovered) == (True, True)
        assert store.signing_keys("x", rotation_window=timedelta(1)) == []


def test_hook_reads_the_applications_public_key_with_either_kind(emulator_factory: Any) -> None:
    for kind in ("Application", "WebhookApplication"):
        emulator = emulator_factory(application_kind=kind)
        app_id = emulator.add_application("a")
        hook = CarerixHook()
        [key] = hook.get_signing_keys(app_id)
        assert key.public_key == emulator.public_key(app_id) and key.algorithm == "SHA256withRSA"
        assert hook.get_application(app_id).is_application
        assert hook.create_application("b").is_application


def test_cache_reads_the_store_once_per_ttl_and_refreshes_after_a_failure(
    emulator: Any, store: EventStore
) -> None:
    app_id = emulator.add_application("a")
    now = [0.0]
    cache = SigningKeyCache(store, ttl=30, clock=lambda: now[0])
    assert cache.cached(app_id) is None
    assert cache.load(app_id) == ()  # nothing recorded yet: cached as "no key"
    assert cache.cached(app_id) == () and cache.loads == 1
    store.record_signing_key(app_id, emulator.public_key(app_id))
    assert cache.cached(app_id) == ()  # still within the TTL
    assert cache.should_refresh(app_id) is False  # refreshed less than a second ago
    now[0] = 2.0
    assert cache.should_refresh(app_id) is True and len(cache.load(app_id)) == 1
    now[0] = 40.0
    assert cache.cached(app_id) is None
    small = SigningKeyCache(store, max_entries=2)
    for name in ("x", "y", "z"):
        small.load(name)
    assert small.cached("x") is None and small.cached("z") == ()


def test_apply_records_the_signing_key_and_a_rerun_finds_it_known(
    emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_VAR_CARERIX_RECEIVER_URL", "https://receiver.example.com/events")
    monkeypatch.setenv("AIRFLOW_VAR_CARERIX_RECEIVER_SECRET", "s3cr3t-value")
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    runner = CliRunner()
    first = runner.invoke(app, ["apply", "--yes", "--store", url, str(EXAMPLE_SPEC)])
    assert first.exit_code == 0, first.output
    [application] = emulator.applications()
    app_id = application["_id"]
    assert "recorded a new signing key" in first.output
    with EventStore(url) as store:
        assert store.signing_keys(app_id, rotation_window=timedelta(0)) == [emulator.public_key(app_id)]
    emulator.rotate_key(app_id)
    second = runner.invoke(app, ["apply", "--yes", "--store", url, str(EXAMPLE_SPEC)])  # nothing to change
    assert second.exit_code == 0, second.output
    assert "recorded a new signing key" in second.output
    with EventStore(url) as store:
        assert store.signing_keys(app_id, rotation_window=timedelta(days=1)) == [
            emulator.public_key(app_id),
            emulator.previous_public_key(app_id),
        ]
    skipped = runner.invoke(app, ["apply", "--yes", "--no-record-keys", "--store", url, str(EXAMPLE_SPEC)])
    assert skipped.exit_code == 0 and "signing key" not in skipped.output


def test_recording_fails_loudly_when_carerix_refuses(emulator: Any, store: EventStore) -> None:
    from airflow_provider_carerix.exceptions import CarerixNotFoundError

    with pytest.raises(CarerixNotFoundError):
        record_signing_keys(CarerixHook(), ["no-such-application"], store)


# -- the receiver verifies with the recorded keys ---------------------------------------------------------------

SECRET = "signing-test-secret"


def _receiver(store: EventStore, **kwargs: Any) -> Any:
    from airflow_provider_carerix.receiver import create_app
    from tests.fixtures.receiver import start_receiver_app

    kwargs.setdefault("secrets", [SECRET])
    return start_receiver_app(create_app(store, **kwargs))


def _hooked_app(emulator: Any, url: str, *, secret: str | None = SECRET) -> str:
    app_id = emulator.add_application("signed")
    headers = [{"name": "X-Carerix-Secret", "value": secret}] if secret else []
    emulator.add_webhook(
        app_id, {"url": f"{url}/events", "filters": [{"eventType": "crjob:*"}], "customHeaders": headers}
    )
    return app_id


def _post(url: str, body: bytes, signature: str | None, secret: str | None = SECRET) -> int:
    import requests

    headers = {"Content-Type": "application/json"}
    if secret:
        headers["X-Carerix-Secret"] = secret
    if signature is not None:
        headers["Cx-Signature"] = signature
    return requests.post(f"{url}/events", data=body, headers=headers, timeout=10).status_code


def _body(app_id: str, event_id: str) -> bytes:
    return json.dumps(
        {"id": event_id, "time": "2026-11-29T10:00:00Z", "type": "crjob:updated", "applicationId": app_id}
    ).encode()


def test_signature_checked_once_a_key_is_recorded(emulator_factory: Any, tmp_path: Path) -> None:
    emulator = emulator_factory(retry_schedule=())
    store = EventStore(f"sqlite:///{tmp_path / 'e.db'}")
    running = _receiver(store)
    try:
        app_id = _hooked_app(emulator, running.url)
        # No key recorded yet: the secret alone admits it, stored as not verified.
        [before] = emulator.deliver("crjob:created", {"entityId": "1"}, event_id="before")
        assert before.status == 201
        store.record_signing_key(app_id, emulator.public_key(app_id), "SHA256withRSA")
        running.app.state.signing_keys.invalidate()
        [signed] = emulator.deliver("crjob:created", {"entityId": "2"}, event_id="signed")
        assert signed.status == 201
        [unsigned] = emulator.deliver("crjob:created", {"entityId": "3"}, event_id="unsigned", signing="none")
        assert unsigned.status == 401
        # Tampered: a signature Carerix made, over other bytes.
        body = _body(app_id, "tampered")
        signature = emulator.sign(app_id, body)
        assert _post(running.url, body.replace(b"crjob:updated", b"crjob:deleted"), signature) == 401
        assert _post(running.url, body, signature + "x") == 401
        assert _post(running.url, body, signature, secret="wrong") == 401  # the secret still counts
        assert _post(running.url, body, signature) == 201
        flags = {e.event_id: e.signature_verified for e in store.events_after(0)}
        assert flags == {"before": False, "signed": True, "tampered": True}
    finally:
        running.stop()
        store.close()


def test_rotation_accepts_the_previous_key_within_the_window_only(
    emulator_factory: Any, tmp_path: Path
) -> None:
    emulator = emulator_factory(retry_schedule=())
    store = EventStore(f"sqlite:///{tmp_path / 'e.db'}")
    now = [0.0]
    running = _receiver(store, signing_keys=SigningKeyCache(store, clock=lambda: now[0]))
    strict = _receiver(store, signing_keys=SigningKeyCache(store, rotation_window=timedelta(0)))
    try:
        app_id = _hooked_app(emulator, running.url)
        store.record_signing_key(app_id, emulator.public_key(app_id))
        # The receiver caches "key A" now; then Carerix rotates and provisioning records key B.
        assert _post(running.url, _body(app_id, "a"), emulator.sign(app_id, _body(app_id, "a"))) == 201
        store.record_signing_key(app_id, emulator.rotate_key(app_id))
        now[0] += 2  # within the cache TTL, past the refresh interval
        # Signed with B: not in the cache yet, found by the refresh a failed check makes.
        assert _post(running.url, _body(app_id, "b"), emulator.sign(app_id, _body(app_id, "b"))) == 201
        old = emulator.sign(app_id, _body(app_id, "old"), which="previous")
        assert _post(running.url, _body(app_id, "old"), old) == 201
        assert (
            _post(
                strict.url,
                _body(app_id, "old-strict"),
                emulator.sign(app_id, _body(app_id, "old-strict"), which="previous"),
            )
            == 401
        )
        assert (
            _post(strict.url, _body(app_id, "new-strict"), emulator.sign(app_id, _body(app_id, "new-strict")))
            == 201
        )
    finally:
        running.stop()
        strict.stop()
        store.close()


def test_require_signatures_needs_no_secret_but_a_recorded_key(emulator_factory: Any, tmp_path: Path) -> None:
    emulator = emulator_factory(retry_schedule=())
    store = EventStore(f"sqlite:///{tmp_path / 'e.db'}")
    running = _receiver(store, secrets=[], require_signatures=True)
    try:
        app_id = _hooked_app(emulator, running.url, secret=None)
        [unknown] = emulator.deliver("crjob:created", {}, event_id="unknown")
        assert unknown.status == 401
        store.record_signing_key(app_id, emulator.public_key(app_id))
        running.app.state.signing_keys.invalidate()
        [known] = emulator.deliver("crjob:created", {}, event_id="known")
        assert known.status == 201
        assert [e.event_id for e in store.events_after(0)] == ["known"]
    finally:
        running.stop()
        store.close()


def test_a_burst_for_an_uncached_application_reads_its_keys_once(
    emulator_factory: Any, tmp_path: Path
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    emulator = emulator_factory(retry_schedule=())
    store = EventStore(f"sqlite:///{tmp_path / 'e.db'}")
    running = _receiver(store)
    try:
        app_id = _hooked_app(emulator, running.url)
        store.record_signing_key(app_id, emulator.public_key(app_id))
        bodies = [_body(app_id, f"burst-{n}") for n in range(24)]
        with ThreadPoolExecutor(max_workers=12) as pool:
            statuses = list(pool.map(lambda b: _post(running.url, b, emulator.sign(app_id, b)), bodies))
        assert statuses == [201] * 24
        assert running.app.state.signing_keys.loads == 1
    finally:
        running.stop()
        store.close()
