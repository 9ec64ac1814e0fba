"""REST helpers for the e2e tests: a minimal Airflow 3 REST v2 client (JWT from POST /auth/token) whose
waits fail fast, with the stack's state, when the stack stops making progress.

A wait ends in one of four ways: what it waits for happened; an Airflow component died without the
test declaring it (`Stack.expect_restart`); the scheduler is stuck (`Progress`); or the timeout,
which is only the last resort for a task that keeps running.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import requests

REPO = Path(__file__).resolve().parents[2]
if str(REPO / "tools") not in sys.path:
    sys.path.insert(0, str(REPO / "tools"))

from airflow_stack import COMPONENTS, EXAMPLE_DAG_IDS, Stack, StackError, free_port  # noqa: E402

__all__ = [
    "COMPONENTS",
    "EXAMPLE_DAG_IDS",
    "REPO",
    "Api",
    "Progress",
    "Stack",
    "StackError",
    "StackStalled",
    "free_port",
]

FINISHED = ("success", "failed")
RUN_TIMEOUT = 240.0
# pytest-timeout's guard for an e2e test: its call only, never the session stack's start-up. The stack
# starts in the first test that asks for it (55-140 s on 2 busy cores) and bounds its own waits (migration,
# health, DAGs loaded: tools/airflow_stack.py); counted in the project-wide 300 s, it left that test a
# fraction of its budget (a REST backfill test was cut after 160 s of its call, its own waits of 300 s
# each unspent, with no word on the stack's state). Each wait of a test is bounded by its own timeout and
# fails with the stack's state (Progress); this guard only stops a call that never returns, so it
# is above the sum of any test's waits. A test's own `timeout` mark wins (conftest.py applies it).
E2E_CALL_TIMEOUT_S = 900
# No run or task instance changed state for this long, nothing runs, and something waits for the
# scheduler (a queued run, a scheduled or queued task instance, a running run without active tasks):
# the scheduler is stuck. On a busy 2-core machine a queued task can take 30 s to start.
STALL_SECONDS = 90.0
# Task instances in these states are the scheduler's, the executor's or the triggerer's to move on.
ACTIVE_TI_STATES = (
    "scheduled",
    "queued",
    "running",
    "deferred",
    "up_for_retry",
    "up_for_reschedule",
    "restarting",
)
WAITING_TI_STATES = ("scheduled", "queued")
IN_PROGRESS_TI_STATES = ("running", "deferred", "restarting")

T = TypeVar("T")


class StackStalled(AssertionError):
    """A wait that cannot end: the stack broke or stopped making progress (the message shows its state)."""


class Progress:
    """Watches the whole stack while a test waits, and says when waiting longer is pointless.

    `check()` raises StackStalled when a component died without the test declaring it, when a
    task instance is `running` in the database but its process is gone for longer than the
    scheduler needs to notice (its orphan check), or when nothing has changed for `stall_seconds`
    while something waits for the scheduler and nothing runs.
    """

    def __init__(self, api: Api, stall_seconds: float = STALL_SECONDS, interval: float = 3.0) -> None:
        self.api = api
        self.stack = api.stack
        self.stall_seconds = stall_seconds
        self.interval = interval
        self._fingerprint: frozenset[tuple[Any, ...]] | None = None
        self._changed_at = time.monotonic()
        self._checked_at = 0.0
        self._dead_since: dict[tuple[Any, ...], float] = {}

    @property
    def orphan_grace(self) -> float:
        """How long the scheduler may take to reset a task whose process died with its scheduler:
        the job is declared dead after `scheduler_health_check_threshold`, and the orphan check runs
        every `orphaned_tasks_check_interval`; plus a margin for a busy machine."""
        env = self.stack.env
        threshold = float(env.get("AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD", 30))
        interval = float(env.get("AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL", 300))
        return threshold + interval + 45.0

    def snapshot(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Every queued or running DAG run, and every task instance in an active state."""
        runs = self.api.get("/dags/~/dagRuns", state=["queued", "running"], limit=100)["dag_runs"]
        tis = self.api.get("/dags/~/dagRuns/~/taskInstances", state=list(ACTIVE_TI_STATES), limit=100)
        return list(runs), list(tis["task_instances"])

    def check(self) -> None:
        try:
            self.stack.raise_if_broken()
        except StackError as exc:
            raise StackStalled(str(exc)) from None
        now = time.monotonic()
        if now - self._checked_at < self.interval:
            return
        self._checked_at = now
        runs, tis = self.snapshot()
        fingerprint = frozenset(
            [("run", r["dag_id"], r["dag_run_id"], r["state"]) for r in runs]
            + [
                (
                    "ti",
                    t["dag_id"],
                    t["dag_run_id"],
                    t["task_id"],
                    t["map_index"],
                    t["state"],
                    t["try_number"],
                )
                for t in tis
            ]
        )
        if fingerprint != self._fingerprint:
            self._fingerprint = fingerprint
            self._changed_at = now
        active_runs = {(t["dag_id"], t["dag_run_id"]) for t in tis}
        waiting = [
            f"run {r['dag_id']}/{r['dag_run_id']} {r['state']}" for r in runs if r["state"] == "queued"
        ]
        waiting += [
            f"run {r['dag_id']}/{r['dag_run_id']} running without an active task"
            for r in runs
            if r["state"] == "running" and (r["dag_id"], r["dag_run_id"]) not in active_runs
        ]
        waiting += [f"task {_ti_name(t)} {t['state']}" for t in tis if t["state"] in WAITING_TI_STATES]
        in_progress = [t for t in tis if t["state"] in IN_PROGRESS_TI_STATES]
        for ti in in_progress:
            key = (ti["dag_id"], ti["dag_run_id"], ti["task_id"], ti["map_index"], ti["try_number"])
            if ti["state"] != "running" or not ti.get("pid") or _pid_alive(int(ti["pid"])):
                self._dead_since.pop(key, None)
                continue
            since = self._dead_since.setdefault(key, now)
            if now - since > self.orphan_grace:
                raise StackStalled(
                    f"task {_ti_name(ti)} is running in the database, but its process {ti['pid']} has been "
                    f"gone for {now - since:.0f} s and no scheduler reset it\n" + self.describe(runs, tis)
                )
        if waiting and not in_progress and now - self._changed_at > self.stall_seconds:
            raise StackStalled(
                f"the scheduler made no progress for {now - self._changed_at:.0f} s while "
                + "; ".join(waiting[:10])
                + "\n"
                + self.describe(runs, tis)
            )

    def describe(
        self, runs: list[dict[str, Any]] | None = None, tis: list[dict[str, Any]] | None = None
    ) -> str:
        """The active runs and task instances, then each component's state and log tail."""
        lines: list[str] = []
        if runs is None or tis is None:
            try:
                runs, tis = self.snapshot()
            except Exception as exc:  # noqa: BLE001 - the api-server itself may be what broke
                runs, tis = [], []
                lines.append(f"(runs and task instances unavailable: {exc})")
        lines += [f"run {r['dag_id']}/{r['dag_run_id']}: {r['state']}" for r in runs]
        lines += [
            f"task {_ti_name(t)}: {t['state']} (try {t['try_number']}, pid {t.get('pid')}, "
            f"under {self.stack.component_of(int(t['pid'])) if t.get('pid') else None})"
            for t in tis
        ]
        return "\n".join(
            ["active runs and task instances:", *(lines or ["(none)"]), self.stack.status_report()]
        )


def _ti_name(ti: dict[str, Any]) -> str:
    index = f"[{ti['map_index']}]" if ti.get("map_index", -1) != -1 else ""
    return f"{ti['dag_id']}/{ti['dag_run_id']}/{ti['task_id']}{index}"


def _pid_alive(pid: int) -> bool:
    import psutil

    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


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

    def post(self, path: str, body: Any, expect: tuple[int, ...] = (200, 201)) -> Any:
        response = self.request("POST", path, json=body)
        assert response.status_code in expect, f"POST {path}: {response.status_code} {response.text[:1000]}"
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

    def wait_for(
        self,
        probe: Callable[[], T | None],
        what: str,
        timeout: float = RUN_TIMEOUT,
        interval: float = 1.0,
        progress: Progress | None = None,
    ) -> T:
        """Calls `probe` until it returns something other than None or False, and returns that.

        Between calls the stack is watched (`Progress`): a wait that cannot end fails at once with the
        stack's state instead of sleeping until `timeout`.
        """
        progress = progress or Progress(self)
        deadline = time.monotonic() + timeout
        while True:
            result = probe()
            if result is not None and result is not False:
                return result
            progress.check()
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not after {timeout:.0f} s\n{progress.describe()}")
            time.sleep(interval)

    def wait_run(self, dag_id: str, run_id: str, timeout: float = RUN_TIMEOUT) -> dict[str, Any]:
        """Polls until the run has finished; returns it (state `success` or `failed`)."""

        def finished() -> dict[str, Any] | None:
            run = self.run(dag_id, run_id)
            return run if run["state"] in FINISHED else None

        return self.wait_for(finished, f"{dag_id} {run_id} finished", timeout)

    def task_instance(self, dag_id: str, run_id: str, task_id: str) -> dict[str, Any]:
        return dict(self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}"))

    def task_tries(self, dag_id: str, run_id: str, task_id: str) -> list[dict[str, Any]]:
        """Every try of a task instance, the current one included, oldest first."""
        doc = self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/tries")
        return sorted(doc["task_instances"], key=lambda ti: int(ti["try_number"]))

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
