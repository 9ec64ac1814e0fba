"""Host placement when the cluster's workers come and go: a worker counted by `wait_for_workers` may be gone
by the next question (a previous try's job was stopped and its workers restart). The placement must then
wait for a running worker, never hand the job zero slots (which ended it as "N mini-batches did not finish")."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest
from distributed import Client, LocalCluster

from airflow_parallel_run.core.driver.cluster import ClusterError, select_hosts


def _scale_to(cluster: LocalCluster, client: Client, count: int) -> None:
    cluster.scale(count)
    deadline = time.monotonic() + 30
    while len(client.scheduler_info(n_workers=-1)["workers"]) != count:
        assert time.monotonic() < deadline, f"the cluster never had {count} worker(s)"
        time.sleep(0.05)


def _leave_after_counting(client: Client, cluster: LocalCluster, rejoin_after: float | None) -> None:
    """`wait_for_workers` sees the worker; the worker then leaves before the placement lists the cluster
    (and, with `rejoin_after`, a new one joins that many seconds later)."""
    counted = client.wait_for_workers

    def wait_then_lose(n_workers: int, timeout: Any = None) -> None:
        counted(n_workers, timeout=timeout)
        client.wait_for_workers = counted  # type: ignore[method-assign]  # only the first call races
        _scale_to(cluster, client, 0)
        if rejoin_after is not None:
            threading.Timer(rejoin_after, cluster.scale, (1,)).start()

    client.wait_for_workers = wait_then_lose  # type: ignore[method-assign]


@pytest.fixture
def cluster() -> Any:
    with LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None, silence_logs=logging.ERROR
    ) as local:
        yield local


def test_a_worker_that_leaves_after_being_counted_is_waited_for(cluster: LocalCluster) -> None:
    with Client(cluster) as client:
        _leave_after_counting(client, cluster, rejoin_after=1.5)
        started = time.monotonic()
        placement = select_hosts(client, node_count=1, process_count_per_node=2, wait_s=30)
        assert placement.slots == 2 and len(placement.hosts) == 1, placement
        assert len(placement.workers) == 1
        assert time.monotonic() - started >= 1.0, "placed before the new worker joined"


def test_a_worker_that_leaves_for_good_is_a_clear_error_in_time(cluster: LocalCluster) -> None:
    with Client(cluster) as client:
        _leave_after_counting(client, cluster, rejoin_after=None)
        started = time.monotonic()
        with pytest.raises(ClusterError, match=r"has no workers \(waited 2 s\)"):
            select_hosts(client, node_count=1, process_count_per_node=1, wait_s=2)
        assert time.monotonic() - started < 10
