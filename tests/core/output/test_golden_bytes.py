"""Output bytes must not move: each format's part bytes for fixed run() results, and the assembled file
for parts in different column orders, written down from the engine before its output code was split
into formats.

Text formats are compared byte for byte. Parquet files carry the writing library's version in their
footer, so they are compared by what they hold: the Arrow schema (its IPC bytes, which the cache keeps
and the job's schema joins) and every value.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest

from airflow_parallel_run.core.output.assemble import Part, assemble
from airflow_parallel_run.core.output.formats import encode_part
from airflow_parallel_run.core.output.results import InvalidResultError

FORMATS = ("text", "csv", "jsonl", "parquet")


def _results() -> dict[str, Any]:
    return {
        "records": [
            {"a": 1, "b": "x, y"},
            {"b": 'say "hi"', "c": 2.5},
            {"a": None, "c": float("nan"), "b": "line\nbreak"},
        ],
        "frame": pd.DataFrame(
            {
                "n": [1, 2, 3],
                "f": [0.1, float("nan"), 1e20],
                "s": ["a", None, "ü"],
                "b": [True, False, True],
                "t": [dt.datetime(2024, 1, 2, 3, 4, 5), dt.datetime(2024, 2, 3), dt.datetime(2025, 1, 1)],
                "l": [[1, 2], [], [3]],
            }
        ),
        "scalars": ["x", 1, 2.5, None, True],
        "nested": [{"l": [1, 2], "d": {"k": 1}}, {"l": [], "d": {"k": 2}}],
        "mixed_column": [{"v": 1}, {"v": "one"}],
        "empty": [],
    }


def _decoded(fmt: str, data: bytes) -> Any:
    if fmt != "parquet":
        return data.decode("utf-8")
    table = pq.read_table(io.BytesIO(data))
    return {"schema": table.schema.to_string(), "values": repr(table.to_pydict())}


def encoded() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, result in _results().items():
        for fmt in FORMATS:
            try:
                data, columns, schema = encode_part(result, fmt)
            except InvalidResultError as exc:
                out[f"{name}/{fmt}"] = {"invalid": str(exc)}
                continue
            out[f"{name}/{fmt}"] = {
                "data": _decoded(fmt, data),
                "columns": list(columns),
                "schema": None if schema is None else base64.b64encode(schema).decode(),
            }
    return out


def assembled(tmp_path: Path) -> dict[str, Any]:
    parts_results = [
        [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}],
        [{"b": "z", "a": 3}],  # another column order
        [{"a": 4.5, "c": True}],  # a new column, a wider type
        [{"a": 5, "b": "w"}],
    ]
    out: dict[str, Any] = {}
    for fmt in FORMATS:
        parts = []
        for index, result in enumerate(parts_results):
            data, columns, schema = encode_part(result, fmt)
            url = tmp_path / f"{fmt}-{index}"
            url.write_bytes(data)
            parts.append(Part(index, str(url), columns, schema))
        target = tmp_path / f"out.{fmt}"
        assemble(list(reversed(parts)), str(target), fmt, {})
        out[fmt] = _decoded(fmt, target.read_bytes())
    return out


GOLDEN_ENCODED: dict[str, Any] = {
    "records/text": {
        "data": "{'a': 1, 'b': 'x, y'}\n{'b': 'say \"hi\"', 'c': 2.5}\n{'a': None, 'c': nan, 'b': 'line\\nbreak'}\n",
        "columns": [],
        "schema": None,
    },
    "records/csv": {
        "data": '1.0,"x, y",\n,"say ""hi""",2.5\n,"line\nbreak",\n',
        "columns": ["a", "b", "c"],
        "schema": None,
    },
    "records/jsonl": {
        "data": '{"a": 1, "b": "x, y", "c": null}\n{"a": null, "b": "say \\"hi\\"", "c": 2.5}\n{"a": null, "b": "line\\nbreak", "c": null}\n',
        "columns": ["a", "b", "c"],
        "schema": "/////9gAAAAQAAAAAAAKAAwABgAFAAgACgAAAAABBAAMAAAACAAIAAAABAAIAAAABAAAAAMAAABwAAAANAAAAAQAAACs////AAABAxAAAAAYAAAABAAAAAAAAAABAAAAYwAGAAgABgAGAAAAAAACANj///8AAAEFEAAAABgAAAAEAAAAAAAAAAEAAABiAAAABAAEAAQAAAAQABQACAAGAAcADAAAABAAEAAAAAAAAQIQAAAAHAAAAAQAAAAAAAAAAQAAAGEAAAAIAAwACAAHAAgAAAAAAAABQAAAAAAAAAA=",
    },
    "records/parquet": {
        "data": {
            "schema": "a: int64\nb: string\nc: double",
            "values": "{'a': [1, None, None], 'b': ['x, y', 'say \"hi\"', 'line\\nbreak'], 'c': [None, 2.5, None]}",
        },
        "columns": ["a", "b", "c"],
        "schema": "/////9gAAAAQAAAAAAAKAAwABgAFAAgACgAAAAABBAAMAAAACAAIAAAABAAIAAAABAAAAAMAAABwAAAANAAAAAQAAACs////AAABAxAAAAAYAAAABAAAAAAAAAABAAAAYwAGAAgABgAGAAAAAAACANj///8AAAEFEAAAABgAAAAEAAAAAAAAAAEAAABiAAAABAAEAAQAAAAQABQACAAGAAcADAAAABAAEAAAAAAAAQIQAAAAHAAAAAQAAAAAAAAAAQAAAGEAAAAIAAwACAAHAAgAAAAAAAABQAAAAAAAAAA=",
    },
    "frame/text": {
        "data": '1 0.1 a True "2024-01-02 03:04:05" "[1, 2]"\n2   False "2024-02-03 00:00:00" []\n3 1e+20 ü True "2025-01-01 00:00:00" [3]\n',
        "columns": ["n", "f", "s", "b", "t", "l"],
        "schema": None,
    },
    "frame/csv": {
        "data": '1,0.1,a,True,2024-01-02 03:04:05,"[1, 2]"\n2,,,False,2024-02-03 00:00:00,[]\n3,1e+20,ü,True,2025-01-01 00:00:00,[3]\n',
        "columns": ["n", "f", "s", "b", "t", "l"],
        "schema": None,
    },
    "frame/jsonl": {
        "data": '{"n": 1, "f": 0.1, "s": "a", "b": true, "t": "2024-01-02T03:04:05", "l": [1, 2]}\n{"n": 2, "f": null, "s": null, "b": false, "t": "2024-02-03T00:00:00", "l": []}\n{"n": 3, "f": 1e+20, "s": "\\u00fc", "b": true, "t": "2025-01-01T00:00:00", "l": [3]}\n',
        "columns": ["n", "f", "s", "b", "t", "l"],
        "schema": "/////4gBAAAQAAAAAAAKAAwABgAFAAgACgAAAAABBAAMAAAACAAIAAAABAAIAAAABAAAAAYAAAAgAQAA4AAAALQAAACMAAAAYAAAAAQAAAAI////AAABDBQAAAAYAAAABAAAAAEAAAAQAAAAAQAAAGwAAABg////MP///wAAAQIQAAAAGAAAAAQAAAAAAAAABAAAAGl0ZW0AAAAAJP///wAAAAFAAAAAYP///wAAAQoQAAAAFAAAAAQAAAAAAAAAAQAAAHQAAACO////AAACAIj///8AAAEGEAAAABQAAAAEAAAAAAAAAAEAAABiAAAA3P///6z///8AAAEUEAAAABgAAAAEAAAAAAAAAAEAAABzAAAABAAEAAQAAADU////AAABAxAAAAAYAAAABAAAAAAAAAABAAAAZgAGAAgABgAGAAAAAAACABAAFAAIAAYABwAMAAAAEAAQAAAAAAABAhAAAAAcAAAABAAAAAAAAAABAAAAbgAAAAgADAAIAAcACAAAAAAAAAFAAAAAAAAAAA==",
    },
    "frame/parquet": {
        "data": {
            "schema": "n: int64\nf: double\ns: large_string\nb: bool\nt: timestamp[us]\nl: list<element: int64>\n  child 0, element: int64",
            "values": "{'n': [1, 2, 3], 'f': [0.1, None, 1e+20], 's': ['a', None, 'ü'], 'b': [True, False, True], 't': [datetime.datetime(2024, 1, 2, 3, 4, 5), datetime.datetime(2024, 2, 3, 0, 0), datetime.datetime(2025, 1, 1, 0, 0)], 'l': [[1, 2], [], [3]]}",
        },
        "columns": ["n", "f", "s", "b", "t", "l"],
        "schema": "/////4gBAAAQAAAAAAAKAAwABgAFAAgACgAAAAABBAAMAAAACAAIAAAABAAIAAAABAAAAAYAAAAgAQAA4AAAALQAAACMAAAAYAAAAAQAAAAI////AAABDBQAAAAYAAAABAAAAAEAAAAQAAAAAQAAAGwAAABg////MP///wAAAQIQAAAAGAAAAAQAAAAAAAAABAAAAGl0ZW0AAAAAJP///wAAAAFAAAAAYP///wAAAQoQAAAAFAAAAAQAAAAAAAAAAQAAAHQAAACO////AAACAIj///8AAAEGEAAAABQAAAAEAAAAAAAAAAEAAABiAAAA3P///6z///8AAAEUEAAAABgAAAAEAAAAAAAAAAEAAABzAAAABAAEAAQAAADU////AAABAxAAAAAYAAAABAAAAAAAAAABAAAAZgAGAAgABgAGAAAAAAACABAAFAAIAAYABwAMAAAAEAAQAAAAAAABAhAAAAAcAAAABAAAAAAAAAABAAAAbgAAAAgADAAIAAcACAAAAAAAAAFAAAAAAAAAAA==",
    },
    "scalars/text": {"data": "x\n1\n2.5\nNone\nTrue\n", "columns": [], "schema": None},
    "scalars/csv": {"data": 'x\n1\n2.5\n""\nTrue\n', "columns": ["result"], "schema": None},
    "scalars/jsonl": {"data": '"x"\n1\n2.5\nnull\ntrue\n', "columns": [], "schema": None},
    "scalars/parquet": {
        "data": {"schema": "result: string", "values": "{'result': ['x', '1', '2.5', None, 'true']}"},
        "columns": ["result"],
        "schema": "/////3AAAAAQAAAAAAAKAAwABgAFAAgACgAAAAABBAAMAAAACAAIAAAABAAIAAAABAAAAAEAAAAUAAAAEAAUAAgABgAHAAwAAAAQABAAAAAAAAEFEAAAABwAAAAEAAAAAAAAAAYAAAByZXN1bHQAAAQABAAEAAAA",
    },
    "nested/text": {
        "data": "{'l': [1, 2], 'd': {'k': 1}}\n{'l': [], 'd': {'k': 2}}\n",
        "columns": [],
        "schema": None,
    },
    "nested/csv": {"data": "\"[1, 2]\",{'k': 1}\n[],{'k': 2}\n", "columns": ["l", "d"], "schema": None},
    "nested/jsonl": {
        "data": '{"l": [1, 2], "d": {"k": 1}}\n{"l": [], "d": {"k": 2}}\n',
        "columns": ["l", "d"],
        "schema": "/////wABAAAQAAAAAAAKAAwABgAFAAgACgAAAAABBAAMAAAACAAIAAAABAAIAAAABAAAAAIAAABcAAAABAAAAID///8AAAENFAAAABgAAAAEAAAAAQAAABAAAAABAAAAZAAAAKz///+o////AAABAhAAAAAUAAAABAAAAAAAAAABAAAAawAAAJT///8AAAABQAAAANT///8AAAEMFAAAABwAAAAEAAAAAQAAACQAAAABAAAAbAAAAAQABAAEAAAAEAAUAAgABgAHAAwAAAAQABAAAAAAAAECEAAAACAAAAAEAAAAAAAAAAQAAABpdGVtAAAAAAgADAAIAAcACAAAAAAAAAFAAAAA",
    },
    "nested/parquet": {
        "data": {
            "schema": "l: list<element: int64>\n  child 0, element: int64\nd: struct<k: int64>\n  child 0, k: int64",
            "values": "{'l': [[1, 2], []], 'd': [{'k': 1}, {'k': 2}]}",
        },
        "columns": ["l", "d"],
        "schema": "/////wABAAAQAAAAAAAKAAwABgAFAAgACgAAAAABBAAMAAAACAAIAAAABAAIAAAABAAAAAIAAABcAAAABAAAAID///8AAAENFAAAABgAAAAEAAAAAQAAABAAAAABAAAAZAAAAKz///+o////AAABAhAAAAAUAAAABAAAAAAAAAABAAAAawAAAJT///8AAAABQAAAANT///8AAAEMFAAAABwAAAAEAAAAAQAAACQAAAABAAAAbAAAAAQABAAEAAAAEAAUAAgABgAHAAwAAAAQABAAAAAAAAECEAAAACAAAAAEAAAAAAAAAAQAAABpdGVtAAAAAAgADAAIAAcACAAAAAAAAAFAAAAA",
    },
    "mixed_column/text": {"data": "{'v': 1}\n{'v': 'one'}\n", "columns": [], "schema": None},
    "mixed_column/csv": {"data": "1\none\n", "columns": ["v"], "schema": None},
    "mixed_column/jsonl": {
        "data": '{"v": "1"}\n{"v": "one"}\n',
        "columns": ["v"],
        "schema": "/////3AAAAAQAAAAAAAKAAwABgAFAAgACgAAAAABBAAMAAAACAAIAAAABAAIAAAABAAAAAEAAAAUAAAAEAAUAAgABgAHAAwAAAAQABAAAAAAAAEFEAAAABgAAAAEAAAAAAAAAAEAAAB2AAAABAAEAAQAAAAAAAAA",
    },
    "mixed_column/parquet": {
        "data": {"schema": "v: string", "values": "{'v': ['1', 'one']}"},
        "columns": ["v"],
        "schema": "/////3AAAAAQAAAAAAAKAAwABgAFAAgACgAAAAABBAAMAAAACAAIAAAABAAIAAAABAAAAAEAAAAUAAAAEAAUAAgABgAHAAwAAAAQABAAAAAAAAEFEAAAABgAAAAEAAAAAAAAAAEAAAB2AAAABAAEAAQAAAAAAAAA",
    },
    "empty/text": {"data": "", "columns": [], "schema": None},
    "empty/csv": {"data": "", "columns": ["result"], "schema": None},
    "empty/jsonl": {"data": "", "columns": [], "schema": None},
    "empty/parquet": {
        "data": {"schema": "result: null", "values": "{'result': []}"},
        "columns": ["result"],
        "schema": "/////3AAAAAQAAAAAAAKAAwABgAFAAgACgAAAAABBAAMAAAACAAIAAAABAAIAAAABAAAAAEAAAAUAAAAEAAUAAgABgAHAAwAAAAQABAAAAAAAAEBEAAAABwAAAAEAAAAAAAAAAYAAAByZXN1bHQAAAQABAAEAAAA",
    },
}
GOLDEN_ASSEMBLED: dict[str, Any] = {
    "text": "{'a': 1, 'b': 'x'}\n{'a': 2, 'b': 'y'}\n{'b': 'z', 'a': 3}\n{'a': 4.5, 'c': True}\n{'a': 5, 'b': 'w'}\n",
    "csv": "a,b,c\n1,x,\n2,y,\n3,z,\n4.5,,True\n5,w,\n",
    "jsonl": '{"a": 1.0, "b": "x", "c": null}\n{"a": 2.0, "b": "y", "c": null}\n{"a": 3.0, "b": "z", "c": null}\n{"a": 4.5, "b": null, "c": true}\n{"a": 5.0, "b": "w", "c": null}\n',
    "parquet": {
        "schema": "a: double\nb: string\nc: bool",
        "values": "{'a': [1.0, 2.0, 3.0, 4.5, 5.0], 'b': ['x', 'y', 'z', None, 'w'], 'c': [None, None, None, True, None]}",
    },
}


@pytest.mark.parametrize("case", sorted(GOLDEN_ENCODED))
def test_part_bytes_do_not_move(case: str) -> None:
    assert encoded()[case] == GOLDEN_ENCODED[case]


def test_every_result_and_format_is_pinned() -> None:
    assert sorted(encoded()) == sorted(GOLDEN_ENCODED)


def test_assembled_bytes_do_not_move(tmp_path: Path) -> None:
    assert assembled(tmp_path) == GOLDEN_ASSEMBLED
