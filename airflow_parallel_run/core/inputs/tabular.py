"""`TabularDataset`: delimited, Parquet or JSON Lines files; `run()` gets a pandas DataFrame per mini-batch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from .listing import as_paths
from .partitions import check_partition_format

TABULAR_FORMATS = ("csv", "parquet", "jsonl")


@dataclass(frozen=True)
class TabularDataset:
    """Delimited, Parquet or JSON Lines files; `run()` gets a pandas DataFrame per mini-batch."""

    paths: tuple[str, ...]
    format: str
    separator: str = ","
    header: bool = True
    encoding: str = "utf-8"
    partition_format: str | None = None
    storage_options: Mapping[str, Any] = field(default_factory=dict, repr=False)  # credentials

    kind = "tabular"

    def __post_init__(self) -> None:
        if self.format not in TABULAR_FORMATS:
            raise ConfigError("format", self.format, ", ".join(TABULAR_FORMATS))
        if not isinstance(self.separator, str) or len(self.separator) != 1 or self.separator in '\r\n"':
            raise ConfigError("separator", self.separator, "one character other than a quote or a newline")
        check_partition_format(self.partition_format)

    @classmethod
    def from_delimited_files(
        cls,
        path: str | Sequence[str],
        separator: str = ",",
        header: bool = True,
        encoding: str = "utf-8",
        partition_format: str | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> TabularDataset:
        return cls(
            as_paths(path, "path"),
            "csv",
            separator,
            header,
            encoding,
            partition_format,
            dict(storage_options or {}),
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
    ) -> TabularDataset:
        return cls(
            as_paths(path, "path"),
            "jsonl",
            encoding=encoding,
            partition_format=partition_format,
            storage_options=dict(storage_options or {}),
        )
