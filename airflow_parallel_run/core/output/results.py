"""The run() result contract: what run() may return, and how many items it says succeeded.

A result is a list, a tuple or a pandas DataFrame; its length is the number of items that succeeded and
may not exceed the mini-batch's items. Anything else fails the attempt as RUN_INVALID_RESULT with
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


RESULT_TYPE_MESSAGE = (
    "run() must return a list, a tuple or a pandas DataFrame: its length is the number of items that "
    "succeeded, and with output_action=append_row its elements (rows) are written to the output file. "
    "It returned {kind}."
)


class InvalidResultError(Exception):
    """run() returned something the contract does not allow; the attempt fails with this message."""


def count_result(result: Any, total: int) -> int:
    """Validates a run() result and returns the number of succeeded items."""
    if not isinstance(result, (list, tuple)) and not is_frame(result):
        raise InvalidResultError(RESULT_TYPE_MESSAGE.format(kind=type(result).__name__))
    succeeded = len(result)
    if succeeded > total:
        raise InvalidResultError(
            f"run() returned {succeeded} results for a mini-batch of {total} items; at most one result per "
            "input item is allowed, so the extra results would be miscounted. Return one element (row) per "
            "item that succeeded."
        )
    return succeeded
