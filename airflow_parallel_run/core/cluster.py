"""Where mini-batches run: an embedded LocalCluster on 127.0.0.1, or an existing Dask scheduler."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from distributed import Client, LocalCluster


@contextmanager
def dask_client(
    scheduler: str | None = None,
    n_workers: int = 1,
    security: Any = None,
    client: Client | None = None,
) -> Iterator[Client]:
    """Yields a connected Client; an embedded cluster is shut down on exit (also on error).

    The embedded cluster keeps its Dask workers in this process (a real scheduler and workers over
    TCP on 127.0.0.1): each worker thread drives its own entry-script child process, so nothing is
    spawned that would re-import the caller's `__main__`.
    """
    if client is not None:
        yield client
        return
    if scheduler:
        with Client(scheduler, security=security, timeout="30s") as remote:
            yield remote
        return
    with (
        LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=False,  # user code runs in entry-script child processes; workers need no own process
            protocol="tcp://",
            host="127.0.0.1",
            memory_limit=0,
            dashboard_address="127.0.0.1:0",  # never on all interfaces, never a fixed port
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as local,
    ):
        yield local


def dashboard_link(client: Client) -> str | None:
    try:
        return str(client.dashboard_link)
    except Exception:  # noqa: BLE001 - no dashboard (bokeh missing) is fine
        return None
