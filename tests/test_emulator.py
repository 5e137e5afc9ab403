"""The emulator as Carerix's stand-in: Keycloak-style tokens, the Management API, faults, delivery, control, CLI."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from airflow_provider_carerix.emulator import MANAGE_SCOPE, CarerixEmulator

GUIDE_WEBHOOK = {
    "url": "placeholder",
    "_kind": "Webhook",
    "filters": [
        {
            "eventType": "crjob:updated",
            "condition": "data.tostatusnode eq '1234' or data.tostatusnode eq '5678'",
        }
    ],
    "customHeaders": [{"name": "Custom-Signature", "value": "FE: Basic Y3g1YXBpY2xpZW50"}],
}


def token(emulator: CarerixEmulator, **form: str) -> requests.Response:
    data = {
        "grant_type": "client_credentials",
        "client_id": "demo-client",
        "client_secret": "demo-secret",
        **form,
    }
    return requests.post(emulator.token_url, data=data, timeout=5)


def bearer(emulator: CarerixEmulator) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(emulator).json()['access_token']}"}


class Receiver:
    """A webhook endpoint on loopback that records what it receives."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.received: list[tuple[dict[str, str], Any]] = []
        self.raw: list[bytes] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.raw.append(body)
                receiver.received.append((dict(self.headers), json.loads(body)))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/events"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


# ------------------------------------------------------------------------------------------ tokens


def test_token_endpoint_issues_bearer_tokens(emulator: CarerixEmulator) -> None:
    response = token(emulator, scope=MANAGE_SCOPE)
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 300
    assert MANAGE_SCOPE in body["scope"].split()
    assert body["access_token"] in emulator.issued_tokens


def test_token_endpoint_accepts_http_basic_client_auth(emulator: CarerixEmulator) -> None:
    basic = base64.b64encode(b"demo-client:demo-secret").decode()
    response = requests.post(
        emulator.token_url,
        data={"grant_type": "client_credentials"},
        headers={"Authorization": f"Basic {basic}"},
        timeout=5,
    )
    assert response.status_code == 200 and response.json()["access_token"]


def test_token_endpoint_errors_like_keycloak(emulator: CarerixEmulator) -> None:
    wrong_realm = requests.post(
        emulator.token_url.replace("/realms/demo/", "/realms/other/"),
        data={"grant_type": "client_credentials", "client_id": "demo-client", "client_secret": "demo-secret"},
        timeout=5,
    )
    assert wrong_realm.status_code == 404
    assert wrong_realm.json() == {"error": "Realm does not exist"}
    bad_secret = token(emulator, client_secret="nope")
    assert bad_secret.status_code == 401 and bad_secret.json()["error"] == "invalid_client"
    unknown_client = token(emulator, client_id="someone-else")
    assert unknown_client.status_code == 401 and unknown_client.json()["error"] == "invalid_client"
    bad_grant = token(emulator, grant_type="password")
    assert bad_grant.status_code == 400 and bad_grant.json()["error"] == "unsupported_grant_type"
    assert emulator.token_requests == 4
    assert emulator.issued_tokens == []


def test_api_checks_bearer_tokens_expiry_and_scope(emulator: CarerixEmulator) -> None:
    url = f"{emulator.api_url}/applications/"
    assert requests.get(url, timeout=5).status_code == 401
    assert requests.get(url, headers={"Authorization": "Bearer made-up"}, timeout=5).status_code == 401
    headers = bearer(emulator)
    assert requests.get(url, headers=headers, timeout=5).status_code == 200
    emulator.expire_tokens()
    expired = requests.get(url, headers=headers, timeout=5)
    assert expired.status_code == 401 and expired.json()["error"] == "invalid_token"
    assert "Bearer" in expired.headers["WWW-Authenticate"]
    other_scope = token(emulator, scope="openid").json()["access_token"]
    forbidden = requests.get(url, headers={"Authorization": f"Bearer {other_scope}"}, timeout=5)
    assert forbidden.status_code == 403 and MANAGE_SCOPE in forbidden.json()["message"]


def test_client_without_the_scope_gets_tokens_the_api_refuses(emulator_factory: Any) -> None:
    emulator = emulator_factory(client_scopes=())
    response = requests.get(f"{emulator.api_url}/applications/", headers=bearer(emulator), timeout=5)
    assert response.status_code == 403


# ------------------------------------------------------------------------------------------ Management API


def test_management_api_as_in_the_guide(emulator: CarerixEmulator) -> None:
    headers = bearer(emulator)
    created = requests.post(
        f"{emulator.api_url}/applications/",
        json={"_kind": "Application", "name": "my-first-application"},
        headers=headers,
        timeout=5,
    )
    assert created.status_code == 201
    assert set(created.json()) == {"_kind", "_id"} and created.json()["_kind"] == "Application"
    app_id = created.json()["_id"]
    hook = requests.post(
        f"{emulator.api_url}/applications/{app_id}/webhooks", json=GUIDE_WEBHOOK, headers=headers, timeout=5
    )
    assert hook.status_code == 201 and hook.json()["_kind"] == "Webhook"
    webhook_id = hook.json()["_id"]
    full = requests.get(
        f"{emulator.api_url}/applications/{app_id}/webhooks/{webhook_id}", headers=headers, timeout=5
    )
    assert full.json()["filters"] == GUIDE_WEBHOOK["filters"]
    assert full.json()["customHeaders"] == GUIDE_WEBHOOK["customHeaders"]
    assert full.json()["status"] == "enabled"
    disabled = requests.post(
        f"{emulator.api_url}/applications/{app_id}/webhooks/{webhook_id}/disable", headers=headers, timeout=5
    )
    assert disabled.status_code == 200 and emulator.webhooks(app_id)[0]["status"] == "disabled"
    assert (
        requests.put(
            f"{emulator.api_url}/applications/{app_id}/webhooks/{webhook_id}",
            json={},
            headers=headers,
            timeout=5,
        ).status_code
        == 405
    )  # no update endpoint: a change is delete + create
    deleted = requests.delete(f"{emulator.api_url}/applications/{app_id}", headers=headers, timeout=5)
    assert deleted.status_code == 204
    assert emulator.applications() == []
    missing = requests.get(f"{emulator.api_url}/applications/{app_id}", headers=headers, timeout=5)
    assert missing.status_code == 404


def test_lists_are_slim_unless_fields_are_asked(emulator: CarerixEmulator) -> None:
    app_id = emulator.add_application("a")
    emulator.add_webhook(app_id, {**GUIDE_WEBHOOK, "url": "https://r.example.com"})
    url = f"{emulator.api_url}/applications/{app_id}/webhooks"
    headers = bearer(emulator)
    [slim] = requests.get(url, headers=headers, timeout=5).json()
    assert set(slim) == {"_kind", "_id"}
    [full] = requests.get(
        url, params={"fields": "url,filters,customHeaders,status"}, headers=headers, timeout=5
    ).json()
    assert full["url"] == "https://r.example.com" and full["status"] == "enabled" and full["filters"]
    emulator.slim = True
    [ignored] = requests.get(url, params={"fields": "url,filters"}, headers=headers, timeout=5).json()
    assert set(ignored) == {"_kind", "_id"}


def test_list_shape_id_key_and_trailing_slash_are_configurable(emulator: CarerixEmulator) -> None:
    app_id = emulator.add_application("a")
    headers = bearer(emulator)
    emulator.list_shape, emulator.id_key = "items", "id"
    body = requests.get(
        f"{emulator.api_url}/applications", params={"fields": "name"}, headers=headers, timeout=5
    ).json()
    assert body["items"] == [{"_kind": "Application", "id": app_id, "name": "a"}]
    emulator.trailing_slash = "with"
    assert requests.get(f"{emulator.api_url}/applications", headers=headers, timeout=5).status_code == 404
    assert requests.get(f"{emulator.api_url}/applications/", headers=headers, timeout=5).status_code == 200
    emulator.trailing_slash = "without"
    assert requests.get(f"{emulator.api_url}/applications/", headers=headers, timeout=5).status_code == 404


def test_request_log_and_counts(emulator: CarerixEmulator) -> None:
    headers = bearer(emulator)
    requests.post(f"{emulator.api_url}/applications/", json={"name": "a"}, headers=headers, timeout=5)
    requests.get(f"{emulator.api_url}/applications/", headers=headers, timeout=5)
    requests.get(f"{emulator.url}/_emulator/state", timeout=5)  # control calls are not logged
    assert [(r.method, r.status) for r in emulator.requests] == [("POST", 200), ("POST", 201), ("GET", 200)]
    assert emulator.token_requests == 1
    assert emulator.write_count() == 1
    assert emulator.count(method="GET", path_contains="/applications") == 1
    emulator.reset_log()
    assert emulator.requests == [] and emulator.token_requests == 0


# ------------------------------------------------------------------------------------------ faults


def test_faults_answer_instead_of_the_api(emulator: CarerixEmulator) -> None:
    headers = bearer(emulator)
    emulator.inject_fault(status=429, times=2, method="GET", retry_after=3)
    url = f"{emulator.api_url}/applications/"
    first, second, third = (requests.get(url, headers=headers, timeout=5) for _ in range(3))
    assert (first.status_code, first.headers["Retry-After"]) == (429, "3")
    assert second.status_code == 429 and third.status_code == 200
    emulator.inject_fault(status=503, method="POST", path_contains="/applications")
    refused = requests.post(url, json={"name": "x"}, headers=headers, timeout=5)
    assert refused.status_code == 503 and emulator.applications() == []
    emulator.inject_fault(status=500, method="POST", path_contains="/applications", processed=True)
    processed = requests.post(url, json={"name": "x"}, headers=headers, timeout=5)
    assert processed.status_code == 500 and [a["name"] for a in emulator.applications()] == ["x"]


def test_slow_answers(emulator: CarerixEmulator) -> None:
    headers = bearer(emulator)
    emulator.inject_fault(status=None, delay=0.5, method="GET")
    with pytest.raises(requests.Timeout):
        requests.get(f"{emulator.api_url}/applications/", headers=headers, timeout=0.1)
    assert requests.get(f"{emulator.api_url}/applications/", headers=headers, timeout=5).status_code == 200


def test_faults_can_hit_the_token_endpoint(emulator: CarerixEmulator) -> None:
    emulator.inject_fault(status=502, path_contains="/openid-connect/token")
    assert token(emulator).status_code == 502
    assert token(emulator).status_code == 200


# ------------------------------------------------------------------------------------------ delivery


def test_delivery_posts_the_guides_payload_with_custom_headers(
    emulator: CarerixEmulator, receiver: Receiver
) -> None:
    app_id = emulator.add_application("a")
    webhook_id = emulator.add_webhook(app_id, {**GUIDE_WEBHOOK, "url": receiver.url})
    [delivery] = emulator.deliver(
        "crjob:updated", {"entityId": "1", "tostatusnode": "5678"}, tenant="cxdev50streamer", event_id="evt-1"
    )
    assert delivery.status == 200 and delivery.webhook_id == webhook_id and delivery.url == receiver.url
    [(headers, payload)] = receiver.received
    assert set(payload) == {"id", "time", "type", "applicationId", "webhookId", "tenant", "data"}
    assert payload["id"] == "evt-1" and payload["type"] == "crjob:updated"
    assert (payload["applicationId"], payload["webhookId"], payload["tenant"]) == (
        app_id,
        webhook_id,
        "cxdev50streamer",
    )
    assert payload["data"] == {"entityId": "1", "tostatusnode": "5678"}
    assert payload["time"].endswith("Z")
    assert headers["Custom-Signature"] == "FE: Basic Y3g1YXBpY2xpZW50"
    assert headers["Content-Type"] == "application/json"
    assert delivery.event == payload


def test_delivery_follows_filters_conditions_and_status(
    emulator: CarerixEmulator, receiver: Receiver
) -> None:
    app_id = emulator.add_application("a")
    conditional = emulator.add_webhook(app_id, {**GUIDE_WEBHOOK, "url": receiver.url})
    any_action = emulator.add_webhook(app_id, {"url": receiver.url, "filters": [{"eventType": "CRJOB:*"}]})
    disabled = emulator.add_webhook(
        app_id, {"url": receiver.url, "filters": [{"eventType": "crjob:updated"}]}
    )
    emulator.set_webhook_status(app_id, disabled, "disabled")

    matching = emulator.deliver("crjob:updated", {"tostatusnode": "1234"})
    assert sorted(d.webhook_id for d in matching) == sorted([conditional, any_action])
    not_matching = emulator.deliver("crjob:updated", {"tostatusnode": "999"})
    assert [d.webhook_id for d in not_matching] == [any_action]
    created = emulator.deliver("CRJob:created", {"entityId": "7"})
    assert [d.webhook_id for d in created] == [any_action]
    assert emulator.deliver("cremployee:updated", {}) == []
    assert len(receiver.received) == 4


def test_delivery_to_an_unreachable_receiver_reports_status_0(emulator: CarerixEmulator) -> None:
    app_id = emulator.add_application("a")
    emulator.add_webhook(
        app_id, {"url": "http://127.0.0.1:9/none", "filters": [{"eventType": "crjob:created"}]}
    )
    [delivery] = emulator.deliver("crjob:created", {})
    assert delivery.status == 0 and delivery.error


# ------------------------------------------------------------------------------------------ control endpoints


def test_http_control_endpoints(emulator: CarerixEmulator, receiver: Receiver) -> None:
    app_id = emulator.add_application("a")
    emulator.add_webhook(app_id, {**GUIDE_WEBHOOK, "url": receiver.url})
    control = f"{emulator.url}/_emulator"
    state = requests.get(f"{control}/state", timeout=5).json()
    assert state["applications"][0]["_id"] == app_id
    assert state["applications"][0]["webhooks"][0]["url"] == receiver.url

    delivered = requests.post(
        f"{control}/deliver",
        json={"type": "crjob:updated", "data": {"tostatusnode": "1234"}, "tenant": "t"},
        timeout=10,
    ).json()
    assert [d["status"] for d in delivered["deliveries"]] == [200]
    assert delivered["deliveries"][0]["event"]["tenant"] == "t"

    assert (
        requests.post(f"{control}/faults", json={"status": 503, "method": "GET"}, timeout=5).status_code
        == 201
    )
    assert (
        requests.get(f"{emulator.api_url}/applications/", headers=bearer(emulator), timeout=5).status_code
        == 503
    )
    log = requests.get(f"{control}/requests", timeout=5).json()
    assert log["token_requests"] == 1
    assert {"method": "GET", "path": "/webhooks/v1/applications/", "status": 503, "query": ""} in log[
        "requests"
    ]
    assert requests.post(f"{control}/faults", json={"bogus": 1}, timeout=5).status_code == 400
    assert requests.post(f"{control}/config", json={"slim": True}, timeout=5).json()["slim"] is True
    assert emulator.slim is True


# ------------------------------------------------------------------------------------------ signing


def _verify(pem: str, signature: str, body: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    key = load_pem_public_key(pem.encode())
    try:
        key.verify(base64.b64decode(signature), body, padding.PKCS1v15(), hashes.SHA256())  # type: ignore[union-attr,call-arg]
    except InvalidSignature:
        return False
    return True


def test_deliveries_are_signed_with_the_key_served_on_the_application(
    emulator: CarerixEmulator, receiver: Receiver
) -> None:
    app_id = emulator.add_application("a")
    emulator.add_webhook(app_id, {"url": receiver.url, "filters": [{"eventType": "crjob:created"}]})
    app = requests.get(
        f"{emulator.api_url}/applications/{app_id}", headers=bearer(emulator), timeout=5
    ).json()
    verification = app["signatureVerification"]
    assert verification["algorithm"] == "SHA256withRSA"
    assert verification["publicKey"].startswith("-----BEGIN PUBLIC KEY-----")
    assert "PRIVATE" not in json.dumps(app)

    emulator.deliver("crjob:created", {"entityId": "1"})
    [(headers, _)] = receiver.received
    assert _verify(verification["publicKey"], headers["Cx-Signature"], receiver.raw[0])
    assert not _verify(verification["publicKey"], headers["Cx-Signature"], receiver.raw[0] + b" ")

    unsigned = emulator.deliver("crjob:created", {}, signing="none")
    assert unsigned[0].ok and "Cx-Signature" not in receiver.received[-1][0]


def test_key_rotation_serves_the_new_key_and_keeps_the_previous_one_usable(
    emulator: CarerixEmulator, receiver: Receiver
) -> None:
    app_id = emulator.add_application("a")
    emulator.add_webhook(app_id, {"url": receiver.url, "filters": [{"eventType": "crjob:created"}]})
    old = emulator.public_key(app_id)
    with pytest.raises(KeyError):
        emulator.deliver("crjob:created", {}, signing="previous")
    new = requests.post(
        f"{emulator.url}/_emulator/rotate-key", json={"applicationId": app_id}, timeout=30
    ).json()["publicKey"]
    assert new != old and emulator.public_key(app_id) == new and emulator.previous_public_key(app_id) == old
    emulator.deliver("crjob:created", {})
    emulator.deliver("crjob:created", {}, signing="previous")
    signed = requests.post(
        f"{emulator.url}/_emulator/sign",
        json={"applicationId": app_id, "body": "{}", "previous": True},
        timeout=5,
    ).json()["signature"]
    assert _verify(old, signed, b"{}") and not _verify(new, signed, b"{}")
    (h_new, _), (h_old, _) = receiver.received
    assert _verify(new, h_new["Cx-Signature"], receiver.raw[0])
    assert _verify(old, h_old["Cx-Signature"], receiver.raw[1])
    assert not _verify(new, h_old["Cx-Signature"], receiver.raw[1])


def test_webhook_application_kind_is_accepted_and_can_be_answered(emulator_factory: Any) -> None:
    emulator = emulator_factory(application_kind="WebhookApplication")
    headers = bearer(emulator)
    for kind in ("Application", "WebhookApplication"):
        created = requests.post(
            f"{emulator.api_url}/applications/",
            json={"_kind": kind, "name": kind},
            headers=headers,
            timeout=5,
        )
        assert created.status_code == 201 and created.json()["_kind"] == "WebhookApplication"
    refused = requests.post(
        f"{emulator.api_url}/applications/",
        json={"_kind": "Webhook", "name": "x"},
        headers=headers,
        timeout=5,
    )
    assert refused.status_code == 400 and "_kind" in refused.json()["error"]


# ------------------------------------------------------------------------------------------ delivery log

JOB_QUERY = """
query Jobs($pageable: Pageable) {
  webhookDeliveryJobPage(pageable: $pageable) {
    page size totalElements totalPages numberOfElements first last
    items { _id payload webhook { _id } attempts { items { deliveryStatus responseStatusCode } } }
  }
}
"""


def graphql(emulator: CarerixEmulator, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    response = requests.post(
        emulator.graphql_url,
        json={"query": query, "variables": variables or {}},
        headers=bearer(emulator),
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_failed_deliveries_are_retried_on_schedule_and_logged_with_every_attempt(
    emulator_factory: Any, receiver: Receiver
) -> None:
    emulator = emulator_factory(retry_schedule=(0.05, 0.05))
    app_id = emulator.add_application("a")
    emulator.add_webhook(
        app_id, {"url": "http://127.0.0.1:9/down", "filters": [{"eventType": "crjob:created"}]}
    )
    emulator.add_webhook(app_id, {"url": receiver.url, "filters": [{"eventType": "crjob:created"}]})
    emulator.deliver("crjob:created", {"entityId": "1"}, event_id="evt-1")
    deadline = time.monotonic() + 30
    while emulator.pending_retries() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert emulator.pending_retries() == 0
    page = graphql(emulator, JOB_QUERY)["data"]["webhookDeliveryJobPage"]
    assert page["totalElements"] == 2 and page["first"] and page["last"]
    by_status = {tuple(a["deliveryStatus"] for a in job["attempts"]["items"]): job for job in page["items"]}
    assert set(by_status) == {("failed", "failed", "failed"), ("successful",)}
    failed = by_status[("failed", "failed", "failed")]
    assert json.loads(failed["payload"])["id"] == "evt-1"
    assert failed["attempts"]["items"][0]["responseStatusCode"] is None
    assert len(receiver.received) == 1  # the successful job is never attempted again


def test_a_receiver_that_comes_back_gets_the_retry(emulator_factory: Any) -> None:
    emulator = emulator_factory(retry_schedule=(3600,))
    receiver = Receiver(status=503)
    try:
        app_id = emulator.add_application("a")
        emulator.add_webhook(app_id, {"url": receiver.url, "filters": [{"eventType": "crjob:created"}]})
        [first] = emulator.deliver("crjob:created", {})
        assert first.status == 503 and emulator.pending_retries() == 1
        receiver.status = 200
        [retry] = requests.post(f"{emulator.url}/_emulator/retry", json={}, timeout=10).json()["deliveries"]
        assert retry["status"] == 200 and retry["attempt"] == 2 and retry["job_id"] == first.job_id
        assert emulator.pending_retries() == 0
        assert receiver.raw[0] == receiver.raw[1]  # the same body, byte for byte
    finally:
        receiver.close()


def test_graphql_pages_sorts_and_refuses_what_carerix_would(emulator_factory: Any) -> None:
    emulator = emulator_factory(retry_schedule=())
    app_id = emulator.add_application("a")
    emulator.add_webhook(
        app_id, {"url": "http://127.0.0.1:9/down", "filters": [{"eventType": "crjob:created"}]}
    )
    for n in range(5):
        emulator.deliver("crjob:created", {"entityId": str(n)}, event_id=f"evt-{n}")
    ids: list[str] = []
    for page_number in range(3):
        page = graphql(
            emulator,
            JOB_QUERY,
            {
                "pageable": {
                    "page": page_number,
                    "size": 2,
                    "sort": [{"property": "_id", "direction": "DESC"}],
                }
            },
        )["data"]["webhookDeliveryJobPage"]
        assert (page["page"], page["size"], page["totalElements"], page["totalPages"]) == (
            page_number,
            2,
            5,
            3,
        )
        assert page["last"] == (page_number == 2)
        ids += [item["_id"] for item in page["items"]]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 5
    inline = graphql(emulator, "{ jobs: webhookDeliveryJobPage(pageable: {size: 1}) { items { url } } }")
    assert inline["data"]["jobs"]["items"] == [{"url": "http://127.0.0.1:9/down"}]
    for bad, message in [
        ("{ webhookDeliveryJobPage { items { nope } } }", "Cannot query field 'nope'"),
        ("{ webhookDeliveryJobPage { items } }", "must have a selection"),
        ("{ webhookDeliveryJobPage(filter: 1) { page } }", "Unknown argument"),
        ("mutation { webhookDeliveryJobPage { page } }", "only queries"),
        ("{ webhookDeliveryJobPage { page ", "Syntax Error"),
    ]:
        answer = graphql(emulator, bad)
        assert answer["data"] is None and message in answer["errors"][0]["message"], answer
    unauthenticated = requests.post(emulator.graphql_url, json={"query": JOB_QUERY}, timeout=5)
    assert unauthenticated.status_code == 401


# ------------------------------------------------------------------------------------------ process


def test_emulator_does_not_import_airflow() -> None:
    code = (
        "import sys, airflow_provider_carerix.emulator as e\n"
        "with e.CarerixEmulator() as emu: pass\n"
        "bad = [m for m in sys.modules if m == 'airflow' or m.startswith('airflow.')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_console_script_serves_until_terminated() -> None:
    script = Path(sys.executable).with_name("carerix-emulator")
    env = {**os.environ, "CARERIX_EMULATOR_CLIENT_SECRET": "cli-secret-123"}
    proc = subprocess.Popen(
        [str(script), "serve", "--port", "0", "--realm", "cli", "--client-id", "urn:test/cli"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        banner = [proc.stdout.readline() for _ in range(3)]
        url = banner[0].split()[3]
        assert url.startswith("http://127.0.0.1:")
        assert not any("cli-secret-123" in line for line in banner)
        response = requests.post(
            f"{url}/auth/realms/cli/protocol/openid-connect/token",
            data={
                "grant_type": "client_credentials",
                "client_id": "urn:test/cli",
                "client_secret": "cli-secret-123",
            },
            timeout=5,
        )
        assert response.status_code == 200
        assert requests.get(f"{url}/_emulator/state", timeout=5).json()["config"]["realm"] == "cli"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
