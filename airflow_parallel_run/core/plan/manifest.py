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
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import fsspec

from ..errors import DataChangedError, InputError
from ..inputs import dataset_from_dict, dataset_to_dict
from ..inputs.fingerprint import Fingerprinter
from ..inputs.listing import list_input, store_identity
from ..inputs.source import Dataset
from ..minibatch import FileRef, MiniBatch
from ..storage import is_local, write_atomic
from .planner import Plan

VERSION = 1
#: How many changed files an `InputChangedError` names before "(+N more)".
NAMED_CHANGES = 5


def plan_refs(plan: Plan) -> list[tuple[FileRef, int]]:
    """Every input file of a plan once, with the index of the dataset it belongs to: the files of
    file mini-batches and the files that tabular slices cut (their sizes are not recorded)."""
    refs: dict[str, tuple[FileRef, int]] = {}
    for mb in plan.mini_batches:
        for ref in mb.files or tuple(FileRef(s.url) for s in mb.slices):
            refs.setdefault(ref.url, (ref, mb.input_index))
    return list(refs.values())


def fingerprint_plan(plan: Plan, datasets: Sequence[Dataset], fingerprinter: Fingerprinter) -> dict[str, str]:
    """The content fingerprint of every input file of `plan`, as `check_inputs` computes it again later.

    Local files: a hash of their bytes (memoised on size, mtime and inode). Object-store files: the
    store's content identity (ETag, md5, generation) and size from a fresh listing, or a hash of their
    bytes where the store has none.
    """
    current, _ = current_inputs(plan, datasets)
    fingerprints: dict[str, str] = {}
    for input_index, refs in current.items():
        fingerprints.update(fingerprinter.many(refs, datasets[input_index].storage_options))
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
        "files": len(
            {f.url for mb in plan.mini_batches for f in mb.files}
            | {s.url for mb in plan.mini_batches for s in mb.slices}
        ),
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


@dataclass(frozen=True)
class InputChange:
    """One input file that is not what the manifest planned: `what` is "deleted" or "changed"."""

    url: str
    what: str


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


def current_inputs(plan: Plan, datasets: Sequence[Dataset]) -> tuple[dict[int, list[FileRef]], list[str]]:
    """The plan's input files as they are now — fresh `FileRef`s (size, store identity) by dataset — and
    the URLs that are gone. Each dataset path is listed once (as the planner lists it), so checking a
    partition of many object-store files costs a listing, not a request per file."""
    wanted = plan_refs(plan)
    listed: dict[str, FileRef] = {}
    unlisted: set[int] = set()
    for input_index in sorted({index for _, index in wanted}):
        dataset = datasets[input_index]
        for path in dataset.paths:
            try:
                _, refs = list_input(path, dict(dataset.storage_options))
            except InputError:  # gone, or not listable now: look at the planned files one by one
                unlisted.add(input_index)
                continue
            listed.update((ref.url, ref) for ref in refs)
    current: dict[int, list[FileRef]] = {}
    missing: list[str] = []
    for ref, input_index in wanted:
        fresh = listed.get(ref.url)
        if fresh is None and input_index in unlisted:
            fresh = _look_at(ref, datasets[input_index])
        if fresh is None:
            missing.append(ref.url)
        else:
            current.setdefault(input_index, []).append(fresh)
    return current, missing


def _look_at(ref: FileRef, dataset: Dataset) -> FileRef | None:
    """A fresh `FileRef` of one file, or None when it does not exist."""
    fs, path = fsspec.core.url_to_fs(ref.url, **dict(dataset.storage_options))
    try:
        if is_local(fs):
            return FileRef(ref.url, os.path.getsize(path)) if os.path.isfile(path) else None
        info = fs.info(path)
    except FileNotFoundError:
        return None
    return (
        None if info.get("type") == "directory" else FileRef(ref.url, info.get("size"), store_identity(info))
    )


def check_inputs(manifest: Manifest, fingerprinter: Fingerprinter) -> list[InputChange]:
    """The manifest's input files that were deleted or whose content differs from its fingerprints.

    Local files are compared by content hash (memoised on size, mtime and inode, so an unchanged
    partition is not read again); object-store files by the store's content identity.
    """
    refs = plan_refs(manifest.plan)
    current, missing = current_inputs(manifest.plan, manifest.datasets)
    changes = [InputChange(url, "deleted") for url in missing]
    for input_index, fresh in current.items():
        now = fingerprinter.many(fresh, manifest.datasets[input_index].storage_options)
        for ref in fresh:
            planned = manifest.fingerprints.get(ref.url)
            if planned is not None and planned != now[ref.url]:
                changes.append(InputChange(ref.url, "changed"))
    order = {ref.url: position for position, (ref, _) in enumerate(refs)}
    return sorted(changes, key=lambda change: order[change.url])


def verify_manifest(manifest: Manifest, fingerprinter: Fingerprinter) -> None:
    """Raises `InputChangedError` when an input file of the manifest was deleted or changed."""
    changes = check_inputs(manifest, fingerprinter)
    if changes:
        raise InputChangedError(manifest.url, changes)
