"""The stack's PostgreSQL server (tools/postgres_server.py) on its own: a real `initdb` + `pg_ctl` cluster.

Throw-away clusters are deleted at stop; kept ones keep their data; a server left running by a killed
owner is replaced; only the `airflow` role with its password gets in; as root the server runs as an
unprivileged account, also when the home is in a folder only root can enter.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg2
import pytest
from e2e_rest import REPO

sys.path.insert(0, str(REPO / "tools"))
from postgres_server import PostgresError, PostgresServer, postmaster_pid  # noqa: E402

PASSWORD = "pg-test-password"


def _query(server: PostgresServer, sql: str, password: str = PASSWORD) -> list[tuple[object, ...]]:
    connection = psycopg2.connect(
        host="127.0.0.1",
        port=server.listen_port,
        user="airflow",
        password=password,
        dbname="airflow",
        connect_timeout=10,
    )
    with connection, connection.cursor() as cursor:
        cursor.execute(sql)
        rows = list(cursor.fetchall()) if cursor.description else []
    connection.close()
    return rows


@pytest.fixture
def home() -> Iterator[Path]:
    """A home whose parents every account can enter (pytest's tmp_path is in a 0700 folder)."""
    folder = Path(tempfile.mkdtemp(prefix="apr-pg-test-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_throwaway_cluster_serves_and_is_deleted_at_stop(home: Path) -> None:
    server = PostgresServer(location=home / "postgres", password=PASSWORD)
    server.start()
    try:
        assert server.version.startswith("PostgreSQL ")
        assert _query(server, "SELECT current_user, current_database()") == [("airflow", "airflow")]
        assert _query(server, "SHOW fsync") == [("off",)], "throw-away: no fsync"
        assert _query(server, "SHOW listen_addresses") == [("127.0.0.1",)]
        pid = server.pid
        assert pid is not None
        owner = psutil.Process(pid).uids().effective
        if os.geteuid() == 0:
            assert owner == pwd.getpwnam("postgres").pw_uid, "never root"
            assert (home / "postgres").stat().st_uid == owner
        else:
            assert owner == os.geteuid()
        with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
            _query(server, "SELECT 1", password="wrong")
    finally:
        server.stop()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not (home / "postgres").exists()


def test_kept_cluster_keeps_its_data_and_a_stale_server_is_replaced(home: Path) -> None:
    server = PostgresServer(location=home / "postgres", password=PASSWORD, keep=True)
    server.start()
    _query(server, "CREATE TABLE marker (value text); INSERT INTO marker VALUES ('kept')")
    assert _query(server, "SHOW fsync") == [("on",)], "a kept cluster is durable"
    stale = server.pid
    # Its owner is gone (no stop()): the next start on the same folder replaces the running server.
    again = PostgresServer(location=home / "postgres", password=PASSWORD, keep=True)
    again.start()
    try:
        assert again.pid != stale
        assert not psutil.pid_exists(stale) or psutil.Process(stale).status() == psutil.STATUS_ZOMBIE
        assert _query(again, "SELECT value FROM marker") == [("kept",)]
    finally:
        again.stop()
    assert (home / "postgres" / "PG_VERSION").is_file()
    assert postmaster_pid(home / "postgres") is None


@pytest.mark.skipif(os.geteuid() != 0, reason="only root has homes the server account cannot enter")
def test_home_only_root_can_enter_gets_a_linked_private_folder(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    server = PostgresServer(location=private / "home" / "postgres", password=PASSWORD)
    server.start()
    try:
        link = private / "home" / "postgres"
        assert link.is_symlink()
        target = link.resolve()
        assert target.stat().st_uid == pwd.getpwnam("postgres").pw_uid
        assert _query(server, "SELECT 1") == [(1,)]
    finally:
        server.stop()
    assert not link.exists() and not link.is_symlink() and not target.exists()


def test_a_root_account_is_refused(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the account setting only matters as root")
    monkeypatch.setenv("AIRFLOW_STACK_POSTGRES_USER", "root")
    with pytest.raises(PostgresError, match="needs an unprivileged account"):
        PostgresServer(location=home / "postgres", password=PASSWORD)
    monkeypatch.setenv("AIRFLOW_STACK_POSTGRES_USER", "no-such-account-apr")
    with pytest.raises(PostgresError, match="make postgres"):
        PostgresServer(location=home / "postgres", password=PASSWORD)


def test_server_survives_the_owners_terminal_signals(home: Path) -> None:
    """pg_ctl starts the postmaster in a session of its own: Ctrl-C in the owner's terminal (SIGINT to
    the owner's process group) must not take the database down before the stack stops it."""
    script = (
        "import sys, time; sys.path.insert(0, sys.argv[1]);"
        "from postgres_server import PostgresServer;"
        "s = PostgresServer(location=sys.argv[2], password='x', keep=True); s.start();"
        "print(s.pid, flush=True); time.sleep(60)"
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", script, str(REPO / "tools"), str(home / "postgres")],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert owner.stdout is not None
        pid = int(owner.stdout.readline())
        os.killpg(owner.pid, signal.SIGINT)
        owner.wait(10)
        time.sleep(1)
        assert psutil.Process(pid).status() != psutil.STATUS_ZOMBIE, "the server is still up"
    finally:
        owner.kill()
        PostgresServer(location=home / "postgres", password="x").stop()
    assert not (home / "postgres").exists()
