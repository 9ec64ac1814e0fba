"""The job's worker plugin (`JobWorker`): registered once per job, gone from the scheduler and every
worker afterwards, set up on workers that join mid-job, per worker even when several share a process,
and swept when the driver that registered it is gone."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from distributed import Client, LocalCluster

from airflow_parallel_run.core import FileDataset, ParallelRunConfig, run_job
from airflow_parallel_run.core.worker.plugin import held, register, registered, sweep_orphans
from airflow_parallel_run.core.worker.spec import JobSpec


@pytest.fixture
def in_process() -> Iterator[Callable[..., tuple[LocalCluster, Client]]]:
    """In-process LocalClusters (several Dask workers share this OS process, as the embedded one)."""
    made: list[tuple[LocalCluster, Client]] = []

    def make(workers: int = 2, threads: int = 1) -> tuple[LocalCluster, Client]:
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=threads,
            processes=False,
            protocol="tcp://",
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
            silence_logs=logging.ERROR,
        )
        made.append((cluster, Client(cluster)))
        return made[-1]

    try:
        yield make
    finally:
        for cluster, client in made:
            client.close()
            cluster.close()


def _no_job_plugins(client: Client) -> None:
    assert client.run_on_scheduler(registered) == []
    assert all(names == [] for names in client.run(held).values())


def _attempts(out: Path) -> list[str]:
    return (out / "logs" / "sys" / "job_report" / "processed_mini-batches.csv").read_text().splitlines()[1:]


def test_no_job_plugin_is_left_after_a_job(
    dask_client: Client,
    in_process,
    write_script,
    files,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    script = write_script("def run(mini_batch):\n    return mini_batch\n")
    config = ParallelRunConfig(entry_script=script, mini_batch_size=2, process_count_per_node=2)
    _, embedded = in_process()
    for n, client in enumerate((dask_client, embedded)):  # worker processes, then in-process workers
        summary = run_job(
            config, [FileDataset.from_files(str(files(5)))], str(tmp_path / f"o{n}"), client=client
        )
        assert summary["status"] == "succeeded", summary
        _no_job_plugins(client)


def test_a_worker_that_joins_mid_job_runs_attempts(in_process, write_script, files, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    calls = tmp_path / "calls.txt"
    script = write_script(f"""
        import time
        def run(mini_batch):
            with open({str(calls)!r}, "a") as handle:
                handle.write("x\\n")
            time.sleep(0.3)
            return mini_batch
    """)
    cluster, client = in_process(workers=1)
    config = ParallelRunConfig(
        entry_script=script, mini_batch_size=1, process_count_per_node=2, run_max_try=1
    )
    result: dict[str, object] = {}
    job = threading.Thread(
        target=lambda: result.update(
            run_job(config, [FileDataset.from_files(str(files(16)))], str(tmp_path / "out"), client=client)
        )
    )
    job.start()
    deadline = time.monotonic() + 60
    while (not calls.exists() or len(calls.read_text().splitlines()) < 2) and time.monotonic() < deadline:
        time.sleep(0.05)
    cluster.scale(2)
    job.join(timeout=120)
    assert result.get("status") == "succeeded", result
    processes = {row.split(",")[3] for row in _attempts(tmp_path / "out")}
    assert len(processes) >= 2, f"only {processes} ran attempts: the new worker did not set the job up"
    _no_job_plugins(client)


def test_workers_sharing_a_process_end_only_their_own_processes(
    in_process,
    write_script,
    files,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    """Each worker's end of the job sweeps what its own processes left, not a sibling's processes that
    are still in shutdown()."""
    done = tmp_path / "shutdowns"
    done.mkdir()
    script = write_script(f"""
        import os, time
        from airflow_parallel_run import EntryScript
        def run(mini_batch):
            time.sleep(0.2)
            return mini_batch
        def shutdown():
            name = EntryScript().agent_name
            time.sleep(2.0 if int(name[-3:]) % 2 == 0 else 0.0)
            open(os.path.join({str(done)!r}, name), "w").close()
    """)
    _, client = in_process(workers=2)
    config = ParallelRunConfig(entry_script=script, mini_batch_size=1, process_count_per_node=2)
    summary = run_job(config, [FileDataset.from_files(str(files(6)))], str(tmp_path / "out"), client=client)
    assert summary["status"] == "succeeded", summary
    processes = {row.split(",")[3] for row in _attempts(tmp_path / "out")}
    assert len(processes) == 2, processes
    assert sorted(p.name for p in done.iterdir()) == sorted(processes), "a shutdown() was cut short"
    master = (tmp_path / "out" / "logs" / "sys" / "master_role.txt").read_text()
    assert "that entry scripts started and left running" not in master, "a sibling's process was swept"


def test_a_plugin_whose_driver_is_gone_is_swept(in_process, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cluster, client = in_process(workers=1)
    spec = JobSpec(
        job_id="orphan",
        script_bundle=b"",
        bundle_hash="",
        entry_script="score.py",
        arguments=(),
        side_inputs=(),
        environment_variables={},
        datasets=(),
        output_url=str(tmp_path / "out"),
        staging_url=str(tmp_path / "out" / ".staging" / "orphan"),
        log_url=str(tmp_path / "out" / "logs"),
        output_action="append_row",
        append_row_format="text",
        logging_level="INFO",
        run_invocation_timeout=60,
    )
    with Client(cluster) as dying:
        name = register(dying, spec, None)
        live = register(client, JobSpec(**{**spec.__dict__, "job_id": "live"}), None)
    assert client.run_on_scheduler(registered) == sorted([name, live])
    assert client.run_on_scheduler(sweep_orphans) == [name]
    assert client.run_on_scheduler(registered) == [live]
    assert list(client.run(held).values()) == [[live]]
