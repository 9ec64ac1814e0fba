"""Output formats (`append_row_format`): how a run() result becomes a part file, and how parts become the
output file.

A format is a class with a `name` (the `append_row_format` value), an `extension` (of part files and of
the default output file, `parallel_run_step.<extension>`), `typed` (its values keep Arrow types, so the
job's schema joins types, not only columns), `encode(result)` and `concat(parts, layout, out, ...)`.
Built-in: text, csv, jsonl, parquet. Another package adds one with an entry point in the group
`airflow_parallel_run.output_formats` (``tsv = "my_package.formats:TsvFormat"``), loaded the first time
its name is asked for: the job's spec carries only the name, so the entry-script processes on the
workers find the same class (a format registered by a call in the driver process alone would be unknown
to them).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, BinaryIO, ClassVar, NamedTuple, Protocol

from ..errors import ConfigError
from ..storage import is_local, local_path
from . import encode, jsonl
from .results import arrow_rows, is_frame

if TYPE_CHECKING:
    import pyarrow as pa

    from .assemble import Layout, Part

#: Part files and their schema metadata as this release writes them. It is part of every reuse-cache key
#: (reuse/key.py, mini_batch_key), so parts written before a change of meaning are never served as if new.
PART_ENCODING_VERSION = 2
ENTRY_POINT_GROUP = "airflow_parallel_run.output_formats"


class EncodedPart(NamedTuple):
    """A part's bytes, its columns ([] for results without columns) and, for typed formats, its Arrow
    schema (IPC bytes, see `schema.schema_to_text`)."""

    data: bytes
    columns: list[str]
    schema: bytes | None


class OutputFormat(Protocol):
    name: ClassVar[str]
    extension: ClassVar[str]
    typed: ClassVar[bool]

    def encode(self, result: Any) -> EncodedPart:
        """One run() result as a part; `InvalidResultError` for one that cannot have one schema."""
        ...

    def concat(
        self, parts: Sequence[Part], layout: Layout, out: BinaryIO, storage_options: Mapping[str, Any]
    ) -> None:
        """Writes the parts, in order and in `layout`, as the output file's bytes to `out`."""
        ...


def _read(url: str, storage_options: Mapping[str, Any]) -> Any:
    """A part opened for reading: a local one with plain `open` (fsspec's URL parsing and file-system lookup
    cost about 0.1 ms a part, a tenth of a fully reused 1,000-mini-batch re-run's assembly), others through
    fsspec."""
    if is_local(url):
        return open(local_path(url), "rb")  # noqa: SIM115 - the caller's `with` closes it
    import fsspec

    return fsspec.open(url, "rb", **dict(storage_options))


class LineFormat:
    """Text-like formats: one record per line, parts concatenated. A part already in the output's
    columns is copied as bytes; another is rewritten a line at a time (`reshape`)."""

    separator: ClassVar[str] = ","

    def header(self, layout: Layout) -> bytes:
        return b""

    def concat(
        self, parts: Sequence[Part], layout: Layout, out: BinaryIO, storage_options: Mapping[str, Any]
    ) -> None:
        out.write(self.header(layout))
        for part in parts:
            with _read(part.url, storage_options) as handle:
                if not part.columns or layout.matches(part):
                    while chunk := handle.read(1 << 20):
                        out.write(chunk)
                else:
                    out.write(self.reshape(handle.read(), part, layout))

    def reshape(self, data: bytes, part: Part, layout: Layout) -> bytes:
        """A delimited part rewritten in the output's columns (missing ones empty)."""
        position = {name: i for i, name in enumerate(part.columns)}
        picks = [position.get(name) for name in layout.columns]
        buffer = io.StringIO()
        writer = csv.writer(buffer, delimiter=self.separator, lineterminator="\n")  # the dialect of to_csv
        for row in csv.reader(io.StringIO(data.decode("utf-8"), newline=""), delimiter=self.separator):
            writer.writerow(["" if i is None else row[i] for i in picks])
        return buffer.getvalue().encode("utf-8")


class TextFormat(LineFormat):
    """Azure's format: str(item) per line, DataFrame rows space-separated, no header."""

    name: ClassVar[str] = "text"
    extension: ClassVar[str] = "txt"
    typed: ClassVar[bool] = False
    separator: ClassVar[str] = " "

    def encode(self, result: Any) -> EncodedPart:
        if arrow_rows(result) is not None:
            result = encode.as_frame(result)
        if is_frame(result):
            text = result.to_csv(sep=" ", header=False, index=False, lineterminator="\n")
            return EncodedPart(text.encode("utf-8"), [str(c) for c in result.columns], None)
        return EncodedPart("".join(f"{item}\n" for item in result).encode("utf-8"), [], None)


class CsvFormat(LineFormat):
    """Comma-separated values with one header row of the output's columns."""

    name: ClassVar[str] = "csv"
    extension: ClassVar[str] = "csv"
    typed: ClassVar[bool] = False

    def encode(self, result: Any) -> EncodedPart:
        if arrow_rows(result) is not None:  # Arrow's CSV writer: no pandas round trip
            data, columns = encode.csv_of_arrow(result)
            return EncodedPart(data, columns, None)
        frame = encode.as_frame(result)
        data = frame.to_csv(header=False, index=False, lineterminator="\n").encode("utf-8")
        return EncodedPart(data, [str(c) for c in frame.columns], None)

    def header(self, layout: Layout) -> bytes:
        if not layout.columns:
            return b""
        return (",".join(_csv_quote(c) for c in layout.columns) + "\n").encode("utf-8")


class JsonlFormat(LineFormat):
    """JSON Lines: one JSON value per line (an object per record), valid JSON (no NaN or Infinity)."""

    name: ClassVar[str] = "jsonl"
    extension: ClassVar[str] = "jsonl"
    typed: ClassVar[bool] = True

    def encode(self, result: Any) -> EncodedPart:
        arrow = arrow_rows(result) is not None
        if (
            not arrow
            and not is_frame(result)
            and not (result and all(isinstance(item, dict) for item in result))
        ):
            return EncodedPart("".join(jsonl.json_line(item) for item in result).encode("utf-8"), [], None)
        table = encode.arrow_table(result)
        return EncodedPart(jsonl.jsonl_of(table), table.column_names, encode.schema_bytes(table.schema))

    def reshape(self, data: bytes, part: Part, layout: Layout) -> bytes:
        """A part's records in the output's columns, values cast to the output's types."""
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
                jsonl.json_line(
                    {
                        name: _json_cast(record.get(name), casts[name]) if name in casts else record.get(name)
                        for name in layout.columns
                    }
                )
            )
        return "".join(lines).encode("utf-8")


class ParquetFormat:
    """Parquet: one table, its row groups the parts, in the output's unified Arrow schema."""

    name: ClassVar[str] = "parquet"
    extension: ClassVar[str] = "parquet"
    typed: ClassVar[bool] = True

    def encode(self, result: Any) -> EncodedPart:
        import pyarrow.parquet as pq

        table = encode.arrow_table(result)
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        return EncodedPart(buffer.getvalue(), table.column_names, encode.schema_bytes(table.schema))

    def concat(
        self, parts: Sequence[Part], layout: Layout, out: BinaryIO, storage_options: Mapping[str, Any]
    ) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not parts:
            pq.write_table(pa.table({}), out)
            return
        schema = pa.schema([(name, layout.types.get(name, pa.null())) for name in layout.columns])
        with pq.ParquetWriter(out, schema) as writer:
            for part in parts:
                with _read(part.url, storage_options) as handle:
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


def _json_cast(value: Any, target: pa.DataType) -> Any:
    """A JSON value of a column as one of type `target` (only what JSON tells apart: strings, ints, floats)."""
    import pyarrow as pa

    if value is None:
        return None
    if pa.types.is_string(target) or pa.types.is_large_string(target):
        return value if isinstance(value, str) else encode.scalar_text(value)
    if pa.types.is_floating(target) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _csv_quote(value: str) -> str:
    return '"' + value.replace('"', '""') + '"' if any(c in value for c in ',"\n\r') else value


# -- the registry ----------------------------------------------------------------------------------------
_FORMATS: dict[str, OutputFormat] = {}


def register_format(fmt: OutputFormat) -> OutputFormat:
    """Makes `fmt` known by its name; a name that is taken is refused."""
    name = fmt.name
    if not isinstance(name, str) or not name or name != name.lower():
        raise ValueError(f"an output format needs a lower-case name, not {name!r}")
    if name in _FORMATS:
        raise ValueError(f"output format {name!r} is registered already ({type(_FORMATS[name]).__name__})")
    _FORMATS[name] = fmt
    return fmt


def _entry_point_names() -> list[str]:
    return [ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)]


def _load_entry_point(name: str) -> OutputFormat | None:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            loaded = ep.load()
            fmt: OutputFormat = loaded() if isinstance(loaded, type) else loaded
            if fmt.name != name:
                raise ValueError(
                    f"entry point {name!r} of {ENTRY_POINT_GROUP} is a format named {fmt.name!r}"
                )
            return register_format(fmt)
    return None


def get_format(name: str) -> OutputFormat:
    """The format called `name`; `ConfigError` naming `append_row_format` for an unknown one."""
    fmt = _FORMATS.get(name) if isinstance(name, str) else None
    if fmt is None and isinstance(name, str):
        fmt = _load_entry_point(name)
    if fmt is None:
        raise ConfigError("append_row_format", name, ", ".join(format_names()))
    return fmt


def format_names() -> tuple[str, ...]:
    """Every format's name: the built-in ones first, then those registered or offered by entry points."""
    return tuple(dict.fromkeys([*_FORMATS, *_entry_point_names()]))


def encode_part(result: Any, name: str) -> EncodedPart:
    """Serialises one run() result in the output format called `name`."""
    return get_format(name).encode(result)


for _builtin in (TextFormat(), CsvFormat(), JsonlFormat(), ParquetFormat()):
    register_format(_builtin)
