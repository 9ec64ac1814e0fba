"""A SQL input named by an Airflow `postgres` connection, in a real task run (`dag.test()`, SQLite metadata DB,
embedded Dask cluster) against a real PostgreSQL server (tools/postgres_server.py).

The operator resolves the connection through `hooks.connection_info` (core never asks Airflow), renders the
templated query, and the connection's password appears in no log line, output or log file, cache file or XCom.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))
from postgres_server import PostgresServer  # noqa: E402
from postgres_support import throwaway_postgres  # noqa: E402

PASSWORD = "Airflow-conn-pw-51d0b3"


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    with throwaway_postgres("apr-sql-airflow-", PASSWORD) as pg:
        yield pg


def _xcoms(run: Any) -> list[Any]:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.scalars(XComModel.get_many(run_id=run.run_id, dag_ids=run.dag_id, task_ids="score"))
        return [(row.key, XComModel.deserialize_value(row)) for row in rows]


def test_a_postgres_connection_feeds_a_sql_input(
    airflow_db: Path,
    airflow_home: Path,
    demo_root: Path,
    server: PostgresServer,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    isolated_cache: Path,
) -> None:
    import sqlalchemy as sa
    from airflow.dag_processing.dagbag import DagBag

    engine = sa.create_engine(server.url())
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE apr_readings (id int PRIMARY KEY, reading float8 NOT NULL)")
        conn.exec_driver_sql("INSERT INTO apr_readings SELECT g, g / 4.0 FROM generate_series(1, 500) g")
    engine.dispose()
    # Airflow's URI form of a `postgres` connection (what `airflow connections add --conn-uri` takes)
    monkeypatch.setenv(
        "AIRFLOW_CONN_APR_TEST_PG", f"postgres://airflow:{PASSWORD}@127.0.0.1:{server.listen_port}/airflow"
    )
    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    assert not bag.import_errors, bag.import_errors
    run = bag.get_dag("apr_test_sql_connection").test(run_conf={"max_id": 240})
    log = capfd.readouterr()
    assert str(run.state) == "success", log.out[-5000:]
    xcoms = dict(_xcoms(run))
    summary = xcoms["return_value"]
    assert (summary["status"], summary["total_items"], summary["succeeded_items"]) == ("succeeded", 240, 240)
    output = pd.read_csv(summary["append_row_file"])
    assert list(output["id"]) == list(range(1, 241)) and list(output["score"]) == [
        i / 2 for i in range(1, 241)
    ]
    # the password: nowhere a value of the job travels or lands
    assert PASSWORD not in log.out + log.err
    assert PASSWORD not in json.dumps(xcoms, default=str)
    out = demo_root / "sql_connection" / "out"
    for root in (out, isolated_cache, airflow_home / "logs"):
        for path in root.rglob("*") if root.exists() else ():
            if path.is_file():
                assert PASSWORD.encode() not in path.read_bytes(), path
    assert "postgresql://127.0.0.1" in (out / "logs/sys/job_report/processed_mini-batches.csv").read_text()
