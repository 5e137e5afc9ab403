"""``python -m airflow_provider_carerix.emulator`` is ``carerix-emulator``."""

from __future__ import annotations

from airflow_provider_carerix.emulator.cli import main

main()
