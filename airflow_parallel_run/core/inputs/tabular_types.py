"""One set of column types for every mini-batch of a CSV input, so that no slice reads a column its own way.

Each slice of a CSV file is parsed on its own; left to infer types, a slice whose `zip` column happens to be
all digits reads it as int64 while its neighbour reads float64 or string, and run() sees different types
per mini-batch (a green job with silently different results). So the types are decided once, when the job
starts: Arrow infers them from the first `SAMPLE_BYTES` of the input's first file (whole records, quoted
newlines included), `column_types` given by the user win column by column, and every slice of every file
is read with exactly these types. A later value that does not fit them (a word in a column the sample saw
as numbers) fails its mini-batch with an error naming the column and the fix (`column_types`), never a
silently different type.

Inferred types are pandas' defaults for a CSV column: int64, float64 (ints with floats), bool
(True/False spellings only) and string (everything else: dates and times stay text, as pandas reads
them; give `column_types={"when": "timestamp[s]"}` to have them typed). A column with no value in the
sample is string. A column whose sample holds a number Arrow reads and pandas keeps as text (a hex integer,
a NaN spelled otherwise than pandas' missing values) is string (tabular_read._as_pandas_reads).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import fsspec

from ..errors import ConfigError, InputError
from ..minibatch import MiniBatch, TabularSlice

if TYPE_CHECKING:
    import pyarrow as pa

    from .tabular import TabularDataset

#: Bytes of the first file from which column types are inferred (whole slices: at least the first one).
SAMPLE_BYTES = 1 << 20
#: pandas' default missing-value spellings (`pandas.read_csv` na_values), so both batch formats read the
#: same cells as missing.
NULL_VALUES = (
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>",
    "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
)  # fmt: skip
TRUE_VALUES = ("True", "TRUE", "true")
FALSE_VALUES = ("False", "FALSE", "false")


def check_column_types(value: Any, fmt: str = "csv") -> dict[str, str] | None:
    """`column_types`: a mapping of column names to Arrow type names (int64, float64, string, bool,
    timestamp[s], date32, ...); for JSON Lines also "object" (core/inputs/tabular_jsonl.py)."""
    if value is None:
        return None
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ConfigError(
            "column_types", value, "a mapping of column names to Arrow type names, e.g. {'zip': 'string'}"
        )
    import pyarrow as pa

    for name, alias in value.items():
        if fmt == "jsonl" and alias.strip() == "object":
            continue
        try:
            pa.type_for_alias(alias.strip())
        except (ValueError, KeyError):
            raise ConfigError(
                "column_types",
                dict(value),
                f"Arrow type names (int64, float64, string, bool, timestamp[s], date32, ...); {alias!r} for "
                f"column {name!r} is not one",
            ) from None
    types = {k: v.strip() for k, v in value.items()}
    if fmt == "jsonl":
        from .tabular_jsonl import check_type_names

        odd = check_type_names(types)
        if odd is not None:
            raise ConfigError(
                "column_types",
                dict(value),
                "for JSON Lines, int*/uint*, float*, bool, string, timestamp[...], date32/date64 or object "
                f"(nested or mixed values kept as they are); {odd!r} is not one",
            )
    return types


def arrow_types(column_types: Mapping[str, str] | None) -> dict[str, pa.DataType]:
    import pyarrow as pa

    return {name: pa.type_for_alias(alias) for name, alias in (column_types or {}).items()}


def _portable(t: pa.DataType) -> str:
    """An inferred type as pandas would read the column by default."""
    import pyarrow as pa

    if pa.types.is_integer(t):
        return "int64"
    if pa.types.is_floating(t):
        return "float64"
    if pa.types.is_boolean(t):
        return "bool"
    return "string"


def resolve_column_types(dataset: TabularDataset, batches: Sequence[MiniBatch]) -> TabularDataset:
    """`dataset` with the column types of every column of its first file (see the module's docstring; JSON
    Lines: core/inputs/tabular_jsonl.py); the user's `column_types` win. Parquet: with the columns that may
    hold a missing value (`parquet_null_columns`). An input without mini-batches is returned as given."""
    slices = [s for mb in batches for s in mb.slices]
    if dataset.format == "parquet":
        return dataclasses.replace(dataset, null_columns=parquet_null_columns(slices))
    if dataset.format not in ("csv", "jsonl") or not slices:
        return dataset
    if dataset.format == "jsonl":
        from .tabular_jsonl import decide_types
        from .tabular_read import read_jsonl_sample

        inferred = decide_types(read_jsonl_sample(_sample_slices(slices), dataset, SAMPLE_BYTES))
    else:
        inferred = infer_csv_types(slices, dataset)
    merged = {**inferred, **(dataset.column_types or {})}
    return dataclasses.replace(dataset, column_types=merged)


def parquet_null_columns(slices: Sequence[TabularSlice]) -> tuple[str, ...] | None:
    """The columns that may hold a missing value in any of the job's Parquet slices (their footers'
    statistics, `TabularSlice.null_columns`); None when a slice does not say (planned before it was recorded).

    Why: numpy's int64 and bool have no missing value, so a plain `to_pandas()` gives float64/object to a
    mini-batch that happens to hold one and int64/bool to its neighbour. Deciding per job keeps one dtype per
    column in every mini-batch; deciding from the statistics lets a column that holds no missing value
    anywhere be read as `pandas.read_parquet` reads it (int64/bool, faster to convert and to use: on 2 M
    rows `Series.tolist()` took 100 ms against 150 ms for Int64), and only the others nullable."""
    if not slices:
        return None
    names: set[str] = set()
    for piece in slices:
        if piece.null_columns is None:
            return None
        names.update(piece.null_columns)
    return tuple(sorted(names))


def infer_csv_types(slices: Sequence[TabularSlice], dataset: TabularDataset) -> dict[str, str]:
    """Column name -> type name, from the first `SAMPLE_BYTES` (whole slices, at least one) of the first
    file; columns without a header are named "0", "1", ..."""
    import pyarrow as pa

    first = slices[0]
    sample = _sample_slices(slices)
    untyped = dataclasses.replace(dataset, column_types=None)
    schema = _first_block_schema(first, untyped) if first.end - first.start > SAMPLE_BYTES else None
    if schema is None:
        schema = _sample_schema(sample, untyped)
    return {f.name: "string" if pa.types.is_null(f.type) else _portable(f.type) for f in schema}


def _sample_slices(slices: Sequence[TabularSlice]) -> list[TabularSlice]:
    """The first slice and those after it in the same file, contiguous, within `SAMPLE_BYTES`."""
    first = slices[0]
    sample = [first]
    for piece in slices[1:]:
        if piece.url != first.url or piece.start != sample[-1].end or piece.end - first.start > SAMPLE_BYTES:
            break
        sample.append(piece)
    return sample


def _sample_schema(sample: Sequence[TabularSlice], dataset: TabularDataset) -> pa.Schema:
    """The schema Arrow infers from the sample's slices read together; when they cannot be (a ragged row),
    from the first of them that can be read on its own, so that the bad slice fails only its own
    mini-batch when it is read, as any read error does (when none can, its error stops the job's start:
    without one set of types every slice would read its own)."""
    import pyarrow as pa

    from .tabular_read import read_csv_sample  # imports pandas: only for small first slices

    try:
        return read_csv_sample(sample, dataset, empty_type=pa.string()).schema
    except InputError as exc:
        first_error = exc
    for piece in sample if len(sample) > 1 else ():
        try:
            return read_csv_sample([piece], dataset, empty_type=pa.string()).schema
        except InputError:
            continue
    # No slice of the sample reads: without types each slice would decide its own, so the job stops here.
    raise first_error


def _first_block_schema(first: TabularSlice, dataset: TabularDataset) -> pa.Schema | None:
    """The schema Arrow's streaming reader infers from the first `SAMPLE_BYTES` of a file whose first slice
    is larger than that (reading the whole slice would put a mini-batch's parse on the job's start); None
    when that block cannot be parsed on its own (blank lines first: the whole slice is read instead)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    from .tabular_read import arrow_only_numbers

    fs, path = fsspec.core.url_to_fs(first.url, **dict(dataset.storage_options))

    def first_block(types: Mapping[str, pa.DataType]) -> pa.RecordBatch:
        with fs.open(path, "rb") as handle:
            reader = pacsv.open_csv(
                handle,
                read_options=read_options(dataset, None, SAMPLE_BYTES),
                parse_options=parse_options(dataset),
                convert_options=convert_options(dataset, types),
            )
            return reader.read_next_batch()

    try:
        block = first_block({})
        # numbers Arrow reads and pandas keeps as text (tabular_read._as_pandas_reads): those columns are text
        odd = arrow_only_numbers(
            block, lambda names: first_block(dict.fromkeys(names, pa.string())), may_hold_hex=True
        )
        schema = pa.schema(
            [pa.field(f.name, pa.string()) if i in odd else f for i, f in enumerate(block.schema)]
        )
    except (pa.ArrowInvalid, OSError, StopIteration):
        return None
    if not dataset.header:
        return pa.schema([pa.field(str(i), f.type) for i, f in enumerate(schema)])
    names = unique_names(schema.names)  # as every slice is read (tabular_read._header_names)
    return pa.schema([pa.field(name, f.type) for name, f in zip(names, schema, strict=True)])


def unique_names(names: Sequence[str]) -> list[str]:
    """A CSV header's column names with repeats renamed as `pandas.read_csv` renames them: the second `a` is
    `a.1`, the third `a.2`, skipping a name the header already has (`a,a,a.1` gives `a`, `a.2`, `a.1`). Two
    columns of one name would share one entry of the job's types and be unreadable as an Arrow table."""
    if len(set(names)) == len(names):
        return list(names)
    header = set(names)
    counts: dict[str, int] = {}
    unique = []
    for name in names:
        col, count = name, counts.get(name, 0)
        while count > 0:
            counts[name] = count + 1
            col = f"{name}.{count}"
            count = count + 1 if col in header else counts.get(col, 0)
        unique.append(col)
        counts[col] = count + 1
    return unique


def read_options(dataset: TabularDataset, names: list[str] | None, block_size: int | None = None) -> Any:
    import pyarrow.csv as pacsv

    options: dict[str, Any] = {"encoding": dataset.encoding, "use_threads": False}
    if block_size is not None:
        options["block_size"] = block_size
    if names:
        options["column_names"] = names  # with a header: the header's, parsed on its own (tabular_read.py)
    elif not dataset.header:
        options["autogenerate_column_names"] = True
    return pacsv.ReadOptions(**options)


def _skip_blank_row(row: Any) -> str:
    """pandas skips lines of only spaces, tabs and CRs; Arrow sees them as a short row."""
    return "skip" if not row.text.strip(" \t\r") else "error"


def parse_options(dataset: TabularDataset) -> Any:
    import pyarrow.csv as pacsv

    return pacsv.ParseOptions(
        delimiter=dataset.separator, newlines_in_values=True, invalid_row_handler=_skip_blank_row
    )


def convert_options(dataset: TabularDataset, types: Mapping[str, pa.DataType]) -> Any:
    import pyarrow.csv as pacsv

    return pacsv.ConvertOptions(
        column_types=dict(types),
        null_values=list(NULL_VALUES),
        true_values=list(TRUE_VALUES),
        false_values=list(FALSE_VALUES),
        strings_can_be_null=True,
    )


def with_read_types(inputs: Sequence[Any], batches: Sequence[MiniBatch]) -> list[Any]:
    """The job's inputs with the column types their slices are read with (those that decide them: a
    `with_column_types(batches)` method), each given its own mini-batches."""
    resolved = []
    for index, source in enumerate(inputs):
        decide = getattr(source, "with_column_types", None)
        if callable(decide):
            source = decide([mb for mb in batches if mb.input_index == index])
        resolved.append(source)
    return resolved
