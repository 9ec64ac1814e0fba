"""The embedded cluster (`dask_client` with no scheduler) lives in the driver's process: what its Dask servers
keep is the driver's memory. Its workers run no statistical profiler, whatever the user's Dask configuration
says (the profiler sampled the driver's threads, which only wait on entry-script processes, and kept a
profile per second), and its event logs are short; a remote cluster's configuration is its own."""

from __future__ import annotations

from typing import Any

import dask

from airflow_parallel_run.core.driver.cluster import EMBEDDED_LOG_LENGTH, dask_client


def _profiling(dask_worker: Any) -> bool:
    return "profile" in dask_worker.periodic_callbacks


def test_the_embedded_cluster_s_workers_run_no_profiler() -> None:
    with dask.config.set(
        {"distributed.worker.profile.enabled": True}
    ):  # Dask's default (the suite turns it off)
        with dask_client(n_workers=2) as client:
            profiling = client.run(_profiling)
            log_lengths = client.run(lambda dask_worker: dask_worker.state.log.maxlen)
        assert (
            dask.config.get("distributed.worker.profile.enabled") is True
        )  # the caller's config is untouched
    assert len(profiling) == 2 and not any(profiling.values()), profiling
    assert set(log_lengths.values()) == {EMBEDDED_LOG_LENGTH}, log_lengths
