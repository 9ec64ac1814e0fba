"""check_result looks at the set of entry types instead of every entry (a million-item result was checked
entry by entry three times): the same answers for subclasses, markers and mixed Arrow lists."""

from __future__ import annotations

from collections import OrderedDict

import pyarrow as pa
import pytest

from airflow_parallel_run.core.output.results import InvalidResultError, ItemFailed, check_result


class _Marker(ItemFailed):
    pass


class _Oops(KeyError):
    pass


def test_markers_of_subclasses_mark_their_items() -> None:
    checked = check_result([1, _Oops("k"), 3, _Marker("gone")], 4)
    assert checked.value == [1, 3] and checked.succeeded == 2
    assert [e.position for e in checked.item_errors] == [1, 3]


def test_an_exception_inside_a_dict_subclass_entry_is_refused() -> None:
    with pytest.raises(InvalidResultError, match="as the value of key 'p' of entry 1"):
        check_result([{"p": 1}, OrderedDict(p=ValueError("x"))], 2)


def test_plain_rows_are_a_count() -> None:
    checked = check_result(list(range(1000)), 1000)
    assert checked.succeeded == 1000 and not checked.item_errors


def test_tables_mixed_with_rows_are_refused_and_tables_count_rows() -> None:
    with pytest.raises(InvalidResultError, match="mixing pyarrow Tables/RecordBatches with dict values"):
        check_result([pa.table({"a": [1]}), {"a": 2}], 2)
    batch = pa.record_batch({"a": [1, 2]})
    assert check_result([pa.table({"a": [1]}), batch], 3).succeeded == 3
