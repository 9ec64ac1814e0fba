"""End-to-end fixtures: one real Airflow 3 stack (tools/airflow_stack.py) for the whole session.

The stack runs the api-server, two schedulers, the dag-processor and the triggerer as separate
processes on free 127.0.0.1 ports with LocalExecutor, on a throw-away PostgreSQL server of its own,
in a temp AIRFLOW_HOME whose DAGs folder (tests/dag_folders.py) links the repo's example DAGs (and
their scripts) plus the test DAGs of tests/dags. Demo data, outputs and the reuse cache live in temp folders. A
finalizer stops every process group and the database server, also when start-up or a test fails; if
this process is killed, the stack's watchdog does it. Nothing here imports Airflow: the tests talk to
the stack over REST and the `airflow` CLI.

A component that dies during a test is restarted (as a process supervisor would), but the test
fails unless it declared the restart with `stack.expect_restart(component)`; the waits in
e2e_rest.py fail at once when that happens or when the scheduler stops making progress.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dag_folders import build_dags_folder
from e2e_rest import E2E_CALL_TIMEOUT_S, EXAMPLE_DAG_IDS, Api, Stack, StackError, free_port

ADMIN_PASSWORD = "e2e-admin-password"
E2E_DAG_IDS = ("apr_test_failing_scoring", "apr_test_sensor_deferrable", "apr_e2e_twenty_batches")
SCHEDULERS = 2
# Airflow's defaults, except:
# - how often a scheduler looks for tasks of a dead scheduler (300 s): a test that kills a scheduler
#   should not wait minutes for the other one to take over. The check is one query per scheduler; every
#   5 s it adds ~5 s less to the wait after `scheduler_health_check_threshold` (30 s, kept: a live
#   scheduler on a loaded 2-core machine must never be taken for dead).
# - how often the dag-processor re-parses every DAG file (30 s): the session's DAG files never change
#   (new files would still show up within `refresh_interval`, and callbacks are parsed at once), and
#   re-parsing the ~25 files every 30 s took about a third of a core for the whole session (148 s of
#   CPU in 10 min) from the tasks the tests wait for. Once an hour is never within a session.
SCHEDULER_SETTINGS = {
    "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "5",
    "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "3600",
}
# Partitions and lineage (test_e2e_partitions.py): the arrival watcher of dags/partition_assets.py polls
# every 2 s instead of 30; OpenLineage writes to a file, for DAGs that enable it only (selective enable:
# the other DAGs' tasks emit nothing and fork nothing).
LINEAGE_FILE = "openlineage.jsonl"


def _partition_settings(base: Path) -> dict[str, str]:
    return {
        "AIRFLOW_PARALLEL_RUN_ARRIVAL_POKE_S": "2",
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(
            {"type": "file", "log_file_path": str(base / LINEAGE_FILE), "append": True}
        ),
        "AIRFLOW__OPENLINEAGE__SELECTIVE_ENABLE": "True",
        "AIRFLOW__OPENLINEAGE__NAMESPACE": "apr-e2e",
    }


HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(HERE) and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(E2E_CALL_TIMEOUT_S, func_only=True))


RESTARTS: list[str] = []  # every component restart of the session, for the terminal summary


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Stack]:
    """The running stack (started once; stopped in a finalizer whatever happens)."""
    base = tmp_path_factory.mktemp("airflow-e2e")
    dags = base / "dags"
    build_dags_folder(dags)
    demo_root = base / "demo_root"
    instance = Stack(
        home=base / "home",
        port=free_port(),
        password=ADMIN_PASSWORD,
        dags_folder=dags,
        demo_root=demo_root,
        cache_root=base / "reuse-cache",
        demo_data=True,  # written before the start, not by two concurrent first DAG runs
        quiet=True,
        schedulers=SCHEDULERS,
        extra_env={**SCHEDULER_SETTINGS, **_partition_settings(base)},
    )
    request.addfinalizer(instance.stop)
    atexit.register(instance.stop)  # also when the interpreter exits without running finalizers
    try:
        instance.start()
        instance.wait_for_dags((*EXAMPLE_DAG_IDS, *E2E_DAG_IDS))
    except StackError as exc:
        pytest.fail(f"the Airflow stack did not start: {exc}\n{instance.status_report()}")
    stopping = threading.Event()
    supervisor = threading.Thread(target=_supervise, args=(instance, stopping), daemon=True)
    supervisor.start()
    yield instance
    stopping.set()
    supervisor.join(timeout=10)
    instance.stop()
    RESTARTS.extend(instance.restarts)


def _supervise(stack: Stack, stopping: threading.Event) -> None:
    """Restarts a component that exited on its own (as the CLI and any process supervisor do)."""
    while not stopping.wait(1.0):
        try:
            stack.restart_exited()
        except StackError:
            return  # exited too often: the tests fail on their own, with the component logs


@pytest.fixture(autouse=True)
def _no_unexpected_restart(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fails a test that uses the stack when a component died during it without the test declaring
    it (`with stack.expect_restart("scheduler-2"): ...`)."""
    if "stack" not in request.fixturenames:
        yield
        return
    stack: Stack = request.getfixturevalue("stack")
    yield
    fresh = stack.unexpected_restarts[stack.acknowledged_restarts :]
    stack.acknowledged_restarts = len(stack.unexpected_restarts)
    if fresh:
        pytest.fail(
            "Airflow components died during this test without the test causing it:\n  "
            + "\n  ".join(fresh)
            + "\n"
            + stack.status_report(),
            pytrace=False,
        )


@pytest.fixture(scope="session")
def api(stack: Stack) -> Api:
    return Api(stack)


@pytest.fixture(scope="session")
def demo_root(stack: Stack) -> Path:
    assert stack.demo_root is not None
    return Path(stack.demo_root)


@pytest.fixture
def stack_logs_on_failure(stack: Stack, request: pytest.FixtureRequest) -> Iterator[None]:
    """Prints the tail of every component's log when the test fails (CI has nothing else)."""
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        with contextlib.suppress(Exception):
            print(stack.status_report())


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Lists the session's component restarts (declared ones included) at the end of the output."""
    if RESTARTS:
        terminalreporter.write_sep("-", "Airflow stack components restarted during the e2e session")
        for line in RESTARTS:
            terminalreporter.write_line(line)
