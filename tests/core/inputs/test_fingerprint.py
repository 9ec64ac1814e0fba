"""The fingerprint memo is shared by every job that uses a cache: jobs that open a new one at the same
moment must all get it (two deferred jobs submitted together once failed with 'database is locked')."""

from __future__ import annotations

import ctypes
import os
import threading
import tracemalloc
from pathlib import Path

import pytest
import xxhash

from airflow_parallel_run.core.inputs import fingerprint
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


# -- a memo hit is only an unchanged file: size, mtime_ns and inode as the memo saw them ---------------------


def _xxh3(data: bytes) -> str:
    import xxhash

    return f"xxh3:{xxhash.xxh3_128_hexdigest(data)}"


def test_a_memo_hit_needs_the_same_size_mtime_and_inode(tmp_path: Path) -> None:
    """Each way a file can change behind the memo's back is seen by a job that opens the memo again (as
    every re-run does): new bytes of the same size with a new mtime, and a file put in its place (a new
    inode) with the old one's size and mtime_ns. An unchanged file is a hit, never read."""
    import os

    folder = tmp_path / "in"
    folder.mkdir()
    paths = [str(folder / f"{i}.bin") for i in range(5)]
    for i, path in enumerate(paths):
        Path(path).write_bytes(bytes([i]) * 100)
    memo_file = str(tmp_path / "memo.sqlite")
    with Fingerprinter(memo_file) as memo:
        before = memo.local_files(paths)
    assert before == {p: _xxh3(Path(p).read_bytes()) for p in paths}

    stat = os.stat(paths[1])  # 1: same size, new bytes, a new mtime
    Path(paths[1]).write_bytes(b"x" * 100)
    os.utime(paths[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    stat = os.stat(
        paths[2]
    )  # 2: another file renamed over it, with its size and mtime_ns: only the inode differs
    replacement = folder / "replacement.tmp"
    replacement.write_bytes(b"y" * 100)
    os.utime(replacement, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(replacement, paths[2])
    assert os.stat(paths[2]).st_mtime_ns == stat.st_mtime_ns and os.stat(paths[2]).st_ino != stat.st_ino

    with Fingerprinter(memo_file) as memo:
        after = memo.local_files(paths)
        assert memo.hashed_bytes == 200  # the two changed files, no other
    assert after == {p: _xxh3(Path(p).read_bytes()) for p in paths}
    assert [p for p in paths if after[p] != before[p]] == [paths[1], paths[2]]


def test_many_keys_each_url_once_in_first_seen_order(tmp_path: Path) -> None:
    """`many` takes the listing's plain paths, file:// URLs and store URLs in one call: each URL once (a
    file named twice is not a second entry), in the order first seen, local and store fingerprints alike."""
    import fsspec

    from airflow_parallel_run.core.minibatch import FileRef

    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.txt").write_text(name * 3)
    remote = "memory://apr-fingerprint-many/r.txt"
    with fsspec.open(remote, "wb") as handle:
        handle.write(b"remote")
    refs = [
        FileRef(str(tmp_path / "b.txt"), 3),
        FileRef(remote, 6),
        FileRef(f"file://{tmp_path / 'a.txt'}", 3),
        FileRef(str(tmp_path / "b.txt"), 3),
        FileRef(str(tmp_path / "c.txt"), 3),
    ]
    with Fingerprinter(str(tmp_path / "memo.sqlite")) as memo:
        found = memo.many(refs)
    assert list(found) == [
        str(tmp_path / "b.txt"),
        f"file://{tmp_path / 'a.txt'}",
        str(tmp_path / "c.txt"),
        remote,
    ]
    assert found == {
        str(tmp_path / "b.txt"): _xxh3(b"bbb"),
        f"file://{tmp_path / 'a.txt'}": _xxh3(b"aaa"),
        str(tmp_path / "c.txt"): _xxh3(b"ccc"),
        remote: _xxh3(b"remote"),
    }


def _xxh3(data: bytes) -> str:
    import xxhash

    return f"xxh3:{xxhash.xxh3_128_hexdigest(data)}"


def _plan(path: Path, fmt: str = "csv") -> None:
    from airflow_parallel_run.core.inputs.tabular import TabularDataset
    from airflow_parallel_run.core.inputs.tabular_scan import plan_tabular_file

    dataset = (
        TabularDataset.from_delimited_files(str(path))
        if fmt == "csv"
        else TabularDataset.from_json_lines_files(str(path))
    )
    plan_tabular_file(str(path), path.stat().st_size, dataset, 64)


def _no_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(path: str) -> str:
        raise AssertionError(f"{path} was read again to be hashed")

    monkeypatch.setattr(fingerprint, "_hash_local", refuse)


@pytest.mark.parametrize(
    ("name", "data", "fmt"),
    [
        ("a.csv", b"x,y\n" + b"".join(b'%d,"v%d"\n' % (i, i) for i in range(500)), "csv"),
        ("bom.csv", b"\xef\xbb\xbfx,y\n1,2\n", "csv"),  # the mark is hashed as it is on disk
        ("b.jsonl", b"".join(b'{"a": %d}\n' % i for i in range(300)), "jsonl"),
    ],
)
def test_a_file_the_planner_read_is_not_read_again_to_be_hashed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, data: bytes, fmt: str
) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    _plan(path, fmt)
    _no_reading(monkeypatch)
    with Fingerprinter(str(tmp_path / "memo.sqlite")) as memo:
        assert memo.local_file(str(path)) == _xxh3(data)
        assert memo.hashed_bytes == 0
    with Fingerprinter(str(tmp_path / "memo.sqlite")) as memo:  # and the memo has it for the next job
        assert memo.local_file(str(path)) == _xxh3(data)


def test_a_file_changed_after_the_planner_read_it_is_hashed_as_it_is_now(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_bytes(b"x\n1\n2\n")
    _plan(path)
    path.write_bytes(b"x\n3\n4\n")  # same size
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    with Fingerprinter(str(tmp_path / "memo.sqlite")) as memo:
        assert memo.local_file(str(path)) == _xxh3(b"x\n3\n4\n")


def test_a_file_changed_while_the_planner_read_it_is_not_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The planner hashed bytes of the file as it was before the change (and some after): that hash is of no
    version of the file, so it is dropped and the file is hashed again."""
    path = tmp_path / "a.csv"
    path.write_bytes(b"x\n" + b"1\n" * 5000)
    real = fingerprint.HashWhileReading.update
    changed = []

    def update(self: fingerprint.HashWhileReading, data: bytes) -> None:
        real(self, data)
        if not changed:
            with open(path, "r+b") as handle:
                handle.seek(0, os.SEEK_END)
                handle.write(b"9\n")
            changed.append(True)

    monkeypatch.setattr(fingerprint.HashWhileReading, "update", update)
    monkeypatch.setattr("airflow_parallel_run.core.inputs.tabular_scan._CHUNK_BYTES", 1000)
    _plan(path)
    assert changed
    with Fingerprinter(str(tmp_path / "memo.sqlite")) as memo:
        assert memo.local_file(str(path)) == _xxh3(path.read_bytes())
        assert memo.hashed_bytes == path.stat().st_size


def test_large_files_are_hashed_side_by_side(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Eight files were one task of the hashing pool, hashed one after another on one core."""
    paths = []
    for i in range(8):
        paths.append(tmp_path / f"f{i}.bin")
        paths[-1].write_bytes(bytes([i]) * 1000)
    together = threading.Barrier(2, timeout=20)
    alone = []
    real = fingerprint._hash_local

    def hash_local(path: str) -> str:
        try:
            together.wait()  # files are hashed two at a time, by two threads (8 waits: 4 pairs)
        except threading.BrokenBarrierError:
            alone.append(path)  # nobody else was hashing: one file after another
        return real(path)

    monkeypatch.setattr(fingerprint, "_hash_local", hash_local)
    with Fingerprinter(str(tmp_path / "memo.sqlite")) as memo:
        hashes = memo.local_files([str(p) for p in paths])
    assert hashes == {str(p): _xxh3(p.read_bytes()) for p in paths}
    assert alone == []


def test_a_reused_read_buffer_hashes_each_file_as_it_is(tmp_path: Path) -> None:
    """Files of every size around the chunk, hashed in one thread after one another (each one's hash after a
    longer file filled the buffer), by a pool of threads, and one at a time: xxh3-128 of exactly their bytes."""
    chunk = fingerprint._CHUNK
    sizes = [3 * chunk + 5, 0, 1, chunk - 1, chunk, chunk + 1, 7, 2 * chunk, 3]
    paths = []
    for n, size in enumerate(sizes):
        path = tmp_path / f"f{n}"
        path.write_bytes(os.urandom(size))
        paths.append(str(path))
    expected = {p: f"xxh3:{xxhash.xxh3_128(Path(p).read_bytes()).hexdigest()}" for p in paths}
    assert {p: fingerprint._hash_local(p) for p in paths} == expected
    assert {p: fingerprint._hash_local(p) for p in reversed(paths)} == expected
    with Fingerprinter(str(tmp_path / "memo.sqlite")) as memo:
        assert memo.local_files(paths) == expected


def test_hashing_small_files_allocates_no_chunk_per_file(tmp_path: Path) -> None:
    """Hashing a file used to allocate (and zero) a new `_CHUNK` buffer: a MiB of memset per file, freed into
    the hashing thread's malloc arena, where glibc kept it (docs/performance.md, "The hashing threads'
    buffers"). Now a thread's buffer is an anonymous map made once: hashing 300 small files in a pool allocates
    less on the heap than one chunk, and makes one buffer per thread at most."""
    paths = []
    for n in range(300):
        path = tmp_path / f"f{n:03d}"
        path.write_bytes(b"x" * n)
        paths.append(str(path))
    made: list[int] = []
    real_map = fingerprint.mmap.mmap

    class CountingMmap:
        @staticmethod
        def mmap(*args: object, **kwargs: object) -> object:
            made.append(threading.get_ident())
            return real_map(*args, **kwargs)  # type: ignore[arg-type]

    with Fingerprinter(str(tmp_path / "memo.sqlite")) as memo:
        original = fingerprint.mmap
        fingerprint.mmap = CountingMmap  # type: ignore[assignment]
        tracemalloc.start()
        try:
            hashes = memo.local_files(paths)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
            fingerprint.mmap = original
    assert len(hashes) == 300
    assert peak < fingerprint._CHUNK
    assert 1 <= len(made) == len(set(made)) <= 8


def _resident_kib(buffer: object) -> int:
    """Resident KiB of the anonymous map `buffer` (Linux: its entry in /proc/self/smaps)."""
    start = ctypes.addressof(ctypes.c_char.from_buffer(buffer))  # type: ignore[arg-type]
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        first = line.split()[0]
        if "-" in first and not first.endswith(":"):
            low, high = (int(end, 16) for end in first.split("-"))
            inside = low <= start < high
        elif inside and first == "Rss:":
            return int(line.split()[1])
    raise AssertionError("the buffer is not mapped")


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="reads /proc/self/smaps")
def test_a_thread_keeps_no_buffer_pages_a_large_file_filled(tmp_path: Path) -> None:
    """A Dask worker's thread lives as long as the cluster: after hashing a file larger than `_KEPT_FILLED`
    its buffer's pages are given back; after a small one, at most those the small one filled stay."""
    large, small = tmp_path / "large", tmp_path / "small"
    large.write_bytes(os.urandom(3 * fingerprint._CHUNK))
    small.write_bytes(b"abc")
    seen: dict[str, int] = {}

    def hash_both() -> None:
        fingerprint._hash_local(str(large))
        buffer, _ = fingerprint._read_buffer()
        seen["after large"] = _resident_kib(buffer)
        fingerprint._hash_local(str(small))
        seen["after small"] = _resident_kib(buffer)

    thread = threading.Thread(target=hash_both)
    thread.start()
    thread.join()
    assert seen["after large"] == 0
    assert seen["after small"] <= 8
