"""`Spill`: records (bytes) a job's driver keeps for the whole job, on disk instead of in RAM.

A job of a million input files plans 100,000 mini-batches; the driver needs each of them again only
now and then (to submit it, to retry it, for logs/sys/job.json and the failed items at the end), so it
keeps them in a file and reads them back by number, holding only an offset (8 bytes) per record.

Where: a private folder made for the job by `tempfile.mkdtemp` (mode 0700, a name no other process
chose: safe in a temp folder others can write to), removed by `close`, and by the next job on the host
when this process died before (core/owned_folders.py). Files in it are created with O_EXCL and
O_NOFOLLOW.

Integrity: a green run must be a correct run, so a record is read back exactly as written or not at all.
Each record carries a keyed BLAKE2b tag over (its number, its bytes) with a key that lives only in this
process's memory: a record that was truncated, changed, swapped with another or written by anyone else
fails its tag and raises `SpillError` (the job fails, saying so) before its bytes are used.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import struct
import tempfile
import threading
from array import array

from .owned_folders import owned_folder, remove_owned

TAG_BYTES = 16
_HEADER = struct.Struct("<Q")  # the record's number, inside the tag


class SpillError(RuntimeError):
    """A record read back is not the one written (the spill file was truncated or changed)."""


def spill_folder(prefix: str, family: str | None = None) -> str:
    """A new private folder in the temp folder (`TMPDIR`) that belongs to this process; those of the
    same `family` whose process died are removed first (`owned_folder`)."""
    return owned_folder(tempfile.gettempdir(), prefix, family)


def create_private(folder: str, name: str) -> int:
    """A new file in `folder`, readable and writable by this user only; never an existing file or link."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    return os.open(os.path.join(folder, name), flags, 0o600)


class Spill:
    """Append-only records, read back by number (0, 1, ...). One writer thread may append while
    other threads read records already appended (`os.pread`: no shared file position)."""

    def __init__(self, folder: str, name: str) -> None:
        self.path = os.path.join(folder, name)
        self._fd = create_private(folder, name)
        self._key = secrets.token_bytes(32)
        self._offsets = array("Q", [0])  # record i is bytes [offsets[i], offsets[i + 1])
        self._lock = threading.Lock()  # appends: the offset array and the file grow together
        self._closed = False

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def _tag(self, number: int, payload: bytes | memoryview) -> bytes:
        mac = hashlib.blake2b(_HEADER.pack(number), key=self._key, digest_size=TAG_BYTES)
        mac.update(payload)
        return mac.digest()

    def append(self, payload: bytes) -> int:
        """Writes a record; returns its number."""
        with self._lock:
            if self._closed:  # never write to a closed descriptor's number: another file may have it now
                raise SpillError(f"{self.path} is closed (the job ended)")
            number = len(self)
            data = self._tag(number, payload) + payload
            offset = self._offsets[-1]
            written = os.pwrite(self._fd, data, offset)
            while written < len(data):  # a short write (a signal): the rest, not a torn record
                written += os.pwrite(self._fd, data[written:], offset + written)
            self._offsets.append(offset + len(data))
        return number

    def read(self, number: int) -> bytes:
        """Record `number` as written, or SpillError."""
        if not 0 <= number < len(self):
            raise IndexError(number)
        start, end = self._offsets[number], self._offsets[number + 1]
        with self._lock:
            if self._closed:
                raise SpillError(f"{self.path} is closed (the job ended)")
            data = os.pread(self._fd, end - start, start)
        view = memoryview(data)
        if len(data) != end - start or not secrets.compare_digest(
            bytes(view[:TAG_BYTES]), self._tag(number, view[TAG_BYTES:])
        ):
            raise SpillError(
                f"record {number} of {self.path} is not what the job wrote there "
                f"({'truncated' if len(data) != end - start else 'changed'}): the job cannot go on from it"
            )
        return data[TAG_BYTES:]

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            with contextlib.suppress(OSError):
                os.close(self._fd)


def remove_folder(folder: str) -> None:
    remove_owned(folder)
