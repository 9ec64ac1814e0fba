"""`NumberSet` (core/numbers.py) reads like the set of ints it replaces in the tally."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from airflow_parallel_run.core.numbers import NumberSet

steps = st.lists(st.tuples(st.sampled_from(["add", "discard"]), st.integers(0, 300)), max_size=60)


@given(steps, st.sets(st.integers(0, 300), max_size=20))
def test_number_set_reads_like_a_set(operations: list[tuple[str, int]], other: set[int]) -> None:
    numbers, expected = NumberSet(), set()
    for operation, number in operations:
        getattr(numbers, operation)(number)
        getattr(expected, operation)(number)
        assert len(numbers) == len(expected)
    assert numbers == expected and list(numbers) == sorted(expected)
    assert all(n in numbers for n in expected) and -1 not in numbers and "0" not in numbers
    assert set(numbers | other) == expected | other and len(numbers | NumberSet(other)) == len(
        expected | other
    )
    numbers.update(other)
    assert numbers == expected | other


def test_negative_numbers_are_refused() -> None:
    with pytest.raises(ValueError):
        NumberSet([-1])
