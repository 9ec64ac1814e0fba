"""REST helpers for the e2e tests: a minimal Airflow 3 REST v2 client (JWT from POST /auth/token)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parents[2]
if str(REPO / "tools") not in sys.path:
    sys.path.insert(0, str(REPO / "tools"))

from airflow_stack import COMPONENTS, EXAMPLE_DAG_IDS, Stack, StackError, free_port  # noqa: E402

__all__ = ["COMPONENTS", "EXAMPLE_DAG_IDS", "REPO", "Api", "Stack", "StackError", "free_port"]

FINISHED = ("success", "failed")
RUN_TIMEOUT = 240.0


class Api:
    """A minimal Airflow REST v2 client (JWT from POST /auth/token)."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.url = stack.url
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {stack.token()}"

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 60)
        return self.session.request(method, f"{self.url}/api/v2{path}", **kwargs)

    def get(self, path: str, **params: Any) -> Any:
        response = self.request("GET", path, params=params or None)
        assert response.status_code == 200, f"GET {path}: {response.status_code} {response.text[:500]}"
        return response.json()

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> requests.Response:
        """POST a DAG run (manual, no logical date); the caller checks the status code."""
        return self.request(
            "POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf or {}}
        )

    def runs(self, dag_id: str, **params: Any) -> list[dict[str, Any]]:
        return list(self.get(f"/dags/{dag_id}/dagRuns", limit=100, **params)["dag_runs"])

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return dict(self.get(f"/dags/{dag_id}/dagRuns/{run_id}"))

    def wait_run(self, dag_id: str, run_id: str, timeout: float = RUN_TIMEOUT) -> dict[str, Any]:
        """Polls until the run has finished; returns it (state `success` or `failed`)."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.run(dag_id, run_id)
            if run["state"] in FINISHED:
                return run
            if time.monotonic() > deadline:
                raise AssertionError(f"{dag_id} {run_id} still {run['state']} after {timeout:.0f} s")
            time.sleep(1.0)

    def task_instance(self, dag_id: str, run_id: str, task_id: str) -> dict[str, Any]:
        return dict(self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}"))

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        entry = self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}")
        return entry["value"]

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int | None = None) -> str:
        """The task log as text: one line per structured record (event, then any error detail)."""
        if try_number is None:
            try_number = int(self.task_instance(dag_id, run_id, task_id)["try_number"])
        doc = self.get(
            f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}", full_content="true"
        )
        return "\n".join(_log_line(record) for record in doc["content"])


def _log_line(record: Any) -> str:
    if isinstance(record, str):
        return record
    line = str(record.get("event", ""))
    detail = record.get("error_detail")
    if detail:
        line += "\n" + json.dumps(detail, indent=1)
    return line
