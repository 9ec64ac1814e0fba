"""`make airflow` itself: `python tools/airflow_stack.py` starts PostgreSQL and Airflow, prints the address,
the database and the credentials, serves the example DAGs unpaused, and leaves nothing running after
Ctrl-C (no Airflow component, no task, no Dask worker, no PostgreSQL server), even with a job running.
When the tool itself is SIGKILLed, its watchdog stops everything it started.

This file sorts first so that it runs before the session's shared stack starts; each test starts (and
stops) its own short-lived stack on free ports.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
from e2e_rest import EXAMPLE_DAG_IDS, REPO, free_port

TOOL = REPO / "tools" / "airflow_stack.py"
READY = "Press Ctrl-C to stop."


class Tool:
    """The CLI in its own process group (as in a terminal), its output file and its home."""

    def __init__(self, tmp_path: Path, *extra: str) -> None:
        self.port = free_port()
        self.home = tmp_path / "home"
        self.out = tmp_path / "stack.out"
        self.url = f"http://127.0.0.1:{self.port}"
        with open(self.out, "wb") as handle:
            self.process = subprocess.Popen(
                [sys.executable, str(TOOL), "--home", str(self.home), "--port", str(self.port), *extra],
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")},
            )

    def wait_for(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            content = self.out.read_text(errors="replace")
            if text in content:
                return content
            assert self.process.poll() is None, f"the tool exited with {self.process.returncode}:\n{content}"
            assert time.monotonic() < deadline, f"no {text!r} after {timeout:.0f} s:\n{content}"
            time.sleep(0.5)

    def postmaster(self) -> int:
        return int((self.home / "postgres" / "postmaster.pid").read_text().split()[0])

    def processes(self) -> list[psutil.Process]:
        """Every process of this stack: the tool's tree, the PostgreSQL server's, and every process whose
        environment points at this home (tasks, Dask workers and entry-script processes, also those
        that left their process group)."""
        found: dict[int, psutil.Process] = {}
        roots = [self.process.pid]
        with contextlib.suppress(OSError, ValueError):
            roots.append(self.postmaster())
        for pid in roots:
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(pid)
                for proc in [root, *root.children(recursive=True)]:
                    found[proc.pid] = proc
        for proc in psutil.process_iter(["pid"]):
            with contextlib.suppress(psutil.Error):
                if proc.environ().get("AIRFLOW_HOME") == str(self.home):
                    found[proc.pid] = proc
        return [p for p in found.values() if p.pid != os.getpid()]

    def kill(self) -> None:
        """Whatever is left (the test failed): the group, then every process of the stack."""
        leftovers = self.processes()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        for proc in leftovers:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)

    def cleanup(self) -> None:
        """The tool keeps its database between starts; the test's copy goes (with its temp folder when
        the home is out of the server account's reach)."""
        link = self.home / "postgres"
        if link.is_symlink():
            shutil.rmtree(link.resolve(), ignore_errors=True)


@pytest.fixture
def tool_factory(tmp_path: Path) -> Iterator[Any]:
    tools: list[Tool] = []

    def make(*extra: str) -> Tool:
        tools.append(Tool(tmp_path, *extra))
        return tools[-1]

    yield make
    for tool in tools:
        if tool.process.poll() is None or tool.processes():
            tool.kill()
        tool.cleanup()


def _alive(procs: list[psutil.Process]) -> list[str]:
    alive = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{proc.pid} {' '.join(proc.cmdline())[:150]}")
    return alive


def _wait_all_gone(procs: list[psutil.Process], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _alive(procs):
        assert time.monotonic() < deadline, "still running:\n" + "\n".join(_alive(procs))
        time.sleep(0.5)


def test_make_airflow_starts_prints_credentials_and_stops_on_ctrl_c(
    tool_factory: Any, tmp_path: Path
) -> None:
    tool = tool_factory("--demo-root", str(tmp_path / "demo_root"))
    content = tool.wait_for(READY, timeout=300)
    url = tool.url
    assert f"Airflow is up: {url}" in content
    assert re.search(
        r"Database: PostgreSQL \d+\.\d+ at postgresql://airflow@127\.0\.0\.1:\d+/airflow", content
    )
    assert re.search(r"database: PostgreSQL \d+\.\d+", content), content
    user = re.search(r"user:\s+(\S+)", content)
    password = re.search(r"password:\s+(\S+)", content)
    assert user and password, content
    assert password.group(1) not in content.split("Airflow is up")[0], "no secret in the database line"
    dags_line = re.search(r"DAGs:\s+(.*)", content)
    assert dags_line, content
    for dag_id in EXAMPLE_DAG_IDS:
        assert dag_id in dags_line.group(1)
    assert "(paused)" not in dags_line.group(1), "the example DAGs are unpaused"

    token = requests.post(
        f"{url}/auth/token", json={"username": user.group(1), "password": password.group(1)}, timeout=30
    )
    assert token.status_code == 201, token.text
    health = requests.get(f"{url}/api/v2/monitor/health", timeout=30).json()
    assert {health[c]["status"] for c in ("metadatabase", "scheduler", "triggerer", "dag_processor")} == {
        "healthy"
    }

    # A job in flight at Ctrl-C: the task process, its Dask cluster and entry-script processes.
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
    response = session.post(
        f"{url}/api/v2/dags/digits_file_scoring/dagRuns",
        json={"logical_date": None, "conf": {"mini_batch_size": 5}},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    run_id = response.json()["dag_run_id"]
    task = f"{url}/api/v2/dags/digits_file_scoring/dagRuns/{run_id}/taskInstances/score_digits"
    deadline = time.monotonic() + 240
    while True:
        ti = session.get(task, timeout=60).json()
        if (
            ti["state"] == "running"
            and ti.get("pid")
            and len(psutil.Process(ti["pid"]).children(recursive=True)) >= 2
        ):
            break  # the task process has started its Dask cluster (scheduler/nanny/worker processes)
        assert ti["state"] in (None, "scheduled", "queued", "running"), ti
        assert time.monotonic() < deadline, f"the task did not start its cluster: {ti}"
        time.sleep(0.5)

    procs = tool.processes()
    names = " ".join(" ".join(p.cmdline()) for p in procs)
    assert "scheduler" in names and "api_server" in names.replace("api-server", "api_server")
    assert any(p.pid == tool.postmaster() for p in procs), "the PostgreSQL server is one of them"
    assert len(procs) >= 10, [" ".join(p.cmdline())[:80] for p in procs]
    os.killpg(tool.process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    assert tool.process.wait(120) == 0
    assert "Stopped." in tool.out.read_text()
    _wait_all_gone(procs, timeout=10)
    assert not _alive(tool.processes()), "a process of the stack survived"
    assert not (tool.home / "postgres" / "postmaster.pid").exists(), "the server shut down cleanly"
    assert (tool.home / "postgres" / "PG_VERSION").is_file(), "make airflow keeps its database"
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/api/v2/monitor/health", timeout=5)


def test_sigkilled_tool_leaves_nothing_running(tool_factory: Any, tmp_path: Path) -> None:
    """The watchdog stops the components and the database server when the tool dies without a word."""
    empty = tmp_path / "no-dags"
    empty.mkdir()
    tool = tool_factory("--dags-folder", str(empty))
    tool.wait_for(READY, timeout=300)
    procs = tool.processes()
    assert any(p.pid == tool.postmaster() for p in procs)
    watchdogs = [p for p in procs if "stack_watchdog.py" in " ".join(p.cmdline())]
    assert len(watchdogs) == 1, "one watchdog"
    os.kill(tool.process.pid, signal.SIGKILL)  # the tool only: its components are in their own groups
    tool.process.wait(10)
    _wait_all_gone(procs, timeout=60)
    assert not _alive(tool.processes())
    log = (tool.home / "logs" / "watchdog.out").read_text()
    assert "is gone without stopping it" in log and "stopped the PostgreSQL server" in log, log

    # Nothing is in the way of the next start on this home: its lock is free, the server is down and
    # the kept database is there.
    with open(tool.home / "stack.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert not (tool.home / "postgres" / "postmaster.pid").exists()
    assert (tool.home / "postgres" / "PG_VERSION").is_file()
