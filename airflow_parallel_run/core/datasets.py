"""Input descriptions: `FileDataset` and `TabularDataset` (the Azure ML names), backed by fsspec URLs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

TABULAR_FORMATS = ("csv", "parquet", "jsonl")


def _as_paths(path: str | Sequence[str], field_name: str) -> tuple[str, ...]:
    paths = (path,) if isinstance(path, str) else tuple(path)
    if not paths or not all(isinstance(p, str) and p.strip() for p in paths):
        raise ConfigError(field_name, path, "a path, glob, folder or fsspec URL, or a non-empty list of them")
    return tuple(p.strip() for p in paths)


@dataclass(frozen=True)
class FileDataset:
    """Files given as paths, globs, folders (recursive) or fsspec URLs; `run()` gets local paths."""

    paths: tuple[str, ...]
    partition_format: str | None = None
    storage_options: Mapping[str, Any] = field(default_factory=dict, repr=False)  # credentials

    kind = "file"

    @classmethod
    def from_files(
        cls,
        path: str | Sequence[str],
        partition_format: str | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> FileDataset:
        return cls(_as_paths(path, "path"), partition_format, dict(storage_options or {}))


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
            _as_paths(path, "path"),
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
            _as_paths(path, "path"),
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
            _as_paths(path, "path"),
            "jsonl",
            encoding=encoding,
            partition_format=partition_format,
            storage_options=dict(storage_options or {}),
        )


Dataset = FileDataset | TabularDataset
