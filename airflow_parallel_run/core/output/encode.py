"""A run() result as an Arrow table or a DataFrame, with the column typing rules of the output.

A result has *columns* when it is a DataFrame (any format), a list of dicts (csv, jsonl, parquet: the keys,
in the order they first appear) or a list of other values (csv, parquet: one column `result`). A column
whose values Arrow cannot type as one (ints and strings) becomes strings, written the way Arrow's cast
writes them, as across mini-batches; lists or dicts mixed with other values are an invalid result.

pandas and pyarrow are imported only where a DataFrame or Parquet is involved: every entry-script
process imports the output formats, and for a job of files and text results they would cost ~0.6 s of
CPU per process before its first mini-batch.
"""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING, Any

from .results import InvalidResultError, arrow_rows, is_frame

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa


def as_frame(result: list[Any] | tuple[Any, ...] | pd.DataFrame) -> pd.DataFrame:
    import pandas as pd

    if arrow_rows(result) is not None:
        return arrow_result_table(result).to_pandas()
    if isinstance(result, pd.DataFrame):
        return result
    if result and all(isinstance(item, dict) for item in result):
        return pd.DataFrame.from_records(list(result))
    return pd.DataFrame({"result": list(result)})


def arrow_table(result: list[Any] | tuple[Any, ...] | pd.DataFrame) -> pa.Table:
    """The result as an Arrow table with str column names and no pandas metadata (the output is one table)."""
    import pyarrow as pa

    if arrow_rows(result) is not None:
        table = arrow_result_table(result)
        _check_unique(table.column_names)
        return table.replace_schema_metadata(None)
    if is_frame(result):
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


def arrow_result_table(result: Any) -> pa.Table:
    """An Arrow result (a Table, a RecordBatch or a list of them) as one Table: the tables' rows in order,
    their schemas unified as across mini-batches (a column missing from one table is null there)."""
    import pyarrow as pa

    items = list(result) if isinstance(result, (list, tuple)) else [result]
    tables = [pa.Table.from_batches([t]) if isinstance(t, pa.RecordBatch) else t for t in items]
    if len(tables) == 1:
        return tables[0]
    try:
        return pa.concat_tables(
            [t.replace_schema_metadata(None) for t in tables], promote_options="permissive"
        )
    except (pa.ArrowException, ValueError, TypeError) as exc:
        raise InvalidResultError(
            f"run() returned {len(tables)} pyarrow Tables/RecordBatches whose schemas do not join into one "
            f"table ({exc}): the tables of one result are its rows in order, so their columns must have "
            "types Arrow can promote to one"
        ) from exc


def csv_of_arrow(result: Any) -> tuple[bytes, list[str]]:
    """An Arrow result as CSV rows (no header) written by Arrow's CSV writer, without a pandas round trip;
    nested columns (lists, structs, maps) have no CSV spelling and are an invalid result."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    table = arrow_result_table(result).replace_schema_metadata(None)
    nested = [f for f in table.schema if pa.types.is_nested(f.type)]
    if nested:
        raise InvalidResultError(
            f"run() returned column {nested[0].name!r} as {nested[0].type}, which append_row_format=csv cannot "
            "write (CSV holds scalar values): use append_row_format='jsonl' or 'parquet', or turn the column "
            "into strings"
        )
    if table.num_columns == 0:
        return b"", []
    buffer = pa.BufferOutputStream()
    pacsv.write_csv(table, buffer, pacsv.WriteOptions(include_header=False, quoting_style="needed"))
    return buffer.getvalue().to_pybytes(), [str(n) for n in table.column_names]


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
    return pa.array([None if _missing(v) else v if isinstance(v, str) else scalar_text(v) for v in values])


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


def scalar_text(value: Any) -> str:
    """A scalar as a string the way Arrow's cast to string writes it, so a value reads the same whether its
    column became string within one mini-batch or across mini-batches."""
    import pyarrow as pa

    try:
        text = pa.array([value]).cast(pa.string())[0].as_py()
    except (pa.ArrowException, ValueError, TypeError, OverflowError):
        return str(value)
    return str(text)


def schema_bytes(schema: pa.Schema) -> bytes:
    return bytes(schema.remove_metadata().serialize().to_pybytes())
