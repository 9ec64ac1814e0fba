"""Extra link "Dask dashboard": the dashboard of the cluster that ran the task."""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey

DASHBOARD_XCOM_KEY = "dask_dashboard_url"


class DaskDashboardLink(BaseOperatorLink):
    """Reads the dashboard URL the operator stored in XCom under `DASHBOARD_XCOM_KEY`.

    Airflow calls `get_link` on the worker after the task ran and keeps the result for the UI.
    """

    name = "Dask dashboard"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        url = XCom.get_value(ti_key=ti_key, key=DASHBOARD_XCOM_KEY)
        return str(url) if url else ""
