"""`CommitLog`: which part each committed mini-batch put in the output, kept on disk until the assembly.

The assembly needs, for each committed mini-batch in order, its part's URL, columns and (typed formats)
schema. Holding each committed `AttemptResult` for that cost about 1 KB per mini-batch (100 MB for a job of
100,000); here each is a record in a `Spill` (core/spill.py: tagged, read back exactly or `SpillError`) and
the driver keeps a record number (8 bytes) per mini-batch. `parts()` reads them back in mini-batch order,
as the assembly iterates them (`PartsInOrder`: a sequence that is not a list).
"""

from __future__ import annotations

import pickle
from array import array
from collections.abc import Iterator, Sequence
from typing import overload

from ..attempt import AttemptResult
from ..spill import Spill, remove_folder, spill_folder
from .assemble import Part

_NONE = -1  # not committed
_NO_FILE = -2  # committed, wrote no part (a summary_only job, a run() that returned nothing)


class CommitLog:
    """Mini-batch number -> its committed part (a later commit of the same mini-batch replaces it)."""

    def __init__(self) -> None:
        self._records = array("q")  # by mini-batch number: its record in the spill, or _NONE
        self._folder: str | None = None
        self._spill: Spill | None = None
        self._count = 0

    def _open(self) -> Spill:
        if self._spill is None:
            self._folder = spill_folder("apr-commits-")
            self._spill = Spill(self._folder, "parts.bin")
        return self._spill

    def add(self, index: int, result: AttemptResult) -> None:
        number = _NO_FILE
        if result.part_url:
            record = (result.part_url, list(result.columns), result.schema)
            number = self._open().append(pickle.dumps(record, pickle.HIGHEST_PROTOCOL))
        if index >= len(self._records):
            self._records.extend([_NONE] * (index + 1 - len(self._records)))
        if self._records[index] == _NONE:
            self._count += 1
        self._records[index] = number

    def __contains__(self, index: object) -> bool:
        return isinstance(index, int) and 0 <= index < len(self._records) and self._records[index] != _NONE

    def __len__(self) -> int:
        return self._count

    def part(self, index: int) -> Part:
        """Mini-batch `index`'s committed part (one that has a file)."""
        number = self._records[index]
        assert self._spill is not None and number >= 0, (index, number)
        url, columns, schema = pickle.loads(self._spill.read(number))  # tagged: read back as written
        return Part(index, url, columns, schema)

    def parts(self) -> PartsInOrder:
        """The committed parts that have a file, in mini-batch order, read as they are iterated."""
        return PartsInOrder(self, array("q", (i for i, number in enumerate(self._records) if number >= 0)))

    def close(self) -> None:
        if self._spill is not None:
            self._spill.close()
        if self._folder is not None:
            remove_folder(self._folder)


class PartsInOrder(Sequence[Part]):
    """Committed parts in mini-batch order, each read from the commit log when it is reached (the
    assembly takes them as they are: `in_order`)."""

    in_order = True

    def __init__(self, log: CommitLog, indices: array[int]) -> None:
        self._log = log
        self._indices = indices

    def __len__(self) -> int:
        return len(self._indices)

    @overload
    def __getitem__(self, position: int) -> Part: ...

    @overload
    def __getitem__(self, position: slice) -> list[Part]: ...

    def __getitem__(self, position: int | slice) -> Part | list[Part]:
        if isinstance(position, slice):
            return [self._log.part(i) for i in self._indices[position]]
        return self._log.part(self._indices[position])

    def __iter__(self) -> Iterator[Part]:
        for index in self._indices:
            yield self._log.part(index)
