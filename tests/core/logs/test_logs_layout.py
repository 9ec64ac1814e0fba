"""The whole ParallelRunStep log layout after a job with successes, an exception, a timeout and a crash."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path

from airflow_parallel_run.core import FileDataset, ParallelRunConfig, run_job

SCRIPT = """
import os, time
from airflow_parallel_run import EntryScript

def init():
    EntryScript().logger.info("init in %s", EntryScript().agent_name)

def run(mini_batch):
    name = os.path.basename(mini_batch[0])
    print("scoring", name)
    if name == "f001.txt":
        raise ValueError("bad input f001")
    if name == "f002.txt":
        time.sleep(60)
    if name == "f003.txt":
        os.abort()
    return [name]
"""


def test_every_file_of_the_layout(dask_client, write_script, files, tmp_path):
    root = files(12)
    out = tmp_path / "out"
    config = ParallelRunConfig(
        entry_script=write_script(SCRIPT),
        mini_batch_size=1,
        process_count_per_node=2,
        run_max_try=2,
        run_invocation_timeout=2,
        resource_monitor_interval=0.5,
    )
    summary = run_job(config, [FileDataset.from_files(str(root))], str(out), client=dask_client)
    logs = out / "logs"
    assert summary["status"] == "succeeded", summary  # error_threshold -1 tolerates the 3 failed items
    assert (summary["succeeded_items"], summary["failed_items"], summary["failed_mini_batches"]) == (9, 3, 3)

    with open(logs / "sys" / "job_report" / "processed_mini-batches.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 9 + 3 * 2, "one row per attempt: 9 successes, 3 mini-batches tried twice"
    by_status = Counter(r["Status"] for r in rows)
    assert by_status == {"RUN_DONE": 9, "RUN_EXCEPTION": 2, "RUN_TIMEOUT": 2, "PROCESS_DIED": 2}
    for row in rows:
        assert row["Node"] == "127.0.0.1" and row["Process"].startswith("process")
        assert int(row["Succeeded"]) + int(row["Failed"]) == int(row["Total"]) == 1
        assert json.loads(row["Mini-batch Detail"])["files"][0].endswith(
            f"f{int(row['Mini-batch Id']):03d}.txt"
        )

    error_txt = (logs / "user" / "error.txt").read_text()
    assert "2 x RUN_EXCEPTION: ValueError: bad input f001 (mini-batches 1;" in error_txt
    assert "2 x RUN_TIMEOUT: mini-batch N did not finish in 2 s" in error_txt
    assert "2 x PROCESS_DIED:" in error_txt and "SIGABRT" in error_txt
    assert error_txt.count("full trace: logs/user/error/127.0.0.1/process") == 3

    for row in rows:  # each failed attempt's trace is in the file of the process that ran it
        if row["Status"] != "RUN_DONE":
            trace = (logs / "user" / "error" / "127.0.0.1" / f"{row['Process']}.txt").read_text()
            assert f"mini-batch {row['Mini-batch Id']} attempt {row['Attempt']} {row['Status']}" in trace
    raise_trace = "".join(p.read_text() for p in (logs / "user" / "error").rglob("*.txt"))
    assert 'raise ValueError("bad input f001")' in raise_trace and "Traceback" in raise_trace
    assert "Fatal Python error: Aborted" in raise_trace, "a crash's trace comes from the process's stderr"

    processes = sorted(p.stem for p in (logs / "sys" / "node" / "127.0.0.1").glob("process*.txt"))
    assert len(processes) >= 4, "timeouts and crashes replaced processes"
    for name in processes:  # every entry-script process has all its files, even when empty
        for path in (
            logs / "user" / "stdout" / "127.0.0.1" / f"{name}.stdout.txt",
            logs / "user" / "stderr" / "127.0.0.1" / f"{name}.stderr.txt",
            logs / "user" / "entry_script_log" / "127.0.0.1" / f"{name}.log.txt",
        ):
            assert path.is_file(), path
    stdout = "".join(p.read_text() for p in (logs / "user" / "stdout").rglob("*.txt"))
    assert "scoring f000.txt" in stdout
    entry_logs = "".join(p.read_text() for p in (logs / "user" / "entry_script_log").rglob("*.txt"))
    assert "|INFO|" in entry_logs and "init in process" in entry_logs
    node_logs = "".join(p.read_text() for p in (logs / "sys" / "node").rglob("*.txt"))
    assert "completed mini-batch 0 attempt 1: entry-script pid" in node_logs
    assert "elapsed" in node_logs and "process CPU" in node_logs and "run()" in node_logs
    assert re.search(r"read \d+\.\d{3}s, run\(\) \d+\.\d{3}s", node_logs), "time to read the mini-batch"

    overview = (logs / "job_progress_overview.txt").read_text()
    assert "Processed 12 of 12 mini-batches (100%)" in overview and "Job succeeded" in overview
    master = (logs / "sys" / "master_role.txt").read_text()
    assert "12 mini-batches, 12 items" in master and "result: succeeded" in master and "assembled" in master
    result = (logs / "job_result.txt").read_text()
    assert result.startswith("Job succeeded: 9 of 12 items succeeded, 3 failed")
    assert json.loads(result.split("\n\n")[-1])["failed_items"] == 3

    perf = logs / "perf" / "127.0.0.1"
    node_rows = (perf / "node_resource_usage.csv").read_text().splitlines()
    assert node_rows[0].startswith("Utc Time,Cpu Percent") and len(node_rows) >= 2
    assert len((perf / "processes_resource_usage.csv").read_text().splitlines()) >= 2
    assert (perf / "node_disk_usage.csv").is_file() and list((perf / "os").rglob("processes_*"))
    assert (logs / "report.html").stat().st_size > 100_000
    assert Path(summary["append_row_file"]).read_text().splitlines() == [
        f"f{i:03d}.txt" for i in range(12) if i not in (1, 2, 3)
    ]
