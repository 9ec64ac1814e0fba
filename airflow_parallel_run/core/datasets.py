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


def dataset_to_dict(dataset: Dataset, *, credentials: bool) -> dict[str, Any]:
    """JSON-able form of a dataset; `credentials=False` drops `storage_options` (manifests on shared storage)."""
    import dataclasses

    fields = dataclasses.asdict(dataset)
    if not credentials:
        fields.pop("storage_options", None)
    return {"type": type(dataset).__name__, **fields, "paths": list(dataset.paths)}


def dataset_from_dict(data: Mapping[str, Any], storage_options: Mapping[str, Any] | None = None) -> Dataset:
    """Inverse of `dataset_to_dict`; given `storage_options` replace whatever the dict holds."""
    fields = {k: v for k, v in data.items() if k != "type"}
    fields["paths"] = tuple(fields["paths"])
    if storage_options is not None:
        fields["storage_options"] = dict(storage_options)
    return FileDataset(**fields) if data["type"] == "FileDataset" else TabularDataset(**fields)
