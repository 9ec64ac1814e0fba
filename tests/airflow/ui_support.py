"""Helpers of the UI tests: the API server app with an auth manager that scopes DAGs per user, tokens,
and task instances cloned from a real one (for jobs whose files live elsewhere, and for scale).

`DagScopedAuthManager` is the simple auth manager (Airflow's own) where users named ``limited*`` may
read every DAG but those in `HIDDEN_DAGS`: a user "without read access to that DAG", which the simple
auth manager's roles cannot express.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager
from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

DAG_ID = "apr_test_ui_view"
HIDDEN_DAGS = {DAG_ID}
CONN_SECRET = "conn-secret-8e2f44"
ENV_SECRET = "env-secret-5d0b1c"  # the DAG's environment_variables value
STORAGE_CONN = json.dumps(
    {
        "conn_type": "aws",
        "login": "AKIAUIVIEWTEST",
        "password": CONN_SECRET,
        "extra": {"region_name": "eu-west-1"},
    }
)
AUTH_MANAGER = f"{__name__}.DagScopedAuthManager"


class DagScopedAuthManager(SimpleAuthManager):
    def is_authorized_dag(
        self, *, method: Any, user: Any, access_entity: Any = None, details: Any = None
    ) -> bool:
        if user.username.startswith("limited") and details is not None and details.id in HIDDEN_DAGS:
            return False
        return super().is_authorized_dag(
            method=method, user=user, access_entity=access_entity, details=details
        )


def token(username: str, role: str | None) -> str:
    from airflow.api_fastapi.app import get_auth_manager

    return str(get_auth_manager().generate_jwt(SimpleAuthManagerUser(username=username, role=role)))


def clone_task_instances(
    dag_id: str, run_id: str, task_id: str, count: int, *, prefix: str, states: Iterable[str] = ("success",)
) -> list[str]:
    """`count` new DAG runs, each with a copy of one real task instance (no XComs); their run ids."""
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import insert, select

    run_table, ti_table = DagRun.__table__, TaskInstance.__table__
    states = list(states)
    with create_session() as session:
        run_row = dict(
            session.execute(
                select(run_table).where(run_table.c.dag_id == dag_id, run_table.c.run_id == run_id)
            )
            .mappings()
            .one()
        )
        ti_row = dict(
            session.execute(
                select(ti_table).where(
                    ti_table.c.dag_id == dag_id, ti_table.c.run_id == run_id, ti_table.c.task_id == task_id
                )
            )
            .mappings()
            .first()
        )
        run_row.pop("id")
        now = dt.datetime.now(dt.timezone.utc)
        run_ids = [f"{prefix}{i:05d}" for i in range(count)]
        runs, tis = [], []
        for i, new_id in enumerate(run_ids):
            started = now - dt.timedelta(seconds=count - i)
            runs.append(
                {
                    **run_row,
                    "run_id": new_id,
                    "logical_date": None,
                    "start_date": started,
                    "end_date": started,
                }
            )
            tis.append(
                {
                    **ti_row,
                    "id": uuid.uuid4(),
                    "run_id": new_id,
                    "state": states[i % len(states)],
                    "start_date": started,
                    "end_date": started + dt.timedelta(seconds=7),
                }
            )
        session.execute(insert(run_table), runs)
        session.execute(insert(ti_table), tis)
    return run_ids


def push_xcoms(dag_id: str, task_id: str, values: dict[str, dict[str, Any]], map_index: int = -1) -> None:
    """XComs {run_id: {key: value}} in one insert (what the operator pushes through the execution API)."""
    from airflow.models.dagrun import DagRun
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import delete, insert, select

    with create_session() as session:
        ids = dict(
            session.execute(
                select(DagRun.run_id, DagRun.id).where(
                    DagRun.dag_id == dag_id, DagRun.run_id.in_(list(values))
                )
            ).all()
        )
        now = dt.datetime.now(dt.timezone.utc)
        rows = [
            {
                "dag_run_id": ids[run_id],
                "task_id": task_id,
                "map_index": map_index,
                "key": key,
                "dag_id": dag_id,
                "run_id": run_id,
                "value": XComModel.serialize_value(value),
                "timestamp": now + dt.timedelta(microseconds=n),
            }
            for n, (run_id, pairs) in enumerate(values.items())
            for key, value in pairs.items()
        ]
        for row in rows:
            session.execute(
                delete(XComModel).where(
                    XComModel.dag_run_id == row["dag_run_id"],
                    XComModel.task_id == task_id,
                    XComModel.map_index == map_index,
                    XComModel.key == row["key"],
                )
            )
        session.execute(insert(XComModel.__table__), rows)


# -- session fixtures (imported by the test modules) ---------------------------------------------


@pytest.fixture(scope="session")
def ui_env(airflow_db: Path) -> Iterator[None]:
    """The scoped auth manager and the job's storage connection, for this session's UI tests."""
    saved = {k: os.environ.get(k) for k in ("AIRFLOW__CORE__AUTH_MANAGER", "AIRFLOW_CONN_APR_UI_STORAGE")}
    os.environ["AIRFLOW__CORE__AUTH_MANAGER"] = AUTH_MANAGER
    os.environ["AIRFLOW_CONN_APR_UI_STORAGE"] = STORAGE_CONN
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    from airflow.api_fastapi.app import purge_cached_app

    purge_cached_app()


@pytest.fixture(scope="session")
def run(ui_env: None) -> dict[str, Any]:
    """One real run of apr_test_ui_view (dag.test): its dag_id and run_id."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    dag_run = bag.get_dag(DAG_ID).test()
    assert str(dag_run.state) == "success"
    return {"dag_id": DAG_ID, "run_id": dag_run.run_id}


@pytest.fixture(scope="session")
def app(ui_env: None) -> Any:
    """The API server app (`create_app()`): the plugin is mounted from its entry point."""
    from airflow.api_fastapi.app import create_app

    return create_app()


class Client:
    """A TestClient for one user (None: no token at all)."""

    def __init__(self, app: Any, user: str | None, role: str | None = "viewer") -> None:
        from fastapi.testclient import TestClient

        self.http = TestClient(app)
        if user is not None:
            self.http.headers["Authorization"] = f"Bearer {token(user, role)}"

    def get(self, route: str, **params: Any) -> Any:
        return self.http.get(f"/parallel-run{route}", params=params)


@pytest.fixture(scope="session")
def viewer(app: Any) -> Client:
    return Client(app, "viewer")
