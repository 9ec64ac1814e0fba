"""Fixtures of the driver tests: `client`, an in-process one-worker LocalCluster (two threads) per module, for
tests of the attempt stream (alone and in chunks) that need a real scheduler but no entry-script processes."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from distributed import Client, LocalCluster


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    with (
        LocalCluster(
            n_workers=1,
            threads_per_worker=2,
            processes=False,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as connected,
    ):
        yield connected
