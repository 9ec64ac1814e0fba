"""The embedded cluster (`dask_client` with no scheduler) lives in the driver's process: what its Dask servers
keep is the driver's memory. Its workers run no statistical profiler, whatever the user's Dask configuration
says (the profiler sampled the driver's threads, which only wait on entry-script processes, and kept a
profile per second), and its event logs are short; a remote cluster's configuration is its own."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import dask
import pytest

from airflow_parallel_run.core.driver.cluster import (
    DASHBOARD_ENV,
    EMBEDDED_LOG_LENGTH,
    dashboard_link,
    dask_client,
)


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


NO_DASHBOARD_JOB = """
import sys
from pathlib import Path
from airflow_parallel_run.core import FileDataset, ParallelRunConfig, run_job
from airflow_parallel_run.core.driver.cluster import dashboard_link

root = Path(sys.argv[1])
links = []
summary = run_job(
    ParallelRunConfig(entry_script=str(root / "score.py"), mini_batch_size=1, process_count_per_node=2),
    [FileDataset.from_files(str(root / "in"))],
    str(root / "out"),
    cache_dir=str(root / "cache"),
    on_client=lambda client: links.append(dashboard_link(client)),
)
assert summary["status"] == "succeeded" and summary["succeeded_items"] == 3, summary
assert links == [None], links
loaded = sorted(name for name in sys.modules if name.split(".")[0] == "bokeh")
assert not loaded, loaded[:5]
print("ok")
"""


def test_a_job_without_the_embedded_dashboard(tmp_path: Path) -> None:
    """`AIRFLOW_PARALLEL_RUN_EMBEDDED_DASHBOARD=0`: a job on the embedded cluster runs, its dashboard link is
    None (Dask's own link would name the scheduler's HTTP port, which then serves no dashboard) and bokeh is
    never imported (a fresh process: the suite's own cluster has one)."""
    (tmp_path / "in").mkdir()
    for name in ("a", "b", "c"):
        (tmp_path / "in" / name).write_text(name)
    (tmp_path / "score.py").write_text("def run(mini_batch):\n    return list(mini_batch)\n")
    result = subprocess.run(
        [sys.executable, "-c", NO_DASHBOARD_JOB, str(tmp_path)],
        env={**os.environ, DASHBOARD_ENV: "0"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


@pytest.mark.parametrize("value", [None, "1", ""])
def test_the_embedded_dashboard_serves_unless_turned_off(
    monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    """By default (and with any value but 0) the embedded cluster serves its dashboard on 127.0.0.1, and
    its link answers."""
    if value is None:
        monkeypatch.delenv(DASHBOARD_ENV, raising=False)
    else:
        monkeypatch.setenv(DASHBOARD_ENV, value)
    with dask_client(n_workers=1) as client:
        link = dashboard_link(client)
        assert link is not None and link.startswith("http://127.0.0.1:"), link
        with urllib.request.urlopen(link, timeout=60) as response:
            assert response.status == 200
            assert b"bokeh" in response.read().lower()
