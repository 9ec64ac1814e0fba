"""The CSV / JSON Lines planner as it was before the one-pass scan (commit b09f139), kept unchanged as the
reference the property test compares the planner with: the same slices, or the same error, on every input.

Only the scan is copied (the slicer, the quote tracker, the chunk scan and the header record's check); reading
the file in chunks, the blank bytes and the magic-number check are the module's, which the change left alone.
"""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np

from airflow_parallel_run.core.errors import InputError
from airflow_parallel_run.core.inputs.tabular import TabularDataset
from airflow_parallel_run.core.inputs.tabular_scan import _blank_bytes, _bom_as_blank, _is_utf8
from airflow_parallel_run.core.minibatch import TabularSlice

_NL = 0x0A
_CR = 0x0D
_QUOTE = 0x22
_FEW_CANDIDATES = 256
_HEADER_CHECK_BYTES = 64 * 1024 * 1024


def reference_plan(
    data: bytes, url: str, dataset: TabularDataset, target: int, chunk_bytes: int
) -> list[TabularSlice]:
    """The old `_plan_lines` over `data` read in chunks of `chunk_bytes` (its magic-number check left out)."""
    f = io.BytesIO(data)
    blank_bom = _is_utf8(dataset.encoding)
    chunks = []
    first_chunk = _bom_as_blank(f.read(3), blank_bom)
    first_chunk += f.read(max(chunk_bytes - len(first_chunk), 0))
    if first_chunk:
        chunks.append(first_chunk)
    while chunk := f.read(chunk_bytes):
        chunks.append(chunk)
    is_csv = dataset.format == "csv"
    blank = _blank_bytes(dataset)
    significant = np.ones(256, dtype=bool)
    significant[list(blank)] = False
    slicer = _Slicer(url, dataset.format, target, has_header=is_csv and dataset.header)
    quotes = _QuoteTracker(dataset.separator) if is_csv else None
    base = 0
    tail_nonblank = False
    lines = 0
    first = b""
    for chunk in chunks:
        if base == 0:
            first = chunk
        scan = _ChunkScan(chunk, base, lines, significant, blank)
        tail_nonblank = scan.feed(slicer, quotes, tail_nonblank)
        lines += scan.all_newlines
        base += len(chunk)
    if quotes is not None and quotes.inside:
        raise InputError(
            f"{url}: the quote opened at byte {quotes.opened_at} is never closed (unterminated quoted field "
            f"from line {quotes.opened_line} to the end of the CSV file; a quote is special only where a field "
            "starts, as pandas reads it)"
        )
    slices = slicer.finish(base, tail_nonblank)
    if is_csv and dataset.header:
        header_end = base if slicer.need_header else slicer.header_end
        if header_end <= len(first):
            head = first[:header_end]
        elif header_end <= _HEADER_CHECK_BYTES:
            head = _bom_as_blank(data[:header_end], blank_bom)
        else:
            return slices
        _check_header_record(url, head, dataset)
    return slices


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
        self, bounds: np.ndarray, nonblank: np.ndarray | None, line_base: int, line_index: np.ndarray | None
    ) -> None:
        """Consume the records that end at `bounds` (sorted, global offsets just after each record's newline).

        `nonblank[i]` says record i has data (None: every record has); the line of the file that starts at
        `bounds[i]` is `line_base + line_index[i]` (None: `line_base + i`). Both are Nones in the common case
        so that a chunk of plain records costs no per-record Python or extra arrays.
        """

        def line_at(i: int) -> int:
            return line_base + (i if line_index is None else int(line_index[i]))

        pos = 0
        if self.need_header:
            if nonblank is None:
                first = 0
            else:
                found = np.flatnonzero(nonblank)
                if not found.size:
                    return  # blank lines before the header: they stay in [0, header_end)
                first = int(found[0])
            self.header_end = self.start = int(bounds[first])
            self.start_line = line_at(first)
            self.need_header = False
            pos = first + 1
        if pos >= bounds.size:
            return
        counts: np.ndarray | None = None
        if nonblank is not None:
            counts = np.zeros(bounds.size + 1, dtype=np.int64)
            np.cumsum(nonblank, out=counts[1:])

        def rows_between(a: int, b: int) -> int:  # records a..b-1
            return b - a if counts is None else int(counts[b] - counts[a])

        while pos < bounds.size:
            end_index = max(pos, int(np.searchsorted(bounds, self.start + self.target, side="left")))
            if end_index >= bounds.size:
                self.rows += rows_between(pos, bounds.size)
                return
            self.rows += rows_between(pos, end_index + 1)
            self._emit(int(bounds[end_index]), line_at(end_index))
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
    2.86 M) / 0.72 s. The state carried from chunk to chunk makes the result independent of the chunk size.
    """

    def __init__(self, separator: str) -> None:
        self.starts_field = np.zeros(256, dtype=bool)  # a quote after this byte starts a quoted field
        self.starts_field[[ord(separator), _NL, _CR]] = True
        self.inside = False  # in a quoted field at the start of the next chunk
        self.last_byte = _NL  # the byte before the next chunk (the file's start counts as a record start)
        self.last_closer = -2  # file offset of the last quote that closed a quoted field
        self.opened_at = -1  # file offset and line of the quote that opened the current quoted field
        self.opened_line = 0

    def record_ends(
        self, arr: np.ndarray, base: int, newlines: np.ndarray, line_base: int
    ) -> np.ndarray | None:
        """For the chunk `arr` at file offset `base`: a mask over its `newlines` (positions in the chunk), True
        where the newline ends a record; None when all of them do. `line_base` is the 1-based line of the
        chunk's first byte (for the error message about a quote that is never closed)."""
        quotes = np.flatnonzero(arr == _QUOTE)
        inside, before = self.inside, self.last_byte
        if arr.size:
            self.last_byte = int(arr[-1])
        if not quotes.size:
            return np.zeros(newlines.size, dtype=bool) if inside else None
        prev = np.empty(quotes.size, dtype=np.uint8)
        prev[1:] = arr[quotes[1:] - 1]
        prev[0] = arr[quotes[0] - 1] if quotes[0] else before
        at_field_start = self.starts_field[prev]
        # Under parity, quote i opens a field iff i + inside is even; it may do so at a field start, or right
        # after the quote that closed the previous one ("" inside a quoted field).
        after_closer = prev == _QUOTE
        after_closer[0] = quotes[0] == 0 and self.last_closer == base - 1
        first = int(inside)
        if bool((at_field_start[first::2] | after_closer[first::2]).all()):
            toggles = quotes
            opens = quotes[first::2][~after_closer[first::2]]  # not reopened by the second quote of ""
            opened = int(opens[-1]) if opens.size else -1
        else:
            toggles, opened = self._walk(quotes, at_field_start, base)
        if toggles.size:
            closers = toggles[1 - first :: 2]
            if closers.size:
                self.last_closer = base + int(closers[-1])
            self.inside = bool((toggles.size + first) & 1)
        if opened >= 0:
            self.opened_at = base + opened
            self.opened_line = line_base + int(np.searchsorted(newlines, opened))
        ends: np.ndarray = ((np.searchsorted(toggles, newlines) + first) & 1) == 0
        return ends

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


class _ChunkScan:
    """One chunk of a CSV or JSON Lines file: its newlines and which of them end non-blank records."""

    def __init__(self, chunk: bytes, base: int, lines: int, significant: np.ndarray, blank: bytes) -> None:
        self.chunk, self.base, self.lines = chunk, base, lines
        self.significant, self.blank = significant, blank
        self.arr = np.frombuffer(chunk, dtype=np.uint8)
        self.newlines = np.flatnonzero(self.arr == _NL)
        self.all_newlines = int(self.newlines.size)  # quoted ones too

    def feed(self, slicer: _Slicer, quotes: _QuoteTracker | None, tail_nonblank: bool) -> bool:
        """Gives the slicer the record ends of this chunk; returns whether the record still open at its
        end has a significant byte (`tail_nonblank` says the same of the record open at its start)."""
        arr, newlines, n = self.arr, self.newlines, self.arr.size
        line_index: np.ndarray | None = None  # which newlines end records (None: all of them)
        if quotes is not None:
            ends = quotes.record_ends(arr, self.base, newlines, self.lines + 1)
            if ends is not None and not ends.all():
                line_index = np.flatnonzero(ends)
                newlines = newlines[line_index]
        k = int(newlines.size)
        if not k:
            return tail_nonblank or bool(self._with_data(np.zeros(1, dtype=np.intp))[0])
        starts = newlines + 1
        starts[1:] = newlines[:-1] + 1
        starts[0] = 0
        if newlines[-1] + 1 < n:
            starts = np.append(starts, newlines[-1] + 1)
        # Segment i <= k-1 is record i (up to and including its newline); segment k, if any, is the tail.
        has = self._with_data(starts)
        nonblank: np.ndarray | None = None
        if not has[:k].all():
            nonblank = has[:k].copy()
            nonblank[0] |= tail_nonblank
        slicer.add(self.base + newlines + 1, nonblank, self.lines + 2, line_index)
        return bool(has[k]) if starts.size > k else False

    def _with_data(self, starts: np.ndarray) -> np.ndarray:
        return _segments_with_data(self.chunk, self.arr, starts, self.significant, self.blank)


def _check_header_record(url: str, head: bytes, dataset: TabularDataset) -> None:
    """The header record [0, header_end) must hold the header only. Records end at LF here; pandas' parser
    and Arrow's also end one at a lone CR (old Mac line endings), so a header record with one holds rows of
    data that would be read as part of the header and never reach run(): refused, naming the file. Its
    pieces between line breaks outside quoted fields are counted as the planner counts records (a piece of
    only blank bytes is none; a byte order mark is given as CRs)."""
    if b"\r" not in head.replace(b"\r\n", b""):
        return  # the common case: no lone CR
    arr = np.frombuffer(head, dtype=np.uint8)
    breaks = np.flatnonzero((arr == _CR) | (arr == _NL))
    outside = _QuoteTracker(dataset.separator).record_ends(arr, 0, breaks, 1)
    if outside is not None:
        breaks = breaks[outside]
    blank = _blank_bytes(dataset)
    starts = [0, *(breaks + 1).tolist()]
    ends = [*breaks.tolist(), len(head)]
    rows = sum(1 for a, b in zip(starts, ends, strict=True) if head[a:b].translate(None, blank)) - 1
    if rows > 0:
        raise InputError(
            f"{url}: the header record (bytes [0, {len(head)})) holds {rows} row{'s' if rows != 1 else ''} of "
            "data after the header: a lone CR, not followed by LF, is a line break for Arrow and pandas, but "
            "the file is split into records at LF only, so those rows would be lost; convert the file's line "
            "endings to LF or CRLF"
        )
