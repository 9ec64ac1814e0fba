"""JSON Lines read with one set of field types per job, for both batch formats.

Property: for random JSON Lines files (int, float, bool, string and nested fields, nulls and absent keys
anywhere but the first record, unicode, a byte order mark, LF or CRLF, blank lines) and several mini-batch
sizes, the job's mini-batches, each read on its own as a worker reads it and concatenated, equal a
reference reader of the whole file (`json.loads` of every line, typed by the rule in
core/inputs/tabular_types.py), and every mini-batch has the very same dtypes / Arrow schema.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st
from property_support import REPEATABLE

from airflow_parallel_run.core.errors import ConfigError, InputError
from airflow_parallel_run.core.inputs.batch_format import read_batch
from airflow_parallel_run.core.inputs.tabular import TabularDataset
from airflow_parallel_run.core.plan import plan_inputs

KINDS = {"int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(), "text": pa.string()}
PANDAS = {"int": "Int64", "float": "float64", "bool": "boolean", "text": "str", "nested": "object"}
TEXT = st.text(alphabet=list('ab "\\\n\tzé€日😀'), max_size=6)
NESTED = st.recursive(
    st.none() | st.integers(-5, 5) | st.text(alphabet="xy", max_size=2),
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.sampled_from("pq"), inner, max_size=2),
    max_leaves=4,
).filter(lambda v: isinstance(v, (list, dict)))


def _value(draw: Any, kind: str) -> Any:
    if kind == "int":
        return draw(st.integers(-(2**62), 2**62))
    if kind == "float":
        return draw(st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer()))
    if kind == "bool":
        return draw(st.booleans())
    if kind == "text":
        return draw(TEXT)
    return draw(NESTED)


@st.composite
def files(draw: Any) -> dict[str, Any]:
    kinds = draw(
        st.lists(st.sampled_from(["int", "float", "bool", "text", "nested"]), min_size=1, max_size=4)
    )
    names = [f"f{i}é" for i in range(len(kinds))]
    records = []
    for r in range(draw(st.integers(1, 25))):
        record: dict[str, Any] = {}
        for name, kind in zip(names, kinds, strict=True):
            gap = 0 if r == 0 else draw(st.integers(0, 6))  # the first record has every value (types)
            if gap == 1:
                record[name] = None
            elif gap != 2:  # 2: the key is absent from this record
                record[name] = _value(draw, kind)
        records.append(record)
    eol = draw(st.sampled_from(["\n", "\r\n"]))
    lines = []
    for record in records:
        lines.append(json.dumps(record, ensure_ascii=draw(st.booleans())))
        if draw(st.integers(0, 8)) == 0:
            lines.append(" \t")  # a blank line: no record
    text = eol.join(lines) + (eol if draw(st.booleans()) else "")
    data = ("\ufeff" if draw(st.booleans()) else "").encode() + text.encode()
    return {"data": data, "kinds": dict(zip(names, kinds, strict=True)), "records": records}


def _reference_table(case: dict[str, Any]) -> pa.Table:
    columns = {}
    for name, kind in case["kinds"].items():
        values = [record.get(name) for record in case["records"]]
        if kind == "nested":
            columns[name] = pa.array(
                [None if v is None else json.dumps(v, ensure_ascii=False) for v in values], pa.string()
            )
        else:
            columns[name] = pa.array(values, KINDS[kind])
    return pa.table(columns)


def _reference_frame(case: dict[str, Any]) -> pd.DataFrame:
    columns = {}
    for name, kind in case["kinds"].items():
        values = [case_record.get(name) for case_record in case["records"]]
        if kind in ("int", "bool"):
            columns[name] = pd.array(values, dtype=PANDAS[kind])
        elif kind == "float":
            columns[name] = pd.Series([float("nan") if v is None else v for v in values], dtype="float64")
        elif kind == "text":
            columns[name] = pd.Series(values, dtype="str")
        else:
            columns[name] = pd.Series(values, dtype=object)
    return pd.DataFrame(columns)


def check_file(case: dict[str, Any], sizes: list[int]) -> None:
    with tempfile.TemporaryDirectory(prefix="apr-jsonl-property-") as folder:
        path = str(Path(folder) / "data.jsonl")
        Path(path).write_bytes(case["data"])
        dataset = TabularDataset.from_json_lines_files(path)
        want_table, want_frame = _reference_table(case), _reference_frame(case)
        for size in sizes:
            batches = list(plan_inputs([dataset], size))
            job_input = dataset.with_column_types(batches)
            tables = [read_batch(job_input, mb, folder, "pyarrow")[0] for mb in batches]
            assert all(t.schema == want_table.schema for t in tables), [t.schema for t in tables]
            got = pa.concat_tables(tables)
            assert got.equals(want_table), (size, got.to_pylist(), want_table.to_pylist())
            frames = [read_batch(job_input, mb, folder, "pandas")[0] for mb in batches]
            assert {tuple(map(str, f.dtypes)) for f in frames} == {
                tuple(PANDAS[k] for k in case["kinds"].values())
            }, [f.dtypes for f in frames]
            pd.testing.assert_frame_equal(pd.concat(frames, ignore_index=True), want_frame)


@REPEATABLE
@given(case=files(), sizes=st.lists(st.integers(1, 300), min_size=1, max_size=2, unique=True))
def test_mini_batches_concatenated_equal_a_reference_reader_of_the_whole_file(
    case: dict[str, Any], sizes: list[int]
) -> None:
    check_file(case, [1, *sizes])


def _job(tmp_path: Path, lines: list[str], size: int = 16, **options: Any) -> tuple[Any, list[Any]]:
    path = tmp_path / "data.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    dataset = TabularDataset.from_json_lines_files(str(path), **options)
    batches = list(plan_inputs([dataset], size))
    assert len(batches) > 2
    return dataset.with_column_types(batches), batches


def _read_all(job_input: Any, batches: list[Any], tmp_path: Path, fmt: str) -> list[Any]:
    return [read_batch(job_input, mb, str(tmp_path), fmt)[0] for mb in batches]


def test_a_null_in_an_int_field_in_one_mini_batch_keeps_every_mini_batch_int(tmp_path: Path) -> None:
    """pandas read each slice on its own: the slice with the null got float64 (1.0 in a csv output), its
    neighbours int64."""
    lines = [json.dumps({"id": i, "n": None if i == 5 else i}) for i in range(10)]
    job_input, batches = _job(tmp_path, lines)
    frames = _read_all(job_input, batches, tmp_path, "pandas")
    assert {str(f["n"].dtype) for f in frames} == {"Int64"}
    got = pd.concat(frames, ignore_index=True)["n"].tolist()
    assert [None if v is pd.NA else v for v in got] == [None if i == 5 else i for i in range(10)]
    tables = _read_all(job_input, batches, tmp_path, "pyarrow")
    assert {t.schema for t in tables} == {pa.schema([("id", pa.int64()), ("n", pa.int64())])}
    assert pa.concat_tables(tables)["n"].to_pylist() == [None if i == 5 else i for i in range(10)]


def test_a_bool_field_with_a_null_is_boolean_in_every_mini_batch(tmp_path: Path) -> None:
    lines = [json.dumps({"ok": None if i == 3 else i % 2 == 0}) for i in range(10)]
    job_input, batches = _job(tmp_path, lines, size=12)
    frames = _read_all(job_input, batches, tmp_path, "pandas")
    assert {str(f["ok"].dtype) for f in frames} == {"boolean"}
    tables = _read_all(job_input, batches, tmp_path, "pyarrow")
    assert {t.schema for t in tables} == {pa.schema([("ok", pa.bool_())])}
    assert pa.concat_tables(tables)["ok"].to_pylist() == [None if i == 3 else i % 2 == 0 for i in range(10)]


def test_a_field_missing_from_a_whole_mini_batch_is_there_with_the_decided_type(tmp_path: Path) -> None:
    lines = [json.dumps({"a": i, "s": "x"} if i < 3 else {"a": i}) for i in range(10)]
    job_input, batches = _job(tmp_path, lines)
    assert {t.schema for t in _read_all(job_input, batches, tmp_path, "pyarrow")} == {
        pa.schema([("a", pa.int64()), ("s", pa.string())])
    }
    assert {tuple(map(str, f.dtypes)) for f in _read_all(job_input, batches, tmp_path, "pandas")} == {
        ("Int64", "str")
    }


@pytest.mark.parametrize(
    ("value", "decided"),
    [
        (1.5, "int64"),
        (1.0, "int64"),
        ('"7"', "int64"),
        ('"x"', "float64"),
        (2**53 + 1, "float64"),  # no float holds it: not rounded
        (10**400, "float64"),
        (1, "bool"),
        (3, "string"),
    ],
)
def test_a_value_outside_the_decided_type_fails_its_mini_batch_naming_the_fix(
    tmp_path: Path, value: Any, decided: str
) -> None:
    """Never silently converted: 1.5 is not truncated to 1, "7" is not parsed as a number."""
    from airflow_parallel_run.core.inputs import tabular_types

    first = {"int64": "1", "float64": "0.5", "bool": "true", "string": '"a"'}[decided]
    lines = [f'{{"v": {first}}}' for _ in range(30)] + [f'{{"v": {value}}}']
    path = tmp_path / "data.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    dataset = TabularDataset.from_json_lines_files(str(path))
    batches = list(plan_inputs([dataset], 40))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tabular_types, "SAMPLE_BYTES", 64)  # the sample ends before the odd value
        job_input = dataset.with_column_types(batches)
    assert job_input.column_types == {"v": decided}
    for fmt in ("pandas", "pyarrow"):
        with pytest.raises(
            InputError,
            match=(
                rf"data\.jsonl bytes \[\d+, \d+\): field 'v' is {decided} for every mini-batch of the job .*"
                r"line \d+ has .*column_types=\{'v': "
            ),
        ):
            for mb in batches:
                read_batch(job_input, mb, str(tmp_path), fmt)


def test_given_column_types_win_and_decide_a_field_the_sample_did_not_see(tmp_path: Path) -> None:
    lines = [json.dumps({"v": i}) for i in range(30)] + [json.dumps({"v": 1.5, "late": "x"})]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    dataset = TabularDataset.from_json_lines_files(str(path), column_types={"v": "float64", "late": "string"})
    batches = list(plan_inputs([dataset], 40))
    job_input = dataset.with_column_types(batches)
    tables = _read_all(job_input, batches, tmp_path, "pyarrow")
    assert {t.schema for t in tables} == {pa.schema([("v", pa.float64()), ("late", pa.string())])}
    assert pa.concat_tables(tables)["v"].to_pylist()[-2:] == [29.0, 1.5]


def test_a_field_the_sample_did_not_see_fails_naming_it_and_the_fix(tmp_path: Path) -> None:
    """Not a type of that mini-batch's own: every other mini-batch would lack the column."""
    from airflow_parallel_run.core.inputs import tabular_types

    lines = [json.dumps({"v": i}) for i in range(30)] + [json.dumps({"v": 1, "late": "x"})]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    dataset = TabularDataset.from_json_lines_files(str(path))
    batches = list(plan_inputs([dataset], 40))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tabular_types, "SAMPLE_BYTES", 64)
        job_input = dataset.with_column_types(batches)
    with pytest.raises(InputError, match=r"field 'late' .*not in the first.*column_types=\{'late': "):
        for mb in batches:
            read_batch(job_input, mb, str(tmp_path), "pandas")


def test_nested_and_mixed_fields_keep_their_values(tmp_path: Path) -> None:
    """Objects, lists and fields mixing kinds are Python values for pandas, their JSON text for pyarrow: one
    type in every mini-batch, values exact (1 stays 1, "1" stays "1")."""
    values = [{"k": [1, 2]}, [1, "a"], 1, "1", 2.5, True, None, {"k": None}, [], "x"]
    lines = [json.dumps({"m": v}) for v in values]
    job_input, batches = _job(tmp_path, lines)
    assert job_input.column_types == {"m": "object"}
    frames = _read_all(job_input, batches, tmp_path, "pandas")
    assert {str(f["m"].dtype) for f in frames} == {"object"}
    got = pd.concat(frames, ignore_index=True)["m"].tolist()
    assert got == values and [type(v) for v in got] == [type(v) for v in values]
    tables = _read_all(job_input, batches, tmp_path, "pyarrow")
    assert {t.schema for t in tables} == {pa.schema([("m", pa.string())])}
    text = pa.concat_tables(tables)["m"].to_pylist()
    assert [None if t is None else json.loads(t) for t in text] == values


def test_object_is_a_column_type_for_json_lines_only(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="object"):
        TabularDataset.from_delimited_files(str(tmp_path), column_types={"m": "object"})
    with pytest.raises(ConfigError, match="column_types"):
        TabularDataset.from_json_lines_files(str(tmp_path), column_types={"m": "list<int64>"})
    assert TabularDataset.from_json_lines_files(str(tmp_path), column_types={"m": "object"}).column_types == {
        "m": "object"
    }


def test_strings_are_read_as_a_given_temporal_type(tmp_path: Path) -> None:
    lines = [json.dumps({"when": None if i == 4 else f"2024-01-{i + 1:02d} 10:00:00"}) for i in range(10)]
    job_input, batches = _job(tmp_path, lines, column_types={"when": "timestamp[s]"})
    tables = _read_all(job_input, batches, tmp_path, "pyarrow")
    assert {t.schema for t in tables} == {pa.schema([("when", pa.timestamp("s"))])}
    assert pa.concat_tables(tables)["when"].null_count == 1
    frames = _read_all(job_input, batches, tmp_path, "pandas")
    assert {str(f["when"].dtype) for f in frames} == {"datetime64[s]"}


def test_records_other_than_planned_fail_the_mini_batch(tmp_path: Path) -> None:
    """A file rewritten after planning with two records where one was planned (same bytes)."""
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"v": 100 + i}) + "\n" for i in range(6)))
    dataset = TabularDataset.from_json_lines_files(str(path))
    batches = list(plan_inputs([dataset], 1))
    job_input = dataset.with_column_types(batches)
    data = path.read_bytes()
    path.write_bytes(b'{}\n{"v":1}\n' + data[11:])
    with pytest.raises(
        InputError, match=r"bytes \[0, 11\): found 2 JSON Lines records where the plan counted 1"
    ):
        read_batch(job_input, batches[0], str(tmp_path), "pandas")
