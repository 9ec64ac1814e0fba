"""`TabularDataset`: delimited, Parquet or JSON Lines files; `run()` gets a pandas DataFrame per mini-batch."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import ConfigError, InputError
from ..minibatch import FileRef, MiniBatch, TabularSlice
from .listing import PathInput, as_paths, list_input
from .partitions import check_partition_format, group_by_keys, partition_regex, partition_values, path_of
from .source import PlanContext

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from .sql import SqlDataset

TABULAR_FORMATS = ("csv", "parquet", "jsonl")
_WHOLE_FILE = 1 << 62  # a target size no file reaches: one slice per file (partitioned mini-batches)


@dataclass(frozen=True)
class TabularDataset(PathInput):
    """Delimited, Parquet or JSON Lines files; `run()` gets a pandas DataFrame per mini-batch.

    Planned into slices of about `mini_batch_size` bytes that never cross a file (byte ranges of whole
    records for csv/jsonl, runs of row groups for parquet; core/inputs/tabular_scan.py), one mini-batch
    per slice (or one per combination of `partition_keys` values); read back slice by slice
    (core/inputs/tabular_read.py)."""

    paths: tuple[str, ...]
    format: str
    separator: str = ","
    header: bool = True
    encoding: str = "utf-8"
    partition_format: str | None = None
    storage_options: Mapping[str, Any] = field(default_factory=dict, repr=False)  # credentials
    # csv/jsonl: column name -> Arrow type name (jsonl: or "object") for every slice; the rest are inferred
    # once per job from the first file (core/inputs/tabular_types.py, tabular_jsonl.py), so every
    # mini-batch reads a column as the same type
    column_types: Mapping[str, str] | None = None
    # parquet, decided by the job from its files' statistics (leave None): the columns that may hold a missing
    # value in some planned row group. An integer or bool column outside it is numpy's int64/bool in every
    # mini-batch; one inside it (or every one, while None) pandas' nullable Int64/boolean
    # (core/inputs/tabular_types.py: `parquet_null_columns`)
    null_columns: tuple[str, ...] | None = None

    kind: ClassVar[str] = "tabular"

    def __post_init__(self) -> None:
        if self.format not in TABULAR_FORMATS:
            raise ConfigError("format", self.format, ", ".join(TABULAR_FORMATS))
        separator = self.separator
        if (
            not isinstance(separator, str)
            or len(separator) != 1
            or not separator.isascii()
            or separator in '\r\n"'
        ):
            # ASCII: the planner splits records at bytes, and Arrow's and pandas' C parsers take a one-byte separator
            raise ConfigError("separator", separator, "one ASCII character other than a quote or a newline")
        check_partition_format(self.partition_format)
        if self.column_types is not None:
            if self.format == "parquet":
                raise ConfigError(
                    "column_types",
                    self.column_types,
                    "None for a Parquet input (Parquet carries its types); given for csv and jsonl only",
                )
            from .tabular_types import check_column_types

            object.__setattr__(self, "column_types", check_column_types(self.column_types, self.format))
        if self.null_columns is not None:
            if self.format != "parquet":
                raise ConfigError("null_columns", self.null_columns, "None for csv and jsonl (Parquet only)")
            object.__setattr__(self, "null_columns", tuple(sorted(set(self.null_columns))))

    @classmethod
    def from_delimited_files(
        cls,
        path: str | Sequence[str],
        separator: str = ",",
        header: bool = True,
        encoding: str = "utf-8",
        partition_format: str | None = None,
        storage_options: Mapping[str, Any] | None = None,
        column_types: Mapping[str, str] | None = None,
    ) -> TabularDataset:
        """`column_types` ({"zip": "string", "when": "timestamp[s]"}) fixes the Arrow type of those columns;
        the others are inferred once from the first file (core/inputs/tabular_types.py)."""
        return cls(
            as_paths(path, "path"),
            "csv",
            separator,
            header,
            encoding,
            partition_format,
            dict(storage_options or {}),
            dict(column_types) if column_types is not None else None,
        )

    @classmethod
    def from_parquet_files(
        cls,
        path: str | Sequence[str],
        partition_format: str | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> TabularDataset:
        return cls(
            as_paths(path, "path"),
            "parquet",
            partition_format=partition_format,
            storage_options=dict(storage_options or {}),
        )

    @classmethod
    def from_json_lines_files(
        cls,
        path: str | Sequence[str],
        encoding: str = "utf-8",
        partition_format: str | None = None,
        storage_options: Mapping[str, Any] | None = None,
        column_types: Mapping[str, str] | None = None,
    ) -> TabularDataset:
        """`column_types` ({"score": "float64", "tags": "object"}) fixes the type of those fields; the
        others are decided once from the start of the first file (core/inputs/tabular_jsonl.py)."""
        return cls(
            as_paths(path, "path"),
            "jsonl",
            encoding=encoding,
            partition_format=partition_format,
            storage_options=dict(storage_options or {}),
            column_types=dict(column_types) if column_types is not None else None,
        )

    @classmethod
    def from_sql_query(
        cls,
        query: str,
        *,
        conn_id: str | None = None,
        url: str | None = None,
        key_column: str | Sequence[str] | None = None,
        rows_per_mini_batch: int | None = None,
        query_timeout: float = 30.0,
    ) -> SqlDataset:
        """Azure's TabularDataset.from_sql_query: rows of a PostgreSQL table or query, a DataFrame per
        mini-batch (keyset pages of `key_column`, or of the table's primary key; core/inputs/sql.py).
        `conn_id` names an Airflow connection (resolved when ParallelRunOperator runs); `url` is a
        database URL for the CLI and Python. Needs the `sql` extra (SQLAlchemy, psycopg2)."""
        from .sql import SqlDataset  # lazy: SQLAlchemy is an extra

        return SqlDataset.create(
            query,
            conn_id=conn_id,
            url=url,
            key_column=key_column,
            rows_per_mini_batch=rows_per_mini_batch,
            query_timeout=query_timeout,
        )

    def plan(self, ctx: PlanContext) -> Iterator[MiniBatch]:
        for path in self.paths:
            root, refs = list_input(path, dict(self.storage_options))
            if ctx.partition_keys:
                for values, files in group_by_keys(refs, root, self, ctx.partition_keys):
                    slices = tuple(s for ref in files for s in _slices(ref, self, _WHOLE_FILE))
                    yield ctx.batch(sum(s.rows for s in slices), slices=slices, partition_key_value=values)
                continue
            for pieces in _slices_of_files(refs, self, ctx.size):
                for piece in pieces:
                    yield ctx.batch(piece.rows, slices=(piece,))

    @property
    def types_from_first_file(self) -> bool:
        """csv and jsonl decide their column types from the first file's first slices alone
        (core/inputs/tabular_types.py), so a job of one such input may run its first mini-batches while its
        other files are still planned (core/driver/planning.py, `first_file`); Parquet decides `null_columns`
        over every file's footer, so its plan is whole first."""
        return self.format in ("csv", "jsonl")

    def with_column_types(self, batches: Sequence[MiniBatch]) -> TabularDataset:
        """This input with the column types every slice is read with (csv, jsonl: `column_types`; parquet:
        `null_columns`; core/inputs/tabular_types.py)."""
        from .tabular_types import resolve_column_types

        return resolve_column_types(self, batches)

    def read_table(self, batch: MiniBatch, scratch_dir: str) -> tuple[pa.Table, int]:
        """The mini-batch's slices as one pyarrow Table (`batch_format="pyarrow"`): Parquet row groups as
        read, CSV as Arrow parsed it; partition key columns appended as string columns."""
        import pyarrow as pa

        from .tabular_read import read_tabular_table

        if not self.partition_format and not batch.partition_key_value:
            table = read_tabular_table(batch.slices, self)
            return table, table.num_rows
        tables = []
        for url, group in slices_by_file(batch.slices):
            table = read_tabular_table(group, self)
            columns = partition_columns(self, url, batch)
            _check_clash(table.column_names, url, columns, self.partition_format)
            for key, value in columns.items():
                table = table.append_column(key, pa.array([value] * table.num_rows, pa.string()))
            tables.append(table)
        table = tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="permissive")
        return table, table.num_rows

    def read(self, batch: MiniBatch, scratch_dir: str) -> tuple[pd.DataFrame, int]:
        """The mini-batch's slices as one DataFrame, with the partition key columns appended as Azure's
        partitioned TabularDataset has them (see `partition_columns`)."""
        # imported here: pandas and pyarrow cost ~0.5 s of CPU, which a process of a files job never needs
        from .tabular_read import read_tabular

        if not self.partition_format and not batch.partition_key_value:
            frame = read_tabular(batch.slices, self)
            return frame, len(frame)
        frames = [
            with_columns(
                read_tabular(group, self), url, partition_columns(self, url, batch), self.partition_format
            )
            for url, group in slices_by_file(batch.slices)
        ]
        frame = frames[0] if len(frames) == 1 else _concat(frames)
        return frame, len(frame)


def slices_by_file(slices: Sequence[TabularSlice]) -> Iterator[tuple[str, list[TabularSlice]]]:
    """Runs of consecutive slices of the same file, with its URL."""
    group: list[TabularSlice] = []
    for piece in slices:
        if group and group[-1].url != piece.url:
            yield group[0].url, group
            group = []
        group.append(piece)
    if group:
        yield group[0].url, group


def partition_columns(dataset: TabularDataset, url: str, batch: MiniBatch) -> dict[str, str]:
    """The columns a file's rows get, as strings: every `{key}` of the dataset's `partition_format`, from
    the file's path (Azure's partitioned TabularDataset has them as columns, in the format's order), else
    the mini-batch's `partition_key_value` (hive `key=value` folders grouped by `partition_keys`)."""
    if not dataset.partition_format:
        return dict(batch.partition_key_value)
    regex, keys = partition_regex(dataset.partition_format)
    values = partition_values("", regex, path_of(url))
    if set(keys) - set(values):
        raise InputError(
            f"file {url!r} does not match partition_format {dataset.partition_format!r}, so its rows have no "
            f"values for the columns {keys}"
        )
    return {key: values[key] for key in keys}


def with_columns(
    frame: pd.DataFrame, url: str, columns: Mapping[str, str], partition_format: str | None
) -> pd.DataFrame:
    """`frame` with `columns` appended (string values); a column the file already has is an error, never
    overwritten."""
    _check_clash(list(frame.columns), url, columns, partition_format)
    for key, value in columns.items():
        frame[key] = value
    return frame


def _check_clash(
    names: Sequence[Any], url: str, columns: Mapping[str, str], partition_format: str | None
) -> None:
    clash = [key for key in columns if key in names]
    if clash:
        source = f"partition_format {partition_format!r}" if partition_format else "partition_keys"
        raise InputError(
            f"file {url!r} already has a column named {clash} ({source} appends a column of that name to the "
            "rows): rename the key in the format or the column in the file"
        )


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    import pandas as pd

    return pd.concat(frames, ignore_index=True)


def _slices(ref: FileRef, dataset: TabularDataset, size: int) -> list[TabularSlice]:
    from .tabular_scan import plan_tabular_file

    slices = plan_tabular_file(ref.url, ref.size or 0, dataset, size)
    if not ref.identity:
        return slices
    # an object's slices carry its listed identity: the worker checks what it read against it
    return [replace(s, identity=ref.identity) for s in slices]


# Files scanned at once when splitting tabular input: the scan (numpy, file reads) releases the GIL, so
# several files use several cores (or overlap remote reads), while the job waits for the whole plan.
_PLAN_THREADS = min(4, os.cpu_count() or 1)


def _slices_of_files(
    refs: Sequence[FileRef], dataset: TabularDataset, size: int
) -> Iterator[list[TabularSlice]]:
    """The slices of each file, in the files' order; a bounded window of files is planned in parallel, so
    a million files never become a million pending futures. The first failing file's error is raised."""
    if _PLAN_THREADS < 2 or len(refs) < 2 or dataset.format == "parquet":
        for ref in refs:  # parquet planning reads only footers: threads would not pay for themselves
            yield _slices(ref, dataset, size)
        return
    window = 2 * _PLAN_THREADS
    with ThreadPoolExecutor(max_workers=_PLAN_THREADS, thread_name_prefix="apr-plan") as pool:
        pending: deque[Future[list[TabularSlice]]] = deque()
        try:
            for ref in refs:
                pending.append(pool.submit(_slices, ref, dataset, size))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
