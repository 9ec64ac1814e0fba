"""Extra link "Dask dashboard": the dashboard of the cluster that ran the task; and the XCom keys the
operator writes and the UI reads (here, so that the UI never imports the operator)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey

DASHBOARD_XCOM_KEY = "dask_dashboard_url"
#: A failed job's summary document (a succeeded one is the task's return value).
SUMMARY_XCOM_KEY = "summary"
#: Pushed when the job starts: where its logs and output are, so the UI's "Parallel run" tab finds them.
JOB_XCOM_KEY = "parallel_run_job"


class DaskDashboardLink(BaseOperatorLink):
    """Reads the dashboard URL the operator stored in XCom under `DASHBOARD_XCOM_KEY`.

    Airflow calls `get_link` on the worker after the task ran and keeps the result for the UI.
    """

    name = "Dask dashboard"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        url = XCom.get_value(ti_key=ti_key, key=DASHBOARD_XCOM_KEY)
        return str(url) if url else ""
