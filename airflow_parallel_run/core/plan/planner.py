"""Planner: lists inputs and forms mini-batch descriptors without reading file contents (file input)."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from ..config import (
    DEFAULT_FILE_MINI_BATCH,
    DEFAULT_TABULAR_MINI_BATCH,
    ParallelRunConfig,
    parse_mini_batch_size,
)
from ..errors import ConfigError
from ..inputs.files import FileDataset
from ..inputs.listing import list_input
from ..inputs.partitions import group_by_keys
from ..inputs.source import Dataset
from ..inputs.tabular import TabularDataset
from ..minibatch import FileRef, MiniBatch, TabularSlice

_WHOLE_FILE = 1 << 62


@dataclass(frozen=True)
class Plan:
    """The mini-batches of a job, in order; `kind` is "file" or "tabular"."""

    kind: str
    mini_batches: list[MiniBatch]

    @property
    def total_items(self) -> int:
        return sum(mb.items for mb in self.mini_batches)


def plan(inputs: Sequence[Dataset], config: ParallelRunConfig) -> Plan:
    """Mini-batches for all inputs, processed one input after another (as ParallelRunStep does)."""
    return plan_inputs(inputs, config.mini_batch_size, config.partition_keys)


def plan_inputs(
    inputs: Sequence[Dataset],
    mini_batch_size: int | str | None = None,
    partition_keys: Sequence[str] | None = None,
) -> Plan:
    """`plan` without a whole config (the sensor plans before the operator's config is known)."""
    if not inputs:
        raise ConfigError("inputs", list(inputs), "at least one FileDataset or TabularDataset")
    kinds = {getattr(d, "kind", None) for d in inputs}
    if kinds - {"file", "tabular"}:
        raise ConfigError("inputs", list(inputs), "FileDataset or TabularDataset objects")
    if len(kinds) > 1:
        raise ConfigError(
            "inputs", [type(d).__name__ for d in inputs], "datasets of one type (all file or all tabular)"
        )
    kind = str(kinds.pop())
    tabular = kind == "tabular"
    default = DEFAULT_TABULAR_MINI_BATCH if tabular else DEFAULT_FILE_MINI_BATCH
    size = parse_mini_batch_size(mini_batch_size if mini_batch_size is not None else default, tabular=tabular)
    keys = [partition_keys] if isinstance(partition_keys, str) else list(partition_keys or ())
    batches: list[MiniBatch] = []
    for input_index, dataset in enumerate(inputs):
        for path in dataset.paths:
            root, refs = list_input(path, dict(dataset.storage_options))
            if keys:
                groups = group_by_keys(refs, root, dataset, keys)
                for values, files in groups:
                    batches.append(_partition_batch(len(batches), input_index, dataset, files, values))
            elif isinstance(dataset, TabularDataset):
                for pieces in _slices_of_files(refs, dataset, size):
                    for piece in pieces:
                        batches.append(
                            MiniBatch(len(batches), "tabular", input_index, piece.rows, slices=(piece,))
                        )
            else:
                for chunk in _chunks(refs, size):
                    batches.append(
                        MiniBatch(len(batches), "file", input_index, len(chunk), files=tuple(chunk))
                    )
    return Plan(kind, batches)


def _slices(ref: FileRef, dataset: TabularDataset, size: int) -> list[TabularSlice]:
    from ..inputs.tabular_scan import plan_tabular_file

    return plan_tabular_file(ref.url, ref.size or 0, dataset, size)


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


def _partition_batch(
    index: int, input_index: int, dataset: Dataset, files: list[FileRef], values: dict[str, str]
) -> MiniBatch:
    if isinstance(dataset, FileDataset):
        return MiniBatch(
            index, "file", input_index, len(files), files=tuple(files), partition_key_value=values
        )
    slices = tuple(s for ref in files for s in _slices(ref, dataset, _WHOLE_FILE))
    return MiniBatch(
        index, "tabular", input_index, sum(s.rows for s in slices), slices=slices, partition_key_value=values
    )


def _chunks(items: Sequence[FileRef], size: int) -> Iterable[list[FileRef]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])
