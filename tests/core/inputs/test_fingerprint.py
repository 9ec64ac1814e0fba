"""The fingerprint memo is shared by every job that uses a cache: jobs that open a new one at the same
moment must all get it (two deferred jobs submitted together once failed with 'database is locked')."""

from __future__ import annotations

import threading
from pathlib import Path

from airflow_parallel_run.core.inputs.fingerprint import Fingerprinter


def test_many_jobs_opening_a_new_memo_at_once_all_get_it(tmp_path: Path) -> None:
    failures: list[str] = []
    for trial in range(200):
        path = str(tmp_path / f"memo{trial}.sqlite")
        barrier = threading.Barrier(12)

        def open_memo(path: str = path, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            try:
                Fingerprinter(path).close()
            except Exception as exc:  # noqa: BLE001 - collected for the assertion
                failures.append(f"{type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=open_memo) for _ in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert failures == []


def test_the_memo_is_in_wal_mode_and_remembers(tmp_path: Path) -> None:
    data = tmp_path / "a.txt"
    data.write_text("abc")
    with Fingerprinter(str(tmp_path / "memo.sqlite")) as memo:
        assert memo._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        first = memo.local_file(str(data))
    with Fingerprinter(str(tmp_path / "memo.sqlite")) as memo:
        assert memo.local_file(str(data)) == first and memo.hashed_bytes == 0
