"""What goes in: the job's input sources (files, tabular files) and how they are written down.

`dataset_to_dict` / `dataset_from_dict` are the serialised form of an input that travels through
Airflow (the sensor's trigger kwargs, in Airflow's database) and lives in manifests: its type name is
part of that contract. Nothing is imported eagerly here: the entry-script process imports only the
source modules its job reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .source import Dataset


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
    from .files import FileDataset
    from .tabular import TabularDataset

    return FileDataset(**fields) if data["type"] == "FileDataset" else TabularDataset(**fields)
