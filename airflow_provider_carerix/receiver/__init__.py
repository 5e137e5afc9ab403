"""The door from the internet into the user's pipelines: authenticated, durable, fast ingestion of deliveries.

Found under their own names:

* :mod:`.auth`: is this delivery from Carerix? (:class:`ReceiverAuth`, one ``verify(body, headers)``),
* :mod:`.validation`: is it a delivery we accept? (media type, size, timing, strict JSON, field limits),
* :mod:`airflow_provider_carerix.receiver.group_commit`: many requests, one transaction, beside the store,
* :mod:`.app`: the FastAPI app (``create_app``), standalone or mounted in Airflow's API server,
* :mod:`.server`: the standalone server's limits (uvicorn on httptools: head size and deadline, connections),
* :mod:`.cli`: ``carerix-receiver serve`` / ``purge``.
"""

from __future__ import annotations

from airflow_provider_carerix.receiver.app import DEFAULT_ACK_TIMEOUT, create_app
from airflow_provider_carerix.receiver.auth import (
    DEFAULT_SECRET_HEADER,
    AuthenticationError,
    ReceiverAuth,
    load_public_key,
    load_secrets,
)
from airflow_provider_carerix.receiver.cli import main
from airflow_provider_carerix.receiver.group_commit import GroupCommitter
from airflow_provider_carerix.receiver.validation import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_MIN_BODY_RATE,
)

__all__ = [
    "DEFAULT_ACK_TIMEOUT",
    "DEFAULT_BODY_TIMEOUT",
    "DEFAULT_MAX_BODY",
    "DEFAULT_MAX_HEADER_BYTES",
    "DEFAULT_MIN_BODY_RATE",
    "DEFAULT_SECRET_HEADER",
    "AuthenticationError",
    "GroupCommitter",
    "ReceiverAuth",
    "create_app",
    "load_public_key",
    "load_secrets",
    "main",
]
