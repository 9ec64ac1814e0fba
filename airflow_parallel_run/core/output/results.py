"""The run() result contract: what run() may return, and which items it says succeeded.

A result is a list, a tuple, a pandas DataFrame or an Arrow result (a pyarrow Table or RecordBatch, or a
list of them: their rows, in order, are the result's). Two forms:

- **a count** (the Azure ParallelRunStep rule): its length (an Arrow result's rows) is the number of items
  that succeeded and may not exceed the mini-batch's items; the difference failed, without saying which.
- **per item**: a list or tuple with exactly one entry per input item, in input order, in which an entry
  that is an exception instance (what `asyncio.gather(..., return_exceptions=True)` gives) or an
  `ItemFailed("reason")` marks that item failed. The other entries are the successful items' results.
  The engine keeps the marked items' positions and their errors' text, never the objects: nothing of an
  exception reaches the output file (or a pickle). An Arrow result is always a count.

Anything else fails the attempt as RUN_INVALID_RESULT with `InvalidResultError`'s message. Checked in the
entry-script process, before anything is written.
"""

from __future__ import annotations

import operator
import sys
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeGuard

if TYPE_CHECKING:
    import pandas as pd


def is_frame(value: Any) -> TypeGuard[pd.DataFrame]:
    """A pandas DataFrame? (If pandas is not imported yet, the value cannot be one.)"""
    pandas = sys.modules.get("pandas")
    return pandas is not None and isinstance(value, pandas.DataFrame)


def is_arrow(value: Any) -> bool:
    """A pyarrow Table or RecordBatch? (If pyarrow is not imported yet, the value cannot be one.)"""
    pyarrow = sys.modules.get("pyarrow")
    return pyarrow is not None and isinstance(value, (pyarrow.Table, pyarrow.RecordBatch))


def entry_types(result: Any) -> frozenset[type]:
    """The types of a list or tuple result's entries, found at C speed (`map(type, ...)`): the checks below
    look at the few types instead of calling isinstance on every entry of a million-item result."""
    if not isinstance(result, (list, tuple)) or not result:
        return frozenset()
    first = type(result[0])
    # Most results hold one type: counting it is a third cheaper than building a set (23 against 33 ms for
    # 2,000,000 ints); a result of several types pays both.
    if operator.countOf(map(type, result), first) == len(result):
        return frozenset((first,))
    return frozenset(map(type, result))


def _is_arrow_type(kind: type) -> bool:
    pyarrow = sys.modules.get("pyarrow")
    return pyarrow is not None and issubclass(kind, (pyarrow.Table, pyarrow.RecordBatch))


def arrow_rows(result: Any, types: frozenset[type] | None = None) -> int | None:
    """The rows of an Arrow result (a Table, a RecordBatch, or a list or tuple holding any of them), None for
    a result of another kind. A list mixing Tables or RecordBatches with other values is invalid: its
    length would count tables and rows alike. `types`: the result's `entry_types`, when known."""
    if is_arrow(result):
        return int(result.num_rows)
    if not isinstance(result, (list, tuple)):
        return None
    kinds = entry_types(result) if types is None else types
    arrow = {kind for kind in kinds if _is_arrow_type(kind)}
    if not arrow:
        return None
    others = kinds - arrow
    if others:
        other = next(item for item in result if type(item) in others)
        raise InvalidResultError(
            "run() returned a list mixing pyarrow Tables/RecordBatches with "
            f"{type(other).__name__} values: return one Table, a list of Tables/RecordBatches (their rows "
            "are the result), or a list of rows without any Table"
        )
    return sum(int(item.num_rows) for item in result)


RESULT_TYPE_MESSAGE = (
    "run() must return a list, a tuple, a pandas DataFrame or a pyarrow Table (or a list of Tables/"
    "RecordBatches): its length (a Table's rows) is the number of items that "
    "succeeded, and with output_action=append_row its elements (rows) are written to the output file. "
    "It returned {kind}."
)


class InvalidResultError(Exception):
    """run() returned something the contract does not allow; the attempt fails with this message."""


class ItemFailed:
    """Marks one item of a run() result failed: return it in that item's place, in a list with one entry per
    input item (`return [predict(p) if ok(p) else ItemFailed(f"{p}: unreadable") for p in mini_batch]`).

    Only its text travels (to failed_items.jsonl and the error logs, like an exception's message): keep
    secrets out of it. An exception instance in the list does the same, with `Type: message` as its text
    and its traceback in the error log.
    """

    __slots__ = ("reason",)

    def __init__(self, reason: str = "") -> None:
        self.reason = str(reason)

    def __repr__(self) -> str:
        return f"ItemFailed({self.reason!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (ItemFailed, (self.reason,))


@dataclass(frozen=True)
class ItemError:
    """One item that run() marked failed: its position in the mini-batch, the first line of its error
    (`Type: message` for an exception, `ItemFailed: reason` for the marker) and the whole text (the
    exception's traceback when it has one) for the error log."""

    position: int
    error: str
    trace: str = ""


#: What marks an item failed in a run() result.
_MARKERS = (BaseException, ItemFailed)


def _describe(position: int, marker: Any) -> ItemError:
    if isinstance(marker, ItemFailed):
        text = f"ItemFailed: {marker.reason}" if marker.reason else "ItemFailed"
        return ItemError(position, _first_line(text), text)
    try:
        message = str(marker)
    except Exception:  # noqa: BLE001 - an exception whose str() fails still marks its item
        message = "<str() of the exception failed>"
    text = f"{type(marker).__name__}: {message}" if message else type(marker).__name__
    try:
        trace = "".join(traceback.format_exception(type(marker), marker, marker.__traceback__))
    except Exception:  # noqa: BLE001 - nor does a traceback that cannot be formatted stop it
        trace = text
    return ItemError(position, _first_line(text), trace)


def _first_line(text: str) -> str:
    stripped = text.strip()
    return stripped.splitlines()[0] if stripped else ""


@dataclass(frozen=True)
class CheckedResult:
    """A valid run() result: what to write (`value`: the successful entries, in input order), how many
    items succeeded, and the items it marked failed (empty for a count result)."""

    value: Any
    succeeded: int
    item_errors: tuple[ItemError, ...] = ()


def _refuse_frame_markers(frame: pd.DataFrame) -> None:
    """An exception in a cell of an object column (only those can hold one) is refused (see `_refused`)."""
    for position, dtype in enumerate(frame.dtypes):
        if dtype == object:  # noqa: E721 - numpy dtype equality, not a type check
            for row, value in enumerate(frame.iloc[:, position].to_numpy()):
                if isinstance(value, _MARKERS):
                    raise _refused(value, f"column {str(frame.columns[position])!r} of row {row}")


def _refuse_dict_markers(result: Any) -> None:
    """An exception as a value of a dict entry is refused (see `_refused`). One isinstance per value: a
    location is formatted only for the refusal."""
    for index, entry in enumerate(result):
        if isinstance(entry, dict):
            for key, value in entry.items():
                if isinstance(value, _MARKERS):
                    raise _refused(value, f"key {key!r} of entry {index}")


def _refused(value: Any, where: str) -> InvalidResultError:
    """An exception (or ItemFailed) inside an entry would be written to the output as text, and its item
    counted as a success: refused, naming where it is."""
    return InvalidResultError(
        f"run() returned {type(value).__name__} {_first_line(str(value))!r} as the value of {where}: an "
        "exception is never written to the output. To fail that item, put the exception (or "
        "ItemFailed) itself in the item's place in a list with one entry per input item"
    )


def check_result(result: Any, total: int) -> CheckedResult:
    """Validates a run() result: its successful entries, their count and the items it marked failed."""
    types = entry_types(result)
    rows = arrow_rows(result, types)
    if rows is None and not isinstance(result, (list, tuple)) and not is_frame(result):
        raise InvalidResultError(RESULT_TYPE_MESSAGE.format(kind=type(result).__name__))
    count = len(result) if rows is None else rows
    if count > total:
        raise InvalidResultError(
            f"run() returned {count} results for a mini-batch of {total} items; at most one result per "
            "input item is allowed, so the extra results would be miscounted. Return one element (row) per "
            "item that succeeded."
        )
    if rows is not None:  # Arrow columns hold no Python objects, so no markers
        return CheckedResult(result, count)
    if is_frame(result):
        _refuse_frame_markers(result)
        return CheckedResult(result, count)
    has_markers = any(issubclass(kind, _MARKERS) for kind in types)
    marked = [i for i, value in enumerate(result) if isinstance(value, _MARKERS)] if has_markers else []
    if any(issubclass(kind, dict) for kind in types):
        _refuse_dict_markers(result)
    if not marked:
        return CheckedResult(result, count)
    if count != total:
        raise InvalidResultError(
            f"run() returned {count} results for a mini-batch of {total} items, {len(marked)} of them "
            "failed-item markers (exceptions or ItemFailed): a result that marks failed items needs exactly "
            "one entry per input item, in input order, so that each marker names its item"
        )
    errors = tuple(_describe(i, result[i]) for i in marked)
    kept = [value for value in result if not isinstance(value, _MARKERS)]
    return CheckedResult(kept, len(kept), errors)
