"""A folder's listing stats every file for its size; the file's fingerprint takes that stat's (size, mtime_ns,
inode) instead of a second stat (`LISTED_STATS`, core/inputs/fingerprint.py). What must hold: no second stat
on the way a plan goes, and never a listed identity served where it could be stale (another thread, a later
fingerprint, a file to hash)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import xxhash

from airflow_parallel_run.core.inputs import fingerprint
from airflow_parallel_run.core.inputs.fingerprint import LISTED_STATS, Fingerprinter
from airflow_parallel_run.core.inputs.listing import iter_input
from airflow_parallel_run.core.minibatch import FileRef


def _xxh3(data: bytes) -> str:
    return f"xxh3:{xxhash.xxh3_128_hexdigest(data)}"


@pytest.fixture(autouse=True)
def _kept() -> Iterator[None]:
    """Each test lists as a plan's thread does: inside `LISTED_STATS.kept()` (entering it finds none left)."""
    assert len(LISTED_STATS) == 0
    with LISTED_STATS.kept():
        yield
    assert len(LISTED_STATS) == 0  # what the test left went on leaving


def _listed_as_a_plan(folder: Path, into: list[FileRef]) -> None:
    with LISTED_STATS.kept():
        into.extend(_listed(folder))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "in"
    for sub in ("a", "b"):
        (root / sub).mkdir(parents=True)
        for i in range(25):
            (root / sub / f"{i:02d}.bin").write_bytes(f"{sub}{i}".encode() * 10)
    return root


def _listed(folder: Path) -> list[FileRef]:
    _root, refs = iter_input(str(folder), {})
    return list(refs)


@pytest.fixture
def counted_stats(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The paths `os.stat` is called on (the listing's own stats are DirEntry.stat: not counted)."""
    calls: list[str] = []
    real = os.stat

    def stat(path: str, *args: object, **kwargs: object) -> os.stat_result:
        calls.append(str(path))
        return real(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "stat", stat)
    yield calls


def _bump(path: str, data: bytes) -> None:
    """New bytes of the same size and a later mtime, on the same inode: only the mtime tells."""
    before = os.stat(path)
    with open(path, "r+b") as handle:
        handle.write(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))


def test_a_listed_folder_is_fingerprinted_without_a_second_stat(
    folder: Path, tmp_path: Path, counted_stats: list[str]
) -> None:
    memo_file = str(tmp_path / "memo.sqlite")
    with Fingerprinter(memo_file) as memo:
        first = memo.many(_listed(folder))  # hashes every file
    counted_stats.clear()
    with Fingerprinter(memo_file) as memo:
        again = memo.many(_listed(folder))
        assert memo.hashed_bytes == 0
    assert again == first == {str(p): _xxh3(p.read_bytes()) for p in sorted(folder.rglob("*.bin"))}
    assert [p for p in counted_stats if p.endswith(".bin")] == []  # one stat per file: the listing's
    assert len(LISTED_STATS) == 0  # each listed stat taken once


def test_a_file_changed_after_its_listing_is_hashed_and_memoised_as_it_is_now(
    folder: Path, tmp_path: Path
) -> None:
    """Changed between the listing and its fingerprint, and memoised meanwhile by another job as it is now:
    the listed identity misses that row, so the file is hashed; the row written is the file's identity as it
    was read, so the next job gets a hit for these bytes and no other."""
    memo_file = str(tmp_path / "memo.sqlite")
    target = str(folder / "a" / "03.bin")
    with Fingerprinter(memo_file) as memo:
        memo.many(_listed(folder))
    refs = _listed(folder)
    _bump(target, b"Z")
    with Fingerprinter(memo_file) as other_job:
        assert other_job.local_file(target) == _xxh3(Path(target).read_bytes())
    with Fingerprinter(memo_file) as memo:
        now = memo.many(refs)
        assert memo.hashed_bytes == os.path.getsize(target)
    assert now[target] == _xxh3(Path(target).read_bytes())
    with Fingerprinter(memo_file) as memo:
        assert memo.many(_listed(folder))[target] == now[target] and memo.hashed_bytes == 0


def test_another_threads_listing_is_never_served(folder: Path, tmp_path: Path) -> None:
    """A listing in one thread (a sensor's poke, another job's plan) and a fingerprint in another, after the
    file changed: the fingerprint stats the file as it is now."""
    memo_file = str(tmp_path / "memo.sqlite")
    target = str(folder / "b" / "07.bin")
    with Fingerprinter(memo_file) as memo:
        memo.many(_listed(folder))
    listed: list[FileRef] = []
    thread = threading.Thread(target=_listed_as_a_plan, args=(folder, listed))
    thread.start()
    thread.join()
    _bump(target, b"Q")
    with Fingerprinter(memo_file) as memo:
        assert memo.many(listed)[target] == _xxh3(Path(target).read_bytes())


def test_a_listing_left_unfingerprinted_is_not_served_later(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A listing whose files were not fingerprinted (a dry run, a plan stopped while listing), then the file
    changed, then a fingerprint of it without a new listing (a side input, a re-run built from a job record):
    past `max_age_s` the listed identity is not served."""
    memo_file = str(tmp_path / "memo.sqlite")
    target = str(folder / "a" / "11.bin")
    with Fingerprinter(memo_file) as memo:
        memo.many(_listed(folder))
    monkeypatch.setattr(LISTED_STATS, "max_age_s", 0.0)
    _listed(folder)  # never fingerprinted
    _bump(target, b"W")
    with Fingerprinter(memo_file) as memo:
        assert memo.local_file(target) == _xxh3(Path(target).read_bytes())


def test_the_listed_stats_are_bounded(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(LISTED_STATS, "limit", 7)
    refs = _listed(folder)  # 50 files, none fingerprinted
    assert len(refs) == 50 and len(LISTED_STATS) == 7
    assert fingerprint.LISTED_STATS.take(refs[-1].url) is not None  # the newest are kept
    assert fingerprint.LISTED_STATS.take(refs[0].url) is None


def test_leftovers_too_old_to_serve_go_with_the_next_listing(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A listing never fingerprinted holds nothing for long: the next listing in the thread drops what is
    too old to be served, so a long-lived thread (a notebook's, a worker's) does not keep `limit` entries."""
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.bin").write_bytes(b"x")
    _listed(folder)
    assert len(LISTED_STATS) == 50
    monkeypatch.setattr(LISTED_STATS, "max_age_s", 0.0)
    _listed(other)
    assert len(LISTED_STATS) <= 1


def test_a_file_fingerprinted_outside_a_plan_is_stat_ed_as_it_is_now(folder: Path, tmp_path: Path) -> None:
    """A side input or the code (`local_file`, `path`) in a folder just listed: its own stat, never the
    listing's, which the file may have outlived."""
    target = str(folder / "b" / "19.bin")
    with Fingerprinter(str(tmp_path / "memo.sqlite")) as memo:
        memo.many(_listed(folder))
        _listed(folder)
        _bump(target, b"V")
        assert memo.local_file(target) == _xxh3(Path(target).read_bytes())
        assert memo.path(str(folder / "b")) != ""


def test_a_listing_outside_a_plan_keeps_nothing(folder: Path) -> None:
    """Planning alone, a sensor's poke or a manifest check lists without fingerprinting right after: its
    thread keeps no stat (up to `limit` entries, about 5 MiB, stayed in such a thread before), and a plan's
    thread keeps none once it is done."""
    listed: list[FileRef] = []
    held: list[int] = []
    thread = threading.Thread(target=lambda: (listed.extend(_listed(folder)), held.append(len(LISTED_STATS))))
    thread.start()
    thread.join()
    assert len(listed) == 50 and held == [0]
    with LISTED_STATS.kept():  # nested in the fixture's
        _listed(folder)
    assert len(LISTED_STATS) == 50  # the outer plan is not done: leaving the nested one drops nothing
