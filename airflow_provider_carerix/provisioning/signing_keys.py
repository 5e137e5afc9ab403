"""Provisioning records each application's public signing key in the event store, for the receivers.

Carerix serves the key on the application (``signatureVerification.publicKey``); provisioning holds the
credentials to read it, the receiver (facing the internet) does not. See :mod:`airflow_provider_carerix.delivery.signing`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from airflow_provider_carerix.definitions.models import SignatureVerification
    from airflow_provider_carerix.store import EventStore

__all__ = ["record_signing_keys", "summary"]

log = logging.getLogger(__name__)


class _KeySource(Protocol):
    def get_signing_keys(self, application_id: str) -> list[SignatureVerification]: ...


def record_signing_keys(
    hook: _KeySource,
    application_ids: Iterable[str | None],
    store: EventStore,
    *,
    say: Callable[[str], None] | None = None,
) -> dict[str, int]:
    """Read each application's public key(s) from Carerix and record them in the store.

    Returns how many keys were new per application id (0: already known). Raises what the hook or the store
    raises: provisioning that cannot record keys must not look successful, or receivers would refuse (or,
    before any key is known, accept unverified) deliveries without anyone knowing why.
    """
    say = say or log.info
    new: dict[str, int] = {}
    for application_id in dict.fromkeys(a for a in application_ids if a):
        keys = hook.get_signing_keys(application_id)
        if not keys:
            say(f"application {application_id}: Carerix serves no signing key; deliveries stay unverified")
            new[application_id] = 0
            continue
        count = 0
        for key in keys:
            assert key.public_key is not None
            count += store.record_signing_key(application_id, key.public_key, key.algorithm)
        new[application_id] = count
        say(
            f"application {application_id}: recorded {'a new' if count else 'the known'} signing key"
            + (f" ({key.algorithm})" if key.algorithm else "")
        )
    return new


def summary(new: dict[str, int]) -> dict[str, Any]:
    """JSON-ready ids and counts only (public keys are not secret, but they are long and say nothing)."""
    return {"applications": len(new), "new_keys": sum(new.values())}
