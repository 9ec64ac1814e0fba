"""What the UI may open: relative paths, job records and URLs shown on pages (no Airflow needed)."""

from __future__ import annotations

import pytest

from airflow_parallel_run.ui.files import JobFiles, NotFound, RecordError, clean_relative, redact_url


@pytest.mark.parametrize("path", ["job_result.txt", "user/error/127.0.0.1/process001.txt", "a b/ü.txt"])
def test_plain_relative_paths_pass(path: str) -> None:
    assert clean_relative(path) == path


@pytest.mark.parametrize(
    "path",
    [
        "",
        ".",
        "..",
        "../x",
        "a/../../x",
        "/etc/passwd",
        "a//b",
        "a/./b",
        "s3://b/k",
        "a\\..\\b",
        "x\x00y",
        "a/" * 600,
    ],
)
def test_anything_else_is_not_found(path: str) -> None:
    with pytest.raises(NotFound):
        clean_relative(path)


def test_redact_url_drops_user_info_only() -> None:
    assert redact_url("https://user:pw@host:8787/status") == "https://host:8787/status"
    assert redact_url("s3://bucket/out/logs") == "s3://bucket/out/logs"
    assert redact_url("/tmp/a@b/out") == "/tmp/a@b/out"
    assert redact_url("abfs://c@account.dfs.core.windows.net/x") == "abfs://account.dfs.core.windows.net/x"


@pytest.mark.parametrize(
    "record",
    [
        None,
        {},
        {"output": ""},
        {"output": "/data/out", "logs_dir": "/data/elsewhere"},
        {"output": "/data/out", "append_row_file": "/etc/passwd"},
        {"output": "/data/out", "append_row_file": "/data/out/sub/x.txt"},
        {"output": "/data/out", "append_row_file": "/data/out/../x.txt"},
        {"output": "s3://b/out", "append_row_file": "s3://other/out/x.txt"},
    ],
)
def test_records_the_engine_does_not_write_are_refused(record: object) -> None:
    with pytest.raises(RecordError):
        JobFiles.from_record(record)


def test_a_record_as_the_operator_pushes_it(tmp_path) -> None:
    out = tmp_path / "out"
    (out / "logs" / "sys").mkdir(parents=True)
    files = JobFiles.from_record(
        {"output": str(out), "logs_dir": f"{out}/logs", "append_row_file": f"{out}/scores.txt"}
    )
    with pytest.raises(NotFound):
        files.verify()  # no progress.json: not a job folder
    (out / "logs" / "sys" / "progress.json").write_text('{"state": "running"}')
    files.verify()
    assert files.progress() == {"state": "running"}
    with pytest.raises(NotFound):
        files.output_path()  # not written yet
    (out / "scores.txt").write_text("a\n")
    assert files.output_path() == str(out / "scores.txt")
