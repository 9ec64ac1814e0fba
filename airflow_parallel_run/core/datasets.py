"""Input descriptions: `FileDataset` and `TabularDataset` (the Azure ML names), backed by fsspec URLs."""

from __future__ import annotations

import re
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


_KEY_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
PARTITION_FORMAT_EXAMPLE = "'{user}/{season}/{genres}.wav'"


def check_partition_format(value: str | None) -> None:
    """A path template with `{key}` fields, each key once, braces only around key names.

    Checked when the dataset is made, so a template the planner could not turn into a pattern (a
    repeated key, a stray brace) is refused before any work, naming the field.
    """
    if value is None:
        return
    if not isinstance(value, str):
        raise ConfigError(
            "partition_format", value, f"a path template string like {PARTITION_FORMAT_EXAMPLE}"
        )
    keys: list[str] = []
    position = 0
    while position < len(value):
        char = value[position]
        if char == "}":
            raise ConfigError(
                "partition_format",
                value,
                f"braces only around key names, e.g. {PARTITION_FORMAT_EXAMPLE} ('}}' without '{{' at "
                f"character {position + 1})",
            )
        if char == "{":
            end = value.find("}", position)
            name = value[position + 1 : end] if end > 0 else ""
            if end < 0 or not _KEY_NAME.fullmatch(name):
                raise ConfigError(
                    "partition_format",
                    value,
                    f"braces only around key names, e.g. {PARTITION_FORMAT_EXAMPLE} ('{{' at character "
                    f"{position + 1} does not open a {{name}} field)",
                )
            keys.append(name)
            position = end
        position += 1
    if not keys:
        raise ConfigError(
            "partition_format", value, f"a path template with {{key}} fields, e.g. {PARTITION_FORMAT_EXAMPLE}"
        )
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ConfigError(
            "partition_format",
            value,
            f"each {{key}} at most once ({', '.join(repeated)} appears more than once)",
        )


@dataclass(frozen=True)
class FileDataset:
    """Files given as paths, globs, folders (recursive) or fsspec URLs; `run()` gets local paths."""

    paths: tuple[str, ...]
    partition_format: str | None = None
    storage_options: Mapping[str, Any] = field(default_factory=dict, repr=False)  # credentials

    kind = "file"

    def __post_init__(self) -> None:
        check_partition_format(self.partition_format)

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
