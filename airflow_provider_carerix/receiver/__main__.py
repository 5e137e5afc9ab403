"""``python -m airflow_provider_carerix.receiver`` is ``carerix-receiver``."""

from __future__ import annotations

from airflow_provider_carerix.receiver.cli import main

main()
