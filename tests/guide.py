"""The guide's delivery ("Expected payload" in Carerix's webhook guide), shared by tests and benchmarks."""

from __future__ import annotations

import copy
import uuid
from typing import Any

GUIDE_EVENT: dict[str, Any] = {
    "id": "8469bf71-4942-45ea-98b8-393077288785",
    "time": "2024-02-14T14:24:40Z",
    "type": "cremployee:updated",
    "applicationId": "192e953d-1e3a-4513-b14c-a66bca4be005",
    "webhookId": "4c3174c9-deab-426a-8d26-23bbc89e461e",
    "tenant": "cxdev50streamer",
    "data": {
        "entityId": "1",
        "changedFields": [
            "touser.attributechanges",
            "touser",
            "touser.lastname",
            "modificationdate",
            "touser.modificationdate",
        ],
    },
}


def guide_event(entity_id: object | None = None, changed_fields: list[str] | None = None) -> dict[str, Any]:
    """A fresh copy of the guide's event with a new id (and, when given, another entity or changed fields)."""
    event = copy.deepcopy(GUIDE_EVENT)
    event["id"] = str(uuid.uuid4())
    if entity_id is not None:
        event["data"]["entityId"] = str(entity_id)
    if changed_fields is not None:
        event["data"]["changedFields"] = changed_fields
    return event
