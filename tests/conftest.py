"""Shared fixtures: one real Dask LocalCluster for the engine tests, and entry-script writers."""

from __future__ import annotations

import logging
import os
import signal
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dask
import pytest
from distributed import Client, LocalCluster

from airflow_parallel_run.core.reuse.cache import CACHE_ENV

#: Dask's own monitoring, slowed for every Dask server the suite starts (its clusters, the CLI's and the
#: Airflow tasks' embedded ones, the external test clusters): the event-loop health tick (20 ms), the
#: nanny's memory check (100 ms), the system monitor (500 ms) and the statistical profiler (10 ms). None
#: changes what a job does; they only watch, and they took CPU from the jobs under test: an idle
#: 2-worker LocalCluster (separate processes) took 4.0 s of CPU per 30 s with Dask's defaults and 0.55 s
#: with these, and each pytest-xdist process keeps one for the whole session. Set here in this process's
#: Dask config (workers spawned by a nanny get it) and, for the processes the tests start, in the
#: environment (as DASK_* variables); a value someone set already is kept.
QUIET_DASK_MONITORING = {
    "distributed.admin.tick.interval": "1s",
    "distributed.worker.memory.monitor-interval": "1s",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.worker.profile.enabled": False,
}


def _quiet_dask_monitoring() -> None:
    for key, value in QUIET_DASK_MONITORING.items():
        name = "DASK_" + "__".join(part.upper().replace("-", "_") for part in key.split("."))
        os.environ.setdefault(name, str(value))
    dask.config.refresh()  # this process's config read again, with the variables


def pytest_configure(config: pytest.Config) -> None:
    """Ctrl-C and SIGTERM as a terminal gives them, whatever started the suite.

    A shell starts a background command (`make test &` in a script, `(cmd &)`) with SIGINT ignored,
    and an ignored signal stays ignored in every process started from it: the tests that stop a
    process with SIGINT, as Ctrl-C in a terminal does (`make airflow`, the CLI, the PostgreSQL owner),
    would then wait for processes that never see it. Handled here, they start with the default.
    """
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGTERM) == signal.SIG_IGN:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _quiet_dask_monitoring()


@pytest.fixture(scope="session")
def dask_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    """A real cluster with two worker processes (separate OS processes, as on a real deployment). Its
    workers' reuse cache is a folder of this session (each test then points them at its own:
    `isolated_cache`), also for a worker the nanny starts again after a test killed one: never the home
    folder's."""
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
            silence_logs=logging.ERROR,
            env={CACHE_ENV: str(tmp_path_factory.mktemp("cluster-reuse-cache"))},
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


#: a finished job's last tasks (its shutdown, a killed attempt's thread) end well within this
IDLE_WAIT_S = 30.0


def _worker_tasks(dask_worker: Any) -> list[str]:
    """The keys a worker still executes (threads Dask cannot stop count too: a cancelled task still runs)."""
    state = dask_worker.state
    return sorted(str(ts.key) for ts in (*state.executing, *state.long_running))


@pytest.fixture(autouse=True)
def shared_cluster_left_idle(request: pytest.FixtureRequest) -> Iterator[None]:
    """The session's cluster must be idle after each test that used it: a task a job left running on a
    worker (a leak: run_job returned while its work went on) would otherwise take that worker's only
    thread, and a later test's job would wait behind it until its own timeout, failing far from the
    cause. The leak fails the test that made it, and the cluster restarts so the next tests start clean."""
    yield
    if "dask_client" not in request.fixturenames:
        return
    client: Client = request.getfixturevalue("dask_client")
    deadline = time.monotonic() + IDLE_WAIT_S
    while True:
        busy = {worker: keys for worker, keys in client.run(_worker_tasks).items() if keys}
        busy_on_scheduler = {w: list(keys) for w, keys in client.processing().items() if keys}
        if not busy and not busy_on_scheduler:
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    client.restart(wait_for_workers=True)
    pytest.fail(
        f"the test left tasks running on the shared Dask cluster {IDLE_WAIT_S:.0f} s after it ended "
        f"(workers: {busy}, scheduler: {busy_on_scheduler}); the cluster was restarted",
        pytrace=False,
    )


@pytest.fixture(autouse=True)
def isolated_cache(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own reuse cache, so no test reuses another's results (or the user's).

    Also on the session's cluster: its workers are processes started before the test, so the variable set
    here does not reach them, and a job run in the cluster (`submit_job`) resolves its cache there. Left at
    the workers' own (the home folder's cache, shared by every test of the run), a test's job was served
    from another test's results: 24 mini-batches all reused, a job meant to run 6 s ended in 2 s."""
    root = tmp_path / "reuse-cache"
    monkeypatch.setenv(CACHE_ENV, str(root))
    if "dask_client" in request.fixturenames:
        request.getfixturevalue("dask_client").run(_set_environ, CACHE_ENV, str(root))
    return root


def _set_environ(name: str, value: str) -> None:
    """Run on a worker: sets one variable of its environment."""
    os.environ[name] = value


@pytest.fixture
def write_script(tmp_path: Path) -> Callable[..., str]:
    """Writes an entry script from source text and returns its path."""

    def write(source: str, name: str = "score.py") -> str:
        path = tmp_path / "scripts" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
        return str(path)

    return write


@pytest.fixture
def files(tmp_path: Path) -> Callable[..., Path]:
    """Creates N small text files `f000.txt ...` holding their index; returns the folder."""

    def make(count: int, folder: str = "in") -> Path:
        root = tmp_path / folder
        root.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            (root / f"f{i:03d}.txt").write_text(f"{i}\n")
        return root

    return make


JOB_LOG_TAIL_LINES = 20
JOB_LOG_SECTION_BYTES = 60_000


def _job_log_tails(root: Path) -> str:
    """The last lines of every text file in the jobs' logs folders under a test's tmp_path (not the
    report or the resource tables): what the job said about itself when its test failed."""
    parts: list[str] = []
    size = 0
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if not path.is_file() or "logs" not in rel.parts[:-1] or "perf" in rel.parts:
            continue
        if path.suffix not in {".txt", ".log", ".csv", ".json"}:
            continue
        try:
            lines = path.read_text(errors="replace").splitlines()[-JOB_LOG_TAIL_LINES:]
        except OSError as exc:
            lines = [f"(unreadable: {exc})"]
        part = f"--- {rel}\n" + "\n".join(line[:400] for line in lines)
        size += len(part)
        if size > JOB_LOG_SECTION_BYTES:
            parts.append("--- (more files not shown)")
            break
        parts.append(part)
    return "\n".join(parts)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    """A failed test that ran jobs in its tmp_path shows their logs' tails: the folder is gone (or another
    run's by then) when a chance failure in CI is looked at, and the logs say which stage a job waited in."""
    report = yield
    if report.when == "call" and report.failed:
        root = getattr(item, "funcargs", {}).get("tmp_path")
        if isinstance(root, Path) and root.is_dir():
            tails = _job_log_tails(root)
            if tails:
                report.sections.append(("job logs (tails)", tails))
    return report
