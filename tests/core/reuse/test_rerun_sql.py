"""Re-running the failed pages of a SQL input (real PostgreSQL, real LocalCluster): the failed items are key
ranges, neither they nor the job record hold the database password, and the re-run completes the output."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from distributed import Client
from flaky_failures import flaky
from test_rerun_failed import TABULAR_SCRIPT

from airflow_parallel_run.core import ParallelRunConfig, TabularDataset, run_job
from airflow_parallel_run.core.logs.failed_items import read_failed_items
from airflow_parallel_run.core.reuse.rerun import PreviousJob

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "tools"))
from postgres_server import PostgresServer  # noqa: E402
from postgres_support import throwaway_postgres  # noqa: E402

PASSWORD = "Rerun-pw-5d2b81"


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    with throwaway_postgres("apr-rerun-sql-", PASSWORD) as pg:
        yield pg


def test_rerun_of_failed_key_ranges(
    server: PostgresServer, tmp_path: Path, dask_client: Client, write_script: Callable[..., str]
) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(server.url())
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE scores (id int PRIMARY KEY, value text)"))
        conn.execute(sa.text("INSERT INTO scores SELECT i, 'v' || i FROM generate_series(1, 60) AS i"))
    engine.dispose()
    assert PASSWORD in server.url()
    dataset = TabularDataset.from_sql_query("scores", url=server.url(), rows_per_mini_batch=10)
    config = ParallelRunConfig(
        entry_script=write_script(TABULAR_SCRIPT), run_max_try=1, process_count_per_node=2
    )
    arguments = ["--fail-list", flaky(tmp_path / "fail.txt"), "--calls", str(tmp_path / "calls.txt")]
    (tmp_path / "fail.txt").write_text("15 42")
    out = tmp_path / "out"

    first = run_job(config, [dataset], str(out), arguments=arguments, client=dask_client)
    failed = read_failed_items(str(out / "logs"))
    ranges = [(int(line["item"]["lower"][0]), int(line["item"]["upper"][0])) for line in failed]
    assert len(ranges) == 2 and ranges[0][0] <= 15 < ranges[0][1] and ranges[1][0] <= 42 < ranges[1][1], (
        ranges
    )
    assert (
        first["failed_items"] == sum(line["item"]["rows"] for line in failed) == sum(b - a for a, b in ranges)
    )
    assert {line["item"]["relation"] for line in failed} == {"scores"}
    for path in out.joinpath("logs").rglob("*"):  # no log file holds the password, the new ones included
        if path.is_file():
            assert PASSWORD.encode() not in path.read_bytes(), path

    (tmp_path / "fail.txt").write_text("")
    (tmp_path / "calls.txt").unlink()
    previous = PreviousJob.load(str(out))
    second = run_job(
        config,
        [dataset],
        str(out),
        arguments=arguments,
        client=dask_client,
        rerun=previous,
        planned=previous.plan,
    )
    assert second["status"] == "succeeded", second
    assert second["reused_mini_batches"] == second["total_mini_batches"] - 2, second
    ran = sorted(int(i) for i in (tmp_path / "calls.txt").read_text().split())
    assert ran == [i for a, b in ranges for i in range(a, b)]  # exactly the rows of the failed key ranges
    expected = "".join(f"{i} v{i}\n" for i in range(1, 61)).encode()
    assert Path(second["append_row_file"]).read_bytes() == expected
