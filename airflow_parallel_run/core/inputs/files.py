"""`FileDataset`: files given as paths, globs, folders (recursive) or fsspec URLs; `run()` gets local paths."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .listing import as_paths
from .partitions import check_partition_format


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
        return cls(as_paths(path, "path"), partition_format, dict(storage_options or {}))
