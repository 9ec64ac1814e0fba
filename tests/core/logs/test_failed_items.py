"""failed_items.jsonl lines for every kind of input item and every way a mini-batch can fail (no cluster)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from airflow_parallel_run.core.attempt import AttemptResult, AttemptStatus
from airflow_parallel_run.core.inputs.sql import KeyRange
from airflow_parallel_run.core.logs.failed_items import (
    FAILED_ITEMS_FILE,
    failed_item_lines,
    read_failed_items,
    write_failed_items,
)
from airflow_parallel_run.core.minibatch import FileRef, MiniBatch, TabularSlice

FILES = MiniBatch(0, "file", 0, 2, files=(FileRef("/in/a.txt"), FileRef("/in/b.txt")))
CSV = MiniBatch(
    1, "tabular", 0, 40, slices=(TabularSlice("/in/t.csv", "csv", 120, 980, 12, rows=40, first_line=9),)
)
PARQUET = MiniBatch(
    2, "tabular", 1, 500, slices=(TabularSlice("/in/t.parquet", "parquet", row_groups=(3, 4), rows=500),)
)
PAGE = KeyRange("postgresql://db.example:5432/shop", "orders", ("id",), ("100",), ("200",), 100, "d1")
SQL = MiniBatch(3, "tabular", 2, 100, pieces=(PAGE,))
GOOD = MiniBatch(4, "file", 0, 1, files=(FileRef("/in/c.txt"),))
NEVER = MiniBatch(5, "file", 0, 1, files=(FileRef("/in/d.txt"),))


def _failed(mb: MiniBatch, status: AttemptStatus, error: str, succeeded: int = 0) -> AttemptResult:
    return AttemptResult(mb.index, 2, status, total=mb.items, succeeded=succeeded, error=error)


def test_lines_for_each_item_kind_and_failure() -> None:
    failures = {
        0: _failed(FILES, AttemptStatus.RUN_EXCEPTION, "ValueError: bad a.txt\n  more detail"),
        1: _failed(CSV, AttemptStatus.LOAD_EXCEPTION, "ParserError: line 12"),
        2: _failed(PARQUET, AttemptStatus.RUN_DONE, "", succeeded=497),  # run() returned 3 results fewer
        3: _failed(SQL, AttemptStatus.RUN_TIMEOUT, "mini-batch 3 did not finish in 60 s"),
    }
    plan = [FILES, CSV, PARQUET, SQL, GOOD, NEVER]
    lines = list(
        failed_item_lines(plan, failures, {0, 1, 2, 3, 4}, "allowed_failed_count exceeded: 4 > 3\nmore")
    )

    assert [(line["mini_batch"], line["item"]) for line in lines] == [
        (0, {"file": "/in/a.txt"}),
        (0, {"file": "/in/b.txt"}),
        (1, {"file": "/in/t.csv", "bytes": [120, 980], "rows": 40, "first_line": 9}),
        (2, {"file": "/in/t.parquet", "row_groups": [3, 4], "rows": 500}),
        (3, PAGE.describe()),
        (5, {"file": "/in/d.txt"}),
    ]
    by_batch = {line["mini_batch"]: line for line in lines}
    assert by_batch[0]["error"] == "ValueError: bad a.txt" and by_batch[0]["certain"]
    assert by_batch[0]["attempts"] == 2 and by_batch[0]["mini_batch_failed"] == 2
    assert by_batch[1]["status"] == "LOAD_EXCEPTION" and by_batch[1]["input_index"] == 0
    partial = by_batch[2]
    assert partial["status"] == "RUN_DONE" and not partial["certain"]
    assert (partial["mini_batch_items"], partial["mini_batch_failed"]) == (500, 3)
    assert (
        partial["error"] == "run() returned 497 results for 500 items: 3 failed, which ones run() did not say"
    )
    assert by_batch[3]["item"]["database"] == "postgresql://db.example:5432/shop"
    stopped = by_batch[5]
    assert stopped["status"] == "CANCELLED" and stopped["attempts"] == 0 and stopped["certain"]
    assert stopped["error"] == "not finished: the job stopped (allowed_failed_count exceeded: 4 > 3)"


def test_written_atomically_and_read_back(tmp_path: Path) -> None:
    lines = list(
        failed_item_lines(
            [FILES, GOOD], {0: _failed(FILES, AttemptStatus.PROCESS_DIED, "died")}, {0, 4}, None
        )
    )
    assert write_failed_items(str(tmp_path), lines) == 2
    assert read_failed_items(str(tmp_path)) == json.loads(json.dumps(lines))
    assert [p.name for p in (tmp_path / FAILED_ITEMS_FILE).parent.iterdir()] == ["failed_items.jsonl"]
    assert write_failed_items(str(tmp_path), []) == 0
    assert (tmp_path / FAILED_ITEMS_FILE).read_text() == "" and read_failed_items(str(tmp_path)) == []


def test_report_rows(tmp_path: Path) -> None:
    from airflow_parallel_run.core.logs.report import build_report

    partial = _failed(PARQUET, AttemptStatus.RUN_DONE, "", succeeded=497)
    write_failed_items(
        str(tmp_path), failed_item_lines([PARQUET, SQL], {2: partial}, {2}, "stopped <by hand>")
    )
    page = Path(build_report(str(tmp_path))).read_text(encoding="utf-8")
    assert "<td>/in/t.parquet row groups [3, 4]</td>" in page
    assert "maybe: 3 of its mini-batch&#x27;s 500 items failed" in page
    assert "database=postgresql://db.example:5432/shop, relation=orders, key=[&#x27;id&#x27;]" in page
    assert "not finished: the job stopped (stopped &lt;by hand&gt;)" in page
    write_failed_items(str(tmp_path), [])
    assert "<p>No item failed.</p>" in Path(build_report(str(tmp_path))).read_text(encoding="utf-8")


def test_names_that_are_not_utf8(tmp_path: Path) -> None:
    """A failed file whose name is not UTF-8 (undecodable bytes arrive as surrogates) is written, read back
    as the same path, and shown escaped in report.html (the report could not be written before)."""
    from airflow_parallel_run.core.logs.report import build_report

    odd = MiniBatch(0, "file", 0, 1, files=(FileRef("/in/bad\udcff\nname.txt"),))
    write_failed_items(
        str(tmp_path),
        failed_item_lines([odd], {0: _failed(odd, AttemptStatus.RUN_EXCEPTION, "x")}, {0}, None),
    )
    assert read_failed_items(str(tmp_path))[0]["item"]["file"] == "/in/bad\udcff\nname.txt"
    page = Path(build_report(str(tmp_path))).read_text(encoding="utf-8")
    assert "/in/bad\\udcff\nname.txt" in page


def test_a_damaged_job_record_is_refused_by_name(tmp_path: Path) -> None:
    from airflow_parallel_run.core import ConfigError
    from airflow_parallel_run.core.logs.job_record import JOB_RECORD_FILE, RECORD_KEYS
    from airflow_parallel_run.core.reuse.rerun import PreviousJob

    record = tmp_path / "logs" / JOB_RECORD_FILE
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"version": 1, "job_id": "j1"}))
    with pytest.raises(ConfigError) as info:
        PreviousJob.load(str(tmp_path))
    assert "a folder with a readable job record (logs/sys/job.json:" in str(info.value)
    assert f"is incomplete (no {', '.join(RECORD_KEYS[2:])})" in str(info.value)
    doc = (Path(__file__).resolve().parents[3] / "docs" / "errors.md").read_text(encoding="utf-8")
    template = (
        "rerun_failed='<folder>' is not allowed: a folder with a readable job record (logs/sys/job.json: "
    )
    assert template + "<folder>/logs/sys/job.json is incomplete (no <keys>))" in doc


def test_a_mini_batch_stopped_before_its_retry_says_how_its_last_attempt_failed() -> None:
    last = AttemptResult(
        GOOD.index, 2, AttemptStatus.RUN_TIMEOUT, total=1, error="mini-batch 4 did not finish in 5 s"
    )
    lines = list(failed_item_lines([GOOD, NEVER], {}, set(), "the job was cancelled", {GOOD.index: last}))
    assert [(line["mini_batch"], line["status"], line["attempts"]) for line in lines] == [
        (4, "RUN_TIMEOUT", 2),
        (5, "CANCELLED", 0),
    ]
    assert lines[0]["error"] == (
        "mini-batch 4 did not finish in 5 s (not finished: the job stopped (the job was cancelled))"
    )
    assert lines[1]["error"] == "not finished: the job stopped (the job was cancelled)"
