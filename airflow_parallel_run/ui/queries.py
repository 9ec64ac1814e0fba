"""Metadata-DB queries of the pages: one task instance's job, and the list of recent jobs.

A job is a task instance with the XCom `parallel_run_job` (pushed by `ParallelRunOperator` when the
job starts); its counts come from the summary XComs (`return_value` on success, `summary` on
failure). The list is one paginated SQL query filtered by the DAGs the user may read.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from types import SimpleNamespace
from typing import Any

from airflow.models.taskinstance import TaskInstance
from airflow.models.xcom import XComModel
from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session, aliased

from airflow_parallel_run.core.summary import SUMMARY_FIGURE_KEYS
from airflow_parallel_run.links import DASHBOARD_XCOM_KEY, JOB_XCOM_KEY, SUMMARY_XCOM_KEY

RETURN_KEY = "return_value"
#: Task-instance states offered by the list's status filter.
STATES = ("running", "success", "failed", "queued", "deferred", "up_for_retry", "upstream_failed", "skipped")
#: The summary's figures shown in the list (its content key is not one: the job's page shows it).
SUMMARY_FIELDS = tuple(key for key in SUMMARY_FIGURE_KEYS if key != "cache_key")


def _value(raw: Any) -> Any:
    if raw is None:
        return None
    return XComModel.deserialize_value(SimpleNamespace(value=raw))


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def task_instance_job(
    session: Session, dag_id: str, run_id: str, task_id: str, map_index: int
) -> dict[str, Any] | None:
    """The task instance and its job's XComs, or None when there is no such task instance."""
    ti = session.execute(
        select(
            TaskInstance.state,
            TaskInstance.operator,
            TaskInstance.try_number,
            TaskInstance.start_date,
            TaskInstance.end_date,
        ).where(
            TaskInstance.dag_id == dag_id,
            TaskInstance.run_id == run_id,
            TaskInstance.task_id == task_id,
            TaskInstance.map_index == map_index,
        )
    ).first()
    if ti is None:
        return None
    xcoms = {
        key: _value(raw)
        for key, raw in session.execute(
            select(XComModel.key, XComModel.value).where(
                XComModel.dag_id == dag_id,
                XComModel.run_id == run_id,
                XComModel.task_id == task_id,
                XComModel.map_index == map_index,
                XComModel.key.in_((JOB_XCOM_KEY, RETURN_KEY, SUMMARY_XCOM_KEY, DASHBOARD_XCOM_KEY)),
            )
        )
    }
    summary = xcoms.get(RETURN_KEY) if isinstance(xcoms.get(RETURN_KEY), dict) else None
    if summary is None and isinstance(xcoms.get(SUMMARY_XCOM_KEY), dict):
        summary = xcoms[SUMMARY_XCOM_KEY]
    return {
        "state": str(ti.state) if ti.state is not None else None,
        "operator": ti.operator,
        "try_number": ti.try_number,
        "start_date": _iso(ti.start_date),
        "end_date": _iso(ti.end_date),
        "job": xcoms.get(JOB_XCOM_KEY),
        "summary": summary,
        "dashboard_url": xcoms.get(DASHBOARD_XCOM_KEY) or None,
    }


def list_jobs(
    session: Session,
    readable_dags: Collection[str],
    *,
    dag_id: str | None = None,
    state: str | None = None,
    offset: int = 0,
    limit: int = 50,
) -> tuple[list[dict[str, Any]], int]:
    """One page of jobs, newest first, and how many match; only DAGs in `readable_dags`.

    Each job carries its XCom `record` (locations) for the caller; it is not meant for the page.
    """
    query = _JobsQuery(readable_dags, dag_id, state)
    total = session.scalar(query.count())
    rows = session.execute(query.page(offset, limit)).all()
    return [_job_row(row) for row in rows], int(total or 0)


class _JobsQuery:
    """The jobs (XComs under `JOB_XCOM_KEY`) of readable DAGs joined to their task instances, with the
    task's return value and failed-summary XComs, filtered by DAG and task state."""

    def __init__(self, readable_dags: Collection[str], dag_id: str | None, state: str | None) -> None:
        self.job = job = aliased(XComModel)
        self.ret = aliased(XComModel)
        self.failed = aliased(XComModel)
        self.ti_join = and_(
            TaskInstance.dag_id == job.dag_id,
            TaskInstance.run_id == job.run_id,
            TaskInstance.task_id == job.task_id,
            TaskInstance.map_index == job.map_index,
        )
        self.conditions = [job.key == JOB_XCOM_KEY, job.dag_id.in_(list(readable_dags))]
        if dag_id:
            self.conditions.append(job.dag_id == dag_id)
        if state:
            self.conditions.append(TaskInstance.state == state)

    def _same_ti(self, other: Any, key: str) -> Any:
        return and_(
            other.dag_run_id == self.job.dag_run_id,
            other.task_id == self.job.task_id,
            other.map_index == self.job.map_index,
            other.key == key,
        )

    def count(self) -> Any:
        return (
            select(func.count())
            .select_from(self.job)
            .join(TaskInstance, self.ti_join)
            .where(*self.conditions)
        )

    def page(self, offset: int, limit: int) -> Any:
        job, ret, failed = self.job, self.ret, self.failed
        return (
            select(
                job.dag_id,
                job.run_id,
                job.task_id,
                job.map_index,
                job.value,
                job.timestamp,
                ret.value,
                failed.value,
                TaskInstance.state,
                TaskInstance.start_date,
                TaskInstance.end_date,
            )
            .select_from(job)
            .join(TaskInstance, self.ti_join)
            .outerjoin(ret, self._same_ti(ret, RETURN_KEY))
            .outerjoin(failed, self._same_ti(failed, SUMMARY_XCOM_KEY))
            .where(*self.conditions)
            .order_by(job.timestamp.desc(), job.dag_id, job.run_id, job.task_id, job.map_index)
            .offset(offset)
            .limit(limit)
        )


def _job_row(row: Any) -> dict[str, Any]:
    """One job of the list: its task instance, its record's job id and start, and its summary's fields
    (the return value when it succeeded, else the failed summary)."""
    record = _value(row[4])
    summary = _value(row[6])
    if not isinstance(summary, dict):
        summary = _value(row[7])
    summary = summary if isinstance(summary, dict) else {}
    started = record.get("started") if isinstance(record, dict) else None
    return {
        "dag_id": row[0],
        "run_id": row[1],
        "task_id": row[2],
        "map_index": row[3],
        "job_id": record.get("job_id") if isinstance(record, dict) else None,
        "ti_state": str(row[8]) if row[8] is not None else None,
        "started": started or _iso(row[5]),
        "start_date": _iso(row[9]),
        "end_date": _iso(row[10]),
        **{name: summary.get(name) for name in SUMMARY_FIELDS},
        "record": record if isinstance(record, dict) else None,
    }


def job_dag_ids(session: Session, readable_dags: Collection[str]) -> list[str]:
    """The readable DAGs that have at least one job (the list's DAG filter)."""
    return list(
        session.scalars(
            select(XComModel.dag_id)
            .where(XComModel.key == JOB_XCOM_KEY, XComModel.dag_id.in_(list(readable_dags)))
            .distinct()
            .order_by(XComModel.dag_id)
        )
    )
