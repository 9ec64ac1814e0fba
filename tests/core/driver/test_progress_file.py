"""logs/sys/progress.json: the machine-readable progress the Airflow UI's "Parallel run" tab polls."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from airflow_parallel_run.core import FileDataset, ParallelRunConfig, run_job

SCRIPT = """
import os, time

def run(mini_batch):
    name = os.path.basename(mini_batch[0])
    time.sleep(0.05)
    if name in ("f003.txt", "f007.txt"):
        raise ValueError(f"cannot score {name}")
    return [name]
"""
SECRET = "s3cr3t-env-value-7f1d"


def test_progress_file_while_running_and_at_the_end(dask_client, write_script, files, tmp_path):
    root = files(60)
    out = tmp_path / "out"
    config = ParallelRunConfig(
        entry_script=write_script(SCRIPT),
        mini_batch_size=1,
        process_count_per_node=2,
        run_max_try=2,
        environment_variables={"API_TOKEN": SECRET},
    )
    progress = out / "logs" / "sys" / "progress.json"
    seen: list[dict[str, Any]] = []
    bad: list[str] = []
    stop = threading.Event()

    def watch() -> None:  # reads as the UI does, as fast as it can: never a half-written document
        while not stop.is_set():
            try:
                text = progress.read_text()
            except FileNotFoundError:
                time.sleep(0.01)
                continue
            try:
                seen.append(json.loads(text))
            except ValueError:
                bad.append(text)
            time.sleep(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        summary = run_job(config, [FileDataset.from_files(str(root))], str(out), client=dask_client)
    finally:
        stop.set()
        watcher.join(timeout=10)
    assert not bad, f"a reader saw a partial progress.json: {bad[0][:200]!r}"
    assert summary["failed_mini_batches"] == 2 and summary["status"] == "succeeded", summary

    running = [doc for doc in seen if doc["state"] == "running"]
    assert running, "no running state was observed"
    assert len({doc["done_mini_batches"] for doc in running}) >= 2, "progress did not move between reads"
    for earlier, later in zip(running, running[1:], strict=False):
        assert later["done_mini_batches"] >= earlier["done_mini_batches"]
        assert later["updated"] >= earlier["updated"]

    final = json.loads(progress.read_text())
    assert final["state"] == "succeeded" and final["summary"] == summary
    assert final["job_id"] and final["total_mini_batches"] == final["done_mini_batches"] == 60
    for key in (
        "succeeded_mini_batches",
        "failed_mini_batches",
        "reused_mini_batches",
        "total_items",
        "succeeded_items",
        "failed_items",
    ):
        assert final[key] == summary[key], key
    assert final["items_per_s"] > 0 and final["eta_s"] == 0
    errors = final["recent_errors"]
    assert {(e["mini_batch"], e["attempt"], e["final"]) for e in errors} == {
        (3, 1, False),
        (3, 2, True),
        (7, 1, False),
        (7, 2, True),
    }
    for error in errors:
        assert error["status"] == "RUN_EXCEPTION"
        assert error["message"].startswith("ValueError: cannot score f00"), error
        assert (out / "logs" / error["trace_file"]).is_file(), error
    assert SECRET not in progress.read_text()


def test_recent_errors_keep_the_latest_twenty(dask_client, write_script, files, tmp_path):
    root = files(30)
    config = ParallelRunConfig(
        entry_script=write_script("def run(mini_batch):\n    raise RuntimeError('always')\n"),
        mini_batch_size=1,
        process_count_per_node=2,
        run_max_try=1,
    )
    summary = run_job(config, [FileDataset.from_files(str(root))], str(tmp_path / "out"), client=dask_client)
    assert summary["status"] == "failed"
    final = json.loads(Path(tmp_path / "out" / "logs" / "sys" / "progress.json").read_text())
    assert final["state"] == "failed" and final["summary"]["status"] == "failed"
    assert len(final["recent_errors"]) == 20
    assert all(e["final"] for e in final["recent_errors"])
