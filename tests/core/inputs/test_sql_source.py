"""SqlDataset (`TabularDataset.from_sql_query`) against a real PostgreSQL server (tools/postgres_server.py:
`initdb` + `pg_ctl` as an unprivileged account, on a free 127.0.0.1 port, one server for this module).

Every row exactly once and in key order (a property test against `SELECT ... ORDER BY`, for int, text,
uuid and composite keys); pages that stay put when rows change (a re-run reuses everything, an UPDATE runs
one mini-batch, an INSERT or DELETE one or two); rows that change between planning and reading fail their
attempt with the documented message and no retry; keys refused up front; the password nowhere.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_source_protocol import conform

from airflow_parallel_run.core import ConfigError, InputError, ParallelRunConfig, TabularDataset, run_job
from airflow_parallel_run.core.errors import DataChangedError
from airflow_parallel_run.core.inputs.source import ConnectionInfo, PlanContext
from airflow_parallel_run.core.inputs.sql import KeyRange, SqlDataset
from airflow_parallel_run.core.plan import plan_inputs

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "tools"))
from postgres_server import PostgresServer  # noqa: E402
from postgres_support import throwaway_postgres  # noqa: E402

PASSWORD = "Sql-Src-pw-7c1e9a"
ERRORS_DOC = REPO / "docs" / "errors.md"


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    with throwaway_postgres("apr-sql-test-", PASSWORD) as pg:
        yield pg


@pytest.fixture(scope="module")
def engine(server: PostgresServer) -> Iterator[Any]:
    import sqlalchemy as sa

    eng = sa.create_engine(server.url())
    yield eng
    eng.dispose()


def sql(engine: Any, *statements: str) -> None:
    with engine.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)


def table_name(prefix: str = "t") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def plan_of(source: SqlDataset, size: int = 1 << 20) -> list[Any]:
    return list(source.plan(PlanContext(0, "tabular", size, (), itertools.count())))


def read_all(source: SqlDataset, size: int = 1 << 20) -> pd.DataFrame:
    frames = [source.read(mb, "/nonexistent")[0] for mb in plan_of(source, size)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def reference(engine: Any, query: str, order: str) -> pd.DataFrame:
    with engine.connect() as conn:
        statement = f"SELECT * FROM ({query}) AS r ORDER BY {order}".replace("%", "%%")
        return pd.read_sql_query(statement, conn, params={"unused": 0})  # with parameters, %% is %


# -- the protocol -----------------------------------------------------------------------------------------
def test_sql_source_keeps_the_input_source_contract(server, engine, tmp_path):
    name = table_name()
    sql(engine, f"CREATE TABLE {name} (id int PRIMARY KEY, v text)")
    sql(engine, f"INSERT INTO {name} SELECT g, 'v' || g FROM generate_series(1, 37) g")
    source = TabularDataset.from_sql_query(name, url=server.url(), rows_per_mini_batch=4)
    frames = conform(source, tmp_path, size=1 << 20, expected_items=37)
    assert list(pd.concat(frames)["id"]) == list(range(1, 38))
    assert PASSWORD not in repr(source) and "url" not in repr(source)
    assert source.locations() == (f"postgresql://127.0.0.1:{server.listen_port}/airflow/{name}",)


# -- every row exactly once, in key order -----------------------------------------------------------------
KEY_TYPES = {
    "int": ("bigint", st.integers(-(2**40), 2**40)),
    "text": ("text", st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)),
    "uuid": ("uuid", st.uuids().map(str)),
    # bounds travel as text: exact float text and UTC timestamps must compare back to the same rows
    "float": ("float8", st.floats(allow_nan=False, allow_infinity=False)),
    "timestamptz": (
        "timestamptz",
        st.datetimes(
            min_value=dt.datetime(1900, 1, 1),
            max_value=dt.datetime(2200, 1, 1),
            timezones=st.just(dt.timezone.utc),
        ),
    ),
}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    kind=st.sampled_from(sorted(KEY_TYPES)),
    data=st.data(),
    rows_per_page=st.integers(1, 9),
    as_select=st.booleans(),
)
def test_every_row_once_in_key_order(engine, server, kind, data, rows_per_page, as_select):
    column_type, values = KEY_TYPES[kind]
    keys = data.draw(st.lists(values, max_size=60, unique=True), label="keys")
    name = table_name()
    sql(engine, f"CREATE TABLE {name} (k {column_type} PRIMARY KEY, payload text, n float8)")
    try:
        with engine.begin() as conn:
            for i, key in enumerate(keys):
                conn.exec_driver_sql(
                    f"INSERT INTO {name} VALUES (%(k)s, %(p)s, %(n)s)",
                    {"k": key, "p": f"row {i}%", "n": i / 3},
                )
        query = f"SELECT k, payload, n FROM {name} WHERE payload LIKE 'row%%'" if as_select else name
        query = query.replace("%%", "%")
        source = TabularDataset.from_sql_query(
            query, url=server.url(), key_column="k" if as_select else None, rows_per_mini_batch=rows_per_page
        )
        got = read_all(source)
        want = reference(engine, query if as_select else f"SELECT * FROM {name}", "k")
        assert len(got) == len(want) == len(keys)
        if keys:  # an empty table plans no mini-batch
            pd.testing.assert_frame_equal(got, want, check_dtype=False)
    finally:
        sql(engine, f"DROP TABLE {name}")


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    pairs=st.lists(
        st.tuples(st.sampled_from(["a", "b", "ab", "B", ""]), st.integers(-5, 5)), unique=True, max_size=40
    ),
    rows_per_page=st.integers(1, 6),
)
def test_composite_keys_give_every_row_once_in_key_order(engine, server, pairs, rows_per_page):
    name = table_name()
    sql(engine, f"CREATE TABLE {name} (a text NOT NULL, b int NOT NULL, v text, UNIQUE (a, b))")
    try:
        with engine.begin() as conn:
            for a, b in pairs:
                conn.exec_driver_sql(
                    f"INSERT INTO {name} VALUES (%(a)s, %(b)s, %(v)s)", {"a": a, "b": b, "v": f"{a}/{b}"}
                )
        source = TabularDataset.from_sql_query(name, url=server.url(), rows_per_mini_batch=rows_per_page)
        batches = plan_of(source)
        assert all(mb.pieces[0].columns == ("a", "b") for mb in batches), (
            "the unique index over NOT NULL columns"
        )
        got = read_all(source)
        want = reference(engine, f"SELECT * FROM {name}", "a, b")
        assert len(got) == len(want) == len(pairs)
        if pairs:
            pd.testing.assert_frame_equal(got, want, check_dtype=False)
    finally:
        sql(engine, f"DROP TABLE {name}")


def test_pages_follow_the_target_and_are_capped(engine, server):
    name = table_name()
    sql(engine, f"CREATE TABLE {name} (id int PRIMARY KEY, v text)")
    sql(engine, f"INSERT INTO {name} SELECT g, repeat('x', 100) FROM generate_series(1, 5000) g")
    batches = plan_of(TabularDataset.from_sql_query(name, url=server.url(), rows_per_mini_batch=50))
    sizes = [mb.items for mb in batches]
    assert sum(sizes) == 5000 and max(sizes) <= 200, "capped at 4 x the target"
    assert 40 <= 5000 / len(batches) <= 90, "about one page start in 64 keys (50 rounded to a power of two)"
    # by bytes: mini_batch_size / the rows' average width (about 130 bytes each here)
    by_bytes = plan_of(TabularDataset.from_sql_query(name, url=server.url()), size=64 * 130)
    assert 30 <= 5000 / len(by_bytes) <= 110
    lowers = [mb.pieces[0].lower for mb in batches]
    uppers = [mb.pieces[0].upper for mb in batches]
    assert lowers[0] is None and uppers[-1] is None and lowers[1:] == uppers[:-1], "half-open, unbounded ends"


# -- jobs: reuse and changed rows --------------------------------------------------------------------------
SCORE = """
import os

def run(mini_batch):
    with open(os.environ["CALLS"], "a") as log:
        log.write(f"{int(mini_batch['id'].min())}\\n")
    return mini_batch.assign(score=mini_batch["v"].str.len())[["id", "score"]]
"""


@pytest.fixture
def scores(engine: Any) -> Iterator[str]:
    name = table_name("scores")
    sql(engine, f"CREATE TABLE {name} (id int PRIMARY KEY, v text NOT NULL)")
    sql(engine, f"INSERT INTO {name} SELECT g, repeat('v', mod(g, 7) + 1) FROM generate_series(1, 600) g")
    yield name
    sql(engine, f"DROP TABLE {name}")


def job(script: str, out: Path, calls: Path, dataset: SqlDataset, client: Any, **kw: Any) -> dict[str, Any]:
    planned = kw.pop("planned", None)
    config = ParallelRunConfig(
        entry_script=script,
        append_row_format="csv",
        environment_variables={"CALLS": str(calls), **kw.pop("env", {})},
        run_max_try=kw.pop("run_max_try", 2),
        **kw,
    )
    return run_job(config, [dataset], str(out), client=client, planned=planned)


def calls_of(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def reuse_line(out: Path) -> str:
    return next(
        line for line in (out / "logs/sys/master_role.txt").read_text().splitlines() if "Reuse:" in line
    )


def test_reruns_reuse_everything_and_changed_rows_run_only_their_pages(
    dask_client, engine, server, scores, write_script, tmp_path
):
    script = write_script(SCORE)
    dataset = TabularDataset.from_sql_query(scores, url=server.url(), rows_per_mini_batch=40)
    calls = tmp_path / "calls.txt"
    first = job(script, tmp_path / "o1", calls, dataset, dask_client)
    assert first["status"] == "succeeded", first
    pages = first["total_mini_batches"]
    assert first["total_items"] == 600 and len(calls_of(calls)) == pages > 5
    output = pd.read_csv(Path(first["append_row_file"]))
    assert list(output["id"]) == list(range(1, 601)), "every row once, in key order"

    calls.unlink()
    second = job(script, tmp_path / "o2", calls, dataset, dask_client)
    assert second["reused_mini_batches"] == pages and calls_of(calls) == []
    assert Path(second["append_row_file"]).read_bytes() == Path(first["append_row_file"]).read_bytes()

    # one UPDATE: exactly its page runs
    sql(engine, f"UPDATE {scores} SET v = 'changed' WHERE id = 300")
    third = job(script, tmp_path / "o3", calls, dataset, dask_client)
    assert third["reused_mini_batches"] == pages - 1 and len(calls_of(calls)) == 1
    assert "1 to run: input file postgresql://" in reuse_line(tmp_path / "o3")
    assert f"/{scores} (id >= " in reuse_line(tmp_path / "o3") and " changed" in reuse_line(tmp_path / "o3")
    assert int(calls_of(calls)[0]) <= 300

    # one INSERT and one DELETE inside pages (keys that start no page): one page each
    plan = plan_of(dataset)
    starts = {int(mb.pieces[0].lower[0]) for mb in plan[1:]}
    inner = [i for i in range(2, 600) if i not in starts and i - 1 not in starts and i != 300]
    sql(engine, f"DELETE FROM {scores} WHERE id = {inner[0]}")
    calls.unlink()
    fourth = job(script, tmp_path / "o4", calls, dataset, dask_client)
    assert (fourth["total_mini_batches"], len(calls_of(calls))) == (pages, 1)
    sql(engine, f"INSERT INTO {scores} VALUES ({inner[0]}, 'back')")
    calls.unlink()
    fifth = job(script, tmp_path / "o5", calls, dataset, dask_client)
    assert (fifth["total_mini_batches"], len(calls_of(calls))) == (pages, 1)

    # a new key after the last page that starts a page of its own: the last page and the new one run
    start_key = next(k for k in range(1000, 100000) if _starts_page(engine, k, 40))
    sql(engine, f"INSERT INTO {scores} VALUES ({start_key}, 'new')")
    calls.unlink()
    sixth = job(script, tmp_path / "o6", calls, dataset, dask_client)
    assert sixth["total_mini_batches"] == pages + 1 and len(calls_of(calls)) == 2
    output = pd.read_csv(Path(sixth["append_row_file"]))
    assert list(output["id"]) == [*range(1, 601), start_key]


def _starts_page(engine: Any, key: int, target: int) -> bool:
    """Whether `key` starts a page for `target` rows per page (the planning statement's rule)."""
    bits = round(__import__("math").log2(target))
    with engine.connect() as conn:
        value = conn.exec_driver_sql(
            "SELECT ('x' || right(md5(%(k)s::int::text), 8))::bit(32)::int & %(m)s",
            {"k": key, "m": (1 << bits) - 1},
        ).scalar()
    return value == 0


def test_rows_changed_between_planning_and_reading_fail_without_retry(
    dask_client, engine, server, scores, write_script, tmp_path
):
    script = write_script(SCORE)
    dataset = TabularDataset.from_sql_query(scores, url=server.url(), rows_per_mini_batch=40)
    planned = plan_inputs([dataset])
    changed = next(mb for mb in planned if mb.pieces[0].lower and int(mb.pieces[0].lower[0]) > 100)
    row = int(changed.pieces[0].lower[0])
    sql(engine, f"UPDATE {scores} SET v = 'other' WHERE id = {row}")
    calls = tmp_path / "calls.txt"
    summary = job(script, tmp_path / "out", calls, dataset, dask_client, planned=planned, run_max_try=3)
    assert summary["failed_mini_batches"] == 1 and summary["succeeded_mini_batches"] == len(planned) - 1
    message = (
        f"DataChangedError: the rows of mini-batch {changed.index} ({changed.pieces[0].range_text()}) changed "
        "after the job was planned; run the job again"
    )
    errors = (tmp_path / "out/logs/user/error.txt").read_text()
    assert "1 x LOAD_EXCEPTION: DataChangedError: the rows of mini-batch N" in errors
    traces = "".join(p.read_text() for p in (tmp_path / "out/logs/user/error").rglob("*.txt"))
    assert message in traces
    rows = (tmp_path / "out/logs/sys/job_report/processed_mini-batches.csv").read_text().splitlines()
    assert [line.split(",")[11] for line in rows if line.startswith(f"{changed.index},")] == [
        "LOAD_EXCEPTION"
    ]
    assert str(row) not in calls_of(calls)


def test_session_settings_fix_the_text_rows_are_hashed_by(
    dask_client, engine, server, write_script, tmp_path
):
    """A worker whose libpq environment (PGTZ, PGDATESTYLE) differs from the driver's must hash the same
    text: timestamptz rows would otherwise all look changed."""
    name = table_name()
    sql(engine, f"CREATE TABLE {name} (id int PRIMARY KEY, at timestamptz NOT NULL, v text)")
    sql(
        engine,
        f"INSERT INTO {name} SELECT g, timestamptz '2024-01-01 00:00 UTC' + g * interval '1 hour', 'x' FROM generate_series(1, 50) g",
    )
    script = write_script("def run(mini_batch):\n    return mini_batch[['id', 'at']]\n")
    dataset = TabularDataset.from_sql_query(name, url=server.url(), rows_per_mini_batch=10)
    config = ParallelRunConfig(
        entry_script=script,
        append_row_format="csv",
        environment_variables={"PGTZ": "Asia/Tokyo", "PGDATESTYLE": "SQL, DMY"},
    )
    summary = run_job(config, [dataset], str(tmp_path / "out"), client=dask_client)
    assert summary["status"] == "succeeded", (tmp_path / "out/logs/user/error.txt").read_text()
    output = pd.read_csv(summary["append_row_file"])
    assert list(output["id"]) == list(range(1, 51))
    assert output["at"].iloc[0] == "2024-01-01 01:00:00+00:00"


# -- keys refused up front -----------------------------------------------------------------------------------
def test_keys_that_cannot_page_are_refused_before_any_work(engine, server):
    url = server.url()
    no_key, nulls, dupes = table_name("nokey"), table_name("nulls"), table_name("dupes")
    sql(
        engine,
        f"CREATE TABLE {no_key} (id int, v text)",
        f"INSERT INTO {no_key} VALUES (1, 'a'), (2, 'b')",
        f"CREATE TABLE {nulls} (id int, v text)",
        f"INSERT INTO {nulls} VALUES (1, 'a'), (NULL, 'b'), (NULL, 'c')",
        f"CREATE TABLE {dupes} (id int, v text)",
        f"INSERT INTO {dupes} VALUES (1, 'a'), (7, 'b'), (7, 'c'), (9, 'd')",
    )
    with pytest.raises(
        ConfigError,
        match=f"key_column=None is not allowed: a unique, never-null column .* of {no_key}; it has no primary key",
    ):
        plan_of(TabularDataset.from_sql_query(no_key, url=url))
    with pytest.raises(ConfigError, match="a SELECT needs key_column="):
        plan_of(TabularDataset.from_sql_query(f"SELECT * FROM {no_key}", url=url))
    with pytest.raises(InputError, match=f"key column 'id' of {nulls} is NULL in 2 row"):
        plan_of(TabularDataset.from_sql_query(nulls, url=url, key_column="id"))
    with pytest.raises(InputError, match=f"key id = 7 appears in more than one row of {dupes}"):
        plan_of(TabularDataset.from_sql_query(dupes, url=url, key_column="id"))
    with pytest.raises(InputError, match=r"key \(id, v\) = \(7,b\)|appears in more than one row"):
        plan_of(TabularDataset.from_sql_query(dupes, url=url, key_column=["id"]))
    with pytest.raises(
        ConfigError, match=r"key_column='ID' is not allowed: a column of .* \(they have: id, v\)"
    ):
        plan_of(TabularDataset.from_sql_query(dupes, url=url, key_column="ID"))


def test_a_unique_index_over_nullable_columns_is_no_key(engine, server):
    name = table_name()
    sql(
        engine,
        f"CREATE TABLE {name} (a int UNIQUE, b int NOT NULL, v text)",
        f"CREATE UNIQUE INDEX ON {name} (b)",
    )
    sql(engine, f"INSERT INTO {name} VALUES (1, 10, 'x'), (NULL, 5, 'y')")
    (mb,) = plan_of(TabularDataset.from_sql_query(name, url=server.url()))
    assert mb.pieces[0].columns == ("b",)


# -- credentials ----------------------------------------------------------------------------------------------
def test_a_postgres_connection_becomes_a_psycopg2_url_and_stays_out_of_everything(server):
    uri = f"postgres://airflow:{PASSWORD}@127.0.0.1:{server.listen_port}/airflow?__extra__=x"
    dataset = TabularDataset.from_sql_query("t", conn_id="pg")
    assert dataset.url is None and dataset.storage_options == {}
    with pytest.raises(
        ConfigError,
        match="conn_id='pg' is not allowed: an Airflow connection, which only a job run by Airflow",
    ):
        plan_of(dataset)
    resolved = dataset.with_credentials(
        {}, lambda conn_id: ConnectionInfo(uri, {"sslmode": "disable", "cursor": "x"})
    )
    assert resolved.url == (
        f"postgresql+psycopg2://airflow:{PASSWORD}@127.0.0.1:{server.listen_port}/airflow?sslmode=disable"
    )
    assert PASSWORD in resolved.storage_options.values()
    assert PASSWORD not in json.dumps(resolved.to_dict(credentials=False)) + repr(resolved)
    with pytest.raises(ConfigError) as info:
        TabularDataset.from_sql_query("t", url=f"mysql://u:{PASSWORD}@h/db")
    assert PASSWORD not in str(info.value) and "mysql://u:***@h/db" in str(info.value)
    with pytest.raises(ConfigError, match="this one is of type 'aws'"):
        dataset.with_credentials({}, lambda conn_id: ConnectionInfo(f"aws://k:{PASSWORD}@", {}))


def test_the_password_appears_nowhere(
    dask_client, engine, server, scores, write_script, tmp_path, isolated_cache
):
    """Output, logs (also the resource monitor's process tables), the reuse cache and its manifests."""
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text(PASSWORD)
    perf = str(tmp_path / "out" / "logs" / "perf")
    script = write_script(f"""
        import subprocess, sys
        child = None

        def init():
            global child  # a process whose command line holds the password, as a careless script might
            secret = open({str(secret_file)!r}).read()
            # alive until shutdown(): a child that ended after 30 s could end before any table showed it,
            # and each run() below then waited its whole deadline (the suite's 300 s timeout, once)
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30 * 60)", secret])

        def run(mini_batch):
            # until the resource monitor has written a table holding the child's command line (it samples
            # as soon as init() is done): a fixed sleep raced the monitor's thread on a loaded machine,
            # and the check below then proved nothing; 30 s, under run_invocation_timeout
            import glob, os, time
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                tables = [p for p in glob.glob({perf!r} + "/**/*", recursive=True) if os.path.isfile(p)]
                if any("time.sleep(30 * 60)" in open(p, errors="replace").read() for p in tables):
                    break
                time.sleep(0.1)
            return mini_batch[["id"]]

        def shutdown():
            child.kill()
    """)
    dataset = TabularDataset.from_sql_query(scores, url=server.url(), rows_per_mini_batch=100)
    config = ParallelRunConfig(entry_script=script, resource_monitor_interval=0.2, process_count_per_node=1)
    summary = run_job(config, [dataset], str(tmp_path / "out"), client=dask_client)
    assert summary["status"] == "succeeded"
    assert PASSWORD not in json.dumps(summary)
    perf = list((tmp_path / "out/logs").rglob("perf/**/*"))
    assert any("time.sleep(30 * 60)" in p.read_text(errors="replace") for p in perf if p.is_file()), (
        "monitor saw it"
    )
    for root in (tmp_path / "out", isolated_cache):
        for path in root.rglob("*"):
            if path.is_file():
                assert PASSWORD.encode() not in path.read_bytes(), path


# -- errors.md -------------------------------------------------------------------------------------------------
def documented() -> list[str]:
    text = ERRORS_DOC.read_text(encoding="utf-8")
    start = text.index("## 8. SQL inputs")
    section = text[start : text.index("\n## ", start + 1)]  # up to the next section
    return re.findall(r"```\n(.*?)\n```", section, flags=re.S)


def test_errors_doc_lists_exactly_the_sql_messages(dask_client, engine, server, write_script, tmp_path):
    url = server.url()
    shown = url.replace(f":{server.listen_port}", ":<port>")
    found: list[str] = []

    def error(call: Any, kind: type[Exception] = ConfigError) -> None:
        with pytest.raises(kind) as info:
            call()
        found.append(str(info.value).replace(url, shown).replace(str(server.listen_port), "<port>"))

    sql(
        engine,
        "DROP TABLE IF EXISTS readings, events",
        "CREATE TABLE readings (sensor text, at int, value float8)",
        "INSERT INTO readings VALUES ('a', 1, 0.5), ('a', 1, 0.7), ('b', NULL, 1.0)",
        "CREATE TABLE events (id int PRIMARY KEY, v text)",
        "INSERT INTO events SELECT g, 'e' FROM generate_series(1, 30) g",
    )
    error(lambda: TabularDataset.from_sql_query("readings"))
    error(lambda: TabularDataset.from_sql_query("readings", url="mysql://scorer:secret@db.example/sales"))
    error(lambda: plan_of(TabularDataset.from_sql_query("readings", conn_id="warehouse")))
    error(lambda: plan_of(TabularDataset.from_sql_query("readings", url=url)))
    error(lambda: plan_of(TabularDataset.from_sql_query("SELECT * FROM readings WHERE value > 0", url=url)))
    error(lambda: plan_of(TabularDataset.from_sql_query("readings", url=url, key_column="Sensor")))
    error(lambda: plan_of(TabularDataset.from_sql_query("readings", url=url, key_column="at")), InputError)
    error(
        lambda: plan_of(TabularDataset.from_sql_query("readings", url=url, key_column="sensor")), InputError
    )
    error(
        lambda: plan_of(
            TabularDataset.from_sql_query(
                "SELECT pg_sleep(2), 1 AS id", url=url, key_column="id", query_timeout=0.5
            )
        ),
        InputError,
    )
    dataset = TabularDataset.from_sql_query("events", url=url, rows_per_mini_batch=8)
    planned = plan_inputs([dataset])
    page = planned.mini_batches[1]
    sql(engine, f"UPDATE events SET v = 'changed' WHERE id = {page.pieces[0].lower[0]}")
    script = write_script("def run(mini_batch):\n    return mini_batch[['id']]\n")
    run_job(
        ParallelRunConfig(entry_script=script),
        [dataset],
        str(tmp_path / "out"),
        client=dask_client,
        planned=planned,
    )
    errors = "".join(p.read_text() for p in (tmp_path / "out/logs/user/error").rglob("*.txt"))
    message = re.search(r"DataChangedError: (.*)", errors)
    assert message is not None
    found.append(
        message.group(1)
        .replace(str(page.pieces[0].lower[0]), "<lower>")
        .replace(str(page.pieces[0].upper[0]), "<upper>")
    )
    assert documented() == found


def test_key_range_reads_back_from_a_manifest():
    from airflow_parallel_run.core.minibatch import MiniBatch

    piece = KeyRange("postgresql://h:1/db", "t", ("a", "b"), ("x", "1"), None, 3, "d" * 32)
    mb = MiniBatch(0, "tabular", 0, 3, pieces=(piece,))
    again = MiniBatch.from_dict(json.loads(json.dumps(mb.to_dict())))
    assert again == mb and again.label() == "t ((a, b) >= (x, 1))"


def test_cli_reads_a_table_by_url(engine, server, write_script, tmp_path):
    name = table_name()
    sql(
        engine,
        f"CREATE TABLE {name} (id int PRIMARY KEY, v text)",
        f"INSERT INTO {name} SELECT g, 'v' FROM generate_series(1, 20) g",
    )
    script = write_script("def run(mini_batch):\n    return mini_batch[['id']]\n")
    dataset = json.dumps({"type": "SqlDataset", "query": name, "url": server.url(), "rows_per_mini_batch": 5})
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "airflow_parallel_run.cli",
            "run",
            "--entry-script",
            script,
            "--dataset",
            dataset,
            "--output",
            str(tmp_path / "out"),
            "--append-row-format",
            "csv",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["total_items"] == 20
    assert PASSWORD not in done.stdout + done.stderr


def test_queries_ending_in_a_comment_and_odd_names(engine, server):
    """A query is wrapped as a subquery: a trailing `--` comment must not swallow the closing parenthesis;
    table and key names are quoted exactly (spaces, capitals, quotes)."""
    name = f'Odd "{uuid.uuid4().hex[:6]}" Table'
    quoted = '"' + name.replace('"', '""') + '"'
    sql(engine, f'CREATE TABLE {quoted} ("Key ""x""" int PRIMARY KEY, "Value" text)')
    sql(engine, f"INSERT INTO {quoted} SELECT g, 'v' FROM generate_series(1, 30) g")
    by_table = read_all(TabularDataset.from_sql_query(quoted, url=server.url(), rows_per_mini_batch=4))
    assert list(by_table['Key "x"']) == list(range(1, 31))
    query = f"SELECT * FROM {quoted} WHERE \"Value\" = 'v' -- only the v rows"
    source = TabularDataset.from_sql_query(
        query, url=server.url(), key_column='Key "x"', rows_per_mini_batch=4
    )
    assert list(read_all(source)['Key "x"']) == list(range(1, 31))


def test_manifest_verification_rehashes_the_pages(engine, server, scores, tmp_path):
    from airflow_parallel_run.core.inputs.fingerprint import Fingerprinter

    source = TabularDataset.from_sql_query(scores, url=server.url(), rows_per_mini_batch=40)
    batches = plan_of(source)
    with Fingerprinter(str(tmp_path / "memo.sqlite")) as memo:
        recorded = source.recorded_fingerprints(batches, memo)
        assert source.changes(batches, recorded, memo) == []
        sql(engine, f"UPDATE {scores} SET v = 'x' WHERE id = 42")
        (change,) = source.changes(batches, recorded, memo)
    page = next(mb.pieces[0] for mb in batches if mb.pieces[0].unit == change.url)
    assert change.what == "changed" and (page.lower is None or int(page.lower[0]) <= 42)


def test_a_read_slower_than_query_timeout_names_the_mini_batch(engine, server):
    name, flag = table_name(), table_name("flag")
    sql(
        engine,
        f"CREATE TABLE {name} (id int PRIMARY KEY, v text)",
        f"INSERT INTO {name} SELECT g, 'v' FROM generate_series(1, 20) g",
        f"CREATE TABLE {flag} (slow bool)",
        f"INSERT INTO {flag} VALUES (false)",
    )
    query = f"SELECT id, v FROM {name}, LATERAL (SELECT pg_sleep(CASE WHEN (SELECT slow FROM {flag}) THEN 1 ELSE 0 END)) s"
    source = TabularDataset.from_sql_query(
        query, url=server.url(), key_column="id", query_timeout=0.5, rows_per_mini_batch=4
    )
    (first, *_) = plan_of(source)
    sql(engine, f"UPDATE {flag} SET slow = true")
    with pytest.raises(
        InputError,
        match=r"reading mini-batch 0 of query \w+ \(id < \d+\) took longer than query_timeout=0.5 s",
    ):
        source.read(first, "/nonexistent")


def test_a_manifest_of_a_sql_input_keeps_no_password_and_verifies_its_pages(engine, server, scores, tmp_path):
    from airflow_parallel_run.core.inputs.fingerprint import Fingerprinter
    from airflow_parallel_run.core.plan.manifest import (
        InputChangedError,
        fingerprint_plan,
        load_manifest,
        verify_manifest,
        write_manifest,
    )

    source = TabularDataset.from_sql_query(scores, url=server.url(), rows_per_mini_batch=40)
    planned = plan_inputs([source])
    url = str(tmp_path / "manifest.json")
    with Fingerprinter(str(tmp_path / "memo.sqlite")) as memo:
        write_manifest(url, [source], planned, fingerprint_plan(planned, [source], memo))
        assert PASSWORD.encode() not in Path(url).read_bytes()
        manifest = load_manifest(url)
        assert manifest.plan.mini_batches == planned.mini_batches and manifest.datasets[0].url is None
        with pytest.raises(ConfigError, match="url=None is not allowed: a database URL: manifests keep no"):
            verify_manifest(manifest, memo)
        manifest = type(manifest)(manifest.url, [source], manifest.plan, manifest.fingerprints)
        verify_manifest(manifest, memo)
        sql(engine, f"UPDATE {scores} SET v = 'x' WHERE id = 7")
        with pytest.raises(InputChangedError, match=f"/{scores} \\(id < "):
            verify_manifest(manifest, memo)


def test_a_renamed_column_is_a_change(dask_client, engine, server, write_script, tmp_path):
    """Row text does not name columns: without the columns' names and types in the key, a renamed column
    reused every page, and the output kept the old name."""
    name = table_name()
    sql(
        engine,
        f"CREATE TABLE {name} (id int PRIMARY KEY, v text)",
        f"INSERT INTO {name} SELECT g, 'v' FROM generate_series(1, 30) g",
    )
    script = write_script("def run(mini_batch):\n    return mini_batch\n")
    dataset = TabularDataset.from_sql_query(name, url=server.url(), rows_per_mini_batch=8)
    config = ParallelRunConfig(entry_script=script, append_row_format="csv")
    first = run_job(config, [dataset], str(tmp_path / "o1"), client=dask_client)
    assert pd.read_csv(first["append_row_file"]).columns.tolist() == ["id", "v"]
    planned = plan_inputs([dataset])
    sql(engine, f"ALTER TABLE {name} RENAME COLUMN v TO label")
    with pytest.raises(
        DataChangedError, match="the rows of mini-batch 0 .* changed after the job was planned"
    ):
        dataset.read(planned.mini_batches[0], "/nonexistent")
    second = run_job(config, [dataset], str(tmp_path / "o2"), client=dask_client)
    assert second["reused_mini_batches"] == 0
    assert pd.read_csv(second["append_row_file"]).columns.tolist() == ["id", "label"]


def test_deleting_a_page_start_in_the_middle_runs_the_pages_after_it(
    dask_client, engine, server, scores, write_script, tmp_path
):
    """What README says: a removed page start merges two pages, so the mini-batch numbers after it move, and
    `run()` sees its number (`mini_batch_context.minibatch_index`, in the key): those pages run again."""
    script = write_script(SCORE)
    dataset = TabularDataset.from_sql_query(scores, url=server.url(), rows_per_mini_batch=40)
    calls = tmp_path / "calls.txt"
    first = job(script, tmp_path / "o1", calls, dataset, dask_client)
    pages = first["total_mini_batches"]
    middle = plan_of(dataset)[pages // 2]
    sql(engine, f"DELETE FROM {scores} WHERE id = {middle.pieces[0].lower[0]}")
    calls.unlink()
    second = job(script, tmp_path / "o2", calls, dataset, dask_client)
    assert second["total_mini_batches"] == pages - 1
    assert len(calls_of(calls)) == pages - middle.index, "the merged page and every page after it"
    assert second["reused_mini_batches"] == middle.index - 1


def test_pyarrow_batches_of_sql_rows(dask_client, engine, server, scores, write_script, tmp_path):
    """batch_format="pyarrow": run() gets each keyset page as a pyarrow Table and may return one."""
    script = write_script("""
        import pyarrow as pa
        import pyarrow.compute as pc

        def run(mini_batch):
            assert isinstance(mini_batch, pa.Table), type(mini_batch)
            return pa.table({"id": mini_batch["id"], "score": pc.utf8_length(mini_batch["v"])})
    """)
    dataset = TabularDataset.from_sql_query(scores, url=server.url(), rows_per_mini_batch=100)
    summary = job(script, tmp_path / "out", tmp_path / "calls", dataset, dask_client, batch_format="pyarrow")
    assert summary["status"] == "succeeded" and summary["total_mini_batches"] > 3, summary
    back = pd.read_csv(summary["append_row_file"])
    assert back["id"].tolist() == list(range(1, 601))
    assert back["score"].tolist() == [i % 7 + 1 for i in range(1, 601)]
