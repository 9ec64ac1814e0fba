"""JSON Lines records typed with one set of field types per job, so that no mini-batch reads a field its own way.

Each slice of a JSON Lines file is parsed on its own; typed by what a slice happens to hold, an int field
with a null in one mini-batch was float64 there and int64 in its neighbours (`1.0` in one output part,
`1` in another). So the types are decided once, when the job starts (core/inputs/tabular_types.py), from
the records of the first `SAMPLE_BYTES` of the input's first file, `column_types` given by the user
winning field by field; every slice is then read with exactly these types.

The rule, from the sample's non-null values of a field: only ints -> int64 (pandas' nullable Int64);
ints and floats -> float64; only true/false -> bool (nullable boolean); only strings -> string; no value
-> string. Anything else (objects, lists, a field mixing kinds, an int beyond int64) -> "object": pandas
gets the values as Python objects (dicts, lists, str, int, float, bool, None), pyarrow a string column
holding each value's JSON text, so every value stays exact. A later value that does not fit its field's
type (1.5 or 1.0 in an int field, "7" in a number field) fails its mini-batch naming the file, the byte
range, the line, the field, the type and the fix (`column_types`); a field the sample did not have fails
the same way: it is never typed by one mini-batch alone.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import InputError
from ..minibatch import TabularSlice

#: what `TabularDataset.from_json_lines_files(column_types=...)` takes besides Arrow's scalar types
OBJECT = "object"
_BLANK = " \t\n\x0b\x0c\r"  # the bytes of a blank line for the planner (core/inputs/tabular_scan.py)
_INT64 = (-(2**63), 2**63 - 1)


class Records:
    """The records of a byte range of a JSON Lines file: objects, with the 1-based line (or index) each
    was on, for errors."""

    def __init__(self, objects: list[dict[str, Any]], lines: list[int]) -> None:
        self.objects, self.lines = objects, lines


def parse_records(data: bytes, dataset: Any, where: str, strict: bool = True) -> Records:
    """Every non-blank line of `data` as a JSON object (Python's parser: ints of any size, floats exactly
    as written). `strict=False` (the job's sample) skips lines that do not parse: their slice fails when it
    is read."""
    try:
        text = data.decode(dataset.encoding)
    except (UnicodeDecodeError, LookupError) as exc:
        raise InputError(f"{where}: cannot parse as jsonl: {exc}") from exc
    objects: list[dict[str, Any]] = []
    lines: list[int] = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip(_BLANK):
            continue
        try:
            value = json.loads(line)
        except ValueError as exc:
            if not strict:
                continue
            raise InputError(f"{where}: cannot parse as jsonl: line {number} of the range: {exc}") from exc
        if not isinstance(value, dict):
            if not strict:
                continue
            raise InputError(
                f"{where}: cannot parse as jsonl: line {number} of the range is a JSON "
                f"{type(value).__name__}, not an object (one record of named fields per line)"
            )
        objects.append(value)
        lines.append(number)
    return Records(objects, lines)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int" if _INT64[0] <= value <= _INT64[1] else "big int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    return type(value).__name__  # dict, list


def decide_types(records: Records) -> dict[str, str]:
    """Field name -> type name for the fields of `records`, in the order they first appear (the rule in the
    module's docstring)."""
    kinds: dict[str, set[str]] = {}
    for record in records.objects:
        for name, value in record.items():
            seen = kinds.setdefault(name, set())
            if value is not None:
                seen.add(_kind(value))
    return {name: _type_of(seen) for name, seen in kinds.items()}


def _type_of(kinds: set[str]) -> str:
    if not kinds or kinds == {"string"}:
        return "string"
    if kinds == {"int"}:
        return "int64"
    if kinds <= {"int", "float"}:
        return "float64"
    if kinds == {"bool"}:
        return "bool"
    return OBJECT


def columns(
    records: Records, types: Mapping[str, str], dataset_where: str, first: TabularSlice
) -> dict[str, list[Any]]:
    """The values of every field of `types` (None where a record lacks it), in the order of `types`; a
    field not in `types` fails (see the module's docstring)."""
    values: dict[str, list[Any]] = {name: [] for name in types}
    for index, record in enumerate(records.objects):
        for name, column in values.items():
            column.append(record.get(name))
        if len(record) > len(values) or any(name not in values for name in record):
            name = next(n for n in record if n not in values)
            raise InputError(
                f"{dataset_where}: field {name!r} ({_line(records, index, first)}) was not in the first 1 MiB "
                "of the first file, from which the job's field types are decided, nor in column_types, so it "
                "has no type that every mini-batch reads it with; give its type, e.g. "
                f"TabularDataset.from_json_lines_files(..., column_types={{{name!r}: "
                f"{_suggest(set(), record[name])!r}}})"
            )
    return values


def typed_array(
    name: str, type_name: str, values: list[Any], records: Records, where: str, first: TabularSlice
) -> Any:
    """A field's values as an Arrow array of its decided type (an "object" field: each value's JSON text);
    a value of another kind fails (nothing is converted but ints to a float field, exactly)."""
    import pyarrow as pa

    if type_name == OBJECT:
        texts = [None if v is None else json.dumps(v, ensure_ascii=False) for v in values]
        try:
            return pa.array(texts, pa.string())
        except UnicodeEncodeError:  # a lone surrogate ("\ud800") has no UTF-8: that value's text escaped
            escaped = [
                t if t is None or _has_utf8(t) else json.dumps(v) for t, v in zip(texts, values, strict=True)
            ]
            return pa.array(escaped, pa.string())
    target = pa.type_for_alias(type_name)
    fits = _fits(target)
    for index, value in enumerate(values):
        if value is not None and not fits(value):
            raise _misfit(where, name, type_name, value, records, index, first)
    try:
        if pa.types.is_temporal(target):
            return pa.array(values, pa.string()).cast(target)
        return pa.array(values, target)
    except UnicodeEncodeError as exc:
        index = next(i for i, v in enumerate(values) if isinstance(v, str) and not _has_utf8(v))
        lone = next(c for c in values[index] if "\ud800" <= c <= "\udfff")
        raise InputError(
            f"{where}: field {name!r} ({_line(records, index, first)}) holds a string with a lone surrogate "
            f"({json.dumps(lone)}, an escape JSON allows), which is not Unicode text and has "
            "no UTF-8 form, so it cannot be a string value; give the field as "
            f"TabularDataset.from_json_lines_files(..., column_types={{{name!r}: 'object'}}) to have it as "
            "Python's str (pandas) or as JSON text (pyarrow)"
        ) from exc
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OverflowError) as exc:
        raise InputError(
            f"{where}: field {name!r} is {type_name} for every mini-batch of the job, but a value does not "
            f"fit it: {exc}; give this field's type, e.g. TabularDataset.from_json_lines_files(..., "
            f"column_types={{{name!r}: 'object'}})"
        ) from exc


def _has_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _fits(target: Any) -> Any:
    import pyarrow as pa

    if pa.types.is_integer(target):
        return lambda v: isinstance(v, int) and not isinstance(v, bool)
    if pa.types.is_floating(target):
        return lambda v: (
            isinstance(v, float) or (isinstance(v, int) and not isinstance(v, bool) and _exact_float(v))
        )
    if pa.types.is_boolean(target):
        return lambda v: isinstance(v, bool)
    return lambda v: isinstance(v, str)  # string, timestamp, date: text


def _exact_float(value: int) -> bool:
    """An int a float holds exactly (2**53 + 1 does not; 10**400 is no float at all)."""
    try:
        return float(value) == value
    except OverflowError:
        return False


def _suggest(decided: set[str], value: Any) -> str:
    kinds = {*decided, _kind(value)}
    return _type_of(kinds) if kinds <= {"int", "float"} or len(kinds) == 1 else OBJECT


def _misfit(
    where: str, name: str, type_name: str, value: Any, records: Records, index: int, first: TabularSlice
) -> InputError:
    decided = {"int64": {"int"}, "float64": {"float"}, "bool": {"bool"}, "string": {"string"}}.get(
        type_name, set()
    )
    shown = json.dumps(value, ensure_ascii=False)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return InputError(
        f"{where}: field {name!r} is {type_name} for every mini-batch of the job (decided once from the "
        f"start of the first file, or given with column_types), but {_line(records, index, first)} has "
        f"{shown} ({_kind(value)}), which is not converted silently; give this field's type, e.g. "
        f"TabularDataset.from_json_lines_files(..., column_types={{{name!r}: {_suggest(decided, value)!r}}})"
    )


def _line(records: Records, index: int, first: TabularSlice) -> str:
    number = records.lines[index]
    if first.first_line is not None:
        return f"line {first.first_line + number - 1}"
    return f"line {number} of the range"


def check_type_names(types: Mapping[str, Any]) -> str | None:
    """The first type name JSON Lines cannot be read as (None: all can)."""
    import pyarrow as pa

    for alias in types.values():
        if alias == OBJECT:
            continue
        t = pa.type_for_alias(alias)
        if not (
            pa.types.is_integer(t)
            or pa.types.is_floating(t)
            or pa.types.is_boolean(t)
            or pa.types.is_string(t)
            or pa.types.is_large_string(t)
            or pa.types.is_timestamp(t)
            or pa.types.is_date(t)
        ):
            return str(alias)
    return None


def read_range_records(slices: Sequence[TabularSlice], data: bytes, dataset: Any, where: str) -> Records:
    """The records of consecutive slices' bytes; exactly as many as the planner counted, or the mini-batch
    fails."""
    records = parse_records(data, dataset, where)
    planned = sum(s.rows for s in slices)
    if len(records.objects) != planned:
        raise InputError(
            f"{where}: found {len(records.objects)} JSON Lines records where the plan counted {planned}, so "
            "its records are not the ones planned and the mini-batch is not run (rows would be lost or "
            "invented). Did the file change after planning?"
        )
    return records
