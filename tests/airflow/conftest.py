"""Airflow test environment, set up before anything imports Airflow.

At import time (pytest imports conftest files before the test modules of this folder) this points
AIRFLOW_HOME at a fresh temp folder, builds a DAGs folder there (tests/dag_folders.py: symlinks to
the repo's example DAGs and their scripts, plus the test DAGs of tests/dags) and points the demo root at a temp
folder, so nothing touches ~/airflow or the repo's demo_output. The `airflow_db` fixture runs
`airflow db migrate` once per session (SQLite) for the `dag.test()` tests; unit tests need no DB.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dag_folders import build_dags_folder

if "airflow" in sys.modules:
    raise RuntimeError(
        "airflow was imported before tests/airflow/conftest.py could set AIRFLOW_HOME; "
        "run `pytest tests/airflow` or make sure earlier test modules do not import airflow"
    )

_BASE = Path(tempfile.mkdtemp(prefix="apr-airflow-"))
_HOME = _BASE / "home"
_DAGS = _HOME / "dags"
# Beside AIRFLOW_HOME, not in it: the operator refuses output folders inside AIRFLOW_HOME.
_DEMO_ROOT = _BASE / "demo_root"


atexit.register(shutil.rmtree, _BASE, True)
build_dags_folder(_DAGS)
# As Airflow's BundleDagBag does for the DAG processor and the task runner: DAG files import shared
# modules of the folder (dags/partition_assets.py) by name.
sys.path.append(str(_DAGS))
os.environ.update(
    {
        "AIRFLOW_HOME": str(_HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(_DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_HOME / 'airflow.db'}",
        "AIRFLOW_PARALLEL_RUN_DEMO_ROOT": str(_DEMO_ROOT),
    }
)


@pytest.fixture(scope="session")
def airflow_home() -> Path:
    return _HOME


@pytest.fixture(scope="session")
def demo_root() -> Path:
    return _DEMO_ROOT


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated SQLite metadata DB in the temp AIRFLOW_HOME (created once per session)."""
    db = _HOME / "airflow.db"
    result = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"airflow db migrate failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return db


@pytest.fixture
def dask_cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A cluster of separate worker processes, named by the `apr_test_dask` connection (deferrable tests)."""
    import json
    import logging

    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2,
        threads_per_worker=2,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
        silence_logs=logging.ERROR,
    ) as cluster:
        monkeypatch.setenv(
            "AIRFLOW_CONN_APR_TEST_DASK",
            json.dumps({"conn_type": "dask", "extra": {"address": cluster.scheduler_address}}),
        )
        yield cluster
