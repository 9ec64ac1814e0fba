"""A throw-away PostgreSQL server for the tests that read SQL inputs (tools/postgres_server.py)."""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from postgres_server import PostgresServer  # noqa: E402


@contextlib.contextmanager
def throwaway_postgres(prefix: str, password: str) -> Iterator[PostgresServer]:
    """A started server in a new temp folder (readable by the server's account), stopped and removed after."""
    home = Path(tempfile.mkdtemp(prefix=prefix))
    home.chmod(0o755)  # the server account must reach it
    pg = PostgresServer(location=home / "postgres", password=password)
    pg.start()
    try:
        yield pg
    finally:
        pg.stop()
        shutil.rmtree(home, ignore_errors=True)
