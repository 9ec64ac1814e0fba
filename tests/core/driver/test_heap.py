"""core/driver/heap.py: what the process held before a job is frozen for the job's time, and thawed after
it, also when the job fails or jobs overlap."""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from distributed import Client

from airflow_parallel_run.core import FileDataset, ParallelRunConfig, run_job
from airflow_parallel_run.core.driver.heap import older_objects_frozen


@pytest.fixture(autouse=True)
def nothing_frozen_around() -> Iterator[None]:
    assert gc.get_freeze_count() == 0
    yield
    assert gc.get_freeze_count() == 0, "a job left the process's objects frozen"


def test_a_block_freezes_what_exists_and_thaws_it_also_on_error() -> None:
    before = object()
    with pytest.raises(RuntimeError), older_objects_frozen():
        assert gc.get_freeze_count() > 0
        assert before is not None
        raise RuntimeError("the job failed")
    assert gc.get_freeze_count() == 0


def test_overlapping_blocks_share_one_freeze_until_the_last_ends() -> None:
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen: list[int] = []

    def first() -> None:
        with older_objects_frozen():
            first_in.set()
            second_in.wait(10)
        first_out.set()

    thread = threading.Thread(target=first)
    thread.start()
    assert first_in.wait(10)
    with older_objects_frozen():
        second_in.set()
        assert first_out.wait(10)
        seen.append(gc.get_freeze_count())  # the first block ended: still frozen for this one
    thread.join(10)
    assert seen and seen[0] > 0


def test_a_job_runs_frozen_and_leaves_nothing_frozen(
    dask_client: Client, write_script: Callable[..., str], tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for number in range(4):
        (folder / f"{number}.txt").write_text(str(number))
    script = write_script("def run(mini_batch):\n    return [open(p).read() for p in mini_batch]\n")
    counts: list[int] = []
    summary = run_job(
        ParallelRunConfig(entry_script=script, mini_batch_size=2),
        [FileDataset.from_files(str(folder))],
        str(tmp_path / "out"),
        client=dask_client,
        cache_dir=str(tmp_path / "cache"),
        on_driver=lambda driver: counts.append(gc.get_freeze_count()),
    )
    assert summary["status"] == "succeeded", summary
    assert counts and counts[0] > 0
