"""The resource monitor's process snapshots (`logs/perf/<ip>/os/%Y%m%d%H/processes_%M`) show the job's own
processes only, with secrets masked.

A bystander process of the same host (another task's `mysql --password=...`, masked in that task's own
log) must not appear at all; a child the entry script starts with the value of an environment variable
or storage option on its command line appears, with that value shown as `***`.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

from faults_support import read_logs

from airflow_parallel_run.core import FileDataset, ParallelRunConfig, run_job

BYSTANDER = "apr-bystander-password-" + uuid.uuid4().hex
TOKEN = "apr-env-token-" + uuid.uuid4().hex
STORE_SECRET = "apr-store-secret-" + uuid.uuid4().hex

SCRIPT = """
import os, subprocess, sys, time

def init():
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "--api", os.environ["API_TOKEN"], {secret!r}]
    )
    open({pids!r}, "w").write(str(child.pid))
    time.sleep(2.5)  # the first sample comes within a second of the first process

def run(mini_batch):
    return [os.path.basename(p) for p in mini_batch]
"""


def snapshots(out: Path) -> list[Path]:
    return sorted((out / "logs" / "perf").glob("*/os/*/processes_*"))


def test_process_snapshots_hold_only_the_jobs_processes_with_secrets_masked(  # type: ignore[no-untyped-def]
    dask_client, write_script, files, tmp_path
) -> None:
    root, out, pids = files(2), tmp_path / "out", tmp_path / "child.pid"
    bystanders = [
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "--password", BYSTANDER]),
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", f"--password={BYSTANDER}"]),
    ]
    try:
        summary = run_job(
            ParallelRunConfig(
                entry_script=write_script(SCRIPT.format(pids=str(pids), secret=STORE_SECRET)),
                mini_batch_size=1,
                process_count_per_node=1,
                environment_variables={"API_TOKEN": TOKEN},
                resource_monitor_interval=1,
            ),
            [FileDataset.from_files(str(root))],
            str(out),
            client=dask_client,
            storage_options={"client_kwargs": {"secret": STORE_SECRET}},
        )
    finally:
        for proc in bystanders:
            proc.kill()
            proc.wait()
    assert summary["status"] == "succeeded", summary
    tables = "\n".join(p.read_text() for p in snapshots(out))
    assert tables, "no process snapshot was written"
    logs = read_logs(out)
    assert BYSTANDER not in logs, "another process's password is in the logs"
    assert TOKEN not in logs and STORE_SECRET not in logs, "a secret of the job is in the logs"
    listed = {line.split()[0] for line in tables.splitlines() if line[:1] == " " or line[:1].isdigit()}
    assert not {str(p.pid) for p in bystanders} & listed, "a bystander process is listed"
    assert "airflow_parallel_run.core.worker.child" in tables, "the entry-script process is not listed"
    child = pids.read_text().strip()
    lines = [line for line in tables.splitlines() if line.split()[:1] == [child]]
    assert lines, f"the child init() started (pid {child}) is not listed:\n{tables}"
    alive = [line for line in lines if not line.endswith(" <defunct>")]  # a late sample may catch it exited
    assert alive, f"the child init() started (pid {child}) is only listed after it exited:\n{tables}"
    assert all(line.count("***") == 2 for line in alive), alive
