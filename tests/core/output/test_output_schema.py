"""One output schema per job: records of every mini-batch unified, JSON that is JSON, input types kept.

Engine tests on the session's real LocalCluster (tests/conftest.py), plus unit tests of the encoding,
unification and assembly in core/output/ (schema.py, assemble.py, formats.py).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from distributed import Client

from airflow_parallel_run.core import FileDataset, ParallelRunConfig, TabularDataset, run_job
from airflow_parallel_run.core.output.assemble import Part, assemble
from airflow_parallel_run.core.output.formats import encode_part
from airflow_parallel_run.core.output.schema import JobSchema, unify_types


def job(client: Client, script: str, inputs: list[Any], out: Path, **kw: Any) -> dict[str, Any]:
    kw.setdefault("process_count_per_node", 2)
    allow_reuse = kw.pop("allow_reuse", True)
    return run_job(
        ParallelRunConfig(entry_script=script, **kw), inputs, str(out), client=client, allow_reuse=allow_reuse
    )


def attempts(out: Path) -> list[dict[str, str]]:
    fields = [
        "mb",
        "attempt",
        "node",
        "process",
        "start",
        "total",
        "ok",
        "failed",
        "s",
        "cpu",
        "run",
        "status",
    ]
    with open(out / "logs" / "sys" / "job_report" / "processed_mini-batches.csv", newline="") as handle:
        return [dict(zip([*fields, "error", "detail"], row, strict=False)) for row in csv.reader(handle)][1:]


def read_back(path: Path, fmt: str) -> pd.DataFrame:
    if fmt == "csv":
        return pd.read_csv(path)
    if fmt == "jsonl":
        return pd.DataFrame([json.loads(line) for line in path.read_text().splitlines()])
    return pd.read_parquet(path)


def strict_json(line: str) -> Any:
    """json.loads that refuses NaN and Infinity, as RFC 8259 (and most JSON readers) do."""

    def refuse(token: str) -> None:
        raise ValueError(f"not JSON: {token}")

    return json.loads(line, parse_constant=refuse)


# -- 1. keys in another order or new keys between mini-batches ------------------------------------------------

SWAPPING = """
import os
def run(mini_batch):
    i = int(open(mini_batch[0]).read())
    record = {"a": i, "b": 10 * i} if i % 2 == 0 else {"b": 10 * i, "a": i}
    if i == 3:
        record["c"] = "new"
    return [record]
"""


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_keys_in_another_order_or_new_keys_keep_every_value_in_its_column(
    dask_client, write_script, files, tmp_path, fmt
):
    """Before: the csv header came from the first part only, so {"b": 3, "a": 4} read back as a=3, b=4."""
    root = files(6)
    summary = job(
        dask_client,
        write_script(SWAPPING),
        [FileDataset.from_files(str(root))],
        tmp_path / "out",
        mini_batch_size=1,
        append_row_format=fmt,
    )
    assert summary["status"] == "succeeded" and summary["succeeded_items"] == 6, summary
    assert Path(summary["append_row_file"]).name == f"parallel_run_step.{'jsonl' if fmt == 'jsonl' else fmt}"
    back = read_back(Path(summary["append_row_file"]), fmt)
    assert list(back.columns) == ["a", "b", "c"]
    assert back["a"].tolist() == list(range(6)) and back["b"].tolist() == [10 * i for i in range(6)]
    assert back["c"].isna().tolist() == [i != 3 for i in range(6)] and back["c"][3] == "new"


def test_text_dataframes_in_another_column_order_keep_azure_layout(
    dask_client, write_script, files, tmp_path
):
    """text stays Azure's layout (space-separated, no header), in one column order for every mini-batch."""
    root = files(4)
    script = write_script("""
        import pandas as pd
        def run(mini_batch):
            i = int(open(mini_batch[0]).read())
            frame = pd.DataFrame({"a": [i], "b": [10 * i]})
            return frame[["b", "a"]] if i % 2 else frame
    """)
    summary = job(
        dask_client, script, [FileDataset.from_files(str(root))], tmp_path / "out", mini_batch_size=1
    )
    assert summary["status"] == "succeeded", summary
    assert Path(summary["append_row_file"]).name == "parallel_run_step.txt"
    assert Path(summary["append_row_file"]).read_text().splitlines() == [f"{i} {10 * i}" for i in range(4)]


# -- 2. a CSV passed through whose column types change between slices --------------------------------------------


def drifting_csv(path: Path, rows: int = 120) -> pd.DataFrame:
    """`code` looks like an int until row 100 (A1B), `x` like an int until row 60 (then floats), `note` is
    empty until row 80, `n` is plain ints throughout."""
    lines = ["n,code,x,note"]
    for i in range(rows):
        code = "A1B" if i == 100 else str(1000 + i)
        x = f"{i}.5" if i >= 60 else str(i)
        note = f"note {i}" if i >= 80 else ""
        lines.append(f"{i},{code},{x},{note}")
    path.write_text("\n".join(lines) + "\n")
    return pd.read_csv(path)


PASS_THROUGH = """
def run(mini_batch, context):
    # every other mini-batch reverses the column order
    return mini_batch[mini_batch.columns[::-1]] if context.minibatch_index % 2 else mini_batch
"""


def test_csv_pass_through_to_parquet_unifies_types_that_change_between_slices(
    dask_client, write_script, tmp_path
):
    """Before: every mini-batch ran, then assembly failed (ArrowInvalid: 'A1B' as int64), again on every re-run."""
    source = tmp_path / "drift.csv"
    whole = drifting_csv(source)
    script = write_script(PASS_THROUGH)
    inputs = [TabularDataset.from_delimited_files(str(source))]
    outputs = []
    for run in ("o1", "o2"):  # the second run reuses every part from the cache
        summary = job(
            dask_client, script, inputs, tmp_path / run, mini_batch_size=300, append_row_format="parquet"
        )
        assert summary["status"] == "succeeded", summary
        assert summary["total_mini_batches"] > 5 and summary["succeeded_items"] == len(whole)
        assert Path(summary["append_row_file"]).name == "parallel_run_step.parquet"
        outputs.append(pq.read_table(summary["append_row_file"]))
    assert summary["reused_mini_batches"] == summary["total_mini_batches"]
    table = outputs[0]
    assert outputs[1].equals(table)
    # what pandas reads for the whole file, in the same column order and Arrow types
    assert table.column_names == ["n", "code", "x", "note"]
    assert table.schema.field("code").type in (pa.string(), pa.large_string())
    assert pa.types.is_floating(table.schema.field("x").type) and table.schema.field("n").type == pa.int64()
    assert table.column("code").to_pylist() == whole["code"].tolist()
    assert table.column("x").to_pylist() == whole["x"].tolist()
    assert table.column("n").to_pylist() == whole["n"].tolist()
    assert table.column("note").to_pylist() == [None if pd.isna(v) else v for v in whole["note"]]


def test_csv_pass_through_to_csv_and_jsonl_in_one_column_order(dask_client, write_script, tmp_path):
    source = tmp_path / "drift.csv"
    whole = drifting_csv(source, rows=60)
    script = write_script(PASS_THROUGH)
    for fmt in ("csv", "jsonl"):
        summary = job(
            dask_client,
            script,
            [TabularDataset.from_delimited_files(str(source))],
            tmp_path / fmt,
            mini_batch_size=200,
            append_row_format=fmt,
        )
        assert summary["status"] == "succeeded" and summary["total_mini_batches"] > 3, summary
        back = read_back(Path(summary["append_row_file"]), fmt)
        assert list(back.columns) == ["n", "code", "x", "note"]
        assert back["n"].tolist() == whole["n"].tolist() and back["x"].tolist() == whole["x"].tolist()


def test_a_result_that_cannot_join_the_schema_fails_its_own_attempt(
    dask_client, write_script, files, tmp_path
):
    """A list where other mini-batches have numbers: that attempt fails (RUN_INVALID_RESULT, naming the column,
    both types and the mini-batch), is not cached, and the output of the others is assembled."""
    root = files(4)
    script = write_script("""
        import time
        def run(mini_batch):
            i = int(open(mini_batch[0]).read())
            if i == 2:
                time.sleep(1.0)  # usually finishes last: the numbers define the column
                return [{"id": i, "v": [1, 2]}]
            return [{"id": i, "v": i * 1.5}]
    """)
    out = tmp_path / "out"
    inputs = [FileDataset.from_files(str(root))]
    summary = job(
        dask_client, script, inputs, out, mini_batch_size=1, append_row_format="parquet", run_max_try=1
    )
    assert summary["status"] == "succeeded", summary  # error_threshold -1: item failures are tolerated
    assert summary["failed_mini_batches"] >= 1 and summary["succeeded_mini_batches"] >= 1, summary
    rejected = [a for a in attempts(out) if a["status"] == "RUN_INVALID_RESULT"]
    assert len(rejected) == summary["failed_mini_batches"]
    for row in rejected:
        assert (
            "column 'v'" in row["error"] and "double" in row["error"] and "list<item: int64>" in row["error"]
        )
        assert f"in mini-batch {row['mb']}," in row["error"]
    assert (
        "RUN_INVALID_RESULT: run() returned column 'v'" in (out / "logs" / "user" / "error.txt").read_text()
    )
    table = pq.read_table(summary["append_row_file"])
    assert table.num_rows == summary["succeeded_items"]
    assert sorted(table.column("id").to_pylist()) == sorted(
        int(a["mb"]) for a in attempts(out) if a["status"] == "RUN_DONE"
    )
    again = job(
        dask_client, script, inputs, tmp_path / "again", mini_batch_size=1, append_row_format="parquet"
    )
    assert again["reused_mini_batches"] == summary["succeeded_mini_batches"], "a rejected part was cached"


# -- 6. JSON Lines in and out --------------------------------------------------------------------------------------


def test_json_lines_strings_stay_strings_through_a_job(dask_client, write_script, tmp_path):
    """Before: "01234" became 1234 (and columns named like dates became timestamps)."""
    source = tmp_path / "people.jsonl"
    records = [
        {"zip": f"{i:05d}", "created_at": 1700000000 + i, "date": "2024-01-02", "score": 0.1 + i, "id": i}
        for i in range(30)
    ]
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    script = write_script("""
        def run(mini_batch):
            return mini_batch
    """)
    summary = job(
        dask_client,
        script,
        [TabularDataset.from_json_lines_files(str(source))],
        tmp_path / "out",
        mini_batch_size=400,
        append_row_format="jsonl",
    )
    assert summary["status"] == "succeeded" and summary["total_mini_batches"] > 3, summary
    lines = Path(summary["append_row_file"]).read_text().splitlines()
    assert [strict_json(line) for line in lines] == records


def test_jsonl_output_is_json_with_native_values(dask_client, write_script, files, tmp_path):
    """Before: numpy scalars were written as strings ("5") and NaN/Infinity as bare tokens (not JSON)."""
    root = files(3)
    script = write_script("""
        import datetime, math
        import numpy as np
        def run(mini_batch):
            i = int(open(mini_batch[0]).read())
            return [{
                "n": np.int64(i), "f": np.float32(0.5), "nan": float("nan"), "inf": np.float64("inf"),
                "flag": np.bool_(i % 2), "when": datetime.date(2024, 1, 1 + i), "vec": np.array([i, 1]),
            }]
    """)
    summary = job(
        dask_client,
        script,
        [FileDataset.from_files(str(root))],
        tmp_path / "out",
        mini_batch_size=1,
        append_row_format="jsonl",
    )
    assert summary["status"] == "succeeded", summary
    rows = [strict_json(line) for line in Path(summary["append_row_file"]).read_text().splitlines()]
    assert rows == [
        {
            "n": i,
            "f": 0.5,
            "nan": None,
            "inf": None,
            "flag": bool(i % 2),
            "when": f"2024-01-0{1 + i}",
            "vec": [i, 1],
        }
        for i in range(3)
    ]
    assert all(type(r["n"]) is int for r in rows)


def test_plain_values_in_jsonl_are_json_values() -> None:
    data, columns, schema = encode_part(
        [np.int64(3), float("nan"), "x", [np.float64(1.5), float("inf")]], "jsonl"
    )
    assert [strict_json(line) for line in data.decode().splitlines()] == [3, None, "x", [1.5, None]]
    assert columns == [] and schema is None


def test_dataframe_jsonl_keeps_floats_exact_and_writes_null_for_nan() -> None:
    frame = pd.DataFrame(
        {"x": [0.1 + 0.2, np.nan, np.inf], "t": pd.to_datetime(["2024-01-01", None, "2024-01-03"])}
    )
    data, columns, _ = encode_part(frame, "jsonl")
    rows = [strict_json(line) for line in data.decode().splitlines()]
    assert rows[0]["x"] == 0.1 + 0.2 and rows[1] == {"x": None, "t": None} and rows[2]["x"] is None
    assert rows[0]["t"].startswith("2024-01-01") and columns == ["x", "t"]


# -- unit: unification and assembly ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "joined"),
    [
        (pa.int64(), pa.float64(), pa.float64()),
        (pa.null(), pa.string(), pa.string()),
        (pa.int64(), pa.string(), pa.string()),
        (pa.int64(), pa.large_string(), pa.large_string()),
        (pa.bool_(), pa.int64(), pa.string()),
        (pa.int8(), pa.int32(), pa.int32()),
        (pa.int64(), pa.uint64(), pa.float64()),
        (pa.timestamp("ns", tz="UTC"), pa.timestamp("ns"), pa.string()),
        (pa.list_(pa.int64()), pa.list_(pa.float64()), pa.list_(pa.float64())),
        (pa.list_(pa.int64()), pa.int64(), None),
        (pa.struct([("a", pa.int64())]), pa.string(), None),
        (pa.binary(), pa.int64(), None),
    ],
)
def test_unify_types(a: pa.DataType, b: pa.DataType, joined: pa.DataType | None) -> None:
    assert unify_types(a, b) == joined and unify_types(b, a) == joined


def test_a_column_mixing_ints_and_strings_in_one_result_becomes_string() -> None:
    frame = pd.DataFrame({"k": [1, "A1B", None, 2.5]}, dtype=object)
    data, columns, schema = encode_part(frame, "parquet")
    table = pq.read_table(io.BytesIO(data))
    assert table.column("k").to_pylist() == ["1", "A1B", None, "2.5"] and columns == ["k"] and schema


def test_lists_mixed_with_numbers_in_one_column_are_an_invalid_result() -> None:
    from airflow_parallel_run.core.output.results import InvalidResultError

    with pytest.raises(InvalidResultError, match=r"column 'v' with values that do not form one type"):
        encode_part([{"v": [1]}, {"v": 2}], "jsonl")
    with pytest.raises(InvalidResultError, match=r"duplicate column names \['a'\]"):
        encode_part(pd.DataFrame([[1, 2]], columns=["a", "a"]), "parquet")


def _parts(tmp_path: Path, fmt: str, results: list[Any]) -> list[Part]:
    schema = JobSchema(fmt)
    parts = []
    for index, result in enumerate(results):
        data, columns, part_schema = encode_part(result, fmt)
        assert schema.admit(index, columns, part_schema) is None
        url = tmp_path / f"p{index}.{fmt}"
        url.write_bytes(data)
        parts.append(Part(index, str(url), columns, part_schema))
    return parts


def test_csv_parts_are_reshaped_without_changing_a_field(tmp_path: Path) -> None:
    tricky = ['with "quotes", commas', "two\nlines", "", " spaced ", "x\r\ny"]
    results = [
        pd.DataFrame({"a": tricky, "b": range(5)}),
        pd.DataFrame({"b": [7], "c": ["new"], "a": ["last"]}),
    ]
    target = tmp_path / "out.csv"
    assemble(_parts(tmp_path, "csv", results), str(target), "csv", {})
    back = pd.read_csv(target, keep_default_na=False, dtype=str)
    assert list(back.columns) == ["a", "b", "c"]
    assert back["a"].tolist() == [*tricky, "last"] and back["c"].tolist() == [""] * 5 + ["new"]


def test_parquet_and_jsonl_parts_are_cast_to_the_unified_types(tmp_path: Path) -> None:
    results = [
        [{"k": 1, "x": 1, "e": None}],
        [{"x": 2.5, "k": "A1B", "e": None}],
        [{"k": 3, "x": 4, "e": "s", "new": True}],
    ]
    for fmt in ("parquet", "jsonl"):
        target = tmp_path / f"out.{fmt}"
        assemble(_parts(tmp_path, fmt, results), str(target), fmt, {})
        if fmt == "parquet":
            table = pq.read_table(target)
            assert table.schema.types == [pa.string(), pa.float64(), pa.string(), pa.bool_()]
            rows = table.to_pylist()
        else:
            rows = [strict_json(line) for line in target.read_text().splitlines()]
        assert rows == [
            {"k": "1", "x": 1.0, "e": None, "new": None},
            {"k": "A1B", "x": 2.5, "e": None, "new": None},
            {"k": "3", "x": 4.0, "e": "s", "new": True},
        ], fmt


def test_fast_path_copies_parts_of_one_schema_byte_for_byte(tmp_path: Path) -> None:
    parts = _parts(tmp_path, "csv", [pd.DataFrame({"a": [i], "b": ["x"]}) for i in range(3)])
    target = tmp_path / "out.csv"
    assemble(parts, str(target), "csv", {})
    assert target.read_bytes() == b"a,b\n" + b"".join(Path(p.url).read_bytes() for p in parts)


def test_duplicate_column_names_in_csv_must_match_every_other_part() -> None:
    schema = JobSchema("csv")
    assert schema.admit(0, ["a", "a"], None) is None
    assert schema.admit(1, ["a", "a"], None) is None
    problem = schema.admit(2, ["a", "b"], None)
    assert problem is not None and "duplicate column names" in problem and "mini-batch 2" in problem


def test_part_encoding_version_is_in_every_cache_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Parts written in an older encoding (no schema in their metadata) are never served as new ones."""
    from airflow_parallel_run.core.minibatch import FileRef, MiniBatch, TabularSlice
    from airflow_parallel_run.core.reuse import key as reuse_key

    batches = [
        MiniBatch(0, "file", 0, 1, files=(FileRef("/in/a.txt"),)),
        MiniBatch(0, "tabular", 0, 1, slices=(TabularSlice("/in/a.txt", "csv", 4, 9, 4, rows=1),)),
    ]
    before = [reuse_key.mini_batch_key("job", mb, {"/in/a.txt": "xxh3:0"}) for mb in batches]
    monkeypatch.setattr(reuse_key, "PART_ENCODING_VERSION", reuse_key.PART_ENCODING_VERSION + 1)
    after = [reuse_key.mini_batch_key("job", mb, {"/in/a.txt": "xxh3:0"}) for mb in batches]
    assert all(a != b for a, b in zip(before, after, strict=True))


def test_duplicate_names_are_matched_against_every_column_list() -> None:
    schema = JobSchema("text")
    assert schema.admit(0, ["a", "b"], None) is None
    assert schema.admit(1, ["b", "a"], None) is None  # another order: fine, matched by name
    problem = schema.admit(2, ["a", "a"], None)
    assert problem is not None and "['a', 'b'] in mini-batch 0" in problem
    assert schema.admit(2, ["a", "b", "c"], None) is None


def test_jsonl_columns_written_a_column_at_a_time_read_back_as_the_values() -> None:
    frame = pd.DataFrame(
        {
            "i": pd.array([1, None, -(2**63)], dtype="Int64"),
            "f": [0.1 + 0.2, np.nan, -np.inf],
            "f32": np.array([0.5, 1.25, -3.0], dtype=np.float32),
            "s": ['quote " back\\slash', "tab\tnew\nline é ☃ \x01", None],
            "b": [True, False, None],
            "t": pd.to_datetime(["2024-01-01 10:00", None, "2024-03-01 00:00"]),
            "l": [[1, 2], [], None],
            "d": [{"k": 1.5}, None, {"k": float("nan")}],
            "100%": ["a", "b", "c"],
        }
    )
    data, columns, _ = encode_part(frame, "jsonl")
    rows = [strict_json(line) for line in data.decode("ascii").splitlines()]
    assert columns == list(frame.columns) and [list(r) for r in rows] == [columns] * 3
    assert [r["i"] for r in rows] == [1, None, -(2**63)]
    assert [r["f"] for r in rows] == [0.1 + 0.2, None, None]
    assert [r["f32"] for r in rows] == [0.5, 1.25, -3.0]
    assert [r["s"] for r in rows] == frame["s"].tolist()[:2] + [None]
    assert [r["b"] for r in rows] == [True, False, None]
    assert rows[0]["t"].startswith("2024-01-01T10:00") and rows[1]["t"] is None
    assert [r["l"] for r in rows] == [[1, 2], [], None]
    assert [r["d"] for r in rows] == [{"k": 1.5}, None, {"k": None}]
    assert [r["100%"] for r in rows] == ["a", "b", "c"]
