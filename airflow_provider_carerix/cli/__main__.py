"""``python -m airflow_provider_carerix.cli``: the ``carerix-webhooks`` command."""

from __future__ import annotations

from airflow_provider_carerix.cli import main

main()
