"""batch_format="pyarrow" on a real LocalCluster: run() gets a pyarrow Table for every tabular input format
and its Arrow results reach every output format; a files job is refused; a result that does not fit its
output format fails its own mini-batch."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from distributed import Client

from airflow_parallel_run.core import ConfigError, FileDataset, ParallelRunConfig, TabularDataset, run_job

ROWS = 120

# Checks what it got (a Table whose `v` column is int64 and `note` a string column in every mini-batch) and returns a Table, or a list of RecordBatches for even-numbered mini-batches.
ARROW_SCRIPT = """
import pyarrow as pa
import pyarrow.compute as pc

def run(mini_batch, context):
    assert isinstance(mini_batch, pa.Table), type(mini_batch)
    assert mini_batch.schema.field("v").type == pa.int64(), mini_batch.schema
    note = mini_batch.schema.field("note").type
    assert pa.types.is_string(note) or pa.types.is_large_string(note), mini_batch.schema
    out = pa.table({"v": mini_batch["v"], "twice": pc.multiply(mini_batch["v"], 2), "note": mini_batch["note"]})
    if context.minibatch_index % 2 == 0:
        return out.to_batches(max_chunksize=7)
    return out
"""


def _inputs(tmp_path: Path, fmt: str) -> TabularDataset:
    notes = [f'n"{i}"\nsecond, line' if i % 9 == 0 else ("" if i % 11 == 0 else f"é{i}") for i in range(ROWS)]
    frame = pd.DataFrame({"v": range(ROWS), "note": notes})
    if fmt == "csv":
        frame.loc[frame["v"] % 11 == 0, "note"] = None  # missing: null in the Table
        frame.to_csv(tmp_path / "rows.csv", index=False)
        return TabularDataset.from_delimited_files(str(tmp_path / "rows.csv"))
    if fmt == "jsonl":
        frame.to_json(tmp_path / "rows.jsonl", orient="records", lines=True)
        return TabularDataset.from_json_lines_files(str(tmp_path / "rows.jsonl"))
    pq.write_table(
        pa.Table.from_pandas(frame, preserve_index=False), tmp_path / "rows.parquet", row_group_size=15
    )
    return TabularDataset.from_parquet_files(str(tmp_path / "rows.parquet"))


def _read_back(path: Path, fmt: str) -> list[int]:
    if fmt == "csv":
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        assert [int(r["twice"]) for r in rows] == [2 * int(r["v"]) for r in rows]
        return [int(r["v"]) for r in rows]
    if fmt == "jsonl":
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        return [r["v"] for r in records]
    table = pq.read_table(path)
    assert table.schema.field("twice").type == pa.int64()
    return table["v"].to_pylist()


@pytest.mark.parametrize(
    ("input_format", "output"),
    [
        ("csv", "csv"),
        ("csv", "parquet"),
        ("jsonl", "jsonl"),
        ("jsonl", "csv"),
        ("parquet", "parquet"),
        ("parquet", "jsonl"),
        ("csv", "summary_only"),
        ("parquet", "summary_only"),
    ],
)
def test_pyarrow_batches_for_every_input_and_output_format(
    dask_client: Client, write_script: Any, tmp_path: Path, input_format: str, output: str
) -> None:
    dataset = _inputs(tmp_path, input_format)
    settings: dict[str, Any] = (
        {"output_action": "summary_only"} if output == "summary_only" else {"append_row_format": output}
    )
    config = ParallelRunConfig(
        entry_script=write_script(ARROW_SCRIPT),
        batch_format="pyarrow",
        mini_batch_size=300,
        process_count_per_node=2,
        run_max_try=1,
        **settings,
    )
    summary = run_job(config, [dataset], str(tmp_path / "out"), client=dask_client)
    assert summary["status"] == "succeeded", (tmp_path / "out/logs/user/error.txt").read_text()
    assert summary["total_mini_batches"] > 3 and summary["succeeded_items"] == ROWS, summary
    if output == "summary_only":
        return
    assert _read_back(Path(summary["append_row_file"]), output) == list(range(ROWS))


def test_pyarrow_csv_output_is_written_by_arrow(
    dask_client: Client, write_script: Any, tmp_path: Path
) -> None:
    """Arrow's CSV writer: strings quoted, missing values (an empty field, as pandas reads it) empty, quoted
    newlines kept."""
    config = ParallelRunConfig(
        entry_script=write_script("def run(mini_batch):\n    return mini_batch\n"),
        batch_format="pyarrow",
        append_row_format="csv",
        mini_batch_size=64,
        process_count_per_node=2,
    )
    source = tmp_path / "rows.csv"
    source.write_text('id,note\n1,""\n2,\n3,"a\nb"\n4,plain\n')
    summary = run_job(
        config, [TabularDataset.from_delimited_files(str(source))], str(tmp_path / "out"), client=dask_client
    )
    assert summary["status"] == "succeeded", summary
    assert Path(summary["append_row_file"]).read_text() == 'id,note\n1,\n2,\n3,"a\nb"\n4,"plain"\n'


def test_a_result_that_does_not_fit_its_output_format_fails_its_mini_batch(
    dask_client: Client, write_script: Any, tmp_path: Path
) -> None:
    script = write_script("""
        import pyarrow as pa

        def run(mini_batch):
            return pa.table({"v": [[1, 2]] * mini_batch.num_rows})
    """)
    source = tmp_path / "rows.csv"
    source.write_text("a\n1\n2\n")
    config = ParallelRunConfig(
        entry_script=script,
        batch_format="pyarrow",
        append_row_format="csv",
        run_max_try=1,
        process_count_per_node=1,
    )
    summary = run_job(
        config, [TabularDataset.from_delimited_files(str(source))], str(tmp_path / "out"), client=dask_client
    )
    assert summary["status"] == "failed", summary
    with open(tmp_path / "out/logs/sys/job_report/processed_mini-batches.csv", newline="") as handle:
        row = next(csv.DictReader(handle))
    assert row["Status"] == "RUN_INVALID_RESULT", row
    assert (
        "run() returned column 'v' as list<item: int64>, which append_row_format=csv cannot write"
        in row["Error Message"]
    )


def test_pyarrow_for_a_files_job_is_refused_before_any_work(
    files: Any, write_script: Any, tmp_path: Path
) -> None:
    config = ParallelRunConfig(
        entry_script=write_script("def run(b):\n    return b\n"), batch_format="pyarrow"
    )
    with pytest.raises(ConfigError, match="batch_format='pyarrow' is not allowed"):
        run_job(config, [FileDataset.from_files(str(files(2)))], str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("batch_format", ["pandas", "pyarrow"])
def test_a_jsonl_int_field_with_a_null_in_one_mini_batch_is_written_as_ints(
    dask_client: Client, write_script: Any, tmp_path: Path, batch_format: str
) -> None:
    """Each JSON Lines slice was typed on its own: the mini-batch holding the null read `n` as float64 and
    the csv output said 1.0 there, 1 in its neighbours; the job's one set of field types keeps it int."""
    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps({"id": i, "n": None if i == 7 else i}) + "\n" for i in range(40)))
    config = ParallelRunConfig(
        entry_script=write_script("def run(mini_batch):\n    return mini_batch\n"),
        batch_format=batch_format,
        append_row_format="csv",
        mini_batch_size=100,
        process_count_per_node=2,
    )
    summary = run_job(
        config, [TabularDataset.from_json_lines_files(str(source))], str(tmp_path / "out"), client=dask_client
    )
    assert summary["status"] == "succeeded" and summary["total_mini_batches"] > 3, summary
    with open(summary["append_row_file"], newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["n"] for r in rows] == ["" if i == 7 else str(i) for i in range(40)]
