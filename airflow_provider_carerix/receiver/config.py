"""The receiver's settings, read once for both ways of running it: ``carerix-receiver serve`` and the API server.

Every value comes from :mod:`airflow_provider_carerix.settings` (``[carerix] receiver_*``, environment first);
``carerix-receiver serve`` options override them for one process.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from airflow_provider_carerix import settings
from airflow_provider_carerix.receiver.auth import load_secrets

__all__ = ["ReceiverSettings", "receiver_settings"]


@dataclass(frozen=True)
class ReceiverSettings:
    secrets: list[str]
    secret_header: str
    public_key_file: Path | None
    allow_unsigned_applications: bool
    max_body: int
    body_timeout: float
    min_body_rate: int
    max_header_bytes: int
    trusted_proxies: list[str]

    def override(self, **given: Any) -> ReceiverSettings:
        """These settings with every command-line value that was given (not ``None``) in place."""
        return replace(self, **{k: v for k, v in given.items() if v is not None})

    def app_kwargs(self) -> dict[str, Any]:
        """What :func:`~airflow_provider_carerix.receiver.app.create_app` takes from the settings."""
        return {
            "secrets": self.secrets,
            "secret_header": self.secret_header,
            "public_key": self.public_key_file.read_bytes() if self.public_key_file else None,
            "allow_unsigned_applications": self.allow_unsigned_applications,
            "max_body": self.max_body,
            "body_timeout": self.body_timeout,
            "min_body_rate": self.min_body_rate,
            "max_header_bytes": self.max_header_bytes,
        }


def receiver_settings(secret_file: Path | str | None = None) -> ReceiverSettings:
    """Every receiver setting; :class:`~airflow_provider_carerix.settings.ConfigurationError` names a bad one."""
    key_file = settings.get("receiver_public_key_file").value
    return ReceiverSettings(
        secrets=load_secrets(secret_file),
        secret_header=settings.get("receiver_secret_header").value,
        public_key_file=Path(key_file) if key_file else None,
        allow_unsigned_applications=settings.get_bool("receiver_allow_unsigned_applications"),
        max_body=settings.get_int("receiver_max_body", minimum=1),
        body_timeout=settings.get_float("receiver_body_timeout", minimum=0.1),
        min_body_rate=settings.get_int("receiver_min_body_rate", minimum=0),
        max_header_bytes=settings.get_int("receiver_max_header_bytes", minimum=1024),
        trusted_proxies=settings.get_list("receiver_trusted_proxies")[0],
    )
