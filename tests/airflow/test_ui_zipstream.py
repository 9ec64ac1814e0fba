"""The streaming zip writer of the logs download: valid archives, bounded memory, unreadable files named."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from airflow_parallel_run.ui.zipstream import CHUNK, ZipEntry, stream_zip

#: Zips big, small and empty (argv 2-4) into argv 1 as the logs download does; prints the largest piece and
#: the peak of Python's allocations meanwhile.
ZIP_PROBE = r"""
import os, sys, tracemalloc
from airflow_parallel_run.ui.zipstream import ZipEntry, stream_zip
sink, big, small, empty = sys.argv[1:5]
def entry(path, name):
    return ZipEntry(name, lambda: open(path, "rb"), os.path.getsize(path), os.path.getmtime(path))
entries = [entry(big, "logs/big.bin"), entry(small, "logs/user/small.txt"), entry(empty, "logs/empty.txt")]
tracemalloc.start()
largest = 0
with open(sink, "wb") as out:
    for chunk in stream_zip(entries):
        largest = max(largest, len(chunk))
        out.write(chunk)
print(largest, tracemalloc.get_traced_memory()[1])
"""


def _entry(path: Path, name: str | None = None) -> ZipEntry:
    return ZipEntry(name or path.name, lambda: open(path, "rb"), path.stat().st_size, path.stat().st_mtime)


def test_archive_round_trips_and_chunks_stay_small(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    with open(big, "wb") as handle:
        for _ in range(48):
            handle.write(os.urandom(1 << 20))  # incompressible: the deflated entry is as large
    small = tmp_path / "small.txt"
    small.write_text("hello\n" * 1000)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    sink = tmp_path / "out.zip"
    # measured in a process of its own: tracemalloc in this one also counts what other threads allocate
    done = subprocess.run(
        [sys.executable, "-c", ZIP_PROBE, str(sink), str(big), str(small), str(empty)],
        capture_output=True,
        text=True,
        check=True,
    )
    largest, peak = (int(value) for value in done.stdout.split())
    assert largest < 3 * CHUNK, "each piece is about one read chunk, never the whole archive"
    assert peak < 12 * CHUNK, f"peak {peak} bytes while zipping 48 MiB"
    with zipfile.ZipFile(sink) as archive:
        assert archive.testzip() is None
        assert archive.namelist() == ["logs/big.bin", "logs/user/small.txt", "logs/empty.txt"]
        assert archive.read("logs/user/small.txt") == small.read_bytes()
        assert archive.read("logs/empty.txt") == b""
        with archive.open("logs/big.bin") as member, open(big, "rb") as original:
            while block := member.read(CHUNK):
                assert block == original.read(len(block))


def test_unreadable_files_are_named_not_fatal(tmp_path: Path) -> None:
    good = tmp_path / "good.txt"
    good.write_text("ok\n")

    def gone() -> io.BufferedReader:
        raise FileNotFoundError(2, "No such file or directory", str(tmp_path / "gone.txt"))

    entries = [ZipEntry("logs/gone.txt", gone), _entry(good, "logs/good.txt")]
    data = b"".join(stream_zip(entries))
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.namelist() == ["logs/good.txt", "UNREADABLE_FILES.txt"]
        assert "logs/gone.txt: FileNotFoundError" in archive.read("UNREADABLE_FILES.txt").decode()


def test_an_empty_folder_gives_an_empty_valid_archive() -> None:
    with zipfile.ZipFile(io.BytesIO(b"".join(stream_zip([])))) as archive:
        assert archive.namelist() == []
