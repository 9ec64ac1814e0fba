"""The watch lease of an in-cluster job (core/driver/watch_lease.py), against a real LocalCluster: a job nobody
watches stops itself with words that say so; a watched job runs to its end; a job whose watcher goes
away stops once the lease ran out after the last refresh."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_parallel_run.core import ConfigError, FileDataset, ParallelRunConfig
from airflow_parallel_run.core.driver.finish import with_unlisted_note
from airflow_parallel_run.core.driver.job import JobRequest
from airflow_parallel_run.core.driver.remote import RemoteJob, submit_job, wait_for_end
from airflow_parallel_run.core.driver.watch_lease import (
    WatchLease,
    check_watch_lease,
    lease_reason,
    new_mark,
    watch_key,
)

SLOW = "import time\ndef run(mini_batch):\n    time.sleep(0.5)\n    return mini_batch\n"
LEASE_S = 3.0


def _job(write_script: Any, files: Any, tmp_path: Path, count: int, lease: float | None) -> RemoteJob:
    return RemoteJob.of(
        JobRequest(
            ParallelRunConfig(entry_script=write_script(SLOW), mini_batch_size=1, process_count_per_node=1),
            (FileDataset.from_files(str(files(count))),),
            str(tmp_path / "out"),
        ),
        watch_lease_s=lease,
    )


class _Watcher:
    """Refreshes a job's watch mark every 0.5 s, as a trigger does, until `stop()`."""

    def __init__(self, client: Any, job_id: str) -> None:
        self.client, self.job_id = client, job_id
        self.done = threading.Event()
        self.last = time.monotonic()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.done.is_set():
            self.client.set_metadata(watch_key(self.job_id), new_mark())
            self.last = time.monotonic()
            self.done.wait(0.5)

    def stop(self) -> float:
        self.done.set()
        self.thread.join()
        return self.last


@pytest.fixture
def watched(dask_client: Any) -> Iterator[Callable[[str], _Watcher]]:
    made: list[_Watcher] = []

    def watch(job_id: str) -> _Watcher:
        made.append(_Watcher(dask_client, job_id))
        return made[-1]

    yield watch
    for watcher in made:
        watcher.stop()


def test_a_job_nobody_watches_stops_with_the_lease_words(
    dask_client: Any, tmp_path: Path, write_script: Any, files: Any
) -> None:
    job = _job(write_script, files, tmp_path, 60, LEASE_S)
    started = time.monotonic()
    submit_job(dask_client, job)
    summary = wait_for_end(dask_client, job.job_id, timeout=120)
    assert summary is not None
    assert summary["status"] == "failed", summary
    # the lease words; when the stop came before the listing of the 60 inputs ended (a loaded machine lists
    # them while the first mini-batches run), the summary also says what its totals count
    words = f"Job failed: {lease_reason(LEASE_S)}"
    assert summary["message"] in (words, with_unlisted_note(words, summary["total_mini_batches"])), summary
    assert summary["message"].startswith("Job failed: no Airflow trigger watched the job for 3 s (")
    assert summary["succeeded_items"] < 60 and time.monotonic() - started < 60
    result = (tmp_path / "out" / "logs" / "job_result.txt").read_text().splitlines()[0]
    assert result == summary["message"]


def test_a_watched_job_runs_to_its_end(
    dask_client: Any, tmp_path: Path, write_script: Any, files: Any, watched: Any
) -> None:
    job = _job(write_script, files, tmp_path, 24, LEASE_S)  # 24 x 0.5 s on 2 processes: > 2 leases
    watched(job.job_id)
    started = time.monotonic()
    submit_job(dask_client, job)
    summary = wait_for_end(dask_client, job.job_id, timeout=120)
    assert summary is not None
    assert summary["status"] == "succeeded" and summary["succeeded_items"] == 24, summary
    assert time.monotonic() - started > 2 * LEASE_S, "the job outlived the lease many times over"


def test_a_job_stops_once_its_watcher_went_away(
    dask_client: Any, tmp_path: Path, write_script: Any, files: Any, watched: Any
) -> None:
    job = _job(write_script, files, tmp_path, 80, LEASE_S)
    watcher = watched(job.job_id)
    submit_job(dask_client, job)
    time.sleep(2 * LEASE_S)  # watched for two leases: still running
    assert dask_client.get_metadata(["airflow-parallel-run", job.job_id, "cancel"], default=None) is None
    last = watcher.stop()
    summary = wait_for_end(dask_client, job.job_id, timeout=120)
    ended = time.monotonic()
    assert summary is not None
    # the lease words; when the stop came before the listing of the 60 inputs ended (a loaded machine lists
    # them while the first mini-batches run), the summary also says what its totals count
    words = f"Job failed: {lease_reason(LEASE_S)}"
    assert summary["message"] in (words, with_unlisted_note(words, summary["total_mini_batches"])), summary
    assert ended - last >= LEASE_S, "not before the lease after the last refresh ran out"
    assert summary["succeeded_items"] < 80


def test_a_job_without_a_lease_ignores_the_mark(
    dask_client: Any, tmp_path: Path, write_script: Any, files: Any
) -> None:
    job = _job(write_script, files, tmp_path, 16, None)  # 16 x 0.5 s on 2 processes: > a lease of 3 s
    submit_job(dask_client, job)
    summary = wait_for_end(dask_client, job.job_id, timeout=120)
    assert summary is not None and summary["status"] == "succeeded", summary


def test_the_lease_runs_from_the_last_change_of_the_mark() -> None:
    lease = WatchLease(10.0, now=100.0)
    assert not lease.observe(None, now=109.0)  # the start counts as the first watch
    assert lease.observe(None, now=110.0)
    lease = WatchLease(10.0, now=100.0)
    assert not lease.observe("a", now=105.0)
    assert not lease.observe("a", now=114.0)
    assert lease.observe("a", now=115.0)
    assert not lease.observe("b", now=116.0), "a new mark renews it"
    assert not lease.observe(None, now=125.0), "an unreadable mark neither renews nor ends it early"
    assert lease.observe(None, now=126.0)


@pytest.mark.parametrize("value", [5, 0, -1, float("nan"), float("inf"), "300", True, None])
def test_a_bad_lease_names_the_field(value: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        check_watch_lease(value)
    assert caught.value.field == "watch_lease_s"
    assert str(caught.value).endswith("is not allowed: a finite number of seconds >= 10")


def test_a_good_lease_is_seconds() -> None:
    assert check_watch_lease(10) == 10.0 and check_watch_lease(300.5) == 300.5
