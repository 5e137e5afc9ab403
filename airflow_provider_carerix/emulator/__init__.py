"""A local Carerix: Keycloak-style token endpoint, Webhooks Management API and event delivery, over real HTTP.

Why it exists: Carerix has no sandbox one can script, and a mock of the hook would only test the hook against
its own assumptions. This is a real HTTP server (stdlib ``ThreadingHTTPServer`` in a background thread), so
the hook, the operators, the demo and users' offline development all talk HTTP to it exactly as they would to
Carerix, including the parts Carerix does not publish and the hook must survive: slim list entries, bare or
``items``-wrapped lists, ``id`` instead of ``_id``, a trailing slash either way, 401 on expired tokens, 429
with ``Retry-After``, 5xx, slow answers.

Like Carerix it signs every delivery: each application has an RSA key pair, the public key is served on the
application (``signatureVerification: {"algorithm", "publicKey": <PEM>}``) and every delivery carries
``Cx-Signature``, the base64 RSASSA-PKCS1-v1_5/SHA-256 signature of the raw body. Keys rotate on request
(``rotate_key``); the previous key is kept for ``key_retention`` seconds so tests can send with it.

Like Carerix it serves records over GraphQL (``crEmployeePage(qualifier, pageable, norestrict)`` and its
siblings, from a small generated data set with the field names and types of Carerix's schema), checks the
scope each query needs (403), and changing a record delivers the matching event.

Like Carerix it keeps a delivery log: one job per event and webhook with every attempt (failed ones too, e.g.
while the receiver is down), retried on ``retry_schedule`` (seconds after the previous attempt; tests shorten
it) and readable through the GraphQL query ``webhookDeliveryJobPage`` at ``/graphql/v1/graphql``.

It must not import Airflow: the console script runs it on machines and in processes without Airflow set up.

Run it: ``carerix-emulator serve --port 8089 --realm demo --client-id demo-client`` (secret from the
environment variable ``CARERIX_EMULATOR_CLIENT_SECRET``, default ``demo-secret``), or in Python::

    with CarerixEmulator() as emulator:
        os.environ["AIRFLOW_CONN_CARERIX_DEFAULT"] = emulator.connection_json()
        ...
        emulator.deliver("cremployee:updated", {"entityId": "1", "changedFields": ["lastname"]})

The parts, each under its own name (the emulator imports from the product only ``definitions``, for event
types and conditions, and ``console``, for the console script's conventions; nothing in the product imports
the emulator):

* :mod:`.server`: :class:`CarerixEmulator`, its HTTP server, routing, injected faults, the request log and
  the control API (``/_emulator/...``),
* :mod:`.token`: the token endpoint and the bearer check,
* :mod:`.management`: applications, webhooks and the Management API,
* :mod:`.signing`: key pairs per application, rotation, ``Cx-Signature``,
* :mod:`.delivery`: delivering events: jobs, attempts, retries,
* :mod:`.graphql`: the small GraphQL executor and the delivery-log query it serves,
* :mod:`.records`: the record queries (``crEmployee``, ``crEmployeePage``, ...), changes that deliver events,
* :mod:`.dataset`: the record types (a subset of Carerix's schema) and the generated data set,
* :mod:`.qualifier`: Carerix's qualifier language, the part the provider sends,
* :mod:`.state`: constants, records, and the state the parts share,
* :mod:`.cli`: ``carerix-emulator serve``.
"""

from __future__ import annotations

from airflow_provider_carerix.emulator.cli import main
from airflow_provider_carerix.emulator.server import CarerixEmulator
from airflow_provider_carerix.emulator.state import (
    API_PREFIX,
    APPLICATION_KINDS,
    CONTROL_PREFIX,
    DATA_SCOPE,
    DEFAULT_MAX_PAGE_SIZE,
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
    "DATA_SCOPE",
    "DEFAULT_MAX_PAGE_SIZE",
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
