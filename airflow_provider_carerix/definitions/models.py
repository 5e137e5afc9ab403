"""Typed views of Carerix's Webhooks Management API objects and of the events it delivers.

The models read and write Carerix's own field names (``_kind``, ``_id``, ``eventType``, ``customHeaders``,
``applicationId``, ...) so that ``Model.model_validate(api_json)`` and ``model.to_api()`` are lossless, and
they accept Python names too, so users can build them from plain dicts either way.

Parsing here is deliberately lenient: what Carerix returns must always load, even a webhook someone created by
hand with a typo in it. Strict checking of what *we* are about to send lives in
:mod:`airflow_provider_carerix.definitions.validation`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

_ID = Field(default=None, validation_alias=AliasChoices("_id", "id"), serialization_alias="_id")


class _CarerixModel(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="allow", serialize_by_alias=True)

    def to_api(self) -> dict[str, Any]:
        """The JSON body Carerix expects: its own field names, no unset optional fields."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


#: An application's ``_kind``: ``Application`` in the REST guide, ``WebhookApplication`` in the GraphQL schema.
APPLICATION_KINDS = ("Application", "WebhookApplication")


class SignatureVerification(_CarerixModel):
    """How to check an application's deliveries: Carerix's ``AsymmetricSignatureVerification``.

    ``public_key`` is the PEM of the key pair Carerix signs the application's deliveries with (``Cx-Signature``).
    """

    algorithm: str | None = None
    public_key: str | None = Field(default=None, alias="publicKey")


class Application(_CarerixModel):
    """A webhook application: the container Carerix groups webhooks under."""

    kind: str = Field(default="Application", alias="_kind")
    id: str | None = _ID
    name: str | None = None
    signature_verification: SignatureVerification | None = Field(default=None, alias="signatureVerification")

    @property
    def is_application(self) -> bool:
        """Whether ``_kind`` names an application in either of Carerix's spellings."""
        return self.kind in APPLICATION_KINDS


class CustomHeader(_CarerixModel):
    """A header Carerix adds to every delivery of a webhook (how a receiver authenticates Carerix)."""

    name: str
    # repr=False: header values are usually secrets and must not leak through logs of a model's repr.
    value: str = Field(repr=False)


class WebhookFilter(_CarerixModel):
    """One ``eventType`` (``<entity>:<action>``) with an optional condition in Carerix's condition language."""

    event_type: str = Field(alias="eventType")
    condition: str | None = None


class Webhook(_CarerixModel):
    """A webhook: where Carerix POSTs events, for which event types, with which extra headers."""

    kind: str = Field(default="Webhook", alias="_kind")
    id: str | None = _ID
    url: str | None = None
    filters: list[WebhookFilter] = Field(default_factory=list)
    custom_headers: list[CustomHeader] = Field(default_factory=list, alias="customHeaders")
    status: str | None = None
    created: datetime | None = Field(default=None, alias="_createdDateTime")
    updated: datetime | None = Field(default=None, alias="_updatedDateTime")

    @property
    def enabled(self) -> bool:
        """Carerix reports ``enabled``, ``disabled`` or ``error``; an absent status means enabled."""
        return self.status in (None, "enabled")

    def to_create_body(self) -> dict[str, Any]:
        """Only what a create request carries: server-owned fields (id, status, timestamps) are dropped."""
        body = self.to_api()
        for key in ("_id", "status", "_createdDateTime", "_updatedDateTime"):
            body.pop(key, None)
        if not body.get("customHeaders"):
            body.pop("customHeaders", None)
        return body


class EventData(_CarerixModel):
    """The ``data`` part of a delivery: which entity changed and, for updates, which fields."""

    entity_id: str | int | None = Field(default=None, alias="entityId")
    changed_fields: list[str] | None = Field(default=None, alias="changedFields")


class EventPayload(_CarerixModel):
    """One delivery as Carerix POSTs it to a webhook's URL (the guide's "Expected payload")."""

    id: str = Field(min_length=1)
    time: datetime
    type: str = Field(min_length=1)
    application_id: str | None = Field(default=None, alias="applicationId")
    webhook_id: str | None = Field(default=None, alias="webhookId")
    tenant: str | None = None
    data: EventData = Field(default_factory=EventData)

    @property
    def entity(self) -> str:
        """The entity part of the type, lowercased (Carerix has been seen sending ``CREmployee:updated``)."""
        return self.type.split(":", 1)[0].lower()

    @property
    def action(self) -> str:
        return self.type.split(":", 1)[1].lower() if ":" in self.type else ""


class DeliveryAttempt(_CarerixModel):
    """One HTTP request Carerix made to deliver a job (``WebhookDeliveryJobAttempt``)."""

    id: str | None = _ID
    created: datetime | None = Field(default=None, alias="_createdDateTime")
    delivery_status: str | None = Field(default=None, alias="deliveryStatus")
    response_status_code: int | None = Field(default=None, alias="responseStatusCode")

    @property
    def failed(self) -> bool:
        return self.delivery_status != "successful"


class DeliveryJob(_CarerixModel):
    """One event on its way to one webhook, from Carerix's delivery log (``WebhookDeliveryJob``).

    ``payload`` is the delivered body as Carerix sent it (a JSON string): the receiver's input, byte for byte.
    """

    id: str | None = _ID
    created: datetime | None = Field(default=None, alias="_createdDateTime")
    payload: str | None = None
    url: str | None = Field(default=None, repr=False)
    webhook: dict[str, Any] | None = Field(default=None, repr=False)
    attempts: list[DeliveryAttempt] = Field(default_factory=list)

    @field_validator("attempts", mode="before")
    @classmethod
    def _unwrap_page(cls, value: Any) -> Any:
        """``attempts`` is a page (``{"items": [...]}``) in Carerix's schema; a bare list is accepted too."""
        if isinstance(value, dict):
            return value.get("items") or []
        return value if value is not None else []

    @property
    def webhook_id(self) -> str | None:
        value = (self.webhook or {}).get("_id", (self.webhook or {}).get("id"))
        return None if value is None else str(value)

    @property
    def delivered(self) -> bool:
        """Whether any attempt succeeded (Carerix got a 2xx from the receiver)."""
        return any(not a.failed for a in self.attempts)

    @property
    def all_failed(self) -> bool:
        """At least one attempt, and every one failed (a job never attempted yet is not failed)."""
        return bool(self.attempts) and not self.delivered
