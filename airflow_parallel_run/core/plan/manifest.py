"""Manifests: a planned job's inputs and mini-batch descriptors, written once and run exactly.

`DatasetPartitionSensor` plans a partition when it is complete and writes a manifest; the operator
then runs exactly those mini-batches, even if more files land later. Only a small reference (URL and
counts) travels through XCom, never the file list.

The manifest also holds a content fingerprint of every input file (tabular files included: their
byte ranges are only valid for the bytes that were planned). Before running, the operator checks the
files against them (`check_inputs`): a file deleted or rewritten between the sensor and the operator
is an `InputChangedError` naming the manifest and the file, never a silently different result.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import fsspec

from ..errors import DataChangedError, InputError
from ..inputs import dataset_from_dict, dataset_to_dict
from ..inputs.fingerprint import Fingerprinter
from ..inputs.source import Dataset, InputChange, VerifiableSource
from ..minibatch import MiniBatch
from ..storage import write_atomic
from .planner import Plan

VERSION = 1
#: How many changed files an `InputChangedError` names before "(+N more)".
NAMED_CHANGES = 5


def _batches_of(plan: Plan, input_index: int) -> list[MiniBatch]:
    return [mb for mb in plan if mb.input_index == input_index]


def fingerprint_plan(plan: Plan, datasets: Sequence[Dataset], fingerprinter: Fingerprinter) -> dict[str, str]:
    """The content fingerprint of every unit of `plan` (its input files), as `check_inputs` computes it
    again later (`VerifiableSource.recorded_fingerprints`; a source that cannot be verified records its
    planning fingerprints)."""
    fingerprints: dict[str, str] = {}
    for input_index, source in enumerate(datasets):
        batches = _batches_of(plan, input_index)
        if not batches:
            continue
        if isinstance(source, VerifiableSource):
            fingerprints.update(source.recorded_fingerprints(batches, fingerprinter))
        else:
            fingerprints.update(source.fingerprints(batches, fingerprinter))
    return fingerprints


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
        "mini_batches": [mb.to_dict() for mb in plan.mini_batches],
        "fingerprints": dict(fingerprints or {}),
    }
    write_atomic(url, json.dumps(document).encode("utf-8"), dict(storage_options or {}))
    return {
        "manifest": url,
        "kind": plan.kind,
        "mini_batches": len(plan.mini_batches),
        "items": plan.total_items,
        "files": len({unit for mb in plan for unit in mb.units()}),
        "bytes": total_bytes,
    }


def is_manifest_reference(value: Any) -> bool:
    return isinstance(value, Mapping) and isinstance(value.get("manifest"), str)


@dataclass(frozen=True)
class Manifest:
    """A manifest as read back: its datasets (with the reader's storage options), plan and fingerprints."""

    url: str
    datasets: list[Dataset]
    plan: Plan
    fingerprints: dict[str, str]


def load_manifest(url: str, storage_options: Mapping[str, Any] | None = None) -> Manifest:
    """Reads a manifest; `InputError` names it when it is missing, unreadable or of another version."""
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
    plan = Plan(document["kind"], [MiniBatch.from_dict(mb) for mb in document["mini_batches"]])
    return Manifest(url, datasets, plan, dict(document.get("fingerprints") or {}))


def read_manifest(url: str, storage_options: Mapping[str, Any] | None = None) -> tuple[list[Dataset], Plan]:
    """The datasets (with these storage options) and the exact plan a manifest holds."""
    manifest = load_manifest(url, storage_options)
    return manifest.datasets, manifest.plan


class InputChangedError(DataChangedError):
    """Input files were deleted or rewritten after the manifest was written. `changes` lists them."""

    def __init__(self, manifest_url: str, changes: Sequence[InputChange]) -> None:
        self.manifest_url = manifest_url
        self.changes = list(changes)
        named = "; ".join(f"{c.url} was {c.what}" for c in self.changes[:NAMED_CHANGES])
        more = len(self.changes) - NAMED_CHANGES
        super().__init__(
            f"manifest {manifest_url}: {len(self.changes)} input file(s) changed after "
            f"DatasetPartitionSensor planned them: {named}"
            + (f" (+{more} more)" if more > 0 else "")
            + "; the planned mini-batches no longer describe the data. Clear the sensor task to plan the "
            "partition again, or set on_manifest_change='replan' on the operator"
        )


def check_inputs(manifest: Manifest, fingerprinter: Fingerprinter) -> list[InputChange]:
    """The manifest's units (input files) that were deleted or whose content differs from its fingerprints,
    in plan order.

    Local files are compared by content hash (memoised on size, mtime and inode, so an unchanged
    partition is not read again); object-store files by the store's content identity.
    """
    changes: dict[str, InputChange] = {}
    for input_index, source in enumerate(manifest.datasets):
        batches = _batches_of(manifest.plan, input_index)
        if batches and isinstance(source, VerifiableSource):
            for change in source.changes(batches, manifest.fingerprints, fingerprinter):
                changes.setdefault(change.url, change)
    order = {
        unit: position
        for position, unit in enumerate(dict.fromkeys(u for mb in manifest.plan for u in mb.units()))
    }
    return sorted(changes.values(), key=lambda change: order[change.url])


def verify_manifest(manifest: Manifest, fingerprinter: Fingerprinter) -> None:
    """Raises `InputChangedError` when an input file of the manifest was deleted or changed."""
    changes = check_inputs(manifest, fingerprinter)
    if changes:
        raise InputChangedError(manifest.url, changes)
