"""Streaming planning of a csv / jsonl input (core/driver/planning.py, `first_file`): its first mini-batches run
while its later files are still being planned, with the column types the whole plan would decide (its first
file's), and a refusal of the first file still comes before the output folder is touched.

The plan is made slow deterministically: `plan_tabular_file` is wrapped so that planning a chosen file waits
until the entry script's first run() left a marker file. Without streaming that wait never ends (no attempt
starts before the plan is whole): the gate (test_streaming_plan.Gate) gives up after its `GATE_S` and the planning fails, so the test fails
instead of hanging.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from distributed import Client
from test_streaming_plan import Gate, attempt_rows, start_time

from airflow_parallel_run.core import ParallelRunConfig, TabularDataset, run_job
from airflow_parallel_run.core.driver.loop import JobDriver, streams
from airflow_parallel_run.core.errors import InputError
from airflow_parallel_run.core.inputs import tabular_scan

# run() leaves a marker on its first call (the path comes in MARKER) and returns each row's zip with its type.
MARKED_TYPES = """
import os
def run(mini_batch):
    marker = os.environ["MARKER"]
    if not os.path.exists(marker):
        open(marker, "w").close()
    return [f"{z!r} {type(z).__name__}" for z in mini_batch["zip"].tolist()]
"""


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str, Path], Gate]]:
    gates: list[Gate] = []
    original = tabular_scan.plan_tabular_file

    def plan(url: str, *args: Any, **kwargs: Any) -> Any:
        for g in gates:
            if url.endswith(g.folder):
                g.wait()
        return original(url, *args, **kwargs)

    monkeypatch.setattr(tabular_scan, "plan_tabular_file", plan)

    def make(name: str, marker: Path) -> Gate:
        gates.append(Gate(Path(name), marker))  # the file system's own gate, keyed here by a file's name
        return gates[-1]

    yield make


def _csv_files(folder: Path) -> Path:
    """Three files; the first one's zips are all digits (read as int64 by the job), a later file's hold a
    letter. The whole plan decides the types from the first file: the same types when streamed."""
    folder.mkdir(parents=True)
    (folder / "a.csv").write_text("zip,n\n" + "".join(f"{10000 + i},{i}\n" for i in range(6)))
    (folder / "b.csv").write_text("zip,n\n" + "".join(f"{20000 + i},{i}\n" for i in range(6)))
    (folder / "c.csv").write_text("zip,n\n" + "".join(f"{30000 + i},{i}\n" for i in range(6)))
    return folder


def _config(script: str, marker: Path, **kw: Any) -> ParallelRunConfig:
    kw.setdefault("process_count_per_node", 2)
    return ParallelRunConfig(
        entry_script=script, mini_batch_size=20, environment_variables={"MARKER": str(marker)}, **kw
    )


def test_a_csv_jobs_first_mini_batch_starts_before_its_last_file_is_planned(
    dask_client: Client, write_script: Callable[..., str], gate: Callable[[str, Path], Gate], tmp_path: Path
) -> None:
    data = _csv_files(tmp_path / "in")
    marker = tmp_path / "first-run"
    held = gate("c.csv", marker)
    summary = run_job(
        _config(write_script(MARKED_TYPES), marker),
        [TabularDataset.from_delimited_files(str(data))],
        str(tmp_path / "out"),
        client=dask_client,
        cache_dir=str(tmp_path / "cache"),
    )
    assert summary["status"] == "succeeded", summary
    assert summary["total_items"] == 18, summary
    assert held.released_at is not None
    first = min(start_time(r) for r in attempt_rows(tmp_path / "out"))
    assert first < held.released_at, (first, held.released_at)  # c.csv was planned after a run() began
    lines = Path(summary["append_row_file"]).read_text().splitlines()
    assert lines == [f"{base + i} int" for base in (10000, 20000, 30000) for i in range(6)]


def _both_plans(
    client: Client, script: str, dataset: TabularDataset, tmp_path: Path
) -> list[tuple[Any, ...]]:
    """The job run streamed and with the whole plan: each one's column types, keys, failed mini-batches, their
    errors' first words and output lines."""
    outcomes = []
    for streamed in (True, False):
        out = tmp_path / f"out-{streamed}"
        driver = JobDriver(
            _config(script, tmp_path / "marker", error_threshold=-1),
            [dataset],
            str(out),
            cache_dir=str(tmp_path / f"cache-{streamed}"),
            stream_plan=streamed,
        )
        assert driver.streaming is streamed
        try:
            summary = driver.execute(client)
        finally:
            driver.release()
        failed = [r for r in attempt_rows(out) if r["Status"] != "RUN_DONE"]
        outcomes.append(
            (
                dict(driver.inputs[0].column_types or {}),
                sorted(driver.keys.values()),
                summary["failed_mini_batches"],
                [r["Error Message"].split(":")[0] for r in failed],
                Path(summary["append_row_file"]).read_text().splitlines(),
            )
        )
    return outcomes


def test_the_types_are_the_first_files_as_with_the_whole_plan(
    dask_client: Client, write_script: Callable[..., str], tmp_path: Path
) -> None:
    """A later file's zip with a letter fails its own mini-batch, naming the column, streamed or not: the
    types come from the first file either way, and so do the keys."""
    data = _csv_files(tmp_path / "in")
    (data / "b.csv").write_text("zip,n\n20000,0\n2000A,1\n")
    outcomes = _both_plans(
        dask_client, write_script(MARKED_TYPES), TabularDataset.from_delimited_files(str(data)), tmp_path
    )
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][0] == {"zip": "int64", "n": "int64"}
    assert outcomes[0][2] == 1


def test_a_first_file_without_rows_gives_the_next_files_types_as_with_the_whole_plan(
    dask_client: Client, write_script: Callable[..., str], tmp_path: Path
) -> None:
    """The first file holds its header only: it has no slice, so both plans decide from the next file's."""
    data = _csv_files(tmp_path / "in")
    (data / "a.csv").write_text("zip,n\n")
    (data / "b.csv").write_text("zip,n\nA1,0\nB2,1\n")  # zips as strings from here
    outcomes = _both_plans(
        dask_client, write_script(MARKED_TYPES), TabularDataset.from_delimited_files(str(data)), tmp_path
    )
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][0]["zip"] == "string"
    assert outcomes[0][4][:2] == ["'A1' str", "'B2' str"] and outcomes[0][4][2:] == [
        f"'{30000 + i}' str" for i in range(6)
    ]


def test_json_lines_types_are_the_first_files_as_with_the_whole_plan(
    dask_client: Client, write_script: Callable[..., str], tmp_path: Path
) -> None:
    data = tmp_path / "in"
    data.mkdir()
    (data / "a.jsonl").write_text("".join(f'{{"zip": {10000 + i}, "n": {i}}}\n' for i in range(6)))
    (data / "b.jsonl").write_text('{"zip": 20000, "n": 0}\n{"zip": "2000A", "n": 1}\n')
    (data / "c.jsonl").write_text("".join(f'{{"zip": {30000 + i}, "n": {i}}}\n' for i in range(6)))
    outcomes = _both_plans(
        dask_client, write_script(MARKED_TYPES), TabularDataset.from_json_lines_files(str(data)), tmp_path
    )
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][2] == 1  # b.jsonl's zip does not fit the first file's type


def test_a_refused_first_file_leaves_the_output_folder_untouched(
    dask_client: Client, write_script: Callable[..., str], tmp_path: Path
) -> None:
    data = _csv_files(tmp_path / "in")
    (data / "a.csv").write_text('zip,n\n1,"never closed\n2,3\n')
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("an earlier job's\n")
    with pytest.raises(InputError, match="a.csv.*never closed"):
        run_job(
            _config(write_script(MARKED_TYPES), tmp_path / "marker"),
            [TabularDataset.from_delimited_files(str(data))],
            str(out),
            client=dask_client,
            cache_dir=str(tmp_path / "cache"),
        )
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_which_inputs_stream(tmp_path: Path) -> None:
    csv = TabularDataset.from_delimited_files(str(tmp_path / "x.csv"))
    jsonl = TabularDataset.from_json_lines_files(str(tmp_path / "x.jsonl"))
    parquet = TabularDataset.from_parquet_files(str(tmp_path / "x.parquet"))
    assert streams([csv]) and streams([jsonl])
    assert not streams([parquet])  # null_columns over every file's footer
    assert not streams(
        [csv, jsonl]
    )  # each input's types: the second's first file comes after the first's plan
