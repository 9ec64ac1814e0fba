"""Inputs as users give them, made into sources: the one reading shared by the CLI, the operator, the sensor
and the driver.

`inputs` may be a source, a path/glob/URL string, or a list of them (strings become one `FileDataset`,
in the place of the first string; a local MLTable folder or file becomes its MLTable input); `arguments` and `side_inputs` are lists of strings (numbers from
Jinja's native rendering become strings). Credentials reach the sources with `with_job_credentials`:
a job's `storage_options` fill those of inputs that have none (or are merged under theirs, for the
sensor), and a source that names an Airflow connection gets it from the resolver the Airflow layer
passes (core never asks Airflow itself).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import ConfigError
from .files import FileDataset
from .source import ConnectionResolver, CredentialMode, Dataset, InputSource


def to_datasets(value: Any) -> list[Dataset]:
    """`inputs` as datasets: a dataset, a path/glob/URL string, or a list of them (strings → one FileDataset)."""
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise ConfigError("inputs", value, "at least one FileDataset, TabularDataset or path")
    datasets: list[Dataset] = []
    paths: list[str] = []
    paths_at = -1
    for item in items:
        if isinstance(item, InputSource):
            datasets.append(item)
        elif isinstance(item, (str, os.PathLike)) and str(item).strip() and _is_local_mltable(str(item)):
            datasets.append(_mltable(str(item)))
        elif isinstance(item, (str, os.PathLike)) and str(item).strip():
            if paths_at < 0:
                paths_at = len(datasets)
            paths.append(str(item))
        else:
            raise ConfigError(
                "inputs",
                item,
                "a FileDataset, a TabularDataset, or a path/glob/URL string (or a list of them)",
            )
    if paths:
        datasets.insert(paths_at, FileDataset.from_files(paths))
    return datasets


def _is_local_mltable(path: str) -> bool:
    """A local `MLTable` file or a folder holding one (remote folders are refused by name when listed)."""
    path = path.removeprefix("file://")
    if "://" in path:
        return False
    if os.path.basename(path.rstrip(os.sep)) == "MLTable":
        return os.path.isfile(path)
    return os.path.isfile(os.path.join(path, "MLTable"))


def _mltable(path: str) -> Dataset:
    """The MLTable at `path`, read as its YAML says (the Azure package parses it; it imports no Airflow)."""
    from ...azure.mltable import mltable_input

    dataset: Dataset = mltable_input(path)
    return dataset


def as_strings(name: str, value: Any) -> list[str]:
    """`arguments`/`side_inputs` as a list of strings (numbers from native rendering become strings)."""
    if value is None:
        return []
    items = [value] if isinstance(value, (str, os.PathLike)) else value
    if not isinstance(items, (list, tuple)):
        raise ConfigError(name, value, "a list of strings")
    out = []
    for item in items:
        if isinstance(item, (str, os.PathLike, int, float)):
            out.append(str(item))
        else:
            raise ConfigError(name, item, "a string (or a number)")
    return out


def with_job_credentials(
    datasets: Sequence[Dataset],
    storage_options: Mapping[str, Any] | None,
    connections: ConnectionResolver | None = None,
    *,
    mode: CredentialMode = "fill",
) -> list[Dataset]:
    """Every input with the job's credentials (see `InputSource.with_credentials`)."""
    return [d.with_credentials(storage_options or {}, connections, mode=mode) for d in datasets]
