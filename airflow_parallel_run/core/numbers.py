"""`NumberSet`: a set of mini-batch numbers as bits, for sets that grow with the job.

The driver's tally keeps which mini-batches finished and which were started; a `set[int]` costs about
60 bytes a number (6 MB for a job of 100,000 mini-batches, 10 times what the plan on disk keeps in RAM
per mini-batch), a bit costs an eighth of a byte. It reads and compares like a set of ints.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, MutableSet


class NumberSet(MutableSet[int]):
    """Non-negative ints, one bit each (see the module)."""

    __slots__ = ("_bits", "_count")

    def __init__(self, numbers: Iterable[int] = ()) -> None:
        self._bits = bytearray()
        self._count = 0
        for number in numbers:
            self.add(number)

    def add(self, number: int) -> None:
        if number < 0:
            raise ValueError(f"a mini-batch number is not negative: {number}")
        byte, bit = divmod(number, 8)
        if byte >= len(self._bits):
            self._bits.extend(bytes(max(byte + 1 - len(self._bits), len(self._bits) // 2)))
        if not self._bits[byte] >> bit & 1:
            self._bits[byte] |= 1 << bit
            self._count += 1

    def discard(self, number: int) -> None:
        if number in self:
            byte, bit = divmod(number, 8)
            self._bits[byte] &= ~(1 << bit) & 0xFF
            self._count -= 1

    def update(self, numbers: Iterable[int]) -> None:
        for number in numbers:
            self.add(number)

    def __contains__(self, number: object) -> bool:
        if not isinstance(number, int) or number < 0:
            return False
        byte, bit = divmod(number, 8)
        return byte < len(self._bits) and bool(self._bits[byte] >> bit & 1)

    def __iter__(self) -> Iterator[int]:
        for byte, value in enumerate(self._bits):
            if value:
                for bit in range(8):
                    if value >> bit & 1:
                        yield byte * 8 + bit

    def __len__(self) -> int:
        return self._count

    def __repr__(self) -> str:
        return f"NumberSet({sorted(self)!r})"
