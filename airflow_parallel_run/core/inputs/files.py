"""`FileDataset`: files given as paths, globs, folders (recursive) or fsspec URLs; `run()` gets local paths."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..minibatch import FileRef, MiniBatch
from ..storage import filesystem, is_local, local_path
from .listing import PathInput, as_paths, iter_input
from .object_check import check_download
from .partitions import check_partition_format, group_by_keys
from .source import PlanContext


@dataclass(frozen=True)
class FileDataset(PathInput):
    """Files given as paths, globs, folders (recursive) or fsspec URLs; `run()` gets local paths.

    Planned in chunks of `mini_batch_size` files per path, in path order (or one mini-batch per
    combination of `partition_keys` values); read by downloading remote files into the attempt's
    scratch folder, each checked to be the object the job planned (core/inputs/object_check.py)."""

    paths: tuple[str, ...]
    partition_format: str | None = None
    storage_options: Mapping[str, Any] = field(default_factory=dict, repr=False)  # credentials

    kind: ClassVar[str] = "file"

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

    def plan(self, ctx: PlanContext) -> Iterator[MiniBatch]:
        for path in self.paths:
            root, refs = iter_input(path, dict(self.storage_options))
            if ctx.partition_keys:  # groups need the whole listing
                for values, files in group_by_keys(list(refs), root, self, ctx.partition_keys):
                    yield ctx.batch(len(files), files=tuple(files), partition_key_value=values)
                continue
            while chunk := tuple(itertools.islice(refs, ctx.size)):  # while the folder is still walked
                yield ctx.batch(len(chunk), files=chunk)

    def read(self, batch: MiniBatch, scratch_dir: str) -> tuple[list[str], int]:
        """Local paths of the mini-batch's files: local files as they are, remote ones downloaded."""
        paths = []
        for position, ref in enumerate(batch.files):
            paths.append(self._local_copy(position, ref, batch, scratch_dir))
        return paths, len(paths)

    def _local_copy(self, position: int, ref: FileRef, batch: MiniBatch, scratch_dir: str) -> str:
        if is_local(ref.url):
            local = local_path(ref.url)
            if not os.path.exists(local):
                raise FileNotFoundError(f"input file {ref.url} of mini-batch {batch.index} is gone")
            return local
        target = os.path.join(scratch_dir, f"{position:05d}", os.path.basename(ref.url.rstrip("/")))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        fs, path = filesystem(ref.url, self.storage_options)
        fs.get_file(path, target)
        # the object the key names, or DataChangedError (core/inputs/object_check.py)
        check_download(fs, path, ref, target, os.path.getsize(target), batch.index)
        return target
