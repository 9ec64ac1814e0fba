"""Turning run() results into part files, keeping the records of every mini-batch in one output schema, and
assembling committed parts into the one output file.

A result has *columns* when it is a DataFrame (any format), a list of dicts (csv, jsonl, parquet: the keys,
in the order they first appear) or a list of other values (csv, parquet: one column `result`). Lines of
`text` list results and `jsonl` lines of plain values have none. Each part reports its columns and, for
the typed formats (jsonl, parquet), their Arrow types (`encode_part`). The driver keeps the job's schema
as the union of the committed parts' schemas and fails an attempt that cannot join it (`JobSchema`);
the assembler writes every part in the unified schema (`assemble`).

The rules (README, "Output formats"): the same columns in another order take the column order of the
lowest mini-batch that has them; new columns are added after them, empty (csv, text) or null (jsonl,
parquet) where a part lacks them; types unify as Arrow's permissive promotion does (int and float give
float, null takes the other type, narrow and wide ints give the wide one), and two different scalar types
that Arrow cannot promote (int and string, bool and int, dates and strings, tz-aware and naive
timestamps) give string, which is what pandas reads for such a column of one whole file. Lists and structs
join only lists and structs whose members join; anything else is an invalid result of the attempt that
brought it. csv and text hold text, so for them only the columns are unified.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import io
import json
import math
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, TypeGuard

import fsspec

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

# pandas and pyarrow are imported only where a DataFrame or Parquet is involved: every entry-script
# process imports this module, and for a job of files and text results they would cost ~0.6 s of CPU
# per process before its first mini-batch.

# Part files and their schema metadata as this release writes them. It is part of every reuse-cache key
# (cache.mini_batch_key), so parts written before a change of meaning are never served as if new.
PART_ENCODING_VERSION = 2
TYPED_FORMATS = ("jsonl", "parquet")  # formats whose values keep their types (the others hold text)


def _is_frame(value: Any) -> TypeGuard[pd.DataFrame]:
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
    if not isinstance(result, (list, tuple)) and not _is_frame(result):
        raise InvalidResultError(RESULT_TYPE_MESSAGE.format(kind=type(result).__name__))
    succeeded = len(result)
    if succeeded > total:
        raise InvalidResultError(
            f"run() returned {succeeded} results for a mini-batch of {total} items; at most one result per "
            "input item is allowed, so the extra results would be miscounted. Return one element (row) per "
            "item that succeeded."
        )
    return succeeded


# --------------------------------------------------------------------------------------------- encoding


def _as_frame(result: list[Any] | tuple[Any, ...] | pd.DataFrame) -> pd.DataFrame:
    import pandas as pd

    if isinstance(result, pd.DataFrame):
        return result
    if result and all(isinstance(item, dict) for item in result):
        return pd.DataFrame.from_records(list(result))
    return pd.DataFrame({"result": list(result)})


def encode_part(
    result: list[Any] | tuple[Any, ...] | pd.DataFrame, fmt: str
) -> tuple[bytes, list[str], bytes | None]:
    """Serialises one result in the output format.

    Returns (bytes, its columns, its Arrow schema): columns are [] for results without columns; the schema
    (Arrow IPC bytes, see `schema_to_text`) is given for the typed formats only. Raises
    InvalidResultError for a result that cannot have one schema (a column mixing lists with numbers,
    duplicate column names in a typed format).
    """
    if fmt == "text":  # Azure-compatible: str(item) per line, DataFrame rows space-separated, no header
        if _is_frame(result):
            text = result.to_csv(sep=" ", header=False, index=False, lineterminator="\n")
            return text.encode("utf-8"), [str(c) for c in result.columns], None
        return "".join(f"{item}\n" for item in result).encode("utf-8"), [], None
    if fmt == "csv":
        frame = _as_frame(result)
        data = frame.to_csv(header=False, index=False, lineterminator="\n").encode("utf-8")
        return data, [str(c) for c in frame.columns], None
    if fmt == "jsonl":
        if not _is_frame(result) and not (result and all(isinstance(item, dict) for item in result)):
            return "".join(_json_line(item) for item in result).encode("utf-8"), [], None
        table = _arrow_table(result)
        return _jsonl_of(table), table.column_names, _schema_bytes(table.schema)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        table = _arrow_table(result)
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        return buffer.getvalue(), table.column_names, _schema_bytes(table.schema)
    raise ValueError(f"unknown append_row_format {fmt!r}")


def _arrow_table(result: list[Any] | tuple[Any, ...] | pd.DataFrame) -> pa.Table:
    """The result as an Arrow table with str column names and no pandas metadata (the output is one table)."""
    import pyarrow as pa

    if _is_frame(result):
        names = [str(c) for c in result.columns]
        _check_unique(names)
        try:
            return pa.Table.from_pandas(result, preserve_index=False).replace_schema_metadata(None)
        except (pa.ArrowException, ValueError, TypeError, OverflowError):  # a column Arrow cannot type whole
            arrays = [_column_array(name, result.iloc[:, i].tolist()) for i, name in enumerate(names)]
            return pa.Table.from_arrays(arrays, names=names)
    if result and all(isinstance(item, dict) for item in result):
        keys = list(dict.fromkeys(key for item in result for key in item))
        names = [str(k) for k in keys]
        _check_unique(names)
        arrays = [
            _column_array(name, [item.get(k) for item in result]) for k, name in zip(keys, names, strict=True)
        ]
        return pa.Table.from_arrays(arrays, names=names)
    return pa.Table.from_arrays([_column_array("result", list(result))], names=["result"])


def _check_unique(names: list[str]) -> None:
    seen: set[str] = set()
    repeated = sorted({n for n in names if n in seen or seen.add(n)})  # type: ignore[func-returns-value]
    if repeated:
        raise InvalidResultError(
            f"run() returned duplicate column names {repeated}: each column of the output needs its own name "
            "(rename them, e.g. with DataFrame.columns = [...])"
        )


def _column_array(name: str, values: list[Any]) -> pa.Array:
    """One column as Arrow types it; a column of scalars Arrow cannot type as one (ints and strings) becomes
    strings, as across mini-batches; lists or dicts mixed with other values are an invalid result."""
    import pyarrow as pa

    try:
        return pa.array(values, from_pandas=True)
    except (pa.ArrowException, ValueError, TypeError, OverflowError):
        pass
    present = [v for v in values if not _missing(v)]
    nested = [v for v in present if _is_nested_value(v)]
    if nested:
        other = next((v for v in present if type(v) is not type(nested[0])), nested[-1])
        raise InvalidResultError(
            f"run() returned column {name!r} with values that do not form one type, e.g. {_short(nested[0])} "
            f"and {_short(other)}: a column holds either scalars (numbers, strings, dates, ...) or lists or "
            "dicts of one shape"
        )
    return pa.array([None if _missing(v) else v if isinstance(v, str) else _scalar_text(v) for v in values])


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.floating):
        return bool(numpy.isnan(value))
    pandas = sys.modules.get("pandas")
    return pandas is not None and (value is pandas.NA or value is pandas.NaT)


def _is_nested_value(value: Any) -> bool:
    numpy = sys.modules.get("numpy")
    return isinstance(value, (list, tuple, dict, set, frozenset)) or (
        numpy is not None and isinstance(value, numpy.ndarray)
    )


def _scalar_text(value: Any) -> str:
    """A scalar as a string the way Arrow's cast to string writes it, so a value reads the same whether its
    column became string within one mini-batch or across mini-batches."""
    import pyarrow as pa

    try:
        text = pa.array([value]).cast(pa.string())[0].as_py()
    except (pa.ArrowException, ValueError, TypeError, OverflowError):
        return str(value)
    return str(text)


def _schema_bytes(schema: pa.Schema) -> bytes:
    return bytes(schema.remove_metadata().serialize().to_pybytes())


def schema_to_text(schema: bytes | None) -> str | None:
    """A part's schema for JSON documents (the reuse cache's meta.json)."""
    return None if schema is None else base64.b64encode(schema).decode("ascii")


def schema_from_text(text: str | None) -> bytes | None:
    return None if not text else base64.b64decode(text)


def _schema_of(schema: bytes) -> pa.Schema:
    import pyarrow as pa

    return pa.ipc.read_schema(pa.py_buffer(schema))


# ------------------------------------------------------------------------------------------------- JSON


def _json_default(value: Any) -> Any:
    """JSON for what json cannot write itself: numpy and pandas scalars as the native value, dates and
    times in ISO 8601, missing values as null; anything else as its str() (as before)."""
    import datetime as dt
    import decimal

    numpy = sys.modules.get("numpy")
    if numpy is not None:
        if isinstance(value, numpy.ndarray):
            return value.tolist()
        if isinstance(value, numpy.generic):
            return value.item()
    pandas = sys.modules.get("pandas")
    if pandas is not None:
        if value is pandas.NA or value is pandas.NaT:
            return None
        if isinstance(value, pandas.Timedelta):
            return value.isoformat()
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return pandas.Timedelta(value).isoformat() if pandas is not None else str(value)
    if isinstance(value, decimal.Decimal):
        return float(value) if value.is_finite() else None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, (set, frozenset)):
        return list(value)
    return str(value)


def _finite(value: Any) -> Any:
    """The value with NaN and infinities as None (JSON has no such numbers), numpy values made native."""
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, (numpy.ndarray, numpy.generic)):
        value = value.tolist()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _json_line(value: Any) -> str:
    """One line of valid JSON (RFC 8259: no NaN or Infinity)."""
    try:
        return json.dumps(value, default=_json_default, allow_nan=False) + "\n"
    except ValueError:  # a non-finite float somewhere: written as null
        return json.dumps(_finite(value), default=lambda v: _finite(_json_default(v)), allow_nan=False) + "\n"


def _jsonl_of(table: pa.Table) -> bytes:
    """One JSON object per row, keys in column order. Numbers, booleans and strings are turned into JSON text
    a column at a time (Arrow's casts write the shortest text that reads back as the same float, as
    repr() does); other types go value by value through json. 10,000 rows x 5 columns: about 15 ms, where
    json.dumps per row took about 100 ms and pandas' to_json 13 ms (with floats cut to 10 digits)."""
    if not table.column_names:
        return b"{}\n" * table.num_rows
    template = (
        "{" + ", ".join(json.dumps(name).replace("%", "%%") + ": %s" for name in table.column_names) + "}\n"
    )
    columns = [_json_texts(column) for column in table.columns]
    return "".join(template % values for values in zip(*columns, strict=True)).encode("utf-8")


def _json_texts(column: pa.ChunkedArray) -> list[str]:
    """The JSON text of every value of a column (null for missing values, NaN and infinities)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = column.type
    if pa.types.is_integer(kind) or pa.types.is_boolean(kind):
        return [text or "null" for text in column.cast(pa.string()).to_pylist()]
    if pa.types.is_floating(kind):
        finite = pc.if_else(pc.is_finite(column), column, pa.scalar(None, kind))
        return [text or "null" for text in finite.cast(pa.string()).to_pylist()]
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        encode = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]
        return ["null" if text is None else encode(text) for text in column.to_pylist()]
    return [_json_line(value)[:-1] for value in column.to_pylist()]


# ------------------------------------------------------------------------------------------------ schema


def unify_types(a: pa.DataType, b: pa.DataType) -> pa.DataType | None:
    """The type a column of types `a` and `b` takes in the output, or None when they cannot be joined."""
    import pyarrow as pa

    if a == b:
        return a
    if pa.types.is_null(a) or pa.types.is_null(b):
        return b if pa.types.is_null(a) else a
    if (
        pa.uint64() in (a, b)
        and _is_int(a)
        and _is_int(b)
        and pa.types.is_signed_integer(a if b == pa.uint64() else b)
    ):
        return pa.float64()  # Arrow would take int64, which overflows; pandas takes float64 here too
    try:
        merged = pa.unify_schemas(
            [pa.schema([("c", a)]), pa.schema([("c", b)])], promote_options="permissive"
        )
        return merged.field(0).type
    except (pa.ArrowException, TypeError, ValueError):
        pass
    if _joins_as_string(a) and _joins_as_string(b):
        return pa.large_string() if pa.large_string() in (a, b) else pa.string()
    return None


def _is_int(t: pa.DataType) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_integer(t))


def _joins_as_string(t: pa.DataType) -> bool:
    """Scalar types that become string when mixed with another scalar type (bytes never: they may not be
    text)."""
    import pyarrow as pa

    if pa.types.is_dictionary(t):
        t = t.value_type
    return not (
        pa.types.is_nested(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_fixed_size_binary(t)
        or isinstance(t, pa.ExtensionType)
    )


class JobSchema:
    """The job's output schema over the parts committed so far; the driver asks it before committing.

    For the typed formats every column keeps one type, unified as `unify_types` says; csv and text hold
    text, so there only a part with duplicate column names is refused when another part's columns differ
    (its columns could not be matched by name).
    """

    def __init__(self, fmt: str) -> None:
        self.typed = fmt in TYPED_FORMATS
        self.types: dict[str, tuple[pa.DataType, int]] = {}  # column -> (type, mini-batch it came from)
        self.first: tuple[tuple[str, ...], int] | None = None  # the first column list admitted, and where
        self.other: tuple[tuple[str, ...], int] | None = None  # a different one, if any
        self.admitted: set[int] = set()

    def admit(self, index: int, columns: Sequence[str], schema: bytes | None) -> str | None:
        """Joins the columns of mini-batch `index`'s part to the job's schema; returns why it cannot (the
        attempt's error message) or None. The same mini-batch admitted again (a reused entry) is a no-op."""
        if index in self.admitted or (not columns and schema is None):
            return None
        names = tuple(columns)
        problem = self._check_duplicates(index, names)
        updates: dict[str, tuple[pa.DataType, int]] = {}
        if problem is None and self.typed and schema is not None:
            problem, updates = self._join_types(index, schema)
        if problem is not None:
            return problem
        self.types.update(updates)
        if self.first is None:
            self.first = (names, index)
        elif self.other is None and names != self.first[0]:
            self.other = (names, index)
        self.admitted.add(index)
        return None

    def _check_duplicates(self, index: int, names: tuple[str, ...]) -> str | None:
        """Columns are matched by name, so a list with a repeated name must equal every other list."""
        if self.first is None:
            return None
        first = self.first[0]
        conflict = None
        if len(set(names)) != len(names):
            conflict = self.first if names != first else self.other
        elif len(set(first)) != len(first) and names != first:
            conflict = self.first
        if conflict is None:
            return None
        return (
            f"run() returned columns {list(names)} in mini-batch {index} and {list(conflict[0])} in mini-batch "
            f"{conflict[1]}: with duplicate column names the columns of different mini-batches cannot be "
            "matched by name (give every column its own name)"
        )

    def _join_types(self, index: int, schema: bytes) -> tuple[str | None, dict[str, tuple[pa.DataType, int]]]:
        updates: dict[str, tuple[pa.DataType, int]] = {}
        for field in _schema_of(schema):
            known = self.types.get(field.name)
            if known is None:
                updates[field.name] = (field.type, index)
                continue
            joined = unify_types(known[0], field.type)
            if joined is None:
                return (
                    f"run() returned column {field.name!r} as {field.type} in mini-batch {index}, which cannot be "
                    f"combined with {known[0]} from mini-batch {known[1]}: the records of all mini-batches form "
                    "one output schema, and Arrow's type rules (int and float give float, null takes the other "
                    "type, mixed scalar types give string) do not join these"
                ), {}
            if joined != known[0]:
                updates[field.name] = (joined, known[1])
        return None, updates


# ------------------------------------------------------------------------------------------------ files


class Part(NamedTuple):
    """A committed part: its mini-batch, file, columns and (typed formats) Arrow schema."""

    mini_batch: int
    url: str
    columns: list[str]
    schema: bytes | None = None


class _Layout(NamedTuple):
    columns: list[str]
    types: dict[str, pa.DataType]  # typed formats only
    part_types: dict[bytes, dict[str, pa.DataType]]  # each distinct part schema, read once


def _layout(parts: Sequence[Part], fmt: str) -> _Layout:
    """The output's columns (in order of first appearance over the parts in mini-batch order) and types."""
    columns: list[str] = []
    seen: set[str] = set()
    types: dict[str, pa.DataType] = {}
    part_types: dict[bytes, dict[str, pa.DataType]] = {}
    for part in parts:
        if len(set(part.columns)) != len(part.columns):  # admitted only if every part has this same list
            columns, seen = list(part.columns), set(part.columns)
        for name in part.columns:
            if name not in seen:
                seen.add(name)
                columns.append(name)
        if fmt not in TYPED_FORMATS or part.schema is None or part.schema in part_types:
            continue
        part_types[part.schema] = {field.name: field.type for field in _schema_of(part.schema)}
        for name, typ in part_types[part.schema].items():
            known = types.get(name)
            joined = typ if known is None else unify_types(known, typ)
            if joined is None:  # the driver refuses such parts before they are committed
                raise ValueError(f"column {name!r}: {known} and {typ} from mini-batch {part.mini_batch}")
            types[name] = joined
    return _Layout(columns, types, part_types)


def _matches(part: Part, layout: _Layout, fmt: str) -> bool:
    """Does the part already have the output's columns, in order (and types)? Then it is copied as is."""
    if list(part.columns) != layout.columns:
        return False
    if fmt not in TYPED_FORMATS or part.schema is None:
        return True
    return all(typ == layout.types[name] for name, typ in layout.part_types[part.schema].items())


def assemble(
    parts: Sequence[Part | tuple[Any, ...]], target_url: str, fmt: str, storage_options: dict[str, Any]
) -> None:
    """Concatenates committed parts (index, url, columns[, schema]) in mini-batch order into `target_url`,
    each in the job's one schema.

    Parts that already have the output's columns and types (the usual case) are copied byte for byte;
    only the others are rewritten: columns put in order, missing ones empty or null, values cast.
    Measured, 2,000 parts of 10 rows x 3 columns on local disk, best of 7 interleaved runs, before the
    schema step / with it / with every other part in another column order: csv 0.121 / 0.128 / 0.143 s,
    text 0.065 / 0.072 / 0.092 s, jsonl 0.190 / 0.194 / 0.369 s, parquet 1.27 / 1.29 / 1.32 s. The few
    percent on the fast path are the layout pass (each distinct part schema is read once).
    The final file appears at once (temp name, then rename), so a reader never sees a half-written output.
    """
    fs, target = fsspec.core.url_to_fs(target_url, **storage_options)
    ordered = sorted((Part(*p) for p in parts), key=lambda p: p.mini_batch)
    layout = _layout(ordered, fmt)
    tmp = target + ".assembling"
    try:
        with fs.open(tmp, "wb") as out:
            if fmt == "parquet":
                _assemble_parquet(ordered, layout, out, storage_options)
            else:
                if fmt == "csv" and layout.columns:
                    out.write((",".join(_csv_quote(c) for c in layout.columns) + "\n").encode("utf-8"))
                for part in ordered:
                    if not part.columns or _matches(part, layout, fmt):
                        with fsspec.open(part.url, "rb", **storage_options) as handle:
                            while chunk := handle.read(1 << 20):
                                out.write(chunk)
                        continue
                    with fsspec.open(part.url, "rb", **storage_options) as handle:
                        data = handle.read()
                    out.write(_reshape(data, part, layout, fmt))
        fs.mv(tmp, target)
    except BaseException:  # a full disk, a bad part: the partial file is never left to look like output
        with contextlib.suppress(OSError):
            fs.rm(tmp)
        raise


def _assemble_parquet(
    ordered: Sequence[Part], layout: _Layout, out: Any, storage_options: dict[str, Any]
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not ordered:
        pq.write_table(pa.table({}), out)
        return
    schema = pa.schema([(name, layout.types.get(name, pa.null())) for name in layout.columns])
    with pq.ParquetWriter(out, schema) as writer:
        for part in ordered:
            with fsspec.open(part.url, "rb", **storage_options) as handle:
                table = pq.read_table(handle)
            if table.schema.remove_metadata() != schema:
                table = pa.Table.from_arrays(
                    [
                        _cast(table.column(field.name), field.type)
                        if field.name in table.column_names
                        else pa.nulls(table.num_rows, field.type)
                        for field in schema
                    ],
                    schema=schema,
                )
            writer.write_table(table)


def _cast(column: pa.ChunkedArray, target: pa.DataType) -> pa.ChunkedArray:
    """Safe casts, except that ints may round on their way to float (the documented int + float rule)."""
    import pyarrow as pa

    if column.type == target:
        return column
    if pa.types.is_dictionary(column.type) and not pa.types.is_dictionary(target):
        column = column.cast(column.type.value_type)
    try:
        return column.cast(target)
    except pa.ArrowInvalid:
        if "double" in str(target) or "float" in str(target):
            return column.cast(target, safe=False)
        raise


def _reshape(data: bytes, part: Part, layout: _Layout, fmt: str) -> bytes:
    """One text, csv or jsonl part rewritten in the output's columns (and, for jsonl, types)."""
    if fmt == "jsonl":
        types = layout.part_types.get(part.schema, {}) if part.schema is not None else {}
        casts = {
            name: layout.types[name]
            for name in layout.columns
            if name in types and name in layout.types and types[name] != layout.types[name]
        }
        lines = []
        for line in data.decode("utf-8").splitlines():
            record = json.loads(line)
            lines.append(
                _json_line(
                    {
                        name: _json_cast(record.get(name), casts[name]) if name in casts else record.get(name)
                        for name in layout.columns
                    }
                )
            )
        return "".join(lines).encode("utf-8")
    separator = " " if fmt == "text" else ","
    position = {name: i for i, name in enumerate(part.columns)}
    picks = [position.get(name) for name in layout.columns]
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=separator, lineterminator="\n")  # the dialect pandas' to_csv uses
    for row in csv.reader(io.StringIO(data.decode("utf-8"), newline=""), delimiter=separator):
        writer.writerow(["" if i is None else row[i] for i in picks])
    return buffer.getvalue().encode("utf-8")


def _json_cast(value: Any, target: pa.DataType) -> Any:
    """A JSON value of a column as one of type `target` (only what JSON tells apart: strings, ints, floats)."""
    import pyarrow as pa

    if value is None:
        return None
    if pa.types.is_string(target) or pa.types.is_large_string(target):
        return value if isinstance(value, str) else _scalar_text(value)
    if pa.types.is_floating(target) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _csv_quote(value: str) -> str:
    return '"' + value.replace('"', '""') + '"' if any(c in value for c in ',"\n\r') else value
