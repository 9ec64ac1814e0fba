"""Committed parts into the one output file, in mini-batch order and in the job's one schema.

The layout (the output's columns in order of first appearance over the parts in mini-batch order, and
for the typed formats their unified types) is worked out once; each format's `concat` writes the parts in
it. Parts that already have the output's columns and types (the usual case) are copied byte for byte;
only the others are rewritten: columns put in order, missing ones empty or null, values cast.
Measured, 2,000 parts of 10 rows x 3 columns on local disk, best of 7 interleaved runs, before the
schema step / with it / with every other part in another column order: csv 0.121 / 0.128 / 0.143 s,
text 0.065 / 0.072 / 0.092 s, jsonl 0.190 / 0.194 / 0.369 s, parquet 1.27 / 1.29 / 1.32 s. The few
percent on the fast path are the layout pass (each distinct part schema is read once).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, cast

from ..storage import filesystem
from .formats import get_format
from .schema import schema_of, unify_types

if TYPE_CHECKING:
    import pyarrow as pa


class Part(NamedTuple):
    """A committed part: its mini-batch, file, columns and (typed formats) Arrow schema."""

    mini_batch: int
    url: str
    columns: list[str]
    schema: bytes | None = None


class Layout(NamedTuple):
    """The output's columns and (typed formats) types, and each distinct part schema's types."""

    columns: list[str]
    types: dict[str, pa.DataType]  # typed formats only
    part_types: dict[bytes, dict[str, pa.DataType]]  # each distinct part schema, read once
    typed: bool

    def matches(self, part: Part) -> bool:
        """Does the part already have the output's columns, in order (and types)? Then it is copied as is."""
        if list(part.columns) != self.columns:
            return False
        if not self.typed or part.schema is None:
            return True
        return all(typ == self.types[name] for name, typ in self.part_types[part.schema].items())


def layout(parts: Sequence[Part], typed: bool) -> Layout:
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
        if not typed or part.schema is None or part.schema in part_types:
            continue
        part_types[part.schema] = {field.name: field.type for field in schema_of(part.schema)}
        for name, typ in part_types[part.schema].items():
            known = types.get(name)
            joined = typ if known is None else unify_types(known, typ)
            if joined is None:  # the driver refuses such parts before they are committed
                raise ValueError(f"column {name!r}: {known} and {typ} from mini-batch {part.mini_batch}")
            types[name] = joined
    return Layout(columns, types, part_types, typed)


def assemble(
    parts: Sequence[Part | tuple[Any, ...]], target_url: str, fmt: str, storage_options: Mapping[str, Any]
) -> None:
    """Concatenates committed parts (index, url, columns[, schema]) in mini-batch order into `target_url`,
    each in the job's one schema, with the format `fmt`'s `concat`.

    The final file appears at once (temp name, then rename), so a reader never sees a half-written output.
    """
    output_format = get_format(fmt)
    fs, target = filesystem(target_url, storage_options)
    if getattr(parts, "in_order", False):  # a commit log's parts: in order, read from disk as they are used
        ordered = cast("Sequence[Part]", parts)
    else:
        ordered = sorted((Part(*p) for p in parts), key=lambda p: p.mini_batch)
    shape = layout(ordered, output_format.typed)
    tmp = target + ".assembling"
    try:
        with fs.open(tmp, "wb") as out:
            output_format.concat(ordered, shape, out, storage_options)
        fs.mv(tmp, target)
    except BaseException:  # a full disk, a bad part: the partial file is never left to look like output
        with contextlib.suppress(OSError):
            fs.rm(tmp)
        raise
