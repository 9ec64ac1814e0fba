"""Planning tabular files: splitting them into byte-range / row-group slices.

Planning runs once, on the scheduler side, over every input file, so it only looks at what it must: the
Parquet footer, or the raw bytes of a CSV / JSON Lines file scanned in large sequential chunks, natively
(`_record_scan.c`) or, in an install without a C compiler, with numpy.
Reading the slices back is tabular_read.py's.
"""

from __future__ import annotations

import codecs
import hashlib
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, BinaryIO

import fsspec
import numpy as np
import pyarrow.parquet as pq

from ..errors import InputError
from ..minibatch import TabularSlice
from ..storage import is_local
from .fingerprint import HashWhileReading
from .tabular import TabularDataset


def _load_native_scan() -> Callable[..., tuple[Any, ...]] | None:
    """The native record scan (`_record_scan.c`), built by `pip install` where a C compiler is (setup.py);
    None without it: the numpy scan (`_ChunkScan`) decides the same record ends, about 2.5 times slower."""
    try:
        from . import _record_scan  # type: ignore[attr-defined]
    except ImportError:  # pragma: no cover - an install without a compiler
        return None
    return usable_native_scan(_record_scan, Path(__file__).with_name("_record_scan.c"))


def usable_native_scan(module: Any, source: Path) -> Callable[..., tuple[Any, ...]] | None:
    """`module`'s scan, if it was built from `source` as it is now (or no source is next to it): a module
    left over from an older checkout (its C file changed, `make install` not run again) could decide record
    ends the code beside it no longer decides, so it is not used, and the planner says so once."""
    if source.exists() and hashlib.sha256(source.read_bytes()).hexdigest() != module.SOURCE_SHA256:
        warnings.warn(
            f"{module.__file__} was built from another version of {source.name}: CSV and JSON Lines files are "
            "planned with the numpy scan (same slices, slower); run `make install` (or pip install) again",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    return module.scan_chunk  # type: ignore[no-any-return]


_native_scan = _load_native_scan()

__all__ = ["plan_tabular_file"]

# Large sequential reads keep remote stores efficient and let numpy amortise its per-call overhead.
_CHUNK_BYTES = 8 * 1024 * 1024
# A chunk is compared block by block, so the compare's intermediate arrays stay in the CPU's cache.
_BLOCK_BYTES = 1024 * 1024

_NL = 0x0A
_CR = 0x0D
_QUOTE = 0x22
_UTF8_BOM = b"\xef\xbb\xbf"
# Compressed files cannot be split at byte offsets: refused by name (suffix) or by their first bytes.
_COMPRESSED_SUFFIXES = {
    ".gz": "gzip",
    ".tgz": "gzip",
    ".bz2": "bzip2",
    ".xz": "xz",
    ".lzma": "xz",
    ".zst": "zstd",
    ".zip": "zip",
    ".lz4": "lz4",
    ".z": "compress",
    ".snappy": "snappy",
}
_COMPRESSED_MAGIC = (
    (b"\x1f\x8b", "gzip"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"PK\x03\x04", "zip"),
    (b"\x04\x22\x4d\x18", "lz4"),
)
# Bytes pandas' CSV tokenizer ignores when deciding a line is blank (skip_blank_lines): space, tab, CR.
_CSV_BLANK_BYTES = (0x09, 0x0D, 0x20)
# read_json(lines=True) drops lines that are empty after str.strip().
_JSONL_BLANK_BYTES = (0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20)


def plan_tabular_file(url: str, size: int, dataset: TabularDataset, target_bytes: int) -> list[TabularSlice]:
    """Split one file into slices of about `target_bytes` each, never crossing the file's boundary.

    csv/jsonl slices are byte ranges ending just after a record-terminating newline (newlines inside quoted
    CSV fields are skipped by following pandas' tokenizer, see `_QuoteTracker`), so each slice parses on its
    own; parquet slices are runs of
    consecutive row groups, found from the footer alone. `size` is the listed size; the scan itself reads
    to end of file, so a stale listing cannot cut the last record. Slices with no records are never
    produced: their bytes (blank lines) are folded into a neighbouring slice.
    """
    target = max(1, int(target_bytes))
    try:
        fs, path = fsspec.core.url_to_fs(url, **dict(dataset.storage_options))
        if dataset.format == "parquet":
            return _plan_parquet(fs, path, url, target)
        if dataset.format not in ("csv", "jsonl"):
            raise InputError(f"{url}: unsupported tabular format {dataset.format!r}")
        _check_ascii_compatible(url, dataset.encoding)
        _refuse_compressed_name(url, dataset.format)
        hashing = HashWhileReading(path) if is_local(fs) else None
        with fs.open(path, "rb") as f:
            slices = _plan_lines(f, url, dataset, target, hashing)
        if hashing is not None:
            hashing.done()
        return slices
    except InputError:
        raise
    except OSError as exc:
        raise InputError(f"{url}: cannot read the file to plan slices: {exc}") from exc


# --------------------------------------------------------------------------------------------- planning


def _check_ascii_compatible(url: str, encoding: str) -> None:
    """Planning finds newlines and quotes as single bytes, which only works for ASCII-compatible encodings."""
    try:
        codec = codecs.lookup(encoding)
    except LookupError as exc:
        raise InputError(f"{url}: unknown encoding {encoding!r}") from exc
    probe = '\n\r", \t{}:0aZ'
    try:
        encoded = codec.encode(probe)[0]
    except (UnicodeError, ValueError) as exc:
        raise InputError(f"{url}: encoding {encoding!r} cannot be used for tabular input: {exc}") from exc
    if encoded != probe.encode("ascii"):
        raise InputError(
            f"{url}: encoding {encoding!r} is not ASCII-compatible (UTF-16/UTF-32 are not supported): "
            "files are split on byte-level newlines and quotes; re-encode the file as UTF-8"
        )


def _plan_parquet(fs: Any, path: str, url: str, target: int) -> list[TabularSlice]:
    """Group consecutive row groups until their compressed size reaches the target; only the footer is read."""
    try:
        with fs.open(path, "rb") as f:
            metadata = pq.ParquetFile(f).metadata
    except OSError as exc:
        raise InputError(f"{url}: cannot read the Parquet footer: {exc}") from exc
    except Exception as exc:  # pyarrow raises ArrowInvalid (a ValueError) for non-Parquet bytes
        raise InputError(f"{url}: not a readable Parquet file: {exc}") from exc

    slices: list[TabularSlice] = []
    group: list[int] = []
    group_bytes = 0
    group_rows = 0
    watched = _NullWatch(metadata)
    nulls: set[str] = set()
    shared: dict[frozenset[str], tuple[str, ...]] = {}  # slices with the same columns share one tuple

    def emit() -> None:
        names = shared.setdefault(frozenset(nulls), tuple(sorted(nulls)))
        slices.append(
            TabularSlice(url, "parquet", row_groups=tuple(group), rows=group_rows, null_columns=names)
        )

    for index in range(metadata.num_row_groups):
        row_group = metadata.row_group(index)
        group.append(index)
        group_bytes += sum(row_group.column(c).total_compressed_size for c in range(row_group.num_columns))
        group_rows += row_group.num_rows
        nulls |= watched.nulls(row_group)
        if group_bytes >= target:
            emit()
            group, group_bytes, group_rows, nulls = [], 0, 0, set()
    if group:
        emit()
    return slices


class _NullWatch:
    """Which integer and bool columns of a Parquet file may hold a missing value, row group by row group
    (`TabularSlice.null_columns`; only those columns' dtype depends on it). A column whose chunk has no null
    count (statistics not written) may; so may a name that two columns share (a top-level "a.b" and field b
    of a struct a have one path), so a name is only said to hold no null when exactly one column has it and
    its count is 0. Only those columns' statistics are read: on a wide file the others would cost planning
    time for nothing."""

    def __init__(self, metadata: Any) -> None:
        import pyarrow as pa

        schema = metadata.schema
        wanted = {
            f.name
            for f in schema.to_arrow_schema()
            if pa.types.is_integer(f.type) or pa.types.is_boolean(f.type)
        }
        paths = [schema.column(c).path for c in range(len(schema))]
        self.always = {name for name in wanted if paths.count(name) != 1}
        self.checked = [
            (c, path) for c, path in enumerate(paths) if path in wanted and path not in self.always
        ]

    def nulls(self, row_group: Any) -> set[str]:
        found = set(self.always)
        for c, path in self.checked:
            column = row_group.column(c)
            stats = column.statistics if column.is_stats_set else None
            if stats is None or not stats.has_null_count or stats.null_count != 0:
                found.add(path)
        return found


class _Slicer:
    """Turns a stream of record boundaries (offsets just after a newline) into slices of ~target bytes.

    Each boundary comes with the 1-based line number of the file that starts there, so every slice
    records its `first_line` without another pass over the file.
    """

    def __init__(self, url: str, fmt: str, target: int, has_header: bool) -> None:
        self.url = url
        self.fmt = fmt
        self.target = target
        self.need_header = has_header
        self.header_end = 0
        self.start = 0
        self.start_line = 1
        self.rows = 0
        self.slices: list[TabularSlice] = []

    def add(
        self,
        offset: int,
        positions: np.ndarray,
        nonblank: np.ndarray | None,
        line_base: int,
        line_index: np.ndarray | None,
    ) -> None:
        """Consume the records that end at `offset + positions` (sorted: `positions` are a chunk's newlines,
        `offset` the chunk's file offset plus one, so each is the global offset just after a record's newline).

        `nonblank[i]` says record i has data (None: every record has); the line of the file that starts at
        the end of record i is `line_base + line_index[i]` (None: `line_base + i`). Both are Nones in the
        common case so that a chunk of plain records costs no per-record Python or extra arrays.
        """

        def line_at(i: int) -> int:
            return line_base + (i if line_index is None else int(line_index[i]))

        size = int(positions.size)
        pos = 0
        if self.need_header:
            if nonblank is None:
                first = 0
            else:
                found = np.flatnonzero(nonblank)
                if not found.size:
                    return  # blank lines before the header: they stay in [0, header_end)
                first = int(found[0])
            self.header_end = self.start = offset + int(positions[first])
            self.start_line = line_at(first)
            self.need_header = False
            pos = first + 1
        if pos >= size:
            return
        counts: np.ndarray | None = None
        if nonblank is not None:
            counts = np.zeros(size + 1, dtype=np.int64)
            np.cumsum(nonblank, out=counts[1:])

        def rows_between(a: int, b: int) -> int:  # records a..b-1
            return b - a if counts is None else int(counts[b] - counts[a])

        while pos < size:
            wanted = self.start + self.target - offset
            end_index = max(pos, int(np.searchsorted(positions, wanted, side="left")))
            if end_index >= size:
                self.rows += rows_between(pos, size)
                return
            self.rows += rows_between(pos, end_index + 1)
            self._emit(offset + int(positions[end_index]), line_at(end_index))
            pos = end_index + 1

    def finish(self, total: int, tail_nonblank: bool) -> list[TabularSlice]:
        """Close the last slice at end of file; `tail_nonblank` says an unterminated last record has data."""
        if self.need_header:
            return []  # no complete header record: nothing to read
        if total > self.start:
            self.rows += int(tail_nonblank)
            self._emit(total, 0)  # nothing starts at end of file: the line number is never used
        return self.slices

    def _emit(self, end: int, end_line: int) -> None:
        if self.rows == 0:
            # Only blank lines: fold them into the previous slice, or keep them at the front of the next one,
            # so every slice parses to at least one row and the slices still tile the file.
            if self.slices:
                self.slices[-1] = replace(self.slices[-1], end=end)
                self.start, self.start_line = end, end_line
            return
        self.slices.append(
            TabularSlice(
                self.url,
                self.fmt,
                self.start,
                end,
                header_end=self.header_end,
                rows=self.rows,
                first_line=self.start_line,
            )
        )
        self.start, self.start_line = end, end_line
        self.rows = 0


# Above this many records whose first byte is blank in one chunk, classify every byte at once instead.
_FEW_CANDIDATES = 256


def _segments_with_data(
    chunk: bytes, arr: np.ndarray, starts: np.ndarray, significant: np.ndarray, blank_bytes: bytes
) -> np.ndarray:
    """For each segment [starts[i], starts[i+1]) (the last one runs to the chunk's end): has it a byte that is
    not blank? A segment whose first byte is significant has one; only the others (blank lines, lines
    starting with spaces) are looked at byte by byte, so a chunk of ordinary records costs one gather."""
    has = significant[arr[starts]]
    candidates = np.flatnonzero(~has)
    if candidates.size > _FEW_CANDIDATES:
        return np.logical_or.reduceat(significant[arr], starts)
    n = arr.size
    for i in candidates.tolist():
        end = int(starts[i + 1]) if i + 1 < starts.size else n
        has[i] = bool(chunk[int(starts[i]) : end].translate(None, blank_bytes))
    return has


def _refuse_compressed_name(url: str, fmt: str) -> None:
    name = url.rstrip("/").rsplit("/", 1)[-1].lower()
    for suffix, kind in _COMPRESSED_SUFFIXES.items():
        if name.endswith(suffix):
            _refuse_compressed(url, fmt, kind)


def _refuse_compressed(url: str, fmt: str, kind: str) -> None:
    raise InputError(
        f"{url}: {kind}-compressed {fmt} is not supported: tabular files are split into mini-batches by byte "
        "ranges, which a compressed stream does not allow; decompress the file first (Parquet compresses "
        "internally and splits by row groups)"
    )


def _check_magic(url: str, fmt: str, head: bytes) -> None:
    """A compressed file under a plain name is refused too (its first bytes give it away)."""
    for magic, kind in _COMPRESSED_MAGIC:
        if head.startswith(magic):
            _refuse_compressed(url, fmt, kind)
    if head[:3] == b"BZh" and head[4:10] == b"1AY&SY":
        _refuse_compressed(url, fmt, "bzip2")


def _is_utf8(encoding: str) -> bool:
    return codecs.lookup(encoding).name in ("utf-8", "utf-8-sig")


class _QuoteTracker:
    """Which newlines of a CSV file end records, decided as pandas' C tokenizer decides it.

    pandas treats a quote as special only where a field starts: at the start of a record, or right after
    the separator or a CR. There it opens a quoted field, in which newlines and separators are data; inside,
    a quote closes the field unless another follows (`""` is one quote). Everywhere else a quote is an
    ordinary character: `5" screen` and `a"b` are plain fields, and so is `  "x"` (the spaces start the
    field). Counting quote parity over the whole stream agrees with this only when every quote that parity
    calls an opener really starts a field, so each chunk is checked for that with a few vectorised
    operations; a chunk where it fails (an inch mark, a quote after a space) is decided exactly by walking
    its quotes, and only its quotes, in Python.

    Measured on a 210 MB CSV (planning in one process, best of 7 runs interleaved with the parity-only
    planner it replaced, 2 cores shared with other work): no quotes 0.11 s before / 0.10 s after; quoted
    multi-line fields with "" in every third row 0.51 s / 0.53 s; the same with an inch mark in every tenth
    row, so that every chunk takes the exact walk, 0.18 s (and a wrong plan: 1.86 M rows instead of
    2.86 M) / 0.72 s. The one-pass chunk scan (`_ChunkScan._pass`) later took a 165 MB file of the tabular
    bench (a quoted field in every row) from 0.47-0.52 s to 0.34-0.40 s of CPU (medians of 7 interleaved runs,
    under heavy load; see docs/performance.md). The state carried from chunk to chunk makes the result independent of the chunk size.
    """

    def __init__(self, separator: str) -> None:
        self.separator = ord(separator)
        self.starts_field = np.zeros(256, dtype=bool)  # a quote after this byte starts a quoted field
        self.starts_field[[self.separator, _NL, _CR]] = True
        self.inside = False  # in a quoted field at the start of the next chunk
        self.last_byte = _NL  # the byte before the next chunk (the file's start counts as a record start)
        self.last_closer = -2  # file offset of the last quote that closed a quoted field
        self.opened_at = -1  # file offset and line of the quote that opened the current quoted field
        self.opened_line = 0

    def record_ends(
        self,
        arr: np.ndarray,
        base: int,
        newlines: np.ndarray,
        line_base: int,
        quotes: np.ndarray | None = None,
        quotes_before: np.ndarray | None = None,
    ) -> np.ndarray | None:
        """For the chunk `arr` at file offset `base`: a mask over its `newlines` (positions in the chunk), True
        where the newline ends a record; None when all of them do. `line_base` is the 1-based line of the
        chunk's first byte (for the error message about a quote that is never closed). `quotes` are the
        chunk's quote positions, `quotes_before[i]` how many of them precede `newlines[i]`, when the caller found
        them in its own pass (`_ChunkScan`); None: found here."""
        if quotes is None:
            quotes = np.flatnonzero(arr == _QUOTE)
            quotes_before = None
        inside, before = self.inside, self.last_byte
        if arr.size:
            self.last_byte = int(arr[-1])
        if not quotes.size:
            return np.zeros(newlines.size, dtype=bool) if inside else None
        first = int(inside)
        # Under parity, quote i opens a field iff i + inside is even; it may do so at a field start, or right
        # after the quote that closed the previous one ("" inside a quoted field). Only the openers are looked
        # at here; the exact walk needs every quote's previous byte.
        openers = quotes[first::2]
        prev = arr[openers - 1]
        if openers.size and openers[0] == 0:
            prev[0] = before
        after_closer = prev == _QUOTE
        if openers.size and openers[0] == 0:
            after_closer[0] = self.last_closer == base - 1
        if bool((self.starts_field[prev] | after_closer).all()):
            toggles = quotes
            opens = openers[~after_closer]  # not reopened by the second quote of ""
            opened = int(opens[-1]) if opens.size else -1
        else:
            toggles, opened = self._walk(quotes, self._at_field_start(arr, quotes, before), base)
            quotes_before = None
        if toggles.size:
            closers = toggles[1 - first :: 2]
            if closers.size:
                self.last_closer = base + int(closers[-1])
            self.inside = bool((toggles.size + first) & 1)
        if opened >= 0:
            self.opened_at = base + opened
            self.opened_line = line_base + int(np.searchsorted(newlines, opened))
        if quotes_before is None:
            quotes_before = np.searchsorted(toggles, newlines)
        odd = (quotes_before + first) & 1
        if not odd.any():
            return None
        ends: np.ndarray = odd == 0
        return ends

    def native_record_ends(self, chunk: bytes, base: int, line_base: int) -> tuple[bytes, bytes | None, int]:
        """`record_ends` by the native pass (`_record_scan.c`), which carries this tracker's state through the
        chunk: the record-ending newlines' positions and their indices among all the chunk's newlines (None:
        every newline ends a record), as int64 bytes, and the chunk's newline count."""
        assert _native_scan is not None
        ends, index, newlines, inside, closer, opened, opened_newlines = _native_scan(
            chunk, _QUOTE, self.separator, self.last_byte, self.inside, self.last_closer - base
        )
        self.inside, self.last_closer = inside, base + closer
        if chunk:
            self.last_byte = chunk[-1]
        if opened >= 0:
            self.opened_at, self.opened_line = base + opened, line_base + opened_newlines
        return ends, index, newlines

    def _at_field_start(self, arr: np.ndarray, quotes: np.ndarray, before: int) -> np.ndarray:
        """For each quote of the chunk: is it where a field starts (after the separator, a CR or a LF)?"""
        prev = arr[quotes - 1]
        if quotes[0] == 0:
            prev[0] = before
        at: np.ndarray = self.starts_field[prev]
        return at

    def _walk(self, quotes: np.ndarray, at_field_start: np.ndarray, base: int) -> tuple[np.ndarray, int]:
        """The exact path: the quotes of this chunk that open or close a quoted field, one by one; and the
        last one that opened a field (-1: none)."""
        toggles = []
        opened = -1
        inside, last_closer = self.inside, self.last_closer
        for q, starts in zip(quotes.tolist(), at_field_start.tolist(), strict=True):
            if inside:  # closes (a quote right after it reopens: the pair is an escaped quote)
                inside, last_closer = False, base + q
                toggles.append(q)
            elif last_closer == base + q - 1:
                inside = True
                toggles.append(q)
            elif starts:
                inside, opened = True, q
                toggles.append(q)
        return np.asarray(toggles, dtype=np.int64), opened


def _chunks(f: BinaryIO, blank_bom: bool, hashing: HashWhileReading | None = None) -> Iterator[bytes]:
    """The file in chunks of `_CHUNK_BYTES`. A UTF-8 byte order mark at its start is given as three CRs: pandas
    skips the mark, so for finding records it is blank and what follows it starts a record. `hashing` gets
    every byte read, as read (the mark too)."""
    start = f.read(3)
    first = start + f.read(max(_CHUNK_BYTES - len(start), 0))
    if hashing is not None:
        hashing.update(first)
    if first:
        yield _bom_as_blank(first[:3], blank_bom) + first[3:]
    while chunk := f.read(_CHUNK_BYTES):
        if hashing is not None:
            hashing.update(chunk)
        yield chunk


def _bom_as_blank(start: bytes, blank_bom: bool) -> bytes:
    """The file's first bytes with a UTF-8 byte order mark given as three CRs (`_chunks`)."""
    return b"\r\r\r" + start[3:] if blank_bom and start.startswith(_UTF8_BOM) else start


def _plan_lines(
    f: BinaryIO, url: str, dataset: TabularDataset, target: int, hashing: HashWhileReading | None = None
) -> list[TabularSlice]:
    """Scan a CSV or JSON Lines file chunk by chunk, finding record boundaries natively (`_NativeChunkScan`) or
    with vectorised numpy (`_ChunkScan`); `hashing` gets the file's bytes as they are read (its fingerprint,
    core/inputs/fingerprint.py).

    Per chunk: the newline positions, which of them end records (CSV: see `_QuoteTracker`), and a blank check
    that only looks at the first byte of each record unless it is blank. Line numbers and row counts come
    from positions, so no per-byte or per-record arrays beyond these are built.
    """
    is_csv = dataset.format == "csv"
    blank = _blank_bytes(dataset)
    significant = np.ones(256, dtype=bool)
    significant[list(blank)] = False
    slicer = _Slicer(url, dataset.format, target, has_header=is_csv and dataset.header)
    quotes = _QuoteTracker(dataset.separator) if is_csv else None
    base = 0  # file offset of the current chunk
    tail_nonblank = False  # the record still open at the chunk's end has a significant byte
    lines = 0  # newlines (quoted ones too: lines as an editor counts them) before the current chunk
    first = b""  # the first chunk (a byte order mark given as CRs), where the header record is
    scratch = _Scratch()
    scan_type = _ChunkScan if _native_scan is None else _NativeChunkScan
    for chunk in _chunks(f, _is_utf8(dataset.encoding), hashing):
        if base == 0:
            _check_magic(url, dataset.format, chunk)
            first = chunk
        scan = scan_type(chunk, base, lines, significant, blank, scratch, is_csv)
        tail_nonblank = scan.feed(slicer, quotes, tail_nonblank)
        lines += scan.all_newlines
        base += len(chunk)
    slices = _close_slices(url, slicer, quotes, base, tail_nonblank)
    if is_csv and dataset.header:
        header_end = base if slicer.need_header else slicer.header_end  # no LF at all: the whole file
        if header_end <= len(first):
            if b"\r" in first[:header_end].replace(b"\r\n", b""):  # the common case has no lone CR
                _check_header_record(url, [first[:header_end]], header_end, dataset)
        else:
            f.seek(0)
            _check_header_record(url, _header_chunks(f, header_end, dataset), header_end, dataset)
    return slices


def _header_chunks(f: BinaryIO, header_end: int, dataset: TabularDataset) -> Iterator[bytes]:
    """The header record [0, header_end) in chunks, however long it is (a file with old Mac line endings
    and no LF is one record: the whole file), its byte order mark given as CRs (`_chunks`)."""
    start = _bom_as_blank(f.read(min(3, header_end)), _is_utf8(dataset.encoding))  # the mark whole
    yield start
    done = len(start)
    while done < header_end and (chunk := f.read(min(_CHUNK_BYTES, header_end - done))):
        yield chunk
        done += len(chunk)


def _check_header_record(url: str, chunks: Iterable[bytes], header_end: int, dataset: TabularDataset) -> None:
    """The header record [0, header_end) must hold the header only. Records end at LF here; pandas' parser
    and Arrow's also end one at a lone CR (old Mac line endings), so a header record with one holds rows of
    data that would be read as part of the header and never reach run(): refused, naming the file. Its
    pieces between line breaks outside quoted fields are counted as the planner counts records (a piece of
    only blank bytes is none; a byte order mark is given as CRs), chunk by chunk: a header record of any
    length is checked (it was read whole up to 64 MiB, and a longer one, a whole CR-only file, was not
    checked at all: its rows were lost in a job that succeeded)."""
    significant = np.ones(256, dtype=bool)
    significant[list(_blank_bytes(dataset))] = False
    quotes = _QuoteTracker(dataset.separator)
    pieces = 0  # closed pieces with data
    open_has_data = False  # the piece still open at the end of the chunks so far has data
    base = 0
    for chunk in chunks:
        arr = np.frombuffer(chunk, dtype=np.uint8)
        breaks = np.flatnonzero((arr == _CR) | (arr == _NL))
        outside = quotes.record_ends(arr, base, breaks, 1)
        if outside is not None:
            breaks = breaks[outside]
        counts = np.zeros(arr.size + 1, dtype=np.int64)
        np.cumsum(significant[arr], out=counts[1:])
        starts = np.concatenate(([0], breaks + 1))
        ends = np.concatenate((breaks, [arr.size]))
        with_data = counts[ends] > counts[starts]  # segment i: [starts[i], ends[i])
        if breaks.size:
            pieces += int(open_has_data or with_data[0]) + int(np.count_nonzero(with_data[1:-1]))
            open_has_data = bool(with_data[-1])
        else:
            open_has_data = open_has_data or bool(with_data[0])
        base += arr.size
    rows = pieces + int(open_has_data) - 1
    if rows > 0:
        raise InputError(
            f"{url}: the header record (bytes [0, {header_end})) holds {rows} row{'s' if rows != 1 else ''} of "
            "data after the header: a lone CR, not followed by LF, is a line break for Arrow and pandas, but "
            "the file is split into records at LF only, so those rows would be lost; convert the file's line "
            "endings to LF or CRLF"
        )


def _blank_bytes(dataset: TabularDataset) -> bytes:
    """The bytes that do not make a record non-blank (and the newline)."""
    is_csv = dataset.format == "csv"
    blank = list(_CSV_BLANK_BYTES if is_csv else _JSONL_BLANK_BYTES) + [_NL]
    if is_csv and dataset.separator in (" ", "\t"):
        blank.remove(ord(dataset.separator))  # "\t" alone is a row of empty fields when tab separates them
    return bytes(blank)


class _ChunkScan:
    """One chunk of a CSV or JSON Lines file: its newlines and which of them end non-blank records.

    The chunk's bytes are passed over once, block by block (`_BLOCK_BYTES`, so that the intermediate arrays and
    the block itself stay in the CPU's cache), for the positions of the newlines and, for CSV, of the quotes too;
    what follows works on those arrays only. Gathering the bytes around each hit inside the pass was tried and
    dropped: it was slower on dense files (CRLF rows of 30 bytes).
    """

    def __init__(
        self,
        chunk: bytes,
        base: int,
        lines: int,
        significant: np.ndarray,
        blank: bytes,
        scratch: _Scratch,
        with_quotes: bool,
    ) -> None:
        self.chunk, self.base, self.lines = chunk, base, lines
        self.significant, self.blank = significant, blank
        self.arr = np.frombuffer(chunk, dtype=np.uint8)
        self._find(scratch, with_quotes)

    def _find(self, scratch: _Scratch, with_quotes: bool) -> None:
        """The chunk's newlines and (CSV) quotes, with the quotes before each newline."""
        found, kinds = self._pass(self.arr, scratch, with_quotes)
        self.quotes: np.ndarray | None = _NO_QUOTES if with_quotes else None
        self.quotes_before: np.ndarray | None = None
        is_nl = kinds == _NL
        newline_count = int(np.count_nonzero(is_nl))
        if newline_count == found.size:  # no quote
            self.newlines = found
        else:
            is_quote = kinds == _QUOTE
            if newline_count + int(np.count_nonzero(is_quote)) != found.size:  # some 0x02 or '*' were found
                keep = is_nl | is_quote
                found, is_nl, is_quote = found[keep], is_nl[keep], is_quote[keep]
            nl_at = np.flatnonzero(is_nl)
            self.newlines, self.quotes = found.take(nl_at), np.compress(is_quote, found)
            # The quotes before each newline: its rank among what was found, less the newlines before it.
            self.quotes_before = nl_at - np.arange(newline_count)
        self.all_newlines = int(self.newlines.size)  # quoted ones too

    @staticmethod
    def _pass(arr: np.ndarray, scratch: _Scratch, with_quotes: bool) -> tuple[np.ndarray, np.ndarray]:
        """The positions of the newlines (and quotes) and each one's byte. LF (0x0A) and '"' (0x22) differ only
        in the bits 0x28, so `byte | 0x28 == 0x2A` finds both at once, with 0x02 and '*' (0x2A), which the
        caller drops by their byte."""
        found_parts, kind_parts = [], []
        for offset in range(0, arr.size, _BLOCK_BYTES):
            block = arr[offset : offset + _BLOCK_BYTES]
            m = block.size
            if with_quotes:
                mask = np.equal(np.bitwise_or(block, 0x28, out=scratch.bytes[:m]), 0x2A, out=scratch.mask[:m])
            else:
                mask = np.equal(block, _NL, out=scratch.mask[:m])
            hits = np.flatnonzero(mask)
            kind_parts.append(block[hits])
            hits += offset
            found_parts.append(hits)
        if len(found_parts) == 1:
            return found_parts[0], kind_parts[0]
        if not found_parts:
            return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.uint8)
        return np.concatenate(found_parts), np.concatenate(kind_parts)

    def record_ends(self, quotes: _QuoteTracker | None) -> tuple[np.ndarray, np.ndarray | None]:
        """The positions of the newlines that end records, and each one's index among all the chunk's
        newlines (None: all of them end records, so the index is the rank)."""
        newlines = self.newlines
        line_index: np.ndarray | None = None
        if quotes is not None:
            ends = quotes.record_ends(
                self.arr, self.base, newlines, self.lines + 1, self.quotes, self.quotes_before
            )
            if ends is not None:
                line_index = np.flatnonzero(ends)
                newlines = newlines[line_index]
        return newlines, line_index

    def feed(self, slicer: _Slicer, quotes: _QuoteTracker | None, tail_nonblank: bool) -> bool:
        """Gives the slicer the record ends of this chunk; returns whether the record still open at its
        end has a significant byte (`tail_nonblank` says the same of the record open at its start)."""
        newlines, line_index = self.record_ends(quotes)
        arr, n = self.arr, self.arr.size
        k = int(newlines.size)
        if not k:
            return tail_nonblank or bool(self._with_data(np.zeros(1, dtype=np.intp))[0])
        # Segment i <= k-1 is record i (up to and including its newline); segment k, if any, is the tail.
        # Whether a segment has data shows in its first byte unless that byte is blank (then: _segments_with_data).
        tail = int(newlines[-1]) + 1 < n
        first_bytes = np.empty(k + int(tail), dtype=np.uint8)
        first_bytes[0] = arr[0]
        arr.take(newlines[: first_bytes.size - 1] + 1, out=first_bytes[1:])
        has = self.significant[first_bytes]
        if not has.all():
            starts = np.empty(first_bytes.size, dtype=np.intp)
            starts[0] = 0
            np.add(newlines[: starts.size - 1], 1, out=starts[1:])
            has = self._with_data(starts)
        nonblank: np.ndarray | None = None
        if not has[:k].all():
            nonblank = has[:k].copy()
            nonblank[0] |= tail_nonblank
        slicer.add(self.base + 1, newlines, nonblank, self.lines + 2, line_index)
        return bool(has[k]) if tail else False

    def _with_data(self, starts: np.ndarray) -> np.ndarray:
        return _segments_with_data(self.chunk, self.arr, starts, self.significant, self.blank)


class _NativeChunkScan(_ChunkScan):
    """`_ChunkScan` with the record ends found by the native pass (`_record_scan.c`): one pass over the chunk
    that visits only its LF and quote bytes and follows `_QuoteTracker._walk` at every quote, with the GIL
    released. The slices it gives are the numpy scan's (tests/core/inputs/test_tabular_scan_equivalence.py
    compares both with the reference planner on random bytes and chunk sizes)."""

    def _find(self, scratch: _Scratch, with_quotes: bool) -> None:
        self.all_newlines = 0  # known once `record_ends` ran

    def record_ends(self, quotes: _QuoteTracker | None) -> tuple[np.ndarray, np.ndarray | None]:
        assert _native_scan is not None
        chunk = self.chunk
        if quotes is None:  # JSON Lines: every newline ends a record
            ends, index, self.all_newlines, *_ = _native_scan(chunk, -1, 0, _NL, False, -2)
        else:
            ends, index, self.all_newlines = quotes.native_record_ends(chunk, self.base, self.lines + 1)
        line_index = None if index is None else np.frombuffer(index, dtype=np.int64)
        return np.frombuffer(ends, dtype=np.int64), line_index


_NO_QUOTES = np.zeros(0, dtype=np.intp)


class _Scratch:
    """Buffers for one block of `_ChunkScan`'s pass, reused from block to block and chunk to chunk."""

    def __init__(self) -> None:
        self.mask = np.empty(_BLOCK_BYTES, dtype=bool)
        self.bytes = np.empty(_BLOCK_BYTES, dtype=np.uint8)


def _close_slices(
    url: str, slicer: _Slicer, quotes: _QuoteTracker | None, size: int, tail_nonblank: bool
) -> list[TabularSlice]:
    """The file's slices once every chunk is scanned; a quoted field still open at the end is an error."""
    if quotes is not None and quotes.inside:
        raise InputError(
            f"{url}: the quote opened at byte {quotes.opened_at} is never closed (unterminated quoted field "
            f"from line {quotes.opened_line} to the end of the CSV file; a quote is special only where a field "
            "starts, as pandas reads it)"
        )
    return slicer.finish(size, tail_nonblank)
