"""A local Carerix for tests, the demo and offline development: see :mod:`.server` (``carerix-emulator``)."""

from __future__ import annotations

from airflow_provider_carerix.emulator.cli import main
from airflow_provider_carerix.emulator.server import CarerixEmulator
from airflow_provider_carerix.emulator.state import (
    API_PREFIX,
    APPLICATION_KINDS,
    CONTROL_PREFIX,
    DEFAULT_RETRY_SCHEDULE,
    GRAPHQL_PATH,
    MANAGE_SCOPE,
    SIGNATURE_ALGORITHM,
    SIGNATURE_HEADER,
    Delivery,
    Fault,
    RecordedRequest,
)

__all__ = [
    "API_PREFIX",
    "APPLICATION_KINDS",
    "CONTROL_PREFIX",
    "DEFAULT_RETRY_SCHEDULE",
    "GRAPHQL_PATH",
    "MANAGE_SCOPE",
    "SIGNATURE_ALGORITHM",
    "SIGNATURE_HEADER",
    "CarerixEmulator",
    "Delivery",
    "Fault",
    "RecordedRequest",
    "main",
]
