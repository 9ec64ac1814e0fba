"""A remote output folder (S3, moto's server) follows the local rules: the marker, foreign content refused,
logs replaced on a re-run, and a lock object created with an exclusive write (S3 conditional writes)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from cluster_support import Bucket

from airflow_parallel_run.core import ConfigError, FileDataset, OutputBusyError, ParallelRunConfig, run_job
from airflow_parallel_run.core.output.folder import LOCK_NAME, STALE_AFTER_S, StoreLock

ECHO = "import os\ndef run(mini_batch):\n    return [os.path.basename(p) for p in mini_batch]\n"


def _job(s3: Bucket, script: str, out: str, client: Any) -> dict[str, Any]:
    return run_job(
        ParallelRunConfig(entry_script=script),
        [FileDataset.from_files(s3.url("in"), storage_options=s3.storage_options)],
        s3.url(out),
        client=client,
        storage_options=s3.storage_options,
        cache_dir=s3.url("cache"),
    )


def test_a_remote_folder_is_marked_reused_and_foreign_logs_refused(  # type: ignore[no-untyped-def]
    s3: Bucket, dask_client, write_script: Callable[..., str]
) -> None:
    for i in range(3):
        s3.put(f"in/f{i}.txt", f"{i}\n")
    script = write_script(ECHO)
    assert _job(s3, script, "out", dask_client)["status"] == "succeeded"
    assert json.loads(s3.read("out/logs/.airflow-parallel-run"))["outputs"] == ["parallel_run_step.txt"]
    s3.put("out/logs/user/left-from-before.txt", "old\n")
    assert _job(s3, script, "out", dask_client)["status"] == "succeeded"
    keys = s3.ls("out")
    assert "out/logs/user/left-from-before.txt" not in keys, "the remote logs/ was not replaced"
    assert "out/logs/.airflow-parallel-run" in keys and "out/logs/job_result.txt" in keys
    assert not [k for k in keys if k.startswith("out/.staging") or k.endswith(LOCK_NAME)], keys
    s3.put("theirs/logs/app.log", "someone else's\n")
    with pytest.raises(ConfigError, match="theirs/logs is someone else's"):
        _job(s3, script, "theirs", dask_client)
    assert s3.ls("theirs") == ["theirs/logs/app.log"]


def test_the_lock_object_is_exclusive_and_taken_over_when_stale(s3: Bucket) -> None:
    folder = f"{s3.name}/locked"
    first = StoreLock(s3.fs, folder, s3.url("locked"), "job1")
    assert first.supported, "moto's S3 refused the conditional write"
    with pytest.raises(OutputBusyError, match="has used it since"):
        StoreLock(s3.fs, folder, s3.url("locked"), "job2")
    first.release()
    assert s3.ls("locked") == []
    stale = {"host": "pod-9", "pid": 1, "heartbeat": time.time() - STALE_AFTER_S - 5, "token": "old"}
    s3.put(f"locked/{LOCK_NAME}", json.dumps(stale))
    second = StoreLock(s3.fs, folder, s3.url("locked"), "job3")
    assert json.loads(s3.read(f"locked/{LOCK_NAME}"))["job_id"] == "job3"
    second.release()
