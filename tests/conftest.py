"""Shared fixtures: one real Dask LocalCluster for the engine tests, and entry-script writers."""

from __future__ import annotations

import logging
import signal
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from distributed import Client, LocalCluster


def pytest_configure(config: pytest.Config) -> None:
    """Ctrl-C and SIGTERM as a terminal gives them, whatever started the suite.

    A shell starts a background command (`make test &` in a script, `(cmd &)`) with SIGINT ignored,
    and an ignored signal stays ignored in every process started from it: the tests that stop a
    process with SIGINT, as Ctrl-C in a terminal does (`make airflow`, the CLI, the PostgreSQL owner),
    would then wait for processes that never see it. Handled here, they start with the default.
    """
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGTERM) == signal.SIG_IGN:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.fixture(scope="session")
def dask_client() -> Iterator[Client]:
    """A real cluster with two worker processes (separate OS processes, as on a real deployment)."""
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own reuse cache, so no test reuses another's results (or the user's)."""
    root = tmp_path / "reuse-cache"
    monkeypatch.setenv("AIRFLOW_PARALLEL_RUN_CACHE", str(root))
    return root


@pytest.fixture
def write_script(tmp_path: Path) -> Callable[..., str]:
    """Writes an entry script from source text and returns its path."""

    def write(source: str, name: str = "score.py") -> str:
        path = tmp_path / "scripts" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
        return str(path)

    return write


@pytest.fixture
def files(tmp_path: Path) -> Callable[..., Path]:
    """Creates N small text files `f000.txt ...` holding their index; returns the folder."""

    def make(count: int, folder: str = "in") -> Path:
        root = tmp_path / folder
        root.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            (root / f"f{i:03d}.txt").write_text(f"{i}\n")
        return root

    return make
