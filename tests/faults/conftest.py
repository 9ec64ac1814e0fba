"""Fixtures of the fault-injection tests (issue 9).

Fixtures from tests/conftest.py are available here too: `dask_client` (a session LocalCluster with two
worker processes), `write_script`, `files` and the autouse `isolated_cache`.

`@pytest.mark.soak` marks the long variants. They are deselected unless a `-m` expression is given
(`pytest -m soak tests/faults` runs them), so `make test` stays fast without any ini change.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from faults_support import (
    ExternalCluster,
    make_memory_cgroup,
    mount_tmpfs,
    remove_cgroup,
    unmount,
)

HERE = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "soak: long fault-injection variants (run with `pytest -m soak`)")
    config.addinivalue_line(
        "markers", "faults_last: run after every other test (it collects a result started in the background)"
    )


def _in_here(item: pytest.Item) -> bool:
    return HERE in Path(str(item.fspath)).resolve().parents


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.option.markexpr:  # soak tests only with an explicit -m expression (`pytest -m soak`)
        soak = [i for i in items if _in_here(i) and i.get_closest_marker("soak")]
        if soak:
            config.hook.pytest_deselected(items=soak)
            items[:] = [i for i in items if i not in soak]
    last = [i for i in items if _in_here(i) and i.get_closest_marker("faults_last")]
    items[:] = [i for i in items if i not in last] + last


@pytest.fixture
def echo_script(write_script: Callable[..., str]) -> Callable[[str], str]:
    """An entry script writing `fNNN.txt N` per input file; `prelude` runs at the top of run()."""

    def make(prelude: str = "", name: str = "echo.py", header: str = "") -> str:
        body = "\n".join("    " + line for line in prelude.strip().splitlines()) if prelude.strip() else ""
        source = (
            "import os, sys, time\n"
            f"{header}\n"
            "def run(mini_batch):\n"
            f"{body}\n"
            '    return [f"{os.path.basename(p)} {open(p).read().strip()}" for p in mini_batch]\n'
        )
        return write_script(source, name=name)

    return make


@pytest.fixture
def external_cluster(tmp_path: Path) -> Iterator[Callable[..., ExternalCluster]]:
    """Starts `dask scheduler` + `dask worker` processes on 127.0.0.1; all are killed at teardown."""
    started: list[ExternalCluster] = []

    def start(
        workers: int = 1, nthreads: int = 1, nanny: bool = True, death_timeout: float = 20
    ) -> ExternalCluster:
        cluster = ExternalCluster(tmp_path / f"dask-{len(started)}")
        started.append(cluster)
        cluster.start_scheduler()
        for _ in range(workers):
            cluster.start_worker(nthreads=nthreads, nanny=nanny, death_timeout=death_timeout)
        cluster.wait_for_workers(workers)
        return cluster

    yield start
    for cluster in started:
        cluster.stop()


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str, str], Path]]:
    """Mounts a tmpfs (`tmpfs("name", "size=2m")`) under tmp_path; unmounted at teardown. Skips if impossible."""
    mounted: list[Path] = []

    def mount(name: str, options: str) -> Path:
        target = tmp_path / name
        mount_tmpfs(target, options)
        mounted.append(target)
        return target

    yield mount
    for target in reversed(mounted):
        unmount(target)


@pytest.fixture
def memory_cgroup() -> Iterator[Callable[[int], Path]]:
    """A memory cgroup limited to N bytes (for a real OOM kill of the one process that joins it)."""
    made: list[Path] = []

    def make(limit_bytes: int) -> Path:
        group = make_memory_cgroup(f"apr-oom-{uuid.uuid4().hex[:8]}", limit_bytes)
        if group is None:
            pytest.skip("cannot create a memory cgroup here (needs root and a writable cgroup filesystem)")
        made.append(group)
        return group

    yield make
    for group in made:
        remove_cgroup(group)
