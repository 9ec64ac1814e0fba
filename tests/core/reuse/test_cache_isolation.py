"""The suite's own isolation: a test's reuse cache is its own on the session's cluster too, so no test is
served another test's results (a job that should run ended at once, all of it reused)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from airflow_parallel_run.core.reuse.cache import DEFAULT_CACHE_ROOT, resolve_cache_root


def test_the_session_cluster_resolves_this_test_s_cache(dask_client: Any, isolated_cache: Path) -> None:
    roots = dask_client.run(resolve_cache_root)
    assert roots and set(roots.values()) == {str(isolated_cache)}, roots


def test_a_restarted_worker_does_not_use_the_home_cache(dask_client: Any) -> None:
    """A worker started again by its nanny (tests kill workers) has the session's folder, not ~/.cache."""
    dask_client.restart(wait_for_workers=True)
    roots = set(dask_client.run(resolve_cache_root).values())
    home = os.path.abspath(os.path.expanduser(DEFAULT_CACHE_ROOT))
    assert roots and home not in roots and all("cluster-reuse-cache" in root for root in roots), roots
