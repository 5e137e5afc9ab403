"""The Carerix page in Airflow's UI: received events, consumers' lag, webhook health (read-only)."""

from __future__ import annotations
