"""What every Carerix operator shares: the connection it talks to, and a hook built only when a task runs."""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow_provider_carerix.version_compat import BaseOperator

if TYPE_CHECKING:
    from airflow_provider_carerix.hooks.carerix import CarerixHook


class CarerixBaseOperator(BaseOperator):
    """:param carerix_conn_id: the ``carerix`` connection (OAuth2 client credentials) the task calls Carerix with."""

    def __init__(self, *, carerix_conn_id: str = "carerix_default", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.carerix_conn_id = carerix_conn_id

    @cached_property
    def hook(self) -> CarerixHook:
        # Imported when a task runs, not when a DAG file is parsed: requests and tenacity are run-time needs.
        from airflow_provider_carerix.hooks.carerix import CarerixHook

        return CarerixHook(carerix_conn_id=self.carerix_conn_id)
