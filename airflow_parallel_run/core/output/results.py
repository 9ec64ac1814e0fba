"""The run() result contract: what run() may return, and how many items it says succeeded.

A result is a list, a tuple, a pandas DataFrame or an Arrow result (a pyarrow Table or RecordBatch, or a
list of them: their rows, in order, are the result's); its length (an Arrow result's rows) is the number
of items that succeeded and may not exceed the mini-batch's items. Anything else fails the attempt as RUN_INVALID_RESULT with
`InvalidResultError`'s message. Checked in the entry-script process, before anything is written.
"""

from __future__ import annotations

import sys
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


def arrow_rows(result: Any) -> int | None:
    """The rows of an Arrow result (a Table, a RecordBatch, or a list or tuple holding any of them), None for
    a result of another kind. A list mixing Tables or RecordBatches with other values is invalid: its
    length would count tables and rows alike."""
    if is_arrow(result):
        return int(result.num_rows)
    if not isinstance(result, (list, tuple)) or not any(is_arrow(item) for item in result):
        return None
    others = [item for item in result if not is_arrow(item)]
    if others:
        raise InvalidResultError(
            "run() returned a list mixing pyarrow Tables/RecordBatches with "
            f"{type(others[0]).__name__} values: return one Table, a list of Tables/RecordBatches (their rows "
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


def count_result(result: Any, total: int) -> int:
    """Validates a run() result and returns the number of succeeded items."""
    rows = arrow_rows(result)
    if rows is None and not isinstance(result, (list, tuple)) and not is_frame(result):
        raise InvalidResultError(RESULT_TYPE_MESSAGE.format(kind=type(result).__name__))
    succeeded = len(result) if rows is None else rows
    if succeeded > total:
        raise InvalidResultError(
            f"run() returned {succeeded} results for a mini-batch of {total} items; at most one result per "
            "input item is allowed, so the extra results would be miscounted. Return one element (row) per "
            "item that succeeded."
        )
    return succeeded
