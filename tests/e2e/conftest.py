"""End-to-end fixtures: one real Airflow 3 stack (tools/airflow_stack.py) for the whole session.

The stack runs the api-server, scheduler, dag-processor and triggerer as separate processes on free
127.0.0.1 ports with LocalExecutor and SQLite, in a temp AIRFLOW_HOME whose DAGs folder links the
repo's example DAGs (and their scripts) plus the e2e-only DAGs of tests/e2e/dags. Demo data, outputs
and the reuse cache live in temp folders. A finalizer stops every process group, also when start-up or
a test fails. Nothing here imports Airflow: the tests talk to the stack over REST and the `airflow` CLI.
"""

from __future__ import annotations

import atexit
import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_rest import COMPONENTS, EXAMPLE_DAG_IDS, REPO, Api, Stack, StackError, free_port

E2E_DAGS = Path(__file__).resolve().parent / "dags"
ADMIN_PASSWORD = "e2e-admin-password"
E2E_DAG_IDS = ("apr_e2e_always_failing", "apr_e2e_deferrable")


def _build_dags_folder(target: Path) -> None:
    """Symlinks: the repo's example DAGs and `scripts/`, then the e2e-only DAG files."""
    target.mkdir(parents=True, exist_ok=True)
    sources = [
        *sorted((REPO / "dags").glob("*.py")),
        REPO / "dags" / "scripts",
        *sorted((REPO / "dags").glob(".airflowignore")),
        *sorted(E2E_DAGS.glob("*.py")),
    ]
    for source in sources:
        (target / source.name).symlink_to(source)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Stack]:
    """The running stack (started once; stopped in a finalizer whatever happens)."""
    base = tmp_path_factory.mktemp("airflow-e2e")
    dags = base / "dags"
    _build_dags_folder(dags)
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
    )
    request.addfinalizer(instance.stop)
    atexit.register(instance.stop)  # also when the interpreter exits without running finalizers
    try:
        instance.start()
        instance.wait_for_dags((*EXAMPLE_DAG_IDS, *E2E_DAG_IDS))
    except StackError as exc:
        pytest.fail(f"the Airflow stack did not start: {exc}\n{_component_tails(instance)}")
    stopping = threading.Event()
    supervisor = threading.Thread(target=_supervise, args=(instance, stopping), daemon=True)
    supervisor.start()
    yield instance
    stopping.set()
    supervisor.join(timeout=10)
    instance.stop()
    if instance.restarts:  # visible in CI's output: the suite passed, but a component had to restart
        print(
            "\nAirflow stack components restarted during the e2e session:\n  "
            + "\n  ".join(instance.restarts)
        )


def _supervise(stack: Stack, stopping: threading.Event) -> None:
    """Restarts a component that exited on its own (as the CLI and any process supervisor do)."""
    while not stopping.wait(2.0):
        try:
            stack.restart_exited()
        except StackError:
            return  # exited too often: the tests fail on their own, with the component logs


def _component_tails(stack: Stack) -> str:
    restarts = "".join(f"restarted: {line}\n" for line in stack.restarts)
    return restarts + "\n".join(f"--- {name} ---\n{stack.log_tail(name, 25)}" for name in COMPONENTS)


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
            print(_component_tails(stack))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report
