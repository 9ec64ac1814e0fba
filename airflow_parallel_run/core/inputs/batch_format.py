"""`batch_format`: what run() receives for a tabular mini-batch, a pandas DataFrame or a pyarrow Table.

Ray Data's `batch_format` is the model. A source that can hand over Arrow itself has
`read_table(batch, scratch_dir)` (TabularDataset: Parquet row groups and CSV slices as Arrow parsed them,
no pandas in between); for any other tabular source the DataFrame its `read` returns is converted once.
A files job has no batch format (`ParallelRunConfig.check_batch_format` refuses "pyarrow" there).
"""

from __future__ import annotations

from typing import Any

from ..minibatch import MiniBatch
from ..output.results import is_frame
from .source import InputSource


def read_batch(source: InputSource, batch: MiniBatch, scratch_dir: str, batch_format: str) -> tuple[Any, int]:
    """What run() receives for `batch` in `batch_format`, and how many items it holds."""
    if batch_format != "pyarrow" or batch.kind != "tabular":
        return source.read(batch, scratch_dir)
    read_table = getattr(source, "read_table", None)
    if callable(read_table):
        table, total = read_table(batch, scratch_dir)
        return table, total
    data, total = source.read(batch, scratch_dir)
    if is_frame(data):
        import pyarrow as pa

        return pa.Table.from_pandas(data, preserve_index=False), total
    return data, total
