"""What enters a reuse-cache key: complete by construction.

Every field of the dataclasses that describe a job (`ParallelRunConfig`, `FileDataset`,
`TabularDataset`) and a mini-batch (`MiniBatch`, `FileRef`, `TabularSlice`) enters the key,
walked with `dataclasses.fields`, unless it is listed in `NOT_IN_KEY` with the reason it cannot
change what `run()` sees or returns, or in `CONTENT_IN_KEY` because its content enters instead of
its value (a script's bytes, not its path on this machine). A field added later is therefore in
the key until someone decides otherwise and writes down why; tests/test_reuse_key.py checks that
the lists name only real fields and that a new field lands in the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from .config import ParallelRunConfig
from .datasets import FileDataset, TabularDataset
from .minibatch import MiniBatch, TabularSlice
from .output.formats import PART_ENCODING_VERSION

#: Bumped whenever what a key means changes (what is hashed, or how a cached part is encoded), so
#: entries written under the old meaning simply miss.
KEY_FORMAT = 2

#: Fields that do not enter the key, per class, each with the reason it cannot change a result.
NOT_IN_KEY: dict[type, dict[str, str]] = {
    ParallelRunConfig: {
        "mini_batch_size": "decides which items form a mini-batch; each mini-batch's key holds its own "
        "items (files, byte ranges, row groups) and index, so equal work stays equal",
        "error_threshold": "decides whether the job fails after run() returned, not what run() returned",
        "allowed_failed_count": "decides whether the job fails after run() returned, not what run() returned",
        "allowed_failed_percent": "decides whether the job fails after run() returned, not what run() returned",
        "node_count": "where mini-batches run; each run() sees one mini-batch in a process of its own",
        "process_count_per_node": "how many run at once; each run() sees one mini-batch in a process of its own",
        "run_invocation_timeout": "how long an attempt may take; only a successful attempt is cached, and "
        "its result does not depend on the limit",
        "run_max_try": "how often a mini-batch is tried; only a successful attempt is cached",
        "logging_level": "what is logged, not what run() returns",
        "resource_monitor_interval": "how often logs/perf samples resources",
    },
    FileDataset: {
        "paths": "which files are listed; each mini-batch's key holds its own files' URLs and contents, so "
        "adding a path does not invalidate the mini-batches of the others",
        "storage_options": "credentials and connection settings say how to reach a file, whose content "
        "identity is in the key; secrets never enter a key or a manifest",
    },
    TabularDataset: {
        "paths": "which files are listed; each mini-batch's key holds its own slices' URLs and contents, so "
        "adding a path does not invalidate the mini-batches of the others",
        "storage_options": "credentials and connection settings say how to reach a file, whose content "
        "identity is in the key; secrets never enter a key or a manifest",
    },
    TabularSlice: {
        "first_line": "the line of the file where the slice starts, used only to name lines in read "
        "errors; start, end and header_end fix the bytes read",
    },
}

#: Fields whose content, not their value, enters the key (computed by the driver).
CONTENT_IN_KEY: dict[type, dict[str, str]] = {
    ParallelRunConfig: {
        "entry_script": "its path inside the code bundle and the bytes of every code file (component `code`)",
        "source_directory": "the names and bytes of every file in it (component `code`)",
    },
}


def _listed(table: Mapping[type, Mapping[str, str]], cls: type) -> set[str]:
    names: set[str] = set()
    for base in cls.__mro__:
        names |= set(table.get(base, {}))
    return names


def key_fields(obj: Any) -> dict[str, Any]:
    """The key material of a dataclass instance: every field not listed as excluded or content-keyed,
    nested dataclasses walked the same way, mappings sorted. JSON-able."""
    skip = _listed(NOT_IN_KEY, type(obj)) | _listed(CONTENT_IN_KEY, type(obj))
    return {f.name: _value(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.name not in skip}


def _value(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return key_fields(value)
    if isinstance(value, Mapping):
        return {str(k): _value(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_value(v) for v in value]
        return sorted(items, key=json.dumps) if isinstance(value, (set, frozenset)) else items
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


def digest(material: Any) -> str:
    """sha256 of canonical JSON (ASCII: undecodable file names are escaped, never an error)."""
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def mini_batch_key(
    job_key: str,
    mini_batch: MiniBatch,
    fingerprints: Mapping[str, str],
    dataset_options: Mapping[str, Any] | None = None,
) -> str:
    """The cache key of one mini-batch: the job's components, the read options of the mini-batch's
    input (`key_fields` of its dataset) and every key field of the mini-batch itself (index, files or
    slices with their URLs, partition values), plus each input file's content fingerprint.

    URLs are in the key, not only contents: run() sees the paths (scripts often write the file name),
    so two mini-batches of equal contents under different names must not share an entry.
    """
    urls = [f.url for f in mini_batch.files] or [s.url for s in mini_batch.slices]
    material = {
        "format": KEY_FORMAT,
        "part_encoding": PART_ENCODING_VERSION,  # parts written in an older encoding are never served
        "job": job_key,
        "dataset": dict(dataset_options or {}),
        "mini_batch": key_fields(mini_batch),
        "fingerprints": [fingerprints[url] for url in urls],
    }
    return digest(material)[:40]
