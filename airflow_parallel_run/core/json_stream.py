"""`json.dumps` of documents too large to hold whole, in pieces, byte for byte as `json.dumps` writes them.

A job's record (logs/sys/job.json) and the reuse cache's job manifest hold every mini-batch and every input
fingerprint: for a million input files, hundreds of MB as one string, and more as the dict built first.
The driver keeps those on disk (core/plan/store.py) and writes the documents from there: a `Mapping` that
is not a `dict` (a `FingerprintSpill`) gives its items one at a time (`sorted_items()` where keys are
sorted), and `Encoded` is a list whose items are JSON texts already (the plan's mini-batches as stored).
Everything else is `json.dumps`'s own output, so the bytes are the same as its: tests compare both.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any


class Encoded:
    """A JSON list whose items are given already encoded (each a JSON text, as bytes or str)."""

    def __init__(self, items: Callable[[], Iterable[bytes | str]]) -> None:
        self._items = items

    def __iter__(self) -> Iterator[bytes | str]:
        return iter(self._items())


class Listed:
    """A JSON list whose items come one at a time (encoded by `json.dumps`)."""

    def __init__(self, items: Callable[[], Iterable[Any]]) -> None:
        self._items = items

    def __iter__(self) -> Iterator[Any]:
        return iter(self._items())


#: Items of a streamed list or mapping encoded by one `json.dumps` call: a call per item (a million
#: fingerprints, each key and value) cost most of a fully reused re-run's CPU time.
BLOCK = 1000


def dumps_chunks(
    value: Any, *, sort_keys: bool = False, separators: tuple[str, str] = (", ", ": "), block: int = BLOCK
) -> Iterator[str]:
    """The pieces of `json.dumps(value, sort_keys=sort_keys, separators=separators)` (see the module).

    Plain items of a streamed list or mapping are encoded `block` at a time, as one list or dict whose
    brackets are cut off: the same bytes as item by item, since `json.dumps` joins them with the same
    separators (a block's keys keep their order: it is already sorted when `sort_keys` is set)."""
    item_sep, key_sep = separators

    def one(v: Any) -> str:
        return json.dumps(v, sort_keys=sort_keys, separators=separators)

    def inner(v: list[Any] | dict[str, Any]) -> str:
        """The items of a list, or the pairs of a dict, as `json.dumps` writes them between its brackets
        (a block's keys are in order already: sorting them again changes nothing)."""
        return json.dumps(v, sort_keys=sort_keys, separators=separators)[1:-1]

    def walk(v: Any) -> Iterator[str]:
        if isinstance(v, Encoded):
            first = True
            for item in v:
                yield "[" if first else item_sep
                first = False
                yield item.decode() if isinstance(item, bytes) else item
            yield "[]" if first else "]"
            return
        if isinstance(v, Listed):
            opened = False
            pending: list[Any] = []
            for item in v:
                pending.append(item)
                if len(pending) >= block:
                    yield ("[" if not opened else item_sep) + inner(pending)
                    opened, pending = True, []
            if pending:
                yield ("[" if not opened else item_sep) + inner(pending)
                opened = True
            yield "]" if opened else "[]"
            return
        if isinstance(v, Mapping) and _streamed(v):
            if isinstance(v, dict):
                pairs: Iterable[tuple[Any, Any]] = sorted(v.items()) if sort_keys else v.items()
            else:
                sorted_items = getattr(v, "sorted_items", None)
                pairs = sorted_items() if sort_keys and callable(sorted_items) else v.items()
                if sort_keys and not callable(sorted_items):
                    pairs = sorted(pairs)
            opened = False
            plain: dict[str, Any] = {}

            def flush() -> Iterator[str]:
                nonlocal opened, plain
                if plain:
                    yield ("{" if not opened else item_sep) + inner(plain)
                    opened, plain = True, {}

            for key, item in pairs:
                if type(key) is str and key not in plain and not _streamed(item):
                    plain[key] = item
                    if len(plain) >= block:
                        yield from flush()
                    continue
                yield from flush()
                yield ("{" if not opened else item_sep) + json.dumps(key) + key_sep
                opened = True
                yield from walk(item)
            yield from flush()
            yield "}" if opened else "{}"
            return
        yield one(v)

    yield from walk(value)


_SCALARS = frozenset({str, int, float, bool, type(None)})


def _streamed(value: Any) -> bool:
    """Whether `walk` writes `value` piece by piece (else one `json.dumps` call writes it)."""
    if type(value) in _SCALARS:  # a fingerprint, a count: most values, so asked first
        return False
    return isinstance(value, Encoded | Listed) or (
        isinstance(value, Mapping) and (not isinstance(value, dict) or streams(value))
    )


def streams(document: Mapping[Any, Any]) -> bool:
    """Whether a document holds something streamed (at any depth of dicts): then it is written piece by
    piece."""
    if not isinstance(document, dict):
        return True
    return any(_streamed(v) for v in document.values())


def dumps_bytes(value: Any, **kwargs: Any) -> Iterator[bytes]:
    """`dumps_chunks` as bytes, in pieces of about 1 MiB (ASCII: `json.dumps` escapes everything else)."""
    buffer: list[str] = []
    size = 0
    for chunk in dumps_chunks(value, **kwargs):
        buffer.append(chunk)
        size += len(chunk)
        if size >= 1 << 20:
            yield "".join(buffer).encode()
            buffer, size = [], 0
    if buffer:
        yield "".join(buffer).encode()
