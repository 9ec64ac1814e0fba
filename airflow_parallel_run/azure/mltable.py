"""MLTable inputs: an Azure ML `MLTable` file (or the folder holding one) read as its YAML says.

An MLTable names data (`paths`: `file`, `folder`, `pattern`, relative to the MLTable's folder) and how to read it
(`transformations`: `read_delimited`, `read_parquet`, `read_json_lines`, then column and row steps). `load_mltable`
parses it with a YAML library and turns it into the engine's own description of the same data: a
`TabularDataset` with the matching read options when a read transformation is given, else a `FileDataset` of
the paths. What the YAML asks beyond reading (a `Path` column, columns from `extract_columns_from_partition_format`,
`drop_columns`/`keep_columns`, `skip`/`take`, generic `Column1..n` names for `no_header`) is kept as
`ColumnSteps`: `ColumnSteps.apply` is what run() must see of one file's rows, and `MLTable.engine_dataset()`
refuses, naming them, the steps that change what run() receives until the reader applies them. Every other
transformation (`filter`, `convert_column_types`, `take_random_sample`, `read_delta_lake`, ...) is refused by
name; nothing in an MLTable is ignored silently.

The MLTable file itself is never data: a `folder` or `pattern` path that would list it (`folder: ./`, the common
form) is narrowed to the entries beside it.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import yaml

from airflow_parallel_run.core import ConfigError, FileDataset, InputError, TabularDataset

if TYPE_CHECKING:
    import pandas as pd

MLTABLE_FILE = "MLTable"

#: MLTable's encoding names -> Python codecs. UTF-16/32 are listed so the refusal can say why.
ENCODINGS = {
    "utf8": "utf-8",
    "utf-8": "utf-8",
    "utf8bom": "utf-8-sig",
    "utf-8 bom": "utf-8-sig",
    "ascii": "ascii",
    "iso88591": "iso-8859-1",
    "iso-8859-1": "iso-8859-1",
    "latin1": "latin-1",
    "latin-1": "latin-1",
    "windows1252": "cp1252",
    "windows-1252": "cp1252",
}
_WIDE_ENCODINGS = ("utf16", "utf-16", "utf32", "utf-32")
HEADERS = ("all_files_same_headers", "all_files_different_headers", "from_first_file", "no_header")
PATH_COLUMN = "Path"

#: Transformations an MLTable may hold that are refused, with what to do instead.
REFUSED_TRANSFORMATIONS = {
    "read_delta_lake": "Delta Lake tables are not read; export the version you need to Parquet",
    "filter": "filter rows in run() (the expression language of MLTable is not evaluated)",
    "convert_column_types": "convert types in run() (e.g. pandas astype / to_datetime)",
    "take_random_sample": "sample in run(), or prepare a sampled copy of the data",
    "select_partitions": "list the partitions' files in paths",
    "summarize": "aggregate in run()",
}
#: Top-level keys with no effect on what is read (listed by `MLTable.notes`).
_NOTED_KEYS = {
    "$schema": None,
    "type": None,
    "metadata": "metadata is not used",
    "traits": "traits (index_columns, timestamp_column) are not used",
}


def _where(source: str, key: str) -> str:
    return f"MLTable {source}: {key}"


# -- column and row steps ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ColumnSteps:
    """What an MLTable asks of the rows after reading them, in the MLTable's order.

    `path_column` adds `Path` (the file the row came from); `partition_columns` adds one string column per key
    of `extract_columns_from_partition_format`, after the file's own columns; `generic_names` names the columns
    of a `no_header` file Column1, Column2, ... as MLTable does; `selections` are the `drop_columns` /
    `keep_columns` steps in order; `skip`/`take` cut a window of rows from the whole table (`RowWindow`).
    """

    path_column: bool = False
    partition_columns: tuple[str, ...] = ()
    generic_names: bool = False
    selections: tuple[tuple[str, tuple[str, ...]], ...] = ()  # ("drop" | "keep", columns)
    skip: int = 0
    take: int | None = None

    def added_columns(self) -> tuple[str, ...]:
        return ((PATH_COLUMN,) if self.path_column else ()) + self.partition_columns

    def changes_columns(self) -> list[str]:
        """The steps that change the columns run() receives; [] when the added columns are all dropped again."""
        added = set(self.added_columns())
        changes: list[str] = []
        for kind, columns in self.selections:
            if kind == "keep" or set(columns) - added:
                changes.append(f"{kind}_columns {list(columns)}")
            added -= set(columns)
        if self.path_column and PATH_COLUMN in added:
            changes.insert(0, "include_path_column: true")
        partition_left = [c for c in self.partition_columns if c in added]
        if partition_left:
            changes.insert(0, f"extract_columns_from_partition_format (adds {partition_left})")
        if self.generic_names:
            changes.append("header: no_header (names the columns Column1, Column2, ...)")
        return changes

    def changes_rows(self) -> list[str]:
        return ([f"skip: {self.skip}"] if self.skip else []) + (
            [f"take: {self.take}"] if self.take is not None else []
        )

    def is_identity(self) -> bool:
        return not self.changes_columns() and not self.changes_rows()

    def apply(self, frame: pd.DataFrame, url: str, partition_values: Mapping[str, str]) -> pd.DataFrame:
        """The rows of one file as the MLTable defines them (skip/take are the table's: see `RowWindow`)."""
        frame = frame.copy()
        if self.generic_names:
            frame.columns = [f"Column{i + 1}" for i in range(len(frame.columns))]
        if self.path_column:
            frame[PATH_COLUMN] = url
        for key in self.partition_columns:
            if key not in partition_values:
                raise InputError(
                    f"file {url!r} has no value for partition column {key!r} of the MLTable's "
                    "extract_columns_from_partition_format"
                )
            frame[key] = partition_values[key]
        for kind, columns in self.selections:
            missing = [c for c in columns if c not in frame.columns]
            if missing:
                raise InputError(
                    f"file {url!r}: {kind}_columns names {missing}, which the table does not have (its columns: "
                    f"{[str(c) for c in frame.columns]})"
                )
            frame = frame.drop(columns=list(columns)) if kind == "drop" else frame[list(columns)]
        return frame

    @property
    def window(self) -> RowWindow:
        return RowWindow(self.skip, None if self.take is None else self.skip + self.take)


@dataclass(frozen=True)
class RowWindow:
    """Rows [start, stop) of the whole table (stop None: to the end): MLTable's `skip`, then `take`."""

    start: int = 0
    stop: int | None = None

    def within(self, first_row: int, rows: int) -> tuple[int, int]:
        """The part of a run of `rows` rows starting at table row `first_row` inside the window, as offsets
        into that run (start == end when none of it is)."""
        lo = min(max(self.start - first_row, 0), rows)
        hi = rows if self.stop is None else min(max(self.stop - first_row, 0), rows)
        return lo, max(lo, hi)


# -- the MLTable ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MLTable:
    """A parsed MLTable: where its data is, how it is read, and what is asked beyond reading."""

    source: str  # the MLTable file
    paths: tuple[str, ...]  # absolute local paths, globs or fsspec URLs
    read: str | None  # "delimited" | "parquet" | "json_lines" | None (the paths are files)
    separator: str = ","
    header: str = "all_files_same_headers"
    encoding: str = "utf-8"
    partition_format: str | None = None
    columns: ColumnSteps = field(default_factory=ColumnSteps)
    notes: tuple[str, ...] = ()  # what in the file has no effect (metadata, traits)
    storage_options: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def kind(self) -> str:
        return "file" if self.read is None else "tabular"

    def locations(self) -> tuple[str, ...]:
        return self.paths

    @property
    def dataset(self) -> FileDataset | TabularDataset:
        """The engine's dataset reading the same files with the same options (column steps aside)."""
        options = dict(self.storage_options)
        if self.read is None:
            return FileDataset(self.paths, self.partition_format, options)
        fmt = {"delimited": "csv", "parquet": "parquet", "json_lines": "jsonl"}[self.read]
        return TabularDataset(
            self.paths,
            fmt,
            separator=self.separator,
            header=self.header != "no_header",
            encoding=self.encoding,
            partition_format=self.partition_format,
            storage_options=options,
        )

    def engine_dataset(self) -> Any:
        """The input the engine reads: `dataset` when the MLTable asks nothing beyond reading its files, else an
        `MLTableDataset` applying its column steps to each file's rows. Skip/take windows are refused."""
        rows = self.columns.changes_rows()
        if rows:
            raise ConfigError(
                _where(self.source, "transformations"),
                rows,
                "steps that keep every row (skip and take windows of the table are not read yet: remove them, "
                "or cut the rows in run())",
            )
        columns = self.columns
        if self.read is None or not (columns.added_columns() or columns.selections or columns.generic_names):
            return self.dataset
        from .mltable_source import MLTableDataset  # it imports this module

        dataset = self.dataset
        assert isinstance(dataset, TabularDataset)
        return MLTableDataset(self.source, dataset, columns)


def is_mltable(path: str, storage_options: Mapping[str, Any] | None = None) -> bool:
    """True for a file named `MLTable` or a folder holding one (local or fsspec URL)."""
    try:
        return _mltable_file(path, storage_options or {}) is not None
    except InputError:
        return False


def _fs(path: str, storage_options: Mapping[str, Any]) -> tuple[Any, str]:
    from fsspec.core import url_to_fs

    try:
        return url_to_fs(path, **dict(storage_options))
    except (ValueError, ImportError) as exc:
        raise InputError(f"MLTable {path!r} cannot be opened: {exc}") from exc


def _is_url(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _mltable_file(path: str, storage_options: Mapping[str, Any]) -> str | None:
    path = path.removeprefix("file://")
    if not _is_url(path):
        if os.path.basename(path.rstrip(os.sep)) == MLTABLE_FILE and os.path.isfile(path):
            return os.path.abspath(path)
        candidate = os.path.join(path, MLTABLE_FILE)
        return os.path.abspath(candidate) if os.path.isfile(candidate) else None
    fs, fs_path = _fs(path, storage_options)
    try:
        if posixpath.basename(fs_path.rstrip("/")) == MLTABLE_FILE and fs.isfile(fs_path):
            return path
        candidate = posixpath.join(fs_path.rstrip("/"), MLTABLE_FILE)
        return path.rstrip("/") + "/" + MLTABLE_FILE if fs.isfile(candidate) else None
    except Exception as exc:  # credentials, network: name the input
        raise InputError(f"MLTable {path!r} cannot be read: {type(exc).__name__}: {exc}") from exc


def load_mltable(path: str, storage_options: Mapping[str, Any] | None = None) -> MLTable:
    """Parses the MLTable at `path` (the `MLTable` file or its folder; a local path or an fsspec URL)."""
    options = dict(storage_options or {})
    source = _mltable_file(path, options)
    if source is None:
        raise InputError(f"{path!r} is not an MLTable: no file named {MLTABLE_FILE} there")
    try:
        if _is_url(source):
            fs, fs_path = _fs(source, options)
            with fs.open(fs_path, "rb") as handle:
                text = handle.read()
        else:
            with open(source, "rb") as handle:
                text = handle.read()
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"MLTable {source}", "<file>", f"valid YAML ({exc})") from exc
    except OSError as exc:
        raise InputError(f"MLTable {source!r} cannot be read: {exc}") from exc
    return parse_mltable(document, source, options)


def parse_mltable(document: Any, source: str, storage_options: Mapping[str, Any] | None = None) -> MLTable:
    """An MLTable from its parsed YAML; `source` (the file) anchors relative paths and names it in errors."""
    if not isinstance(document, Mapping):
        raise ConfigError(
            _where(source, "<file>"), type(document).__name__, "a YAML mapping with a paths list"
        )
    notes: list[str] = []
    for key in document:
        if key in ("paths", "transformations"):
            continue
        if key in _NOTED_KEYS:
            if _NOTED_KEYS[key]:
                notes.append(f"MLTable {source}: {_NOTED_KEYS[key]}")
            continue
        if key == "query_source":
            raise ConfigError(
                _where(source, "query_source"), document[key], "paths (SQL sources are not read)"
            )
        raise ConfigError(
            _where(source, str(key)),
            document[key],
            "the MLTable keys paths, transformations, type, metadata, traits",
        )
    if document.get("type", "mltable") != "mltable":
        raise ConfigError(_where(source, "type"), document.get("type"), "mltable")
    options = dict(storage_options or {})
    paths = _resolve_paths(document.get("paths"), source, options)
    reading = _Reading(source)
    transformations = document.get("transformations") or []
    if not isinstance(transformations, list):
        raise ConfigError(_where(source, "transformations"), transformations, "a list of transformations")
    for position, item in enumerate(transformations):
        reading.add(position, item)
    return reading.table(paths, notes, options)


class _Reading:
    """Folds the transformation list into read options and column steps, refusing what cannot be honoured."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.read: str | None = None
        self.read_options: dict[str, Any] = {}
        self.partition_format: str | None = None
        self.partition_columns: tuple[str, ...] = ()
        self.selections: list[tuple[str, tuple[str, ...]]] = []
        self.start = 0
        self.stop: int | None = None
        self.steps = 0

    def where(self, position: int, key: str = "") -> str:
        return _where(self.source, f"transformations[{position}]" + (f".{key}" if key else ""))

    def add(self, position: int, item: Any) -> None:
        if isinstance(item, str):
            item = {item: None}
        if not isinstance(item, Mapping) or len(item) != 1:
            raise ConfigError(self.where(position), item, "one transformation, e.g. {read_delimited: {...}}")
        ((name, value),) = item.items()
        where = self.where(position, str(name))
        if name in ("read_delimited", "read_parquet", "read_json_lines"):
            if self.read is not None or self.steps:
                raise ConfigError(where, value, "one read transformation, before all others")
            self.read = name.removeprefix("read_")
            self.read_options = _read_options(self.read, value, where)
        elif name == "extract_columns_from_partition_format":
            if self.partition_format is not None:
                raise ConfigError(where, value, "one extract_columns_from_partition_format")
            self.partition_format, self.partition_columns = _partition_format(value, where)
        elif name in ("drop_columns", "keep_columns"):
            self.selections.append((name.removesuffix("_columns"), _column_names(value, where)))
        elif name in ("skip", "take"):
            count = value
            minimum = 0 if name == "skip" else 1
            if isinstance(count, bool) or not isinstance(count, int) or count < minimum:
                raise ConfigError(where, count, f"an integer >= {minimum}")
            if name == "skip":  # skip k, then take n: rows [k, k + n); take n, then skip k: [k, n)
                self.start = self.start + count if self.stop is None else min(self.start + count, self.stop)
            else:
                self.stop = self.start + count if self.stop is None else min(self.stop, self.start + count)
        elif name in REFUSED_TRANSFORMATIONS:
            raise ConfigError(where, value, f"not supported: {REFUSED_TRANSFORMATIONS[name]}")
        else:
            raise ConfigError(
                where,
                value,
                "one of read_delimited, read_parquet, read_json_lines, extract_columns_from_partition_format, "
                "drop_columns, keep_columns, skip, take",
            )
        self.steps += 1

    def table(self, paths: tuple[str, ...], notes: list[str], options: dict[str, Any]) -> MLTable:
        opts = self.read_options
        if self.read is None and (self.selections or self.start or self.stop is not None):
            raise ConfigError(
                _where(self.source, "transformations"),
                [kind + "_columns" for kind, _ in self.selections]
                + (["skip/take"] if self.start or self.stop else []),
                "a read_delimited, read_parquet or read_json_lines transformation first: without one the "
                "MLTable's paths are files, which have no columns or rows",
            )
        header = opts.get("header", "all_files_same_headers")
        if header == "from_first_file" and not (
            len(paths) == 1 and not _has_glob(paths[0]) and _is_file(paths[0], options)
        ):
            raise ConfigError(
                _where(self.source, "read_delimited.header"),
                header,
                "all_files_same_headers or all_files_different_headers (each file's first row is its header), or "
                "no_header; from_first_file (later files' first rows are data) is read only from a single file",
            )
        take = None if self.stop is None else self.stop - self.start
        steps = ColumnSteps(
            path_column=bool(opts.get("include_path_column", False)),
            partition_columns=self.partition_columns if self.read is not None else (),
            generic_names=header == "no_header",
            selections=tuple(self.selections),
            skip=self.start,
            take=take,
        )
        return MLTable(
            source=self.source,
            paths=paths,
            read=self.read,
            separator=opts.get("delimiter", ","),
            header=header,
            encoding=opts.get("encoding", "utf-8"),
            partition_format=self.partition_format,
            columns=steps,
            notes=tuple(notes),
            storage_options=options,
        )


_READ_KEYS = {
    "delimited": (
        "delimiter",
        "header",
        "encoding",
        "empty_as_string",
        "include_path_column",
        "infer_column_types",
        "support_multi_line",
    ),
    "parquet": ("include_path_column",),
    "json_lines": ("encoding", "include_path_column", "invalid_lines"),
}


def _read_options(read: str, value: Any, where: str) -> dict[str, Any]:
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise ConfigError(where, value, "a mapping of read options")
    allowed = _READ_KEYS[read]
    options: dict[str, Any] = {}
    for key, item in value.items():
        here = f"{where}.{key}"
        if key not in allowed:
            raise ConfigError(here, item, f"one of the read_{read} options {', '.join(allowed)}")
        flags = ("include_path_column", "empty_as_string", "infer_column_types", "support_multi_line")
        if key in flags and not isinstance(item, bool):
            raise ConfigError(here, item, "true or false")
        if key == "delimiter":
            if not isinstance(item, str) or len(item) != 1 or not item.isascii() or item in '\r\n"':
                raise ConfigError(here, item, "one ASCII character other than a quote or a newline")
        elif key == "header":
            if item not in HEADERS:
                raise ConfigError(here, item, ", ".join(HEADERS))
        elif key == "encoding":
            name = str(item).strip().lower()
            if name in _WIDE_ENCODINGS:
                raise ConfigError(
                    here,
                    item,
                    f"{', '.join(sorted(set(ENCODINGS)))} (UTF-16/32 files cannot be split by bytes)",
                )
            if name not in ENCODINGS:
                raise ConfigError(here, item, ", ".join(sorted(set(ENCODINGS))))
            item = ENCODINGS[name]
        elif key == "empty_as_string" and item:
            raise ConfigError(here, item, "false (empty fields are read as missing values)")
        elif key == "infer_column_types" and not item:
            raise ConfigError(here, item, "true (column types are inferred from the values)")
        elif key == "invalid_lines" and item != "error":
            raise ConfigError(here, item, "error (a line that is not JSON fails its mini-batch)")
        options[key] = item
    return options


def _partition_format(value: Any, where: str) -> tuple[str, tuple[str, ...]]:
    """The format string and its column names; YAML's `{a}/{b}.csv` without quotes parses as a mapping."""
    if isinstance(value, Mapping) and set(value) == {"partition_format"}:
        value = value["partition_format"]
    elif isinstance(value, Mapping) and len(value) == 1 and next(iter(value.values())) is None:
        value = "{" + str(next(iter(value))) + "}"  # `{timestamp:yyyy/MM/dd}` unquoted
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(where, value, "a partition format string, e.g. '{Store}/{Brand}/{file_name}.csv'")
    import re

    names = re.findall(r"\{([^{}]*)\}", value)
    dated = [n for n in names if ":" in n]
    if dated:
        raise ConfigError(
            where,
            value,
            f"{{column}} parts only; date-time parts ({', '.join('{' + n + '}' for n in dated)}) are not read: use "
            "{year}/{month}/{day} and combine them in run()",
        )
    return value, tuple(dict.fromkeys(names))


def _column_names(value: Any, where: str) -> tuple[str, ...]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise ConfigError(where, value, "a column name or a non-empty list of them")
    return tuple(names)


def _has_glob(path: str) -> bool:
    return any(c in path for c in "*?[")


def _is_file(path: str, options: Mapping[str, Any]) -> bool:
    if not _is_url(path):
        return os.path.isfile(path)
    fs, fs_path = _fs(path, options)
    return bool(fs.isfile(fs_path))


# -- paths ---------------------------------------------------------------------------------------------------
def _resolve_paths(entries: Any, source: str, options: Mapping[str, Any]) -> tuple[str, ...]:
    if not isinstance(entries, list) or not entries:
        raise ConfigError(
            _where(source, "paths"),
            entries,
            "a non-empty list of {file: ...}, {folder: ...} or {pattern: ...}",
        )
    resolved: list[str] = []
    for position, entry in enumerate(entries):
        where = _where(source, f"paths[{position}]")
        if not isinstance(entry, Mapping) or len(entry) != 1:
            raise ConfigError(where, entry, "one of {file: PATH}, {folder: PATH}, {pattern: GLOB}")
        ((kind, location),) = entry.items()
        if kind not in ("file", "folder", "pattern") or not isinstance(location, str) or not location.strip():
            raise ConfigError(where, entry, "one of {file: PATH}, {folder: PATH}, {pattern: GLOB}")
        location = location.strip()
        if location.startswith("azureml:"):
            raise ConfigError(
                f"{where}.{kind}",
                location,
                "a path relative to the MLTable, an absolute path or an fsspec URL (an azureml: datastore URI "
                "cannot be reached from here: copy the data, or point the MLTable at the storage URL)",
            )
        absolute = _absolute(location, source)
        if kind == "file" and _has_glob(location):
            raise ConfigError(f"{where}.file", location, "a file path (use pattern: for globs)")
        resolved.extend(_without_mltable(absolute, kind, source, options))
    return tuple(resolved)


def _absolute(location: str, source: str) -> str:
    location = location.removeprefix("file://")
    if _is_url(location):
        return location
    base = posixpath.dirname(source) if _is_url(source) else os.path.dirname(source)
    if _is_url(source):
        if location.startswith("/"):
            raise ConfigError(
                f"MLTable {source}: paths", location, "paths relative to a remote MLTable, or full URLs"
            )
        scheme, _, rest = base.partition("://")
        return f"{scheme}://{posixpath.normpath(posixpath.join(rest, location))}"
    return os.path.normpath(os.path.join(base, os.path.expanduser(location)))


def _without_mltable(location: str, kind: str, source: str, options: Mapping[str, Any]) -> list[str]:
    """`location`, or globs for what it holds without the MLTable file when it would list that file.

    The replacements keep `location`'s folder as their glob root, so paths inside them stay relative to the
    same folder (partition formats match as they would on the folder itself).
    """
    if kind == "file":
        if location == source:
            raise ConfigError(f"MLTable {source}: paths", location, "data files, not the MLTable file itself")
        return [location]
    fs, _ = _fs(location, options)
    remote = _is_url(source)
    sep = "/" if remote else os.sep
    if kind == "folder":
        root = location.rstrip(sep)
        if not source.startswith(root + sep):
            return [location]
        matches = [root]
    else:
        first = min(i for i, c in enumerate(location) if c in "*?[")
        root = location[: location.rfind(sep, 0, first)]
        if not source.startswith(root + sep):
            return [location]
        found = fs.glob(fs._strip_protocol(location))
        matches = sorted(fs.unstrip_protocol(m) if remote else m for m in found)
        if source not in matches and not any(source.startswith(m + sep) for m in matches):
            return [location]
    kept: list[str] = []
    for match in matches:
        if match == source:
            continue
        kept.extend(_beside(match, source, fs, sep) if source.startswith(match + sep) else [match])
    if not kept:
        raise InputError(f"MLTable {source}: {kind} {location!r} holds nothing but the MLTable file")
    return [_literal_glob(root, entry[len(root) + 1 :], sep) for entry in kept]


def _beside(folder: str, source: str, fs: Any, sep: str) -> list[str]:
    """The entries of `folder` except the branch that holds the MLTable file, whose siblings are taken instead,
    down to the file; names starting with '.' or '_' are skipped, as in any folder input."""
    entries: list[str] = []
    current = folder
    parts = source[len(folder) + 1 :].split(sep)
    for depth, part in enumerate(parts):
        listed = fs.ls(fs._strip_protocol(current), detail=False)
        for name in sorted(posixpath.basename(str(p).rstrip("/")) for p in listed):
            if name != part and not name.startswith((".", "_")):
                entries.append(current + sep + name)
        if depth < len(parts) - 1:
            current = current + sep + part
    return entries


_GLOB_SPECIAL = "*?["
_UNSAFE_IN_BRACKETS = "!^]-\\"


def _literal_glob(root: str, relative: str, sep: str) -> str:
    """A glob that matches exactly `root/relative` and whose glob root is `root`: special characters are put in
    brackets, and so is one character of the first segment (a path without a glob would be its own root)."""
    out = []
    bracketed = False
    first_segment = True
    for char in relative:
        if char == sep:
            first_segment = False
            out.append(char)
        elif char in _GLOB_SPECIAL or (first_segment and not bracketed and char not in _UNSAFE_IN_BRACKETS):
            out.append(f"[{char}]")
            bracketed = bracketed or first_segment
        else:
            out.append(char)
    if (
        not bracketed
    ):  # a first segment of only !^]-\: its parent becomes the root (rare; the path still reads)
        return root + sep + relative
    return root + sep + "".join(out)


def mltable_input(path: str, storage_options: Mapping[str, Any] | None = None) -> Any:
    """The engine dataset of the MLTable at `path` (see `MLTable.engine_dataset`)."""
    return load_mltable(path, storage_options).engine_dataset()


__all__: Sequence[str] = (
    "ColumnSteps",
    "MLTABLE_FILE",
    "MLTable",
    "RowWindow",
    "is_mltable",
    "load_mltable",
    "mltable_input",
    "parse_mltable",
)
