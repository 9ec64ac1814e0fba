"""Manifests: a planned job's inputs and mini-batch descriptors, written once and run exactly.

`DatasetPartitionSensor` plans a partition when it is complete and writes a manifest; the operator
then runs exactly those mini-batches, even if more files land later. Only a small reference (URL and
counts) travels through XCom, never the file list.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

import fsspec

from .datasets import Dataset, dataset_from_dict, dataset_to_dict
from .errors import InputError
from .minibatch import FileRef, MiniBatch, TabularSlice
from .planner import Plan
from .results import write_atomic

VERSION = 1


def _batch_from_dict(data: Mapping[str, Any]) -> MiniBatch:
    return MiniBatch(
        index=data["index"],
        kind=data["kind"],
        input_index=data["input_index"],
        items=data["items"],
        files=tuple(FileRef(**f) for f in data["files"]),
        slices=tuple(TabularSlice(**{**s, "row_groups": tuple(s["row_groups"])}) for s in data["slices"]),
        partition_key_value=dict(data["partition_key_value"]),
    )


def write_manifest(
    url: str,
    datasets: Sequence[Dataset],
    plan: Plan,
    fingerprints: Mapping[str, str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Writes the manifest atomically; returns the small reference that goes through XCom."""
    total_bytes = sum(f.size or 0 for mb in plan.mini_batches for f in mb.files) + sum(
        s.end - s.start for mb in plan.mini_batches for s in mb.slices
    )
    document = {
        "version": VERSION,
        "kind": plan.kind,
        "datasets": [dataset_to_dict(d, credentials=False) for d in datasets],  # never credentials
        "mini_batches": [dataclasses.asdict(mb) for mb in plan.mini_batches],
        "fingerprints": dict(fingerprints or {}),
    }
    write_atomic(url, json.dumps(document).encode("utf-8"), dict(storage_options or {}))
    return {
        "manifest": url,
        "kind": plan.kind,
        "mini_batches": len(plan.mini_batches),
        "items": plan.total_items,
        "files": len(
            {f.url for mb in plan.mini_batches for f in mb.files}
            | {s.url for mb in plan.mini_batches for s in mb.slices}
        ),
        "bytes": total_bytes,
    }


def is_manifest_reference(value: Any) -> bool:
    return isinstance(value, Mapping) and isinstance(value.get("manifest"), str)


def read_manifest(url: str, storage_options: Mapping[str, Any] | None = None) -> tuple[list[Dataset], Plan]:
    """The datasets (with these storage options) and the exact plan a manifest holds."""
    try:
        with fsspec.open(url, "rb", **dict(storage_options or {})) as handle:
            document = json.loads(handle.read())
    except FileNotFoundError as exc:
        raise InputError(
            f"manifest {url} does not exist (was it written by DatasetPartitionSensor?)"
        ) from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"manifest {url} cannot be read: {exc}") from exc
    if document.get("version") != VERSION:
        raise InputError(
            f"manifest {url} has version {document.get('version')!r}; this release reads {VERSION}"
        )
    datasets = [dataset_from_dict(d, storage_options or {}) for d in document["datasets"]]
    return datasets, Plan(document["kind"], [_batch_from_dict(mb) for mb in document["mini_batches"]])
