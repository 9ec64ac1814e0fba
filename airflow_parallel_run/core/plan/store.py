"""The plan of a streaming job, on disk: what the driver keeps of every mini-batch for the whole job.

A file job of 1,000,000 files held every `MiniBatch` (its `FileRef`s and their URLs), every input
fingerprint and every cache key in RAM, about 300 bytes per file before anything ran. Here:

- `PlanStore`: the mini-batches, pickled (a C encoder: the listing's thread appends 100,000 of them
  while the job runs; `to_dict` and JSON took 2.5 times the listing's own time) into a `Spill`
  (core/spill.py: each record tagged, checked before it is unpickled), in plan order as the listing cuts
  them, read back by number when the driver submits or retries one, and at the end for the job's record
  and failed items. In RAM: 16 bytes per mini-batch (its record's offset and its item count).
- `KeyColumn`: each mini-batch's cache key (40 hex digits) as 20 bytes in one `bytearray`.
- `FingerprintSpill`: each input unit's content fingerprint, in a SQLite table in the same private
  folder, appended a block at a time; it gives them back as the dict the whole plan built (first
  position of a unit, its last fingerprint), in insertion order (logs/sys/job.json) or sorted by unit
  (the reuse cache's job manifest), without holding them.

The loop sees only what the listing handed to it (`reveal`): the listing's thread runs ahead of it and
appends mini-batches the loop has not taken yet, which a job stopped while listing never counts.

A small plan stays in RAM: the mini-batches as objects and the fingerprints as a dict, as the whole-plan
path holds them, until the plan has `HOLD_MINI_BATCHES` mini-batches or `HOLD_UNITS` input units (files,
slices), or `HOLD_FINGERPRINTS` fingerprints; then what was held is written out, in order, and the rest
follows it on disk. Writing each record, tagging and checking it cost a fully reused re-run of 10,000 files
about a sixth of its time (docs/performance.md, round 9), while the bound the spill is for matters to plans
a hundred times larger; what is held is at most a few MB, the size of the plan at the switch.
"""

from __future__ import annotations

import json
import os
import pickle
import secrets
import sqlite3
import threading
from array import array
from collections.abc import Iterable, Iterator, Mapping

from ..minibatch import MiniBatch
from ..spill import Spill, SpillError, remove_folder, spill_folder

KEY_BYTES = 20  # a mini-batch's cache key is 40 hex digits (core/reuse/key.py: `mini_batch_key`)
# A plan is held in RAM up to these (see the module); read when a store is made, so tests can set them to 0.
HOLD_MINI_BATCHES = 2_000
HOLD_UNITS = 20_000
HOLD_FINGERPRINTS = 20_000


class PlanStore:
    """A streaming job's plan (see the module). Reads like `Plan`: `kind`, `len`, iteration in order,
    `batch(index)`, `total_items`, counting the mini-batches the loop took (`reveal`)."""

    def __init__(self, kind: str, job_id: str) -> None:
        self.kind = kind
        self.folder = spill_folder(f"apr-plan-{job_id}-", family="apr-plan-")
        self._spill = Spill(self.folder, "plan.bin")
        self._items = array("q")
        self._visible = 0
        self._visible_items = 0
        self.fingerprints = FingerprintSpill(os.path.join(self.folder, "fingerprints.sqlite"))
        self._held: list[MiniBatch] | None = []  # the plan while it is small (None: on disk)
        self._held_units = 0
        self._hold_mini_batches, self._hold_units = HOLD_MINI_BATCHES, HOLD_UNITS
        self._closed = False

    # -- the listing's side ---------------------------------------------------------------------------
    def append(self, mb: MiniBatch) -> None:
        """The next mini-batch of the plan (numbered without gaps, in order)."""
        if self._closed:
            raise SpillError(f"{self._spill.path} is closed (the job ended)")
        if mb.index != len(self._items):
            raise ValueError(f"mini-batch {mb.index} appended as number {len(self._items)} of the plan")
        held = self._held
        if held is None:
            self._write(mb)
        else:
            held.append(mb)
            self._held_units += len(mb.files) + len(mb.slices)
            if len(held) > self._hold_mini_batches or self._held_units > self._hold_units:
                for each in held:  # in order: record i is mini-batch i
                    self._write(each)
                self._held = None  # only now: a reader that took the list reads from it meanwhile
        self._items.append(mb.items)

    def _write(self, mb: MiniBatch) -> None:
        self._spill.append(pickle.dumps(mb, protocol=pickle.HIGHEST_PROTOCOL))

    # -- the loop's side -----------------------------------------------------------------------------
    def reveal(self, index: int) -> None:
        """The loop took mini-batch `index` (in order): it joins the plan the driver counts."""
        if index != self._visible or index >= len(self._items):
            raise ValueError(f"mini-batch {index} taken out of order (next: {self._visible})")
        self._visible += 1
        self._visible_items += self._items[index]

    def __len__(self) -> int:
        return self._visible

    @property
    def total_items(self) -> int:
        return self._visible_items

    def batch(self, index: int) -> MiniBatch:
        """Mini-batch `index`, read back (SpillError when its record is not what was written)."""
        held = self._held
        if held is not None:
            return held[index]
        mb = pickle.loads(self._spill.read(index))  # the record's tag was checked: it is what was written
        if not isinstance(mb, MiniBatch) or mb.index != index:
            raise SpillError(f"record {index} of {self._spill.path} is not mini-batch {index}")
        return mb

    def documents(self) -> Iterator[str]:
        """Each mini-batch's `to_dict()` as compact JSON (what job.json holds for it), in order."""
        for mb in self:
            yield json.dumps(mb.to_dict(), separators=(",", ":"))

    def __iter__(self) -> Iterator[MiniBatch]:
        for index in range(self._visible):
            yield self.batch(index)

    def items_of(self, index: int) -> int:
        return self._items[index]

    @property
    def mini_batches(self) -> list[MiniBatch]:
        """Every mini-batch taken, read back (for tests and tools: the engine reads them one at a time)."""
        return list(self)

    def close(self) -> None:
        """Removes the spill (the job ended)."""
        self._closed = True
        self._held = None
        self._spill.close()
        self.fingerprints.close()
        remove_folder(self.folder)


class KeyColumn:
    """Cache keys by mini-batch number, 20 bytes each (a `dict[int, str]` held about 120 bytes a key).
    Reads like that dict: `keys[index]`, `index in keys`, `len`, `items()`. Numbers come in order;
    one out of order (a plan that skips numbers) is kept in a small dict beside."""

    def __init__(self) -> None:
        self._packed = bytearray()
        self._count = 0
        self._other: dict[int, str] = {}

    def __setitem__(self, index: int, key: str) -> None:
        if index == self._count and len(key) == 2 * KEY_BYTES and index not in self._other:
            try:
                raw = bytes.fromhex(key)
            except ValueError:
                raw = b""
            if len(raw) == KEY_BYTES and raw.hex() == key:
                self._packed += raw
                self._count += 1
                return
        self._other[index] = key  # out of order, not 40 hex digits, or a key replaced: this entry wins

    def __getitem__(self, index: int) -> str:
        if index in self._other:
            return self._other[index]
        if not 0 <= index < self._count:
            raise KeyError(index)
        start = index * KEY_BYTES
        return self._packed[start : start + KEY_BYTES].hex()

    def get(self, index: int, default: str | None = None) -> str | None:
        try:
            return self[index]
        except KeyError:
            return default

    def __contains__(self, index: object) -> bool:
        return isinstance(index, int) and (0 <= index < self._count or index in self._other)

    def __iter__(self) -> Iterator[int]:
        yield from range(self._count)
        yield from (i for i in self._other if not 0 <= i < self._count)

    def __len__(self) -> int:
        return self._count + sum(1 for i in self._other if not 0 <= i < self._count)

    def items(self) -> Iterator[tuple[int, str]]:
        return ((i, self[i]) for i in self)

    def values(self) -> Iterator[str]:
        return (self[i] for i in self)


class DigestColumn:
    """64-bit digests by mini-batch number, 8 bytes each, as `KeyColumn` keeps keys: in order in an array,
    a number out of order (or given again) in a small dict beside."""

    def __init__(self) -> None:
        self._packed = array("Q")
        self._other: dict[int, int] = {}

    def __setitem__(self, index: int, digest: int) -> None:
        if index == len(self._packed) and index not in self._other:
            self._packed.append(digest)
        else:
            self._other[index] = digest

    def __getitem__(self, index: int) -> int:
        if index in self._other:
            return self._other[index]
        if not 0 <= index < len(self._packed):
            raise KeyError(index)
        return self._packed[index]


def _unit(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogatepass")


class FingerprintSpill(Mapping[str, str]):
    """Input units' fingerprints (unit URL -> fingerprint) as the dict `update`d block after block would
    hold them, kept in a SQLite table (see the module). URLs are stored as UTF-8 bytes with surrogates
    passed through (file names that are not UTF-8 come from the listing as surrogate escapes), so
    sorting the bytes sorts the URLs as Python sorts the strings.

    Fast path: a listing gives a folder's files in order, so the units usually come in ascending order,
    each once; then both orders are the rows' own order and nothing is sorted or grouped. Otherwise
    SQLite sorts (on disk, in bounded memory).

    Integrity: every row carries a check of (row number, unit, fingerprint) with Python's keyed string
    hash, and the rows' count is known; a read that finds a row changed, added or missing raises
    `SpillError` (core/spill.py). (A check, not a signature: the folder is this user's alone.)"""

    def __init__(self, path: str) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        os.close(fd)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        for pragma in ("journal_mode=OFF", "synchronous=OFF", "temp_store=FILE"):
            self._db.execute(f"PRAGMA {pragma}")
        self._db.execute(
            "CREATE TABLE fp (seq INTEGER PRIMARY KEY, unit BLOB NOT NULL, fp TEXT NOT NULL, h INTEGER NOT NULL)"
        )
        self._salt = secrets.token_bytes(16)
        self._lock = threading.Lock()
        self._rows = 0
        self._indexed = False
        self._ascending = True  # every unit so far greater than the one before (so each came once)
        self._last = b""
        self._unique: int | None = None  # distinct units, once counted (None: not known yet)
        self._held: dict[str, str] | None = {}  # the fingerprints while they are few (None: in the table)
        self._hold = HOLD_FINGERPRINTS

    def _check(self, seq: int, unit: bytes, fp: str) -> int:
        return hash((self._salt, seq, unit, fp))

    def update(self, fingerprints: Mapping[str, str]) -> None:  # type: ignore[override]
        """Adds a block's fingerprints (as `dict.update`: a unit seen before keeps its place, takes this
        value)."""
        with self._lock:
            held = self._held
            if held is not None:
                held.update(fingerprints)
                if len(held) <= self._hold:
                    return
                self._held = None  # the table takes them, in the dict's order, each once
                fingerprints = held
            rows: list[tuple[int, bytes, str, int]] = []
            seq = self._rows
            for unit, fp in fingerprints.items():
                raw = unit.encode("utf-8", "surrogatepass")
                if self._ascending and seq and raw <= self._last:
                    self._ascending = False
                self._last = raw
                seq += 1
                rows.append((seq, raw, fp, self._check(seq, raw, fp)))
            if not rows:
                return
            self._db.execute("BEGIN")
            self._db.executemany("INSERT INTO fp (seq, unit, fp, h) VALUES (?, ?, ?, ?)", rows)
            self._db.execute("COMMIT")
            self._rows = seq
            self._unique = None

    def _checked(
        self, rows: Iterable[tuple[int, bytes, str, int]], whole: bool
    ) -> Iterator[tuple[bytes, str]]:
        seen = 0
        for seq, raw, fp, check in rows:
            if not isinstance(raw, bytes) or not isinstance(fp, str) or check != self._check(seq, raw, fp):
                raise SpillError(f"fingerprint row {seq} of {self.path} is not what the job wrote there")
            seen += 1
            yield raw, fp
        if whole and seen != self._rows:
            raise SpillError(f"{self.path} holds {seen} fingerprints, the job wrote {self._rows}")

    def _in_order(self) -> Iterator[tuple[bytes, str]]:
        return self._checked(self._db.execute("SELECT seq, unit, fp, h FROM fp ORDER BY seq"), whole=True)

    def sorted_items(self) -> Iterator[tuple[str, str]]:
        """(unit, fingerprint) sorted by unit, each unit once with its last fingerprint."""
        with self._lock:
            if self._held is not None:  # a string's code points sort as the table sorts its UTF-8 bytes
                yield from sorted(self._held.items())
                return
            if self._ascending:
                for raw, fp in self._in_order():
                    yield _unit(raw), fp
                return
            rows = self._db.execute("SELECT seq, unit, fp, h FROM fp ORDER BY unit, seq")
            last: tuple[bytes, str] | None = None
            unique = 0
            for raw, fp in self._checked(rows, whole=True):
                if last is not None and raw != last[0]:
                    unique += 1
                    yield _unit(last[0]), last[1]
                last = (raw, fp)
            if last is not None:
                unique += 1
                yield _unit(last[0]), last[1]
            self._unique = unique

    def items(self) -> Iterator[tuple[str, str]]:  # type: ignore[override]
        """(unit, fingerprint) in the order the units were first added, each with its last fingerprint:
        the dict's items."""
        with self._lock:
            if self._held is not None:
                yield from list(self._held.items())
                return
            if self._ascending or self._distinct() == self._rows:  # no unit added twice: the rows as they are
                for raw, fp in self._in_order():
                    yield _unit(raw), fp
                return
            for _ in self._in_order():  # every row checked before the grouped read uses some of them
                pass
            rows = self._db.execute(
                "SELECT l.seq, f.unit, l.fp, l.h, f.seq, f.h, f.fp FROM "
                "(SELECT unit, MIN(seq) AS first, MAX(seq) AS last FROM fp GROUP BY unit) AS g "
                "JOIN fp AS f ON f.seq = g.first JOIN fp AS l ON l.seq = g.last ORDER BY g.first"
            )
            for last, raw, fp, check, first, first_check, first_fp in rows:
                if check != self._check(last, raw, fp) or first_check != self._check(first, raw, first_fp):
                    raise SpillError(f"fingerprint row {last} of {self.path} is not what the job wrote there")
                yield _unit(raw), fp

    def _distinct(self) -> int:
        if self._ascending:
            return self._rows
        if self._unique is None:
            (self._unique,) = self._db.execute("SELECT COUNT(DISTINCT unit) FROM fp").fetchone()
        return int(self._unique)

    def __iter__(self) -> Iterator[str]:
        return (unit for unit, _fp in self.items())

    def __len__(self) -> int:
        with self._lock:
            return len(self._held) if self._held is not None else self._distinct()

    def __getitem__(self, unit: str) -> str:
        with self._lock:
            if self._held is not None:
                return self._held[unit]
            raw = unit.encode("utf-8", "surrogatepass")
            if not self._indexed:
                self._db.execute("CREATE INDEX fp_unit ON fp (unit, seq)")
                self._indexed = True
            row = self._db.execute(
                "SELECT seq, unit, fp, h FROM fp WHERE unit = ? ORDER BY seq DESC LIMIT 1", (raw,)
            ).fetchone()
        if row is None:
            raise KeyError(unit)
        for _raw, fp in self._checked([row], whole=False):
            return fp
        raise KeyError(unit)

    def __contains__(self, unit: object) -> bool:
        if not isinstance(unit, str):
            return False
        try:
            self[unit]
        except KeyError:
            return False
        return True

    def close(self) -> None:
        with self._lock:
            self._held = None
            self._db.close()  # idempotent; a later query raises sqlite3.ProgrammingError
