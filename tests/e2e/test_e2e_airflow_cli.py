"""`make airflow` itself: `python tools/airflow_stack.py` prints the address and credentials, serves the
example DAGs unpaused, and stops every process on Ctrl-C.

This file sorts first so that it runs before the session's shared stack starts; it starts (and stops)
its own short-lived stack on free ports.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests
from e2e_rest import EXAMPLE_DAG_IDS, REPO, free_port

TOOL = REPO / "tools" / "airflow_stack.py"
READY = "Press Ctrl-C to stop."


@pytest.fixture
def tool(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, int]]:
    """The CLI in its own process group (as in a terminal), killed with its children at the end."""
    port = free_port()
    out = tmp_path / "stack.out"
    with open(out, "wb") as handle:
        process = subprocess.Popen(
            [sys.executable, str(TOOL), "--home", str(tmp_path / "home"), "--port", str(port)]
            + ["--demo-root", str(tmp_path / "demo_root")],
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")},
        )
    try:
        yield process, out, port
    finally:
        if process.poll() is None:
            children = psutil.Process(process.pid).children(recursive=True)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(30)
            for child in children:
                with contextlib.suppress(psutil.Error):
                    child.kill()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_for(out: Path, text: str, process: subprocess.Popen[bytes], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        content = out.read_text(errors="replace")
        if text in content:
            return content
        assert process.poll() is None, f"the tool exited with {process.returncode}:\n{content}"
        assert time.monotonic() < deadline, f"no {text!r} after {timeout:.0f} s:\n{content}"
        time.sleep(0.5)


def test_make_airflow_starts_prints_credentials_and_stops_on_ctrl_c(
    tool: tuple[subprocess.Popen[bytes], Path, int],
) -> None:
    process, out, port = tool
    content = _wait_for(out, READY, process, timeout=240)
    url = f"http://127.0.0.1:{port}"
    assert f"Airflow is up: {url}" in content
    user = re.search(r"user:\s+(\S+)", content)
    password = re.search(r"password:\s+(\S+)", content)
    assert user and password, content
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

    tree = [process.pid] + [p.pid for p in psutil.Process(process.pid).children(recursive=True)]
    assert len(tree) >= 5, "the tool and its four components"
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    assert process.wait(90) == 0
    assert "Stopped." in out.read_text()
    deadline = time.monotonic() + 10
    while any(
        psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in tree
    ):
        assert time.monotonic() < deadline, [pid for pid in tree if psutil.pid_exists(pid)]
        time.sleep(0.5)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/api/v2/monitor/health", timeout=5)
