"""Content fingerprints of inputs: what keys a mini-batch's data in the reuse cache and in manifests.

Local files: xxh3-128 of their bytes, memoised in a small SQLite file on (size, mtime_ns, inode), so an
unchanged file is never read twice; object-store files: the store's own content identity (ETag, md5,
crc32c, generation) and size, or a hash of their bytes where the store has none. A local file that a
planner reads whole anyway (CSV, JSON Lines) is hashed as it is read (`HashWhileReading`), not read again.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import mmap
import os
import posixpath
import random
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import fsspec
import xxhash

from ..minibatch import FileRef
from ..storage import is_local, local_path
from .side_check import tree_fingerprint

_CHUNK = 1 << 20
_BUFFERS = threading.local()
#: Pages of a thread's read buffer a read may leave filled (resident) after it: more are given back.
_KEPT_FILLED = 1 << 16


class Fingerprinter:
    """Content fingerprints of inputs. Local files: xxh3-128 of the bytes, memoised on (size, mtime_ns,
    inode) so unchanged files are not re-read; object stores: the store's own content identity."""

    def __init__(self, memo_path: str, storage_options: Mapping[str, Any] | None = None) -> None:
        os.makedirs(os.path.dirname(memo_path), exist_ok=True)
        self._db = sqlite3.connect(memo_path, timeout=30, check_same_thread=False, isolation_level=None)
        _use_wal(self._db)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS memo (path TEXT PRIMARY KEY, size INT, mtime_ns INT, inode INT, hash TEXT)"
        )
        self._lock = threading.Lock()
        self.storage_options = dict(storage_options or {})
        self.hashed_bytes = 0  # read here to be hashed (a memo hit, or a file a planner hashed, reads none)
        # when a dict: `local_files` puts there each path's (size, mtime_ns, inode) its fingerprint is of
        self.identities: dict[str, tuple[int, int, int]] | None = None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Fingerprinter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def local_file(self, path: str) -> str:
        return self.local_files([path])[path]

    def local_files(self, paths: Sequence[str], *, listed: bool = False) -> dict[str, str]:
        """Fingerprints of local files: one memo query, and hashing only for files whose (size, mtime_ns,
        inode) changed, in parallel chunks. With `listed` (the files of a plan, as its listing yielded
        them: `many`), a file's identity is the one the listing stat'ed moments ago (`LISTED_STATS`), else a
        stat now: a folder's listing stats every file for its size, and a second stat here was a quarter of
        a fully reused re-run's planning (docs/performance.md, "One stat per file"). A file to hash is
        stat'ed again first, so its memo row holds the identity it has as it is read."""
        known: dict[str, tuple[int, int, int, str]] = {}
        with self._lock:
            for start in range(0, len(paths), 900):  # SQLite's parameter limit
                chunk = list(paths[start : start + 900])
                for path, size, mtime_ns, inode, value in self._db.execute(_memo_query(len(chunk)), chunk):
                    known[path] = (size, mtime_ns, inode, value)
        result: dict[str, str] = {}
        misses = []
        stats: dict[str, os.stat_result] = {}
        stat, take, identities = os.stat, LISTED_STATS.take, self.identities
        for path in paths:
            row = known.get(path)
            # (size, mtime_ns, inode) as the listing stat'ed it just before: no second stat
            seen = take(path) if listed else None
            now = None
            if seen is None:
                now = stat(path)
                seen = (now.st_size, now.st_mtime_ns, now.st_ino)
            if row is not None and row[:3] == seen:
                result[path] = row[3]
                if identities is not None:
                    identities[path] = seen
            elif path not in stats:
                misses.append(path)
                # to be hashed: the memo row gets the file's identity as it is now (a listed one is re-stat'ed)
                st = stats[path] = now if now is not None else stat(path)
                if identities is not None:
                    identities[path] = (st.st_size, st.st_mtime_ns, st.st_ino)
        unread = []
        for path in misses:
            read = _READ_HASHES.get(stats[path])
            if read is not None:
                result[path] = read
            else:
                unread.append(path)
        if unread:
            workers = min(8, (os.cpu_count() or 2) * 2, len(unread))
            # Up to 64 files a task (few tasks for a million small files), but at least four tasks a thread,
            # so that a few large files are hashed side by side (8 files of 1 GiB were one task: one core).
            per = max(1, min(64, len(unread) // (4 * workers)))
            chunks = [unread[i : i + per] for i in range(0, len(unread), per)]
            pool = ThreadPoolExecutor(max_workers=workers)
            try:
                for pairs in pool.map(lambda chunk: [(p, _hash_local(p)) for p in chunk], chunks):
                    result.update(pairs)
            finally:  # interrupted (Ctrl-C): only the chunks being hashed finish, not all the rest
                pool.shutdown(wait=True, cancel_futures=True)
            rows = [(p, stats[p].st_size, stats[p].st_mtime_ns, stats[p].st_ino, result[p]) for p in misses]
            with self._lock:
                self.hashed_bytes += sum(stats[p].st_size for p in unread)
                self._db.execute("BEGIN")
                self._db.executemany("INSERT OR REPLACE INTO memo VALUES (?, ?, ?, ?, ?)", rows)
                self._db.execute("COMMIT")
        return result

    def file(self, ref: FileRef, storage_options: Mapping[str, Any] | None = None) -> str:
        if is_local(ref.url):
            return self.local_file(local_path(ref.url))
        if ref.identity:
            return f"{ref.identity}:{ref.size}"
        fs, path = fsspec.core.url_to_fs(ref.url, **dict(storage_options or self.storage_options))
        with fs.open(path, "rb") as handle:
            return hash_stream(handle)

    def many(
        self, refs: Sequence[FileRef], storage_options: Mapping[str, Any] | None = None
    ) -> dict[str, str]:
        """Fingerprints of many inputs (local files in bulk, see `local_files`), by URL in first-seen order.
        A plain path (the local listing's URLs) is told local without parsing it as a URL."""
        local: dict[str, str] = {}  # url -> path
        others: dict[str, FileRef] = {}
        for ref in refs:
            url = ref.url
            if "://" not in url:  # `storage.protocol`: no scheme is a local path, as it is
                local[url] = url
            elif is_local(url):
                local[url] = local_path(url)
            else:
                others[url] = ref  # the last ref of a URL, as a dict built over them keeps
        hashes = self.local_files(list(local.values()), listed=True) if local else {}
        result = {url: hashes[path] for url, path in local.items()}
        for url, ref in others.items():
            result[url] = self.file(ref, storage_options)
        return result

    def path(self, url: str, storage_options: Mapping[str, Any] | None = None) -> str:
        """A side input (file or folder): a hash over relative names and file fingerprints."""
        if is_local(url):
            return tree_fingerprint(local_path(url), self.local_file)
        fs, path = fsspec.core.url_to_fs(url, **dict(storage_options or self.storage_options))
        return remote_tree_fingerprint(
            fs,
            path,
            lambda name, size: self.file(FileRef(fs.unstrip_protocol(name), size), storage_options),
        )


def remote_tree_fingerprint(fs: Any, path: str, unlisted: Callable[[str, int | None], str]) -> str:
    """A side input on an object store (an object or a prefix): a hash over relative names, each object's
    content identity as the store lists it and its size; `unlisted(name, size)` gives the fingerprint of
    an object whose store lists no identity (its bytes hashed). The driver keys it (`Fingerprinter.path`);
    a worker compares its download with it (core/worker/plugin.py)."""
    infos = fs.find(path, detail=True) if fs.isdir(path) else {path: fs.info(path)}
    digest = hashlib.sha256()
    for name, info in sorted(infos.items()):
        ident = next(
            (str(info[k]) for k in ("ETag", "etag", "md5", "crc32c", "generation") if info.get(k)), ""
        )
        if not ident:
            ident = unlisted(name, info.get("size"))
        digest.update(f"{posixpath.relpath(name, path)}\0{ident}\0{info.get('size')}".encode())
    return f"tree:{digest.hexdigest()[:32]}"


#: How long opening the memo waits for other jobs that switch a new memo file to WAL at the same moment.
WAL_SWITCH_WAIT_S = 30.0


def _use_wal(db: sqlite3.Connection) -> None:
    """WAL lets jobs that share a cache read and write the memo at once. Switching a new file to it needs
    the file to itself for a moment: a job switching at the same moment makes the statement fail with
    'database is locked' at once (SQLite's busy timeout does not cover it), so it is tried again; once
    one job switched it, the others find it in WAL already."""
    deadline = time.monotonic() + WAL_SWITCH_WAIT_S
    while True:
        try:
            if str(db.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01 + random.random() * 0.04)


@functools.cache
def _memo_query(count: int) -> str:
    return f"SELECT path, size, mtime_ns, inode, hash FROM memo WHERE path IN ({','.join('?' * count)})"


def hash_stream(handle: Any) -> str:
    """xxh3-128 of a binary stream, read in chunks into this thread's buffer (never a whole file in memory,
    and no new bytes object per chunk: that costs a copy more)."""
    digest = xxhash.xxh3_128()
    buffer, view = _read_buffer()
    filled = 0
    while size := handle.readinto(view):
        digest.update(view[:size])
        filled = max(filled, size)
    if filled > _KEPT_FILLED and hasattr(buffer, "madvise"):
        buffer.madvise(mmap.MADV_DONTNEED)  # a long-lived thread (a Dask worker's) keeps no MiB it filled
    return _fingerprint(digest)


def _read_buffer() -> tuple[mmap.mmap, memoryview]:
    """This thread's `_CHUNK`-byte read buffer: an anonymous memory map, made once per thread and unmapped
    when the thread ends. A bytearray per file zeroed a MiB per file (a million small files: a terabyte of
    memset) and, freed, stayed in the thread's malloc arena, where glibc keeps it: each hashing thread left
    1-2 MB there (docs/performance.md, "The hashing threads' buffers"). A map's pages cost memory only once
    a read fills them (an empty file: none), and go back to the system with the thread, or after a read
    that filled more than `_KEPT_FILLED` bytes of them."""
    made: tuple[mmap.mmap, memoryview] | None = getattr(_BUFFERS, "made", None)
    if made is None:
        buffer = mmap.mmap(-1, _CHUNK)
        made = _BUFFERS.made = (buffer, memoryview(buffer))
    return made


def _fingerprint(digest: Any) -> str:
    return f"xxh3:{digest.hexdigest()}"


def hash_file(path: str) -> str:
    """A local file's fingerprint, read now (what the memo keeps for it)."""
    with open(path, "rb", buffering=0) as handle:
        return hash_stream(handle)


_hash_local = hash_file  # the name the hashing pool looks up


class _ReadHashes:
    """Fingerprints of local files hashed while they were read whole (`HashWhileReading`), by the identity the
    file had before and after that read: device, inode, size and mtime_ns. A file changed since has another
    identity, so its old hash is never served; the oldest entries are dropped past `limit`."""

    def __init__(self, limit: int = 4096) -> None:
        self._hashes: OrderedDict[tuple[int, int, int, int], str] = OrderedDict()
        self._lock = threading.Lock()
        self.limit = limit

    def put(self, identity: tuple[int, int, int, int], value: str) -> None:
        with self._lock:
            self._hashes[identity] = value
            self._hashes.move_to_end(identity)
            while len(self._hashes) > self.limit:
                self._hashes.popitem(last=False)

    def get(self, stat: os.stat_result) -> str | None:
        with self._lock:
            return self._hashes.get(_identity(stat))


class _ListedStats:
    """(size, mtime_ns, inode) of local files as a folder's listing stat'ed them (core/inputs/listing.py), by
    path, for `Fingerprinter.local_files` to take moments later instead of a second stat: the listing yields
    a file as the planner asks for it, and the plan's thread fingerprints a block of them right after.

    Kept only in a thread that asked for them (`kept()`: a streamed plan's thread, which fingerprints each
    block right after listing it, core/driver/planning.py); a listing elsewhere (planning alone, a sensor's
    or a manifest check's listing, a long-lived triggerer thread) keeps nothing, and what is left goes when
    the plan's thread is done. Served only to the thread that listed the file, once, and only within
    `max_age_s` of the listing: a listing whose files were never fingerprinted (a stopped plan) leaves
    nothing a later fingerprint could take for the file as it is now, beyond the moments within which a
    fingerprint could never tell anyway. Bounded per thread (`limit`, oldest dropped); a file without an
    entry is stat'ed as before."""

    def __init__(self, limit: int = 16_384, max_age_s: float = 2.0) -> None:
        self._local = threading.local()
        self.limit = limit
        self.max_age_s = max_age_s

    def _stats(self) -> OrderedDict[str, tuple[int, int, int, float]]:
        stats: OrderedDict[str, tuple[int, int, int, float]] | None = getattr(self._local, "stats", None)
        if stats is None:
            stats = self._local.stats = OrderedDict()
        return stats

    @contextlib.contextmanager
    def kept(self) -> Iterator[None]:
        """This thread's listings keep their files' identities while inside; on leaving, what is left goes."""
        self._local.keeping = getattr(self._local, "keeping", 0) + 1
        try:
            yield
        finally:
            self._local.keeping -= 1
            if not self._local.keeping:
                self._stats().clear()

    def keeping(self) -> bool:
        """Whether this thread's listings keep their files' identities (it is inside `kept()`)."""
        return bool(getattr(self._local, "keeping", 0))

    def put(self, path: str, size: int, mtime_ns: int, inode: int) -> None:
        """Keeps a listed file's identity; drops the oldest entries past `limit` and those too old to serve.
        Called only where `keeping()` (the listing asks once per folder, not once per file)."""
        stats, now = self._stats(), time.monotonic()
        stats[path] = (size, mtime_ns, inode, now)
        stats.move_to_end(path)
        while len(stats) > self.limit:
            stats.popitem(last=False)
        # leftovers of a listing never fingerprinted go as the next listing runs (the newest is this one)
        while now - next(iter(stats.values()))[3] > self.max_age_s:
            stats.popitem(last=False)

    def take(self, path: str) -> tuple[int, int, int] | None:
        stats = self._stats()
        if not stats:
            return None
        entry = stats.pop(path, None)
        if entry is None or time.monotonic() - entry[3] > self.max_age_s:
            return None
        return entry[0], entry[1], entry[2]

    def __len__(self) -> int:
        """Entries held for this thread (tests)."""
        return len(self._stats())


LISTED_STATS = _ListedStats()


def _identity(stat: os.stat_result) -> tuple[int, int, int, int]:
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


_READ_HASHES = _ReadHashes()


class HashWhileReading:
    """The fingerprint of a local file that a planner reads whole anyway, in order (the CSV / JSON Lines scan),
    computed from the bytes it reads: the file is not read a second time for `Fingerprinter.local_files`
    (1.24 GiB of CSV: 0.25 s before the job's first mini-batch). Kept only when every byte was hashed and the
    file had the same identity before and after (`_ReadHashes`): the hash is then of the bytes the file holds."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.before = os.stat(path)
        self.digest = xxhash.xxh3_128()
        self.hashed = 0

    def update(self, data: bytes) -> None:
        self.digest.update(data)
        self.hashed += len(data)

    def done(self) -> None:
        """The reader read to the end of the file: its fingerprint is kept if the file did not change."""
        try:
            after = os.stat(self.path)
        except OSError:
            return
        if _identity(after) == _identity(self.before) and self.hashed == after.st_size:
            _READ_HASHES.put(_identity(after), _fingerprint(self.digest))
