"""Property: for every mini_batch_size, the slices planned from a CSV file, each read on its own as a worker
reads it and concatenated, are what `pandas.read_csv` reads from the whole file.

Random files mix what breaks naive planners: quotes inside unquoted fields (inch marks, `a"b`, `  "x"`),
quoted fields holding separators, doubled quotes and LF/CRLF newlines, text after a closing quote, LF and
CRLF record ends, a UTF-8 byte order mark, blank and whitespace-only lines, no trailing newline, and
sometimes a quoted field that never closes (then the planner must refuse the file, as pandas does).

Two comparisons per distinct plan: field by field as text (`dtype=str`: any slice boundary in the wrong
place shows), and with types: every slice is read with the job's column types (decided once from the start
of the file, core/inputs/tabular_types.py), and they must give the whole file's column types (in the job's
rules: nullable ints, string for a column without values) and values. Values whose text pandas would rewrite (leading zeros, `2.0`, `True`) are not
generated: per-slice type inference cannot keep their spelling, whatever the planner does.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_parallel_run.core.errors import InputError
from airflow_parallel_run.core.inputs import tabular_scan
from airflow_parallel_run.core.inputs.tabular import TabularDataset
from airflow_parallel_run.core.inputs.tabular_read import read_tabular
from airflow_parallel_run.core.inputs.tabular_scan import plan_tabular_file
from airflow_parallel_run.core.minibatch import MiniBatch
from airflow_parallel_run.core.output.schema import unify_types

LETTERS = "ABCDFGHIJKLMNOPQRSTUVWXYZabcdfghijklmnopqrstuvwxyz"  # no e/E: "e5" could read as a number
WORD = st.builds(
    lambda a, n, b: f"{a}{n}{b}", st.sampled_from(LETTERS), st.integers(0, 999), st.sampled_from(LETTERS)
)
INT = st.integers(-500, 10**6).map(str)
FLOAT = st.builds(
    lambda i, f: f"{i}.{f}", st.integers(-99, 999), st.sampled_from(["5", "25", "125", "75", "3"])
)


@st.composite
def text_field(draw: Any, sep: str) -> str:
    """A field of a text column; every kind holds a letter, so no slice reads it as a number."""
    kind = draw(st.sampled_from(["word", "inch", "spaced", "quoted", "tail", "empty"]))
    word = draw(WORD)
    if kind == "word":
        return word + draw(st.sampled_from(["", " x1y", "  "]))
    if kind == "inch":  # a quote inside an unquoted field is data
        return draw(st.sampled_from([f'{word}" screen', f'5" {word}', f'{word}"b"c', f'{word}""']))
    if kind == "spaced":  # spaces, then something that looks quoted: still an unquoted field
        return f'  "{word}"'
    if kind == "empty":
        return ""
    pieces = draw(st.lists(st.sampled_from([word, sep, '""', "\n", "\r\n", " ", "\t", ","]), max_size=6))
    quoted = '"' + word + "".join(pieces) + '"'
    return quoted + (draw(WORD) if kind == "tail" else "")


@st.composite
def csv_files(draw: Any, max_records: int) -> dict[str, Any]:
    sep = draw(st.sampled_from([",", ";", "|", "\t"]))
    kinds = draw(
        st.lists(st.sampled_from(["int", "float", "code", "text", "late_text"]), min_size=1, max_size=4)
    )
    records = draw(st.integers(0, max_records))
    header = draw(st.booleans())
    eol_mode = draw(st.sampled_from(["\n", "\r\n", "mixed"]))
    lines: list[str] = []
    if header:
        lines.append(sep.join(f"c{i}" for i in range(len(kinds))))
    switch = draw(st.integers(0, max(records, 1)))  # where `code` turns to a word, `late_text` starts
    for r in range(records):
        fields = []
        for kind in kinds:
            if kind == "int":
                fields.append(draw(st.one_of(INT, st.just(""))))
            elif kind == "float":
                fields.append(draw(st.one_of(FLOAT, INT)))
            elif kind == "code":
                fields.append(draw(WORD) if r == switch else draw(INT))
            elif kind == "late_text" and r < switch:
                fields.append("")
            else:
                fields.append(draw(text_field(sep)))
        lines.append(sep.join(fields))
        if draw(st.integers(0, 9)) == 0:
            lines.append(draw(st.sampled_from(["", "   "])))
    eols = [eol_mode if eol_mode != "mixed" else draw(st.sampled_from(["\n", "\r\n"])) for _ in lines]
    text = "".join(line + eol for line, eol in zip(lines, eols, strict=True))
    if text and draw(st.booleans()):
        text = text[: -len(eols[-1])]  # no trailing newline
    unterminated = draw(st.integers(0, 9)) == 0
    if unterminated:  # a record of its own whose last field opens a quote that never closes
        text += "" if not text or text.endswith("\n") else "\n"
        text += sep.join(["1"] * (len(kinds) - 1) + [f'"open {draw(WORD)}\nnever closed'])
    data = ("\ufeff" if draw(st.booleans()) else "").encode() + text.encode()
    return {"data": data, "sep": sep, "header": header, "unterminated": unterminated}


def _table(frame: pd.DataFrame) -> pa.Table:
    """A slice's frame as Arrow infers it (before unification)."""
    return pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(None)


def _in_the_job_types(frame: pd.DataFrame) -> pd.DataFrame:
    """pandas' whole-file frame in the job's type rules (README, "CSV column types"): a column of integers
    with missing values is a nullable int64 (pandas: float64; the generator writes no `2.0`, so a float64
    column of integral values held integers), and a column with no value at all is string (pandas:
    float64)."""
    frame = frame.copy()
    for name in frame.columns:
        column = frame[name]
        if str(column.dtype) != "float64":
            continue
        present = column.dropna()
        if present.empty:
            frame[name] = pd.array([None] * len(column), dtype=pd.StringDtype("pyarrow"))
        elif (present == present.round()).all():
            frame[name] = column.astype("Int64")
    return frame


def _unify(tables: list[pa.Table]) -> pa.Table:
    """The slices' tables as the job assembles them: one schema, types unified, values cast."""
    names = tables[0].column_names
    types: dict[str, pa.DataType] = {}
    for table in tables:
        assert table.column_names == names
        for field in table.schema:
            joined = field.type if field.name not in types else unify_types(types[field.name], field.type)
            assert joined is not None, (field, types)
            types[field.name] = joined
    schema = pa.schema([(n, types[n]) for n in names])
    return pa.concat_tables([t.cast(schema) for t in tables])


def check_file(case: dict[str, Any], scan_chunk: int) -> None:
    data, sep, header = case["data"], case["sep"], case["header"]
    with tempfile.TemporaryDirectory(prefix="apr-csv-property-") as folder:
        path = Path(folder) / "data.csv"
        path.write_bytes(data)
        url = str(path)
        dataset = TabularDataset.from_delimited_files(url, separator=sep, header=header)
        options: dict[str, Any] = {"sep": sep, "header": 0 if header else None, "encoding": "utf-8"}
        if case["unterminated"]:
            with pytest.raises(pd.errors.ParserError):
                pd.read_csv(url, **options)
            with pytest.raises(InputError, match="is never closed"):
                plan_tabular_file(url, len(data), dataset, 1)
            return
        try:
            whole = pd.read_csv(url, **options)
            whole_text = pd.read_csv(url, dtype=str, keep_default_na=False, **options)
        except pd.errors.EmptyDataError:
            assert plan_tabular_file(url, len(data), dataset, 1) == []
            return

        plans: dict[tuple[tuple[int, int], ...], list[Any]] = {}
        for target in range(1, len(data) + 1):  # every mini_batch_size
            slices = plan_tabular_file(url, len(data), dataset, target)
            plans.setdefault(tuple((s.start, s.end) for s in slices), slices)
        probes = sorted({1, 7, len(data) // 3 + 1, len(data)})
        expected_plans = [plan_tabular_file(url, len(data), dataset, target) for target in probes]
        with pytest.MonkeyPatch.context() as patch:  # the scan's chunk size never changes the plan
            patch.setattr(tabular_scan, "_CHUNK_BYTES", scan_chunk)
            assert [plan_tabular_file(url, len(data), dataset, t) for t in probes] == expected_plans

        # the job's column types, decided once from the start of the file (core/inputs/tabular_types.py)
        job_dataset = dataset.with_column_types(
            [MiniBatch(0, "tabular", 0, 1, slices=tuple(next(iter(plans.values()))))]
        )
        # each distinct slice is read once (as the job reads it, and as text); plans share slices
        typed: dict[tuple[int, int], pa.Table] = {}
        as_text: dict[tuple[int, int], pd.DataFrame] = {}
        whole_text_rows = whole_text.values.tolist()
        want: tuple[pa.Schema, list[Any]] | None = None  # the whole file's types and values, once
        for bounds, slices in plans.items():
            if not slices:
                assert whole.empty, bounds
                continue
            assert slices[0].start == slices[0].header_end and slices[-1].end == len(data)
            assert all(a.end == b.start for a, b in zip(slices, slices[1:], strict=False))
            assert sum(s.rows for s in slices) == len(whole), bounds
            for s in slices:
                key = (s.start, s.end)
                if key not in typed:
                    frame = read_tabular([s], job_dataset)
                    assert len(frame) == s.rows, key
                    typed[key] = _table(frame)
                    head = data[: s.header_end]
                    as_text[key] = pd.read_csv(
                        io.BytesIO(head + data[s.start : s.end]), dtype=str, keep_default_na=False, **options
                    )
            parts = [as_text[(s.start, s.end)] for s in slices]
            same_text = (
                all(list(part.columns) == list(whole_text.columns) for part in parts)
                and [row for part in parts for row in part.values.tolist()] == whole_text_rows
            )
            if not same_text:  # pandas says where they differ
                text = pd.concat(parts, ignore_index=True)
                pd.testing.assert_frame_equal(text, whole_text, obj=f"slices {bounds} as text")
            got = _unify([typed[(s.start, s.end)] for s in slices])
            if want is None:
                whole_table = _unify([_table(_in_the_job_types(whole))])
                want = (whole_table.schema, whole_table.to_pylist())
            assert got.schema == want[0], (bounds, got.schema, want[0])
            assert got.to_pylist() == want[1], bounds


SETTINGS: dict[str, Any] = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    "database": None,  # no example database: the run depends on nothing but this file
}


@settings(max_examples=100, derandomize=True, **SETTINGS)  # the same examples every run: it cannot flake
@given(case=csv_files(max_records=16), scan_chunk=st.sampled_from([1, 2, 3, 5, 16]))
def test_slices_read_one_by_one_equal_pandas_reading_the_whole_file(
    case: dict[str, Any], scan_chunk: int
) -> None:
    check_file(case, scan_chunk)


@pytest.mark.soak
@pytest.mark.timeout(3600)  # about 12 minutes on two busy cores
@settings(max_examples=800, derandomize=False, **SETTINGS)
@given(case=csv_files(max_records=60), scan_chunk=st.sampled_from([1, 2, 3, 5, 16, 64, 1024]))
def test_slices_read_one_by_one_equal_pandas_reading_the_whole_file_soak(
    case: dict[str, Any], scan_chunk: int
) -> None:
    check_file(case, scan_chunk)
