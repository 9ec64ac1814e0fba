"""An object-store input overwritten after the job listed it and before its mini-batch read it (moto's S3
server on 127.0.0.1, the embedded cluster): the mini-batch's cache key names the listed ETag, so a result of
the new bytes must never be output nor cached under it. The mini-batch fails with `DataChangedError`, once
(another try would read the same changed object), naming the file; objects that did not change pass, whether
their ETag is the MD5 of their bytes (checked with no request) or not (a multipart upload: asked again).

Before the check, the changed object's result was output and cached under the planned ETag's key, and a
tabular slice was cut at byte offsets planned in the old object."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from change_once import change_once
from cluster_support import Bucket

from airflow_parallel_run.core import FileDataset, ParallelRunConfig, TabularDataset, run_job

# While ARMED exists, the first run() call (whichever mini-batch it got) overwrites the objects in CHANGES
# on S3, and every run() waits until it has: each process reads at most one mini-batch before the change, so
# with more mini-batches than processes some are read after it.
HEADER = """
import os, time, s3fs
OPTIONS, CHANGES, ARMED, MARK = {options!r}, {changes!r}, {armed!r}, {mark!r}
"""
CHANGE = """
fs = s3fs.S3FileSystem(**OPTIONS, skip_instance_cache=True)
for target, data in CHANGES.items():
    fs.pipe_file(target, data)
"""
FILES_RUN = """
def run(mini_batch):
    _change()
    return [os.path.basename(path) + "=" + open(path).readline().strip() for path in mini_batch]
"""
TABLE_RUN = """
def run(frame):
    _change()
    return frame[["id", "value"]]
"""


def _script(tmp_path: Path, s3: Bucket, changes: dict[str, bytes], run: str) -> str:
    armed = tmp_path / "armed"
    armed.touch()
    text = HEADER.format(
        options=s3.storage_options, changes=changes, armed=str(armed), mark=str(tmp_path / "changed")
    ) + change_once(CHANGE)
    script = tmp_path / "changer.py"
    script.write_text(text + run)
    return str(script)


def _rows(out: Path) -> list[dict[str, str]]:
    report = out / "logs" / "sys" / "job_report" / "processed_mini-batches.csv"
    with open(report, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _put_multipart(s3: Bucket, key: str, first_line: str) -> None:
    """An object uploaded in two parts: its ETag is not the MD5 of its bytes."""
    part = 5 * 1024 * 1024  # S3's smallest part
    with s3.fs.open(f"{s3.name}/{key}", "wb", block_size=part) as handle:
        handle.write(first_line.encode() + b"\n" + b"#" * (part + 1024) + b"\n")


def _failed_rows(out: Path, summary: dict[str, Any]) -> list[dict[str, str]]:
    """The report's failed attempts, after checking each failed mini-batch failed once (not retried: it
    would read the same changed object) with DataChangedError."""
    failed = [row for row in _rows(out) if row["Status"] != "RUN_DONE"]
    assert len(failed) == summary["failed_mini_batches"] >= 1, (failed, summary)
    for row in failed:
        assert row["Status"] == "LOAD_EXCEPTION", row
        assert "DataChangedError" in row["Error Message"], row
        assert "changed after the job fingerprinted it" in row["Error Message"], row
    return failed


def test_objects_overwritten_before_their_read_fail_their_mini_batches_and_are_never_reused(
    s3: Bucket, dask_client: Any, tmp_path: Path
) -> None:
    for i in (0, 1, 3, 4):
        s3.put(f"in/f{i:03d}.txt", f"{i}\n")
    _put_multipart(s3, "in/f002.txt", "2")  # not changed: its ETag is asked again, and is the same
    assert "-" in s3.fs.info(f"{s3.name}/in/f002.txt")["ETag"], "a multipart ETag"
    # same sizes: only the bytes (and so the ETags) differ
    changes = {f"{s3.name}/in/f{i:03d}.txt": f"{9 - i}\n".encode() for i in (0, 1, 3, 4)}
    script = _script(tmp_path, s3, changes, FILES_RUN)

    def job(out: Path) -> dict[str, Any]:
        config = ParallelRunConfig(
            entry_script=script,
            mini_batch_size=1,
            process_count_per_node=2,
            run_max_try=3,
            error_threshold=-1,
        )
        dataset = FileDataset.from_files(s3.url("in"), storage_options=s3.storage_options)
        return run_job(config, [dataset], str(out), client=dask_client, storage_options=s3.storage_options)

    first = job(tmp_path / "o1")
    failed = _failed_rows(tmp_path / "o1", first)
    assert first["succeeded_mini_batches"] + first["failed_mini_batches"] == 5, first
    output = (tmp_path / "o1" / "parallel_run_step.txt").read_text().split()
    assert "f002.txt=2" in output, "an unchanged object with a multipart ETag passes"
    assert all(line == f"{line[:8]}={int(line[1:4])}" for line in output), (
        "a changed object's result was output"
    )
    assert all("/in/f002.txt" not in row["Error Message"] for row in failed), failed

    # the old bytes back: the failed mini-batches run (nothing was cached for them), the others are reused
    for i in (0, 1, 3, 4):
        s3.put(f"in/f{i:03d}.txt", f"{i}\n")
    second = job(tmp_path / "o2")
    assert second["status"] == "succeeded", second
    assert second["reused_mini_batches"] == first["succeeded_mini_batches"], second
    lines = (tmp_path / "o2" / "parallel_run_step.txt").read_text().split()
    assert lines == [f"f{i:03d}.txt={i}" for i in range(5)]


def _csv(ids: range, value: str) -> bytes:
    return b"id,value\n" + b"".join(f"{i},{value}{i:04d}\n".encode() for i in ids)


def test_a_csv_object_overwritten_while_its_slices_run_fails_the_slices_read_after(
    s3: Bucket, dask_client: Any, tmp_path: Path
) -> None:
    """Rewritten with the same size (the byte ranges planned still hold whole rows, of other values): the
    slices read before the change are output, those read after fail instead of giving the new rows."""
    s3.put("table/part.csv", _csv(range(90), "a"))
    script = _script(tmp_path, s3, {f"{s3.name}/table/part.csv": _csv(range(90), "b")}, TABLE_RUN)
    config = ParallelRunConfig(
        entry_script=script,
        mini_batch_size="200",
        process_count_per_node=2,  # fewer than the mini-batches: some are read after the change
        append_row_format="csv",
        append_row_file_name="out.csv",
    )
    dataset = TabularDataset.from_delimited_files(s3.url("table"), storage_options=s3.storage_options)
    out = tmp_path / "o"
    summary = run_job(config, [dataset], str(out), client=dask_client, storage_options=s3.storage_options)
    assert summary["total_mini_batches"] >= 4, summary  # more than the two processes
    _failed_rows(out, summary)
    rows = list(csv.DictReader(io.StringIO((out / "out.csv").read_text())))
    assert len(rows) == summary["succeeded_items"] and rows, summary
    assert all(row["value"] == f"a{int(row['id']):04d}" for row in rows), rows


def _parquet(value: str) -> bytes:
    table = pa.table({"id": pa.array(range(60), pa.int64()), "value": [f"{value}{i:04d}" for i in range(60)]})
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=10)
    return sink.getvalue()


def test_a_parquet_object_overwritten_while_its_row_groups_run_fails_the_ones_read_after(
    s3: Bucket, dask_client: Any, tmp_path: Path
) -> None:
    """Rewritten with the same layout (each row group still reads, with other values)."""
    s3.put("table/part.parquet", _parquet("a"))
    script = _script(tmp_path, s3, {f"{s3.name}/table/part.parquet": _parquet("b")}, TABLE_RUN)
    config = ParallelRunConfig(
        entry_script=script,
        mini_batch_size="1",  # a row group each
        process_count_per_node=2,
        append_row_format="csv",
        append_row_file_name="out.csv",
    )
    dataset = TabularDataset.from_parquet_files(s3.url("table"), storage_options=s3.storage_options)
    out = tmp_path / "o"
    summary = run_job(config, [dataset], str(out), client=dask_client, storage_options=s3.storage_options)
    assert summary["total_mini_batches"] == 6, summary
    _failed_rows(out, summary)
    rows = list(csv.DictReader(io.StringIO((out / "out.csv").read_text())))
    assert len(rows) == summary["succeeded_items"] and rows, summary
    assert all(row["value"] == f"a{int(row['id']):04d}" for row in rows), rows


LABELS_RUN = """
import argparse, os

def init():
    global labels
    parser = argparse.ArgumentParser()
    parser.add_argument("--labels")
    args, _ = parser.parse_known_args()
    labels = open(args.labels).read().strip()

def run(mini_batch):
    return [os.path.basename(path) + "=" + labels for path in mini_batch]
"""


def test_a_side_input_object_overwritten_after_the_job_keyed_it_fails_every_attempt(
    s3: Bucket, dask_client: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    """Overwritten between the job's fingerprint of it and the workers' downloads (right after `Reuse` keyed
    it, in this process): no result computed with the new labels is output or cached under the old ones'
    key."""
    from airflow_parallel_run.core.reuse import reuse

    for i in range(3):
        s3.put(f"in/f{i:03d}.txt", f"{i}\n")
    labels = s3.put("side/labels.txt", "old\n")
    script = tmp_path / "labels.py"
    script.write_text(LABELS_RUN)
    keyed = reuse.Reuse.__init__

    def overwritten_after_keying(self: Any, *args: Any, **kwargs: Any) -> None:
        keyed(self, *args, **kwargs)
        s3.put("side/labels.txt", "new\n")  # same size: only the bytes (and the ETag) differ

    def job(out: Path) -> dict[str, Any]:
        return run_job(
            ParallelRunConfig(entry_script=str(script), mini_batch_size=1, run_max_try=3),
            [FileDataset.from_files(s3.url("in"), storage_options=s3.storage_options)],
            str(out),
            side_inputs=[labels],
            arguments=["--labels", labels],
            storage_options=s3.storage_options,
            client=dask_client,
        )

    with monkeypatch.context() as patch:
        patch.setattr(reuse.Reuse, "__init__", overwritten_after_keying)
        first = job(tmp_path / "o1")
    assert first["status"] == "failed" and first["failed_mini_batches"] == 3, first
    failed = _rows(tmp_path / "o1")
    assert len(failed) == 3, failed  # one attempt each: not retried
    for row in failed:
        assert row["Status"] == "LOAD_EXCEPTION", row
        assert f"side input {labels} changed after the job fingerprinted it" in row["Error Message"], row

    s3.put("side/labels.txt", "old\n")
    second = job(tmp_path / "o2")
    assert second["status"] == "succeeded" and second["reused_mini_batches"] == 0, second
    lines = (tmp_path / "o2" / "parallel_run_step.txt").read_text().split()
    assert lines == [f"f{i:03d}.txt=old" for i in range(3)]
