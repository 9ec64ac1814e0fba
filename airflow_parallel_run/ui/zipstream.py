"""A zip archive written as a stream of chunks: the logs folder of a job, however large, leaves the
API server a chunk at a time and is never held whole in memory or on disk.

Python's `zipfile` writes to a stream it cannot seek by putting each entry's sizes and CRC in a data
descriptor after the entry's data, which every unzip tool reads; ZIP64 records cover files and
archives past 4 GiB.
"""

from __future__ import annotations

import datetime as dt
import io
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

CHUNK = 1 << 20
_ZIP_EPOCH = dt.datetime(1980, 1, 1, tzinfo=dt.timezone.utc).timestamp()


@dataclass(frozen=True)
class ZipEntry:
    """One file of the archive: its name inside the archive and how to open it (called once, lazily)."""

    name: str
    open: Callable[[], BinaryIO]
    size: int | None = None
    mtime: float | None = None


class _Sink(io.RawIOBase):
    """Collects what `zipfile` writes until the generator hands it on; cannot seek or tell."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self.pending = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        block = bytes(data)
        self._chunks.append(block)
        self.pending += len(block)
        return len(block)

    def take(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks.clear()
        self.pending = 0
        return data


def _date_time(mtime: float | None) -> tuple[int, int, int, int, int, int]:
    when = dt.datetime.fromtimestamp(max(mtime or 0.0, _ZIP_EPOCH), tz=dt.timezone.utc)
    return (when.year, when.month, when.day, when.hour, when.minute, when.second)


def stream_zip(entries: Iterable[ZipEntry], chunk: int = CHUNK) -> Iterator[bytes]:
    """Yields the bytes of a deflated zip of `entries`, about `chunk` bytes at a time.

    An entry that cannot be opened or read (deleted meanwhile, permission) is left out and named in a
    last entry, ``UNREADABLE_FILES.txt``: the archive stays valid and says what it lacks.
    """
    sink = _Sink()
    skipped: list[str] = []
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as archive:
        for entry in entries:
            info = zipfile.ZipInfo(entry.name, date_time=_date_time(entry.mtime))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            try:
                source = entry.open()
            except OSError as exc:
                skipped.append(f"{entry.name}: {type(exc).__name__}: {exc}")
                continue
            with source, archive.open(info, "w", force_zip64=True) as target:
                while True:
                    try:
                        block = source.read(chunk)
                    except OSError as exc:  # the entry so far stays; the note says it is cut short
                        skipped.append(f"{entry.name} (cut short): {type(exc).__name__}: {exc}")
                        break
                    if not block:
                        break
                    target.write(block)
                    if sink.pending >= chunk:
                        yield sink.take()
            if sink.pending:
                yield sink.take()
        if skipped:
            archive.writestr("UNREADABLE_FILES.txt", "".join(line + "\n" for line in skipped))
    yield sink.take()
