"""Bad inputs: unreadable entries, files that change after planning, zero rows, ragged and undecodable CSV.

Empty folders, missing paths and corrupt Parquet footers fail before anything runs; their messages are
in docs/errors.md and tests/faults/test_error_catalogue.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from faults_support import attempts, check_accounting, expected_line

from airflow_parallel_run.core import FileDataset, InputError, ParallelRunConfig, TabularDataset, run_job
from airflow_parallel_run.core.driver import JobDriver
from airflow_parallel_run.core.plan import plan

ROWS_RE = re.compile(r"^(\d+) (?:n\d+|nan)$")
TABLE_SCRIPT = """
def run(df):
    return [f"{r.id} {r.name}" for r in df.itertuples()]
"""


def write_rows(path: Path, rows: int, edit: dict[int, str] | None = None) -> list[str]:
    """A CSV `id,name` with rows `i,ni`; `edit` replaces whole rows. Returns the file's lines."""
    lines = ["id,name", *[f"{i},n{i}" for i in range(rows)]]
    for row, text in (edit or {}).items():
        lines[row + 1] = text
    path.write_text("\n".join(lines) + "\n")
    return lines


def tabular_job(client: Any, script: str, paths: list[str], out: Path, **settings: Any) -> dict[str, Any]:
    settings.setdefault("process_count_per_node", 2)
    return run_job(
        ParallelRunConfig(entry_script=script, **settings),
        [TabularDataset.from_delimited_files(paths)],
        str(out),
        client=client,
    )


# -- entries that cannot be read ------------------------------------------------------------------------
def test_dangling_symlink_in_an_input_folder_is_reported(echo_script, files, tmp_path) -> None:  # type: ignore[no-untyped-def]
    root = files(3)
    (root / "f003.txt").symlink_to(tmp_path / "gone.txt")  # dangling: its target never existed
    try:
        planned = plan([FileDataset.from_files(str(root))], ParallelRunConfig(entry_script=echo_script()))
    except InputError as exc:  # a clear error before anything runs is fine...
        assert "f003.txt" in str(exc)
        return
    assert planned.total_items == 4, "...or the item is planned (and fails, named, when it is read)"


@pytest.mark.parametrize("kind", ["dangling symlink", "directory named like a file"])
def test_unreadable_input_given_by_name_is_a_clear_error(echo_script, files, tmp_path, kind) -> None:  # type: ignore[no-untyped-def]
    root = files(2)
    target = root / "f009.txt"
    if kind == "dangling symlink":
        target.symlink_to(tmp_path / "gone.txt")
        fragment = "does not exist (no file, folder or glob match)"
    else:
        target.mkdir()
        fragment = "matched no files"
    with pytest.raises(InputError) as info:
        plan([FileDataset.from_files(str(target))], ParallelRunConfig(entry_script=echo_script()))
    assert str(info.value).startswith(f"input '{target}' {fragment}"), info.value


# -- inputs that change between planning and reading ----------------------------------------------------
def test_file_deleted_between_planning_and_reading(dask_client, echo_script, files, tmp_path) -> None:  # type: ignore[no-untyped-def]
    root, out = files(6), tmp_path / "out"
    config = ParallelRunConfig(
        entry_script=echo_script(), mini_batch_size=2, process_count_per_node=2, run_max_try=2
    )
    driver = JobDriver(config, [FileDataset.from_files(str(root))], str(out))  # plans and fingerprints
    (root / "f004.txt").unlink()
    summary = driver.execute(dask_client)
    check_accounting(summary, 6, expected_lines=[expected_line(i) for i in range(4)])
    assert summary["status"] == "succeeded" and summary["failed_mini_batches"] == 1, summary
    rows = [r for r in attempts(out) if r["Mini-batch Id"] == "2"]
    assert [r["Status"] for r in rows] == ["LOAD_EXCEPTION", "LOAD_EXCEPTION"], rows
    assert f"input file {root / 'f004.txt'} of mini-batch 2 is gone" in rows[0]["Error Message"]


def test_csv_truncated_between_planning_and_reading(dask_client, write_script, tmp_path) -> None:  # type: ignore[no-untyped-def]
    table, out = tmp_path / "rows.csv", tmp_path / "out"
    lines = write_rows(table, 300)
    config = ParallelRunConfig(
        entry_script=write_script(TABLE_SCRIPT),
        mini_batch_size="1KB",
        process_count_per_node=2,
        run_max_try=1,
    )
    driver = JobDriver(config, [TabularDataset.from_delimited_files(str(table))], str(out))
    planned = [mb.items for mb in driver.plan.mini_batches]
    assert len(planned) > 2
    table.write_text("\n".join(lines[: 1 + planned[0]]) + "\n")  # only the first mini-batch's rows survive
    summary = driver.execute(dask_client)
    check_accounting(summary, 300, line_re=ROWS_RE)
    # the first mini-batch reads its rows, but the file is not the one its key names: it fails as it commits
    # (README, "Input files that change while the job runs"); the others find their bytes gone
    assert summary["succeeded_items"] == 0, summary
    errors = (out / "logs" / "user" / "error.txt").read_text()
    assert "the file is shorter than planned (did it change after planning?)" in errors, errors
    assert f"DataChangedError: input file {table} changed after the job fingerprinted it" in errors, errors


# -- zero rows, ragged rows, undecodable bytes ----------------------------------------------------------
def test_header_only_csv(dask_client, write_script, tmp_path) -> None:  # type: ignore[no-untyped-def]
    empty, full = tmp_path / "empty.csv", tmp_path / "full.csv"
    empty.write_text("id,name\n")
    write_rows(full, 5)
    script = write_script(TABLE_SCRIPT)
    alone = tabular_job(dask_client, script, [str(empty)], tmp_path / "o1")
    check_accounting(alone, 0)
    assert alone["message"] == "Job failed: the inputs hold no items to process", alone
    # beside a file with rows, a header-only file is simply zero items
    both = tabular_job(dask_client, script, [str(empty), str(full)], tmp_path / "o2")
    check_accounting(both, 5, expected_lines=[f"{i} n{i}" for i in range(5)], line_re=ROWS_RE)


@dataclass
class BadCsv:
    summary: dict[str, Any]
    out: Path
    ragged: Path
    latin: Path


@pytest.fixture(scope="module")
def bad_csv_job(dask_client: Any, tmp_path_factory: pytest.TempPathFactory) -> BadCsv:
    """One job over two CSVs of 200 and 100 rows: one row too long (file line 152), one too short,
    and one row that is not UTF-8. Only the slices holding the long row and the bad bytes fail."""
    tmp = tmp_path_factory.mktemp("bad-csv")
    ragged, latin, out = tmp / "ragged.csv", tmp / "latin.csv", tmp / "out"
    write_rows(ragged, 200, {150: "150,n150,EXTRA", 20: "20"})
    good = [f"{i},n{i}\n".encode() for i in range(200, 300)]
    good[50] = b"250,\xff\xfe\n"
    latin.write_bytes(b"id,name\n" + b"".join(good))
    script = tmp / "table.py"
    script.write_text(TABLE_SCRIPT)
    summary = run_job(
        ParallelRunConfig(
            entry_script=str(script), mini_batch_size=256, process_count_per_node=2, run_max_try=1
        ),
        [TabularDataset.from_delimited_files([str(ragged), str(latin)])],
        str(out),
        client=dask_client,
        allow_reuse=False,
        cache_dir=str(tmp / "cache"),
    )
    return BadCsv(summary, out, ragged, latin)


def _load_errors(job: BadCsv, path: Path) -> list[str]:
    return [
        r["Error Message"]
        for r in attempts(job.out)
        if r["Status"] == "LOAD_EXCEPTION" and str(path) in r["Error Message"]
    ]


def test_ragged_and_undecodable_csv_fail_only_their_slices(bad_csv_job: BadCsv) -> None:
    summary = bad_csv_job.summary
    lines = check_accounting(summary, 300, line_re=ROWS_RE)
    assert summary["status"] == "succeeded" and summary["failed_mini_batches"] == 2, summary
    assert 0 < summary["failed_items"] < 100, summary
    assert not any(line.startswith(("150 ", "250 ")) for line in lines)
    assert "20 nan" in lines, "a short row is read with the missing field empty (pandas' rule)"
    [ragged] = _load_errors(bad_csv_job, bad_csv_job.ragged)
    assert re.search(
        r"bytes \[\d+, \d+\): cannot parse as csv: .*Expected 2 fields in line \d+, saw 3", ragged
    ), ragged
    [latin] = _load_errors(bad_csv_job, bad_csv_job.latin)
    assert "'utf-8' codec can't decode byte 0xff" in latin, latin
    errors = (bad_csv_job.out / "logs" / "user" / "error.txt").read_text()
    assert errors.count("LOAD_EXCEPTION") == 2, errors


def test_ragged_csv_message_names_the_line_of_the_file(bad_csv_job: BadCsv) -> None:
    [ragged] = _load_errors(bad_csv_job, bad_csv_job.ragged)
    assert "line 152" in ragged, ragged
