"""check_result (core/output/results.py) against a reference that looks at every entry one by one: the
checker looks at the entries' types first, so this property test pins that nothing slips through."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_parallel_run import ItemFailed
from airflow_parallel_run.core.output.results import InvalidResultError, check_result


class Scores(dict):  # type: ignore[type-arg] - a dict subclass as a result entry
    pass


class ScoringError(ValueError):
    pass


def _reference(result: Any, total: int) -> tuple[Any, int, tuple[int, ...]] | str:
    """What check_result must do, entry by entry: (kept, succeeded, marked positions), or "refused"."""
    markers = (BaseException, ItemFailed)
    if len(result) > total:
        return "refused"
    for entry in result:
        if isinstance(entry, dict) and any(isinstance(v, markers) for v in entry.values()):
            return "refused"
    marked = tuple(i for i, entry in enumerate(result) if isinstance(entry, markers))
    if marked and len(result) != total:
        return "refused"
    kept = [entry for entry in result if not isinstance(entry, markers)]
    return kept, len(kept), marked


_VALUES = st.one_of(st.integers(), st.text(max_size=5), st.floats(allow_nan=False), st.none())
_MARKER = st.one_of(
    st.builds(ItemFailed, st.text(max_size=5)),
    st.builds(ValueError, st.text(max_size=5)),
    st.builds(ScoringError, st.text(max_size=5)),
    st.builds(KeyboardInterrupt),
)
_DICT_VALUE = st.one_of(_VALUES, _MARKER)
_ENTRY = st.one_of(
    _VALUES,
    _MARKER,
    st.tuples(_VALUES, _VALUES),
    st.dictionaries(st.text(max_size=3), _DICT_VALUE, max_size=3),
    st.dictionaries(st.text(max_size=3), _DICT_VALUE, max_size=3).map(Scores),
)


@settings(max_examples=400, deadline=None)
@given(
    entries=st.lists(_ENTRY, max_size=12), extra=st.integers(min_value=0, max_value=2), as_tuple=st.booleans()
)
def test_check_result_agrees_with_an_entry_by_entry_check(
    entries: list[Any], extra: int, as_tuple: bool
) -> None:
    result: Any = tuple(entries) if as_tuple else entries
    total = len(entries) + extra
    expected = _reference(result, total)
    if expected == "refused":
        with pytest.raises(InvalidResultError):
            check_result(result, total)
        return
    checked = check_result(result, total)
    kept, succeeded, marked = expected
    assert list(checked.value) == kept
    assert checked.succeeded == succeeded
    assert tuple(error.position for error in checked.item_errors) == marked


def test_a_long_plain_result_is_checked_without_an_entry_by_entry_pass() -> None:
    """Two million ints: the result itself is kept (no copy) and nothing is marked."""
    result = list(range(2_000_000))
    checked = check_result(result, len(result))
    assert checked.value is result and checked.succeeded == len(result) and not checked.item_errors
