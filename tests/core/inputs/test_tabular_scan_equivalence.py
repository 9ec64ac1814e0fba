"""The CSV / JSON Lines planner gives exactly the slices (start, end, header_end, rows, first_line), or the same
error, as the planner it replaced (tabular_scan_reference.py), on random bytes and any scan chunk size."""

from __future__ import annotations

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from property_support import REPEATABLE
from tabular_scan_reference import reference_plan

from airflow_parallel_run.core.errors import InputError
from airflow_parallel_run.core.inputs import tabular_scan
from airflow_parallel_run.core.inputs.tabular import TabularDataset
from airflow_parallel_run.core.minibatch import TabularSlice

# Pieces that matter to the scan: quotes at a field's start and in its middle, "" escapes, quoted line breaks of
# every kind, blank lines and blank bytes, every separator the tests use, and ordinary bytes.
_PIECES = [
    "a",
    "7",
    "x y",
    '"',
    '""',
    '"q"',
    '"a""b"',
    '"\n"',
    '"\r\n"',
    '"\r"',
    '"x\n\ny"',
    "\n",
    "\r\n",
    "\r",
    "\n\n",
    " ",
    "\t",
    "  \n",
    ",",
    ";",
    "\t",
    '5" screen',
    '  "x"',
    "{}",
    "*",
    "\x02",
]
_URL = "memory://equivalence/data.csv"


def _outcome(plan: object) -> list[TabularSlice] | str:
    try:
        return plan()  # type: ignore[operator]
    except InputError as exc:
        return f"InputError: {exc}"


@settings(REPEATABLE, max_examples=600)
@given(
    pieces=st.lists(st.sampled_from(_PIECES), max_size=60),
    bom=st.booleans(),
    fmt=st.sampled_from(["csv", "csv", "jsonl"]),
    separator=st.sampled_from([",", ";", "\t"]),
    header=st.booleans(),
    target=st.integers(1, 16),
    chunk=st.sampled_from([1, 2, 3, 5, 8, 13, 64, 8 * 1024 * 1024]),
    few=st.sampled_from([0, 1, 256]),
)
def test_slices_are_the_old_planners_on_random_bytes(
    pieces: list[str],
    bom: bool,
    fmt: str,
    separator: str,
    header: bool,
    target: int,
    chunk: int,
    few: int,
) -> None:
    data = (b"\xef\xbb\xbf" if bom else b"") + "".join(pieces).encode()
    if fmt == "csv":
        dataset = TabularDataset.from_delimited_files(_URL, header=header, separator=separator)
    else:
        dataset = TabularDataset.from_json_lines_files(_URL)
    expected = _outcome(lambda: reference_plan(data, _URL, dataset, target, chunk))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tabular_scan, "_CHUNK_BYTES", chunk)
        patch.setattr(tabular_scan, "_FEW_CANDIDATES", few)
        got = _outcome(lambda: tabular_scan._plan_lines(io.BytesIO(data), _URL, dataset, target))
    assert got == expected
