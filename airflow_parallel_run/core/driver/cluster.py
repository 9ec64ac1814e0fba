"""Where mini-batches run: an embedded LocalCluster on 127.0.0.1, or an existing Dask scheduler."""

from __future__ import annotations

import logging
import os
import time
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import dask
from distributed import Client, LocalCluster

from ..worker.scratch import worker_host

#: Seconds `select_hosts` waits for a first worker before it gives up with `ClusterError`.
WORKER_WAIT_S = 30.0
#: Dask's "logs for developers" (`distributed.admin.low-level-log-length`, 1,000 by default) of the embedded
#: cluster, whose workers live in the driver's process. A worker's log of the events it got keeps each
#: task's arguments: the last 1,000 tasks' mini-batches (a fused task carries up to 64), so up to 64,000
#: mini-batches stayed in the driver's memory, all of them in smaller jobs. 16 events keep a few.
EMBEDDED_LOG_LENGTH = 16
#: Dask's configuration for the embedded cluster, read when its servers start. Besides the short logs
#: above: no statistical profiler on its workers. Their threads only wait on the entry-script processes
#: (run() runs there, where no Dask profiler looks), so the profile showed nothing of a user's code, while
#: it sampled every thread of the driver's process 100 times a second and kept a profile per second for
#: the last 1,000 s: a no-op job of 100,000 files held 15 MB more after 20 s, and a job's driver grew with
#: its duration (docs/performance.md, "The report's categories, the embedded profiler and the staging
#: folder").
EMBEDDED_DASK_CONFIG = {
    "distributed.admin.low-level-log-length": EMBEDDED_LOG_LENGTH,
    "distributed.worker.profile.enabled": False,
}


#: `AIRFLOW_PARALLEL_RUN_EMBEDDED_DASHBOARD=0` in the driver's environment (an Airflow worker's, the CLI's)
#: starts the embedded cluster without its dashboard. The dashboard serves on 127.0.0.1 only while the job
#: runs, so a browser on another machine than the task's never reaches it, and it costs every job about
#: 18 MB of the driver's memory and 0.25 s of the cluster's start (bokeh and its 280 modules; measured in
#: docs/performance.md, "The embedded cluster's dashboard"). The scheduler keeps its HTTP endpoints
#: (health, metrics) on a free 127.0.0.1 port; the task's "Dask dashboard" link is then empty.
DASHBOARD_ENV = "AIRFLOW_PARALLEL_RUN_EMBEDDED_DASHBOARD"
#: Clients of embedded clusters started without a dashboard (`dashboard_link` answers None for them: Dask's
#: own link names the scheduler's HTTP port, which has no dashboard then).
_WITHOUT_DASHBOARD: weakref.WeakSet[Client] = weakref.WeakSet()


def embedded_dashboard() -> bool:
    """Whether an embedded cluster started now serves its dashboard (`DASHBOARD_ENV`)."""
    return os.environ.get(DASHBOARD_ENV, "").strip() != "0"


class ClusterError(RuntimeError):
    """The Dask cluster cannot run the job at all (no workers joined in time)."""


@contextmanager
def dask_client(
    scheduler: str | None = None,
    n_workers: int = 1,
    security: Any = None,
    client: Client | None = None,
    threads_per_worker: int = 1,
) -> Iterator[Client]:
    """Yields a connected Client; an embedded cluster is shut down on exit (also on error).

    The embedded cluster keeps its Dask workers in this process (a real scheduler and workers over
    TCP on 127.0.0.1): each worker thread drives its own entry-script child process, so nothing is
    spawned that would re-import the caller's `__main__`. A worker's threads share its entry-script
    processes: `threads_per_worker` > 1 is for an async run() with `max_concurrency_per_process`, where
    one process runs that many mini-batches at once.
    """
    if client is not None:
        yield client
        return
    if scheduler:
        with Client(scheduler, security=security, timeout="30s") as remote:
            yield remote
        return
    dashboard = embedded_dashboard()
    with (
        dask.config.set(EMBEDDED_DASK_CONFIG),  # read when the scheduler and workers start
        LocalCluster(
            n_workers=n_workers,
            threads_per_worker=max(1, threads_per_worker),
            processes=False,  # user code runs in entry-script child processes; workers need no own process
            protocol="tcp://",
            host="127.0.0.1",
            memory_limit=0,
            dashboard_address="127.0.0.1:0",  # never on all interfaces, never a fixed port
            scheduler_kwargs={"dashboard": dashboard},  # off: its HTTP endpoints stay, bokeh is not loaded
            silence_logs=logging.ERROR,
        ) as cluster,
        # results straight from the workers (threads of this process), not relayed by the scheduler: one
        # hop instead of three per gather; a remote cluster's workers may be unreachable, so only here
        Client(cluster, direct_to_workers=True) as local,
    ):
        if not dashboard:
            _WITHOUT_DASHBOARD.add(local)
        yield local


def dashboard_link(client: Client) -> str | None:
    """The cluster's dashboard URL; None when it has none."""
    if client in _WITHOUT_DASHBOARD:
        return None
    try:
        link = client.dashboard_link
    except Exception:  # noqa: BLE001 - no dashboard (bokeh missing) is fine
        return None
    return str(link) if link else None


@dataclass(frozen=True)
class HostPlacement:
    """Where a job's entry-script processes run: `node_count` hosts, `process_count_per_node` on each.

    `hosts` are the chosen hosts (IPs, best first), `workers` the Dask worker addresses on them,
    `slots` the processes that can run at once there (per host: the smaller of
    `process_count_per_node` and the host's worker threads), `all_hosts` every host of the cluster,
    and `warnings` says where the cluster is smaller than what was asked for.
    """

    hosts: tuple[str, ...]
    workers: tuple[str, ...]
    slots: int
    all_hosts: tuple[str, ...]
    warnings: tuple[str, ...] = ()

    @property
    def restricts(self) -> bool:
        """True when the job must be kept off some hosts (submit with ``workers=hosts``)."""
        return len(self.hosts) < len(self.all_hosts)


def _running_workers(client: Client, wait_s: float) -> dict[str, Mapping[str, Any]]:
    """The cluster's running workers (address: scheduler info), waiting up to `wait_s` seconds for one.

    `Client.wait_for_workers` returning is not enough: a worker it counted may leave before the next
    question (a previous try's job stopped and its workers restart), and a placement on no host would
    give the job no slot at all. So the question is asked again until the answer itself lists a
    running worker."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            client.wait_for_workers(1, timeout=max(deadline - time.monotonic(), 0.001))
        except (TimeoutError, OSError) as exc:
            address = client.scheduler.address if client.scheduler is not None else "?"
            raise ClusterError(
                f"the Dask cluster at {address} has no workers (waited {wait_s:g} s): "
                "start Dask workers that can reach the scheduler, or fix the connection"
            ) from exc
        listed = client.scheduler_info(n_workers=-1).get("workers", {})
        running = {a: i for a, i in listed.items() if i.get("status", "running") == "running"}
        if running:
            return running
        time.sleep(0.1)  # counted a moment ago, gone now: wait_for_workers bounds the rest of the wait


def select_hosts(
    client: Client,
    node_count: int,
    process_count_per_node: int,
    wait_s: float = WORKER_WAIT_S,
    *,
    concurrency: int = 1,
) -> HostPlacement:
    """Chooses `node_count` hosts of the cluster for a job (hosts that fit `process_count_per_node`
    processes first, then by address) and says, as warnings, where the cluster falls short.

    Each attempt holds a Dask worker thread while it runs, so a host runs `process_count_per_node` x
    `concurrency` (`max_concurrency_per_process`) attempts at once when it has that many threads; the
    returned `slots` count attempts, not processes.

    Fallback when the cluster is smaller than asked for: the job runs on the hosts and threads that
    exist (one warning per shortfall). With no worker at all after `wait_s` seconds: `ClusterError`.
    """
    threads: dict[str, int] = {}
    workers: dict[str, list[str]] = {}
    for address, info in _running_workers(client, wait_s).items():
        host = worker_host(address)
        threads[host] = threads.get(host, 0) + int(info.get("nthreads", 1))
        workers.setdefault(host, []).append(address)
    per_host = process_count_per_node * max(1, concurrency)  # attempts at once on a host
    ranked = sorted(threads, key=lambda h: (-min(threads[h], per_host), h))
    chosen = tuple(ranked[: max(1, node_count)])
    warnings = []
    if len(ranked) < node_count:
        warnings.append(
            f"node_count={node_count} but the Dask cluster has {len(ranked)} host(s) ({', '.join(ranked)}): "
            f"running on {len(ranked)}; start workers on more hosts or lower node_count"
        )
    for host in chosen:
        if concurrency > 1 and threads[host] < per_host:
            warnings.append(
                f"process_count_per_node={process_count_per_node} x max_concurrency_per_process={concurrency} "
                f"but host {host} has {threads[host]} Dask worker thread(s): at most {threads[host]} "
                f"mini-batches run there at once (start its workers with --nthreads {per_host}, or lower "
                "the settings)"
            )
        elif threads[host] < process_count_per_node:
            warnings.append(
                f"process_count_per_node={process_count_per_node} but host {host} has {threads[host]} Dask "
                f"worker thread(s): at most {threads[host]} entry-script process(es) run there at once "
                f"(start its workers with --nthreads {process_count_per_node}, or lower process_count_per_node)"
            )
    return HostPlacement(
        hosts=chosen,
        workers=tuple(sorted(a for h in chosen for a in workers[h])),
        slots=sum(min(threads[h], per_host) for h in chosen),
        all_hosts=tuple(sorted(ranked)),
        warnings=tuple(warnings),
    )
