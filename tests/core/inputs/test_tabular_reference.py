"""Whole jobs against a reference reader of the whole file: what run() receives across every mini-batch,
concatenated in order, is what `pyarrow.csv.read_csv` / `pandas.read_csv` read from the file, or the job
fails with an error naming the file; never a green job with other data.

Each case plans the input with small mini-batches (many slices), decides the job's types as a job does
and reads every mini-batch on its own, as a worker reads it, for both batch formats.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from airflow_parallel_run.core.errors import InputError
from airflow_parallel_run.core.inputs.batch_format import read_batch
from airflow_parallel_run.core.inputs.tabular import TabularDataset
from airflow_parallel_run.core.plan import plan_inputs


def _job(dataset: TabularDataset, size: int, folder: Path, batch_format: str) -> list[object]:
    """What run() receives for each mini-batch of the job, in order."""
    batches = list(plan_inputs([dataset], size))
    job_input = dataset.with_column_types(batches)
    return [read_batch(job_input, mb, str(folder), batch_format)[0] for mb in batches]


def _write(tmp_path: Path, data: bytes) -> str:
    path = tmp_path / "data.csv"
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize("batch_format", ["pandas", "pyarrow"])
@pytest.mark.parametrize(
    "data",
    [
        b"a,b\r1,2\n3,4\n5,6\n",  # the header ends with a lone CR, the rest with LF
        b"\xef\xbb\xbfa,b\r1,2\n3,4\n",  # the same after a byte order mark
        b"a,b\r1,2\r3,4\r",  # old Mac line endings: no LF anywhere
    ],
)
def test_rows_behind_a_lone_cr_in_the_header_record_are_never_dropped(
    tmp_path: Path, data: bytes, batch_format: str
) -> None:
    """Arrow and pandas end a record at a lone CR; the planner ends records at LF only. A header record
    that holds a lone CR holds rows of data too: they must not vanish as part of the header."""
    path = _write(tmp_path, data)
    reference = pacsv.read_csv(path)
    assert reference.num_rows > 0 and reference.num_rows == len(pd.read_csv(path))
    dataset = TabularDataset.from_delimited_files(path)
    try:
        parts = _job(dataset, 4, tmp_path, batch_format)
    except InputError as exc:
        assert re.search(re.escape(path) + r".*line break", str(exc)), str(exc)
        return
    rows = sum(len(p) for p in parts)  # type: ignore[arg-type]
    assert rows == reference.num_rows, (
        f"the job succeeded with {rows} rows, the file has {reference.num_rows}"
    )


def test_every_mini_batch_of_a_crlf_file_is_read_as_the_reference_reads_it(tmp_path: Path) -> None:
    path = _write(tmp_path, b'a,b\r\n1,x\r\n2,"y\r\nz"\r\n3,w\r\n')
    reference = pacsv.read_csv(path, parse_options=pacsv.ParseOptions(newlines_in_values=True))
    parts = _job(TabularDataset.from_delimited_files(path), 4, tmp_path, "pyarrow")
    assert len(parts) > 1
    assert pa.concat_tables(parts).equals(reference)  # type: ignore[arg-type]
