"""The Webhooks Management API: applications and their webhooks, in memory, under ``/webhooks/v1``.

It answers in the shapes Carerix might (what its guide does not pin down, the hook must survive): lists as a
bare array or ``items``-wrapped (``list_shape``), slim entries that ignore ``?fields=`` (``slim``), ``id``
instead of ``_id`` (``id_key``), and collection paths with or without a trailing slash (``trailing_slash``).
Applications carry the public key their deliveries are signed with, as Carerix serves it.
"""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import parse_qs

from airflow_provider_carerix.emulator.signing import SigningMixin
from airflow_provider_carerix.emulator.state import (
    APPLICATION_KINDS,
    SIGNATURE_ALGORITHM,
    _json_object,
    _now_iso,
    _Response,
)


class ManagementMixin(SigningMixin):
    """Applications and webhooks: the Management API (``_api``) and the calls tests make instead of it."""

    def _public(self, obj: dict[str, Any]) -> dict[str, Any]:
        out = dict(obj)
        if self.id_key != "_id":
            out[self.id_key] = out.pop("_id")
        return out

    def applications(self) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(json.dumps(a)) for a in self._apps.values()]

    def webhooks(self, application_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(json.dumps(w)) for w in self._hooks.get(application_id, {}).values()]

    def add_application(self, name: str) -> str:
        app_id = str(uuid.uuid4())
        with self._lock:
            self._apps[app_id] = {"_kind": self.application_kind, "_id": app_id, "name": name}
            self._hooks[app_id] = {}
        return app_id

    def _application(self, app_id: str) -> dict[str, Any]:
        """An application as the API answers it: with its current public key, as Carerix serves it."""
        app = dict(self._apps[app_id])
        app["_kind"] = self.application_kind
        app["signatureVerification"] = {
            "_kind": "AsymmetricSignatureVerification",
            "algorithm": SIGNATURE_ALGORITHM,
            "publicKey": self._current_key(app_id).public_pem,
        }
        return app

    def add_webhook(self, application_id: str, body: dict[str, Any]) -> str:
        """Create a webhook as if someone had done it by hand in Carerix (no token, not logged)."""
        with self._lock:
            if application_id not in self._apps:
                raise KeyError(f"no application {application_id}")
            return self._create_webhook(application_id, body)

    def set_webhook_status(self, application_id: str, webhook_id: str, status: str) -> None:
        with self._lock:
            hook = self._hooks[application_id][webhook_id]
            hook["status"] = status
            hook["_updatedDateTime"] = _now_iso()

    def _create_webhook(self, application_id: str, body: dict[str, Any]) -> str:
        webhook_id = str(uuid.uuid4())
        now = _now_iso()
        hook: dict[str, Any] = {"_kind": "Webhook", "_id": webhook_id}
        for key, value in body.items():
            if key not in ("_kind", "_id", "id", "_createdDateTime", "_updatedDateTime"):
                hook[key] = value
        hook.setdefault("filters", [])
        hook.setdefault("customHeaders", [])
        hook.setdefault("status", "enabled")
        hook["_createdDateTime"] = now
        hook["_updatedDateTime"] = now
        self._hooks[application_id][webhook_id] = hook
        return webhook_id

    def _collection_ok(self, rest: str) -> bool:
        slash = rest.endswith("/")
        return self.trailing_slash == "both" or (self.trailing_slash == "with") == slash

    def _list(self, items: list[dict[str, Any]], fields: set[str] | None) -> _Response:
        out = []
        for item in items:
            entry = {"_kind": item["_kind"], "_id": item["_id"]}
            if fields and not self.slim:
                entry.update({k: v for k, v in item.items() if k in fields})
            out.append(self._public(entry))
        return _Response(200, {"items": out, "count": len(out)} if self.list_shape == "items" else out)

    def _api(self, method: str, rest: str, query: str, body: bytes) -> _Response:
        segments = [s for s in rest.split("/") if s]
        params = parse_qs(query)
        fields = {f.strip() for v in params.get("fields", []) for f in v.split(",") if f.strip()} or None
        not_found = _Response(404, {"error": "not found"})
        if not segments or segments[0] != "applications":
            return not_found
        with self._lock:
            if len(segments) == 1:
                if not self._collection_ok(rest):
                    return not_found
                if method == "GET":
                    if fields and "signatureVerification" in fields:
                        return self._list([self._application(a) for a in self._apps], fields)
                    return self._list(
                        [{**a, "_kind": self.application_kind} for a in self._apps.values()], fields
                    )
                if method == "POST":
                    data = _json_object(body)
                    if data is None:
                        return _Response(400, {"error": "body must be a JSON object"})
                    kind = data.get("_kind", "Application")
                    if kind not in APPLICATION_KINDS:
                        return _Response(
                            400, {"error": f"_kind must be one of {list(APPLICATION_KINDS)}, got {kind!r}"}
                        )
                    app_id = self.add_application(str(data.get("name") or ""))
                    return _Response(201, self._public({"_kind": self.application_kind, "_id": app_id}))
                return _Response(405, {"error": "method not allowed"})
            app_id = segments[1]
            app = self._apps.get(app_id)
            if app is None:
                return not_found
            if len(segments) == 2:
                if method == "GET":
                    return _Response(200, self._public(self._application(app_id)))
                if method == "DELETE":
                    del self._apps[app_id]
                    self._hooks.pop(app_id, None)
                    self._keys.pop(app_id, None)
                    return _Response(204)
                return _Response(405, {"error": "method not allowed"})
            if segments[2] != "webhooks":
                return not_found
            hooks = self._hooks[app_id]
            if len(segments) == 3:
                if not self._collection_ok(rest):
                    return not_found
                if method == "GET":
                    return self._list(list(hooks.values()), fields)
                if method == "POST":
                    data = _json_object(body)
                    if data is None:
                        return _Response(400, {"error": "body must be a JSON object"})
                    webhook_id = self._create_webhook(app_id, data)
                    return _Response(201, self._public({"_kind": "Webhook", "_id": webhook_id}))
                return _Response(405, {"error": "method not allowed"})
            hook = hooks.get(segments[3])
            if hook is None:
                return not_found
            if len(segments) == 4:
                if method == "GET":
                    return _Response(200, self._public(hook))
                if method == "DELETE":
                    del hooks[segments[3]]
                    return _Response(204)
                return _Response(405, {"error": "method not allowed"})
            if len(segments) == 5 and segments[4] in ("enable", "disable"):
                if method != "POST":
                    return _Response(405, {"error": "method not allowed"})
                self.set_webhook_status(app_id, segments[3], f"{segments[4]}d")
                return _Response(200, self._public(hook))
            return not_found
