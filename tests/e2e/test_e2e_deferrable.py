"""Deferrable sensor and operator on the real stack: the triggerer waits, no worker slot is held.

The test takes the suite's Dask cluster of separate worker processes (`dask_client`), creates the
`apr_test_dask` connection over REST and triggers `apr_test_sensor_deferrable`
(tests/dags/apr_test_sensor_fed.py) with a folder of its own. Polling the task instances over REST, it
sees the sensor `deferred` while nothing has landed, lands the files, then sees the operator `deferred` while its job
runs inside the cluster (no summary yet), then both `success` with exactly the landed files scored.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from distributed import Client
from e2e_rest import Api

pytestmark = pytest.mark.usefixtures("stack_logs_on_failure")

DAG_ID = "apr_test_sensor_deferrable"
CONN_ID = "apr_test_dask"
PARTITION = "p1"
FILES = 12


@pytest.fixture
def dask_connection(api: Api, dask_client: Client) -> Iterator[str]:
    """The suite's LocalCluster (worker processes on 127.0.0.1), named by a `dask` connection made over REST."""
    address = dask_client.scheduler.address
    api.request("DELETE", f"/connections/{CONN_ID}")
    body = {"connection_id": CONN_ID, "conn_type": "dask", "extra": json.dumps({"address": address})}
    response = api.request("POST", "/connections", json=body)
    assert response.status_code == 201, response.text
    yield address
    api.request("DELETE", f"/connections/{CONN_ID}")


def _wait_state(api: Api, run_id: str, task_id: str, wanted: str, seen: list[str], timeout: float) -> None:
    """Polls the task instance every 0.25 s until it is in `wanted`; records every state seen."""

    def reached() -> bool:
        state = api.task_instance(DAG_ID, run_id, task_id)["state"]
        if not seen or seen[-1] != state:
            seen.append(state)
        assert state == wanted or state not in ("failed", "upstream_failed", "skipped"), f"{task_id}: {seen}"
        return state == wanted

    api.wait_for(reached, f"{task_id} {wanted} (states seen: {seen})", timeout=timeout, interval=0.25)


def _xcom_or_none(api: Api, run_id: str, task_id: str, key: str) -> Any:
    response = api.request(
        "GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}"
    )
    return response.json()["value"] if response.status_code == 200 else None


def test_deferrable_sensor_and_operator_wait_in_the_triggerer(
    api: Api, demo_root: Path, dask_connection: str
) -> None:
    folder = demo_root / "deferrable" / uuid.uuid4().hex[:12]
    response = api.trigger(DAG_ID, conf={"root": str(folder), "partition": PARTITION})
    assert response.status_code == 200, response.text
    run_id = response.json()["dag_run_id"]

    sensor_states: list[str] = []
    _wait_state(api, run_id, "wait", "deferred", sensor_states, timeout=180)
    time.sleep(2)  # a few trigger polls that find nothing
    assert api.task_instance(DAG_ID, run_id, "wait")["state"] == "deferred", "still waiting for the marker"

    landing = folder / "landing" / PARTITION
    landing.mkdir(parents=True)
    for i in range(FILES):
        (landing / f"item{i:02d}.txt").write_text(f"v{i}\n")
    (landing / "_SUCCESS").touch()

    operator_states: list[str] = []
    _wait_state(api, run_id, "score", "deferred", operator_states, timeout=180)
    assert _xcom_or_none(api, run_id, "score", "return_value") is None, "deferred while the job still runs"
    assert not (folder / "out" / PARTITION / "parallel_run_step.txt").exists(), "no output yet"

    run = api.wait_run(DAG_ID, run_id)
    assert run["state"] == "success", run
    _wait_state(api, run_id, "wait", "success", sensor_states, timeout=10)
    _wait_state(api, run_id, "score", "success", operator_states, timeout=10)
    assert "deferred" in sensor_states and "deferred" in operator_states
    assert operator_states.index("deferred") < operator_states.index("success")

    reference = api.xcom(DAG_ID, run_id, "wait")
    assert reference["files"] == FILES and reference["mini_batches"] == FILES // 2
    summary = api.xcom(DAG_ID, run_id, "score")
    assert summary["status"] == "succeeded" and summary["succeeded_items"] == FILES
    lines = Path(summary["append_row_file"]).read_text().splitlines()
    assert lines == [f"item{i:02d}.txt v{i}" for i in range(FILES)]
    log = api.task_log(DAG_ID, run_id, "score")
    assert dask_connection in log or CONN_ID in log, "the log names the cluster the job ran on"
