"""Reuse cache (`allow_reuse`): one entry per mini-batch, keyed by what determines its result.

Key = hash(job components: code, arguments, side-input fingerprints, environment variables,
output settings, partition keys) + the mini-batch's own input fingerprints and slice bounds.
Not in the key: the output folder, process/node counts, timeouts, tries, thresholds, logging.

Entries live on any fsspec URL: `<root>/entries/<k[:2]>/<k>/<uuid>.<ext>` holds the part and
`meta.json` (written last, in one atomic write) names it. A reader trusts only `meta.json`, so a
crash mid-write leaves no entry, and two jobs writing the same key each leave a complete one.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import fsspec
import xxhash

from .minibatch import FileRef, MiniBatch
from .results import PART_ENCODING_VERSION, write_atomic

DEFAULT_CACHE_ROOT = os.path.join("~", ".cache", "airflow-parallel-run")
CACHE_ENV = "AIRFLOW_PARALLEL_RUN_CACHE"
_CHUNK = 1 << 20


def resolve_cache_root(explicit: str | None = None) -> str:
    """--cache-dir / cache_dir argument, else $AIRFLOW_PARALLEL_RUN_CACHE, else ~/.cache/airflow-parallel-run."""
    root = explicit or os.environ.get(CACHE_ENV) or DEFAULT_CACHE_ROOT
    return root if "://" in root else os.path.abspath(os.path.expanduser(root))


def memo_path(cache_root: str) -> str:
    """The stat memo lives on local disk: beside a local cache, else in the default local cache root."""
    local_root = cache_root if "://" not in cache_root else resolve_cache_root(DEFAULT_CACHE_ROOT)
    return os.path.join(local_root, "memo.sqlite")


def _is_local_url(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


class Fingerprinter:
    """Content fingerprints of inputs. Local files: xxh3-128 of the bytes, memoised on (size, mtime_ns,
    inode) so unchanged files are not re-read; object stores: the store's own content identity."""

    def __init__(self, memo_path: str, storage_options: Mapping[str, Any] | None = None) -> None:
        os.makedirs(os.path.dirname(memo_path), exist_ok=True)
        self._db = sqlite3.connect(memo_path, timeout=30, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS memo (path TEXT PRIMARY KEY, size INT, mtime_ns INT, inode INT, hash TEXT)"
        )
        self._lock = threading.Lock()
        self.storage_options = dict(storage_options or {})
        self.hashed_bytes = 0

    def close(self) -> None:
        self._db.close()

    def local_file(self, path: str) -> str:
        return self.local_files([path])[path]

    def local_files(self, paths: Sequence[str]) -> dict[str, str]:
        """Fingerprints of local files: one stat each, one memo query, and hashing only for files whose
        (size, mtime_ns, inode) changed, in parallel chunks."""
        stats = {p: os.stat(p) for p in paths}
        known: dict[str, tuple[int, int, int, str]] = {}
        with self._lock:
            for start in range(0, len(paths), 900):  # SQLite's parameter limit
                chunk = list(paths[start : start + 900])
                marks = ",".join("?" * len(chunk))
                query = f"SELECT path, size, mtime_ns, inode, hash FROM memo WHERE path IN ({marks})"
                for path, size, mtime_ns, inode, value in self._db.execute(query, chunk):
                    known[path] = (size, mtime_ns, inode, value)
        result: dict[str, str] = {}
        misses = []
        for path, stat in stats.items():
            row = known.get(path)
            if row and row[:3] == (stat.st_size, stat.st_mtime_ns, stat.st_ino):
                result[path] = row[3]
            else:
                misses.append(path)
        if misses:
            workers = min(8, (os.cpu_count() or 2) * 2, len(misses))
            chunks = [misses[i::workers] for i in range(workers)]
            with ThreadPoolExecutor(max_workers=workers) as pool:
                for pairs in pool.map(lambda chunk: [(p, _hash_local(p)) for p in chunk], chunks):
                    result.update(pairs)
            rows = [(p, stats[p].st_size, stats[p].st_mtime_ns, stats[p].st_ino, result[p]) for p in misses]
            with self._lock:
                self.hashed_bytes += sum(stats[p].st_size for p in misses)
                self._db.execute("BEGIN")
                self._db.executemany("INSERT OR REPLACE INTO memo VALUES (?, ?, ?, ?, ?)", rows)
                self._db.execute("COMMIT")
        return result

    def file(self, ref: FileRef, storage_options: Mapping[str, Any] | None = None) -> str:
        if _is_local_url(ref.url):
            return self.local_file(ref.url.removeprefix("file://"))
        if ref.identity:
            return f"{ref.identity}:{ref.size}"
        fs, path = fsspec.core.url_to_fs(ref.url, **dict(storage_options or self.storage_options))
        with fs.open(path, "rb") as handle:
            return _hash_stream(handle)

    def many(
        self, refs: Sequence[FileRef], storage_options: Mapping[str, Any] | None = None
    ) -> dict[str, str]:
        """Fingerprints of many inputs (local files in bulk, see `local_files`)."""
        unique = list({r.url: r for r in refs}.values())
        local = {r.url: r.url.removeprefix("file://") for r in unique if _is_local_url(r.url)}
        hashes = self.local_files(list(local.values())) if local else {}
        result = {url: hashes[path] for url, path in local.items()}
        for ref in unique:
            if ref.url not in result:
                result[ref.url] = self.file(ref, storage_options)
        return result

    def path(self, url: str, storage_options: Mapping[str, Any] | None = None) -> str:
        """A side input (file or folder): a hash over relative names and file fingerprints."""
        if _is_local_url(url):
            local = url.removeprefix("file://")
            if os.path.isfile(local):
                return self.local_file(local)
            digest = hashlib.sha256()
            for folder, dirs, names in sorted(os.walk(local)):
                dirs.sort()
                for name in sorted(names):
                    full = os.path.join(folder, name)
                    digest.update(
                        os.path.relpath(full, local).encode() + b"\0" + self.local_file(full).encode()
                    )
            return f"tree:{digest.hexdigest()[:32]}"
        fs, path = fsspec.core.url_to_fs(url, **dict(storage_options or self.storage_options))
        infos = fs.find(path, detail=True) if fs.isdir(path) else {path: fs.info(path)}
        digest = hashlib.sha256()
        for name, info in sorted(infos.items()):
            ident = next(
                (str(info[k]) for k in ("ETag", "etag", "md5", "crc32c", "generation") if info.get(k)), ""
            )
            if not ident:
                ident = self.file(FileRef(fs.unstrip_protocol(name), info.get("size")), storage_options)
            digest.update(f"{posixpath.relpath(name, path)}\0{ident}\0{info.get('size')}".encode())
        return f"tree:{digest.hexdigest()[:32]}"


def _hash_stream(handle: Any) -> str:
    """xxh3-128 of a binary stream, read in chunks (never a whole file in memory)."""
    digest = xxhash.xxh3_128()
    while chunk := handle.read(_CHUNK):
        digest.update(chunk)
    return f"xxh3:{digest.hexdigest()}"


def _hash_local(path: str) -> str:
    with open(path, "rb") as handle:
        return _hash_stream(handle)


def mini_batch_key(job_key: str, mini_batch: MiniBatch, fingerprints: Mapping[str, str]) -> str:
    """The cache key of one mini-batch: the job's components plus exactly this mini-batch's inputs."""
    material: dict[str, Any] = {
        "job": job_key,
        "kind": mini_batch.kind,
        "partition": mini_batch.partition_key_value,
        "part_encoding": PART_ENCODING_VERSION,  # parts written in an older encoding are never served
    }
    # Each input's URL is part of the key, not only its content: run() sees the paths (scripts often
    # write the file name), so two mini-batches of equal contents under different names must not share.
    if mini_batch.kind == "file":
        material["files"] = [[f.url, fingerprints[f.url]] for f in mini_batch.files]
    else:
        material["slices"] = [
            [s.url, fingerprints[s.url], s.format, s.start, s.end, s.header_end, list(s.row_groups)]
            for s in mini_batch.slices
        ]
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:40]


def mini_batch_urls(mini_batch: MiniBatch) -> list[str]:
    return [f.url for f in mini_batch.files] or [s.url for s in mini_batch.slices]


class MiniBatchCache:
    """Committed parts by key, on any fsspec URL (shared storage when the cluster has several hosts)."""

    def __init__(self, root: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self.root = root.rstrip("/")
        self.storage_options = dict(storage_options or {})
        self.fs, self._path = fsspec.core.url_to_fs(self.root, **self.storage_options)
        self.fs.makedirs(self._path, exist_ok=True)

    def _entry(self, key: str) -> str:
        return f"{self.root}/entries/{key[:2]}/{key}"

    def lookup(self, key: str) -> dict[str, Any] | None:
        """The entry's metadata when it is complete (its part exists), else None."""
        entry_path = (
            f"{self._path.rstrip('/')}/entries/{key[:2]}/{key}"  # the store's own path: no URL parsing
        )
        try:
            meta: dict[str, Any] = json.loads(self.fs.cat_file(f"{entry_path}/meta.json"))
        except (FileNotFoundError, json.JSONDecodeError, OSError):
            return None
        if meta.get("part"):
            if not self.fs.exists(f"{entry_path}/{meta['part']}"):
                return None
            meta["part_url"] = f"{self._entry(key)}/{meta['part']}"
        else:
            meta["part_url"] = None
        return meta

    def store(self, key: str, part_url: str | None, meta: Mapping[str, Any]) -> str | None:
        """Copies a committed part into the cache, then publishes its meta.json; returns the cached part URL."""
        entry = self._entry(key)
        name = None
        if part_url:
            name = f"{uuid.uuid4().hex}{posixpath.splitext(part_url)[1]}"
            target = f"{entry}/{name}"
            if _is_local_url(part_url) and _is_local_url(target):
                os.makedirs(os.path.dirname(target), exist_ok=True)
                try:
                    os.link(part_url, target)  # same filesystem: no copy
                except OSError:
                    with open(part_url, "rb") as src:
                        write_atomic(target, src.read(), {})
            else:
                with fsspec.open(part_url, "rb", **self.storage_options) as src:
                    write_atomic(target, src.read(), self.storage_options)
        document = {**meta, "part": name, "created": time.time()}
        document.pop("part_url", None)
        write_atomic(
            f"{entry}/meta.json", json.dumps(document, sort_keys=True).encode(), self.storage_options
        )
        return f"{entry}/{name}" if name else None

    # -- manifests: what the previous run of "the same job" looked like, to explain misses ----------
    def read_manifest(self, signature: str) -> dict[str, Any] | None:
        try:
            with fsspec.open(f"{self.root}/jobs/{signature}.json", "rb", **self.storage_options) as handle:
                return dict(json.loads(handle.read()))
        except (FileNotFoundError, json.JSONDecodeError, OSError):
            return None

    def write_manifest(self, signature: str, manifest: Mapping[str, Any]) -> None:
        write_atomic(
            f"{self.root}/jobs/{signature}.json",
            json.dumps(manifest, sort_keys=True).encode(),
            self.storage_options,
        )

    # -- maintenance (CLI `cache info|prune|clear`) --------------------------------------------------
    def _entries(self) -> Iterable[tuple[str, dict[str, Any]]]:
        base = f"{self._path}/entries"
        if not self.fs.exists(base):
            return
        for meta_path in self.fs.glob(f"{base}/*/*/meta.json"):
            try:
                yield posixpath.dirname(meta_path), json.loads(self.fs.cat_file(meta_path))
            except (FileNotFoundError, json.JSONDecodeError):
                continue

    def info(self) -> dict[str, Any]:
        entries, size, oldest, newest = 0, 0, None, None
        base = f"{self._path}/entries"
        for path, info in self.fs.find(base, detail=True).items() if self.fs.exists(base) else []:
            size += int(info.get("size") or 0)
            if path.endswith("meta.json"):
                entries += 1
        for _, meta in self._entries():
            created = meta.get("created")
            if created is not None:
                oldest = created if oldest is None else min(oldest, created)
                newest = created if newest is None else max(newest, created)
        return {"root": self.root, "entries": entries, "bytes": size, "oldest": oldest, "newest": newest}

    def prune(self, older_than_s: float) -> int:
        """Removes entries created more than `older_than_s` seconds ago; returns how many."""
        cutoff = time.time() - older_than_s
        removed = 0
        for path, meta in list(self._entries()):
            if float(meta.get("created", 0)) < cutoff:
                self.fs.rm(path, recursive=True)
                removed += 1
        return removed

    def clear(self) -> int:
        count = self.info()["entries"]
        for folder in ("entries", "jobs"):
            if self.fs.exists(f"{self._path}/{folder}"):
                self.fs.rm(f"{self._path}/{folder}", recursive=True)
        return int(count)
