"""The planner: numbers the mini-batches of a job's inputs, one input after another (as ParallelRunStep does),
without reading any input's data (each source plans its own mini-batches, see core/inputs/source.py)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ..config import (
    DEFAULT_FILE_MINI_BATCH,
    DEFAULT_TABULAR_MINI_BATCH,
    ParallelRunConfig,
    parse_mini_batch_size,
)
from ..errors import ConfigError
from ..inputs.source import Dataset, PlanContext
from ..minibatch import MiniBatch

KINDS = ("file", "tabular")


@dataclass(frozen=True)
class Plan:
    """The mini-batches of a job, in order; `kind` is "file" or "tabular".

    The driver reads a plan through `__iter__`, `__len__` and `batch(index)`, so that a plan that
    streams from its sources (or spills to disk) can later replace the list inside."""

    kind: str
    mini_batches: list[MiniBatch]

    @property
    def total_items(self) -> int:
        return sum(mb.items for mb in self.mini_batches)

    def __iter__(self) -> Iterator[MiniBatch]:
        return iter(self.mini_batches)

    def __len__(self) -> int:
        return len(self.mini_batches)

    def batch(self, index: int) -> MiniBatch:
        """The mini-batch numbered `index` (indexes count from 0 without gaps)."""
        mb = self.mini_batches[index]
        assert mb.index == index, (mb.index, index)
        return mb


def plan(inputs: Sequence[Dataset], config: ParallelRunConfig) -> Plan:
    """Mini-batches for all inputs, processed one input after another (as ParallelRunStep does)."""
    return plan_inputs(inputs, config.mini_batch_size, config.partition_keys)


def plan_inputs(
    inputs: Sequence[Dataset],
    mini_batch_size: int | str | None = None,
    partition_keys: Sequence[str] | str | None = None,
) -> Plan:
    """`plan` without a whole config (the sensor plans before the operator's config is known)."""
    kind, batches = iter_plan(inputs, mini_batch_size, partition_keys)
    return Plan(kind, list(batches))


def iter_plan(
    inputs: Sequence[Dataset],
    mini_batch_size: int | str | None = None,
    partition_keys: Sequence[str] | str | None = None,
) -> tuple[str, Iterator[MiniBatch]]:
    """(kind, the mini-batches in order, cut while the inputs are still being listed): a local folder's
    first mini-batch comes once its first sub-folder is listed (core/inputs/listing.py). The config is
    checked here; a listing's refusals (a dangling symlink, an empty input) come from the iterator."""
    kind = _one_kind(inputs)
    tabular = kind == "tabular"
    default = DEFAULT_TABULAR_MINI_BATCH if tabular else DEFAULT_FILE_MINI_BATCH
    size = parse_mini_batch_size(mini_batch_size if mini_batch_size is not None else default, tabular=tabular)
    keys = (partition_keys,) if isinstance(partition_keys, str) else tuple(partition_keys or ())
    numbers = itertools.count()
    batches = (
        mb
        for input_index, source in enumerate(inputs)
        for mb in source.plan(PlanContext(input_index, kind, size, keys, numbers))
    )
    return kind, batches


def _one_kind(inputs: Sequence[Dataset]) -> str:
    """What run() receives, the same for every input: local paths ("file") or DataFrames ("tabular")."""
    if not inputs:
        raise ConfigError("inputs", list(inputs), "at least one FileDataset or TabularDataset")
    kinds = {getattr(d, "kind", None) for d in inputs}
    if kinds - set(KINDS):
        raise ConfigError("inputs", list(inputs), "FileDataset or TabularDataset objects")
    if len(kinds) > 1:
        raise ConfigError(
            "inputs", [type(d).__name__ for d in inputs], "datasets of one type (all file or all tabular)"
        )
    return str(kinds.pop())
