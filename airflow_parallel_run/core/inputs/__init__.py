"""What goes in: the job's input sources, and the registry that names them.

A source is known by its class name ("FileDataset", "TabularDataset"): `dataset_to_dict` writes it
in every serialised input (the sensor's trigger kwargs, stored in Airflow's database; manifests), and
`dataset_from_dict` finds the class again, among the built-in sources or those other packages offer
through the entry-point group `airflow_parallel_run.inputs` (``SqlDataset = "pkg.module:SqlDataset"``).
Nothing is imported eagerly here: the entry-script process imports only the sources its job reads.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from ..errors import InputError

if TYPE_CHECKING:
    from .source import Dataset

ENTRY_POINT_GROUP = "airflow_parallel_run.inputs"
_BUILTIN = {
    "FileDataset": "airflow_parallel_run.core.inputs.files:FileDataset",
    "TabularDataset": "airflow_parallel_run.core.inputs.tabular:TabularDataset",
}


def source_names() -> tuple[str, ...]:
    """Every source's type name: the built-in ones, then those offered by entry points."""
    return tuple(dict.fromkeys([*_BUILTIN, *(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))]))


def source_class(name: str) -> Any:
    """The source class called `name`; `InputError` when no installed package offers it."""
    target = _BUILTIN.get(name)
    if target is not None:
        module, _, attribute = target.partition(":")
        return getattr(importlib.import_module(module), attribute)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            return ep.load()
    raise InputError(
        f"input type {name!r} is unknown here (known: {', '.join(source_names())}); install the package "
        f"that provides it (entry-point group {ENTRY_POINT_GROUP})"
    )


def dataset_to_dict(dataset: Dataset, *, credentials: bool) -> dict[str, Any]:
    """JSON-able form of an input; `credentials=False` drops its credentials (manifests on shared storage)."""
    return dataset.to_dict(credentials=credentials)


def dataset_from_dict(data: Mapping[str, Any], storage_options: Mapping[str, Any] | None = None) -> Dataset:
    """Inverse of `dataset_to_dict`; given `storage_options` replace whatever the dict holds."""
    source: Dataset = source_class(str(data.get("type"))).from_dict(data, storage_options)
    return source
