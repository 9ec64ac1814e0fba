"""Reads a mini-batch's own data on the worker: local file paths for file input, a DataFrame for tabular."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import fsspec

from .inputs.source import Dataset
from .inputs.tabular import TabularDataset
from .minibatch import MiniBatch
from .storage import is_local, local_path


def materialize(
    mini_batch: MiniBatch,
    datasets: Sequence[Dataset],
    scratch_dir: str,
) -> tuple[Any, int]:
    """Returns (what run() receives, number of items). Remote files are downloaded into `scratch_dir`."""
    dataset = datasets[mini_batch.input_index]
    if mini_batch.kind == "tabular":
        assert isinstance(dataset, TabularDataset)
        # imported here: pandas and pyarrow cost ~0.5 s of CPU, which a process of a files job never needs
        from .inputs.tabular_read import read_tabular

        frame = read_tabular(mini_batch.slices, dataset)
        return frame, len(frame)
    paths = []
    for position, ref in enumerate(mini_batch.files):
        if is_local(ref.url):
            local = local_path(ref.url)
            if not os.path.exists(local):
                raise FileNotFoundError(f"input file {ref.url} of mini-batch {mini_batch.index} is gone")
            paths.append(local)
            continue
        target = os.path.join(scratch_dir, f"{position:05d}", os.path.basename(ref.url.rstrip("/")))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        fs, path = fsspec.core.url_to_fs(ref.url, **dict(dataset.storage_options))
        fs.get_file(path, target)
        paths.append(target)
    return paths, len(paths)
