"""A password written in a path's URL (`sftp://user:password@host/...`) would travel everywhere the job names
its paths: its record, logs, reports, error messages. Every path a job takes refuses one before anything runs,
naming the field and showing the URL masked; credentials go in `storage_options` (or an Airflow connection).
A user name alone, an `@` in an object's key and a SQL input's URL (whose credentials are kept out of the
record by its own rules) are not refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from airflow_parallel_run.core import ConfigError, FileDataset, ParallelRunConfig, TabularDataset, run_job

SECRET = "hunter2-Zq"
URL = f"sftp://scorer:{SECRET}@127.0.0.1:2222/data"


@pytest.mark.parametrize(
    "make",
    [
        lambda: FileDataset.from_files(URL),
        lambda: FileDataset.from_files(["/tmp", f"simplecache::{URL}"]),
        lambda: TabularDataset.from_delimited_files(URL),
        lambda: TabularDataset.from_parquet_files(URL),
    ],
    ids=["file", "file list, chained URL", "csv", "parquet"],
)
def test_an_input_url_with_a_password_is_refused_masked(make: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        make()
    assert caught.value.field == "path", caught.value
    assert SECRET not in str(caught.value) and "scorer:***@127.0.0.1" in str(caught.value)
    assert "storage_options" in str(caught.value)


@pytest.mark.parametrize("field", ["side_inputs", "output", "cache_dir"])
def test_a_side_input_output_or_cache_url_with_a_password_is_refused_before_anything_runs(  # type: ignore[no-untyped-def]
    field: str, write_script, files, tmp_path: Path, dask_client
) -> None:
    root = files(2)
    out = tmp_path / "out"
    given: dict[str, Any] = {"side_inputs": [], "output": str(out), "cache_dir": None}
    given[field] = [URL] if field == "side_inputs" else URL
    with pytest.raises(ConfigError) as caught:
        run_job(
            ParallelRunConfig(entry_script=write_script("def run(mb):\n    return mb\n")),
            [FileDataset.from_files(str(root))],
            given["output"],
            side_inputs=given["side_inputs"],
            cache_dir=given["cache_dir"],
            client=dask_client,
        )
    assert caught.value.field == field and SECRET not in str(caught.value), caught.value
    assert not out.exists(), "nothing ran, no folder was made"


@pytest.mark.parametrize(
    "url",
    ["sftp://scorer@127.0.0.1/data", "s3://bucket/users/ana@example.com/f.txt", "https://host:8080/f.txt"],
)
def test_urls_without_a_password_are_taken(url: str) -> None:
    assert FileDataset.from_files(url).paths == (url,)
