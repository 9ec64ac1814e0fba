"""The job's one output schema: the records of all mini-batches form one table.

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
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .formats import OutputFormat, get_format

if TYPE_CHECKING:
    import pyarrow as pa


def schema_to_text(schema: bytes | None) -> str | None:
    """A part's schema for JSON documents (the reuse cache's meta.json)."""
    return None if schema is None else base64.b64encode(schema).decode("ascii")


def schema_from_text(text: str | None) -> bytes | None:
    return None if not text else base64.b64decode(text)


def schema_of(schema: bytes) -> pa.Schema:
    import pyarrow as pa

    return pa.ipc.read_schema(pa.py_buffer(schema))


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

    def __init__(self, fmt: str | OutputFormat) -> None:
        self.typed = (get_format(fmt) if isinstance(fmt, str) else fmt).typed
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
        for field in schema_of(schema):
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
