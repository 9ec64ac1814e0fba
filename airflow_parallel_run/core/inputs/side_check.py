"""Whether a job's local side inputs (a model file, a folder of them) are still the bytes the job keyed.

Why: the job's cache key holds each side input's fingerprint, taken once as the job starts. A model
overwritten while the job runs (another pipeline retrains it) would be loaded by the processes that start
after that, or read by a run() that opens it itself, and their results would be output and cached under the
old model's key: served as its results the day that model is put back. So the entry-script process checks
the side inputs right after each run() returned: an attempt whose side inputs are not the keyed bytes fails
with `DataChangedError` (not retried: another try would use the same changed file), its result neither
output nor cached.

How: the driver keeps, with each fingerprint, a digest of the side input's files' names and (size,
mtime_ns, inode) as they were hashed (`planned`); the process compares it with a digest of them now (a
stat per file, no read). A file whose identity moved is hashed again and passes when its bytes are the
same (touched, copied over). Not told: a file changed and put back with its old identity; a change that
init() read and that was undone before the attempt's check. A side input on an object store is downloaded
once per worker, whose listing of it right after the download must give the keyed fingerprint (its objects'
content identities; an object whose store lists none: the bytes downloaded), or every attempt there fails
the same way (core/worker/plugin.py).

Light on imports: the entry-script process uses it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import DataChangedError

#: How many times the driver hashes a side input that keeps changing while it is hashed, before it keys
#: the last fingerprint (each attempt then hashes it again, and fails if it is not that one).
_STABLE_TRIES = 3


@dataclass(frozen=True)
class SideInput:
    """A local side input as the job keyed it: its path, fingerprint, and the digest of its files'
    names and identities when they were hashed."""

    path: str
    fingerprint: str
    identity: int


#: Folders of a side input that are not its content: Python writes them when a process imports a module
#: of the side input (a model folder with its code), so they appear while the job runs.
DERIVED = frozenset({"__pycache__"})


def _files(path: str) -> Iterator[tuple[str, str]]:
    """(relative name, full path) of a side input's files, in the order its fingerprint hashes them: the
    file itself, or a folder's files walked in sorted order ('' is the name of a single file), without the
    `DERIVED` folders."""
    if not os.path.isdir(path):
        yield "", path
        return
    walked = []
    for folder, dirs, names in os.walk(path):
        dirs[:] = [d for d in dirs if d not in DERIVED]
        walked.append((folder, names))
    for folder, names in sorted(walked):
        for name in sorted(names):
            full = os.path.join(folder, name)
            yield os.path.relpath(full, path), full


def identity_of(path: str) -> int:
    """A 64-bit digest of the side input's file names and (size, mtime_ns, inode); 0 when one is gone.
    Its own walk (names sorted per folder, no relative path computed per file): a folder of 10,000 files
    took 127 ms walked as the fingerprint walks it, and this runs after every run()."""
    digest = hashlib.blake2b(digest_size=8)
    try:
        if not os.path.isdir(path):
            st = os.stat(path)
            digest.update(b"%d:%d:%d;" % (st.st_size, st.st_mtime_ns, st.st_ino))
        else:
            _digest_folder(path, b"", digest)
    except OSError:
        return 0
    return int.from_bytes(digest.digest(), "little") or 1


def _digest_folder(folder: str, prefix: bytes, digest: Any) -> None:
    with os.scandir(folder) as scan:
        entries = sorted(scan, key=lambda e: e.name)
    for entry in entries:
        name = prefix + os.fsencode(entry.name)
        if entry.is_dir():  # followed as os.walk (the fingerprint's walk) does: not through a symlink
            if not entry.is_symlink() and entry.name not in DERIVED:
                digest.update(name + b"/\0")
                _digest_folder(entry.path, name + b"/", digest)
        else:
            st = entry.stat()
            digest.update(b"%s\0%d:%d:%d;" % (name, st.st_size, st.st_mtime_ns, st.st_ino))


def tree_fingerprint(path: str, file_fingerprint: Callable[[str], str]) -> str:
    """A local side input's fingerprint: a file's own, or a hash over a folder's relative names and file
    fingerprints (`Fingerprinter.path`, which gives its memo's fingerprints)."""
    if os.path.isfile(path):
        return file_fingerprint(path)
    digest = hashlib.sha256()
    for name, full in _files(path):
        digest.update(name.encode() + b"\0" + file_fingerprint(full).encode())
    return f"tree:{digest.hexdigest()[:32]}"


def planned(path: str, fingerprint: Callable[[str], str]) -> SideInput:
    """The side input at `path` keyed by `fingerprint(path)`, with the identity its files had while they
    were hashed (the same before and after, or the hash is taken again)."""
    for _ in range(_STABLE_TRIES):
        before = identity_of(path)
        value = fingerprint(path)
        if before and identity_of(path) == before:
            return SideInput(path, value, before)
    return SideInput(path, value, 0)  # never stable: every attempt hashes it (and fails if it changed)


class SideInputCheck:
    """The check an entry-script process makes after each run() (see the module)."""

    def __init__(self, side_inputs: Sequence[SideInput], file_fingerprint: Callable[[str], str]) -> None:
        self._sides = list(side_inputs)
        self._file_fingerprint = file_fingerprint
        self._seen = [side.identity for side in self._sides]  # an identity whose bytes were checked

    def check(self) -> None:
        """`DataChangedError` naming the first side input that is not the keyed bytes."""
        for i, side in enumerate(self._sides):
            now = identity_of(side.path)
            if now and now == self._seen[i]:
                continue
            if not now:
                raise side_input_changed(side.path, "a file of it was deleted or moved")
            try:
                now_fingerprint = tree_fingerprint(side.path, self._file_fingerprint)
            except OSError as exc:  # moved, and unreadable now: not the keyed bytes as far as anyone can tell
                raise side_input_changed(side.path, f"it cannot be read now: {exc}") from None
            if now_fingerprint != side.fingerprint:
                raise side_input_changed(side.path, "its bytes differ")
            if identity_of(side.path) == now:  # the same bytes, touched or copied over: not hashed again
                self._seen[i] = now


def side_input_changed(path: str, detail: str) -> DataChangedError:
    """The error of an attempt whose side input `path` (a local path or a URL) is not the keyed bytes."""
    return DataChangedError(
        f"side input {path} changed after the job fingerprinted it ({detail}): run() or init() may have "
        "used other bytes than those the job's cache key names, so this result is neither output nor "
        "cached, and it is not retried (another try would use the changed side input under the same key); "
        "run the job again to use the side input as it is now"
    )
