"""What enters a reuse-cache key: complete by construction.

Every field of the dataclasses that describe a job (`ParallelRunConfig`, `FileDataset`,
`TabularDataset`) and a mini-batch (`MiniBatch`, `FileRef`, `TabularSlice`) enters the key,
walked with `dataclasses.fields`, unless it is listed in `NOT_IN_KEY` with the reason it cannot
change what `run()` sees or returns, or in `CONTENT_IN_KEY` because its content enters instead of
its value (a script's bytes, not its path on this machine). A field added later is therefore in
the key until someone decides otherwise and writes down why; tests/core/reuse/test_reuse_key.py checks that
the lists name only real fields and that a new field lands in the key.

Input sources added later declare their own exclusions as class attributes of the same names
(`NOT_IN_KEY: ClassVar[dict[str, str]] = {"url": "credentials ..."}`), so adding a source never edits
this module. A field in `KEY_WHEN_SET` enters only when it differs from its default: fields added to
`MiniBatch` after `KEY_FORMAT` 2 for new sources, so that the keys of file and tabular mini-batches
stay what they were.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from ..config import ParallelRunConfig
from ..inputs.files import FileDataset
from ..inputs.tabular import TabularDataset
from ..minibatch import MiniBatch, TabularSlice
from ..output.formats import PART_ENCODING_VERSION

#: Bumped whenever what a key means changes (what is hashed, or how a cached part is encoded), so
#: entries written under the old meaning simply miss. 3: tabular inputs read by Arrow with one set of
#: column types per job (`batch_format`, `column_types` in the key; nullable integer columns for pandas).
#: 4: CSV read as pandas reads it where Arrow differed (hex integers and NaN spellings outside pandas'
#: missing values are text, repeated header names renamed, a short row's mini-batch keeps the header's
#: names): a mini-batch cached under 3 may hold what the reader no longer gives, so it must miss.
#: 5: Parquet integer and bool columns that hold no missing value in the job (its files' statistics) are
#: numpy's int64/bool for pandas, no longer nullable Int64/boolean: run() may return other results.
KEY_FORMAT = 5

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
        "max_concurrency_per_process": "how many mini-batches one process runs at once; each run() call "
        "still sees one mini-batch and returns its result",
        "run_invocation_timeout": "how long an attempt may take; only a successful attempt is cached, and "
        "its result does not depend on the limit",
        "run_max_try": "how often a mini-batch is tried; only a successful attempt is cached",
        "logging_level": "what is logged, not what run() returns",
        "resource_monitor_interval": "how often logs/perf samples resources",
        "progress_update_timeout": "when a job without progress fails, not what any run() returns",
        "first_task_creation_timeout": "when a job whose processes never get ready fails, not what run() returns",
        "speculative_execution": "whether a slow mini-batch gets a second attempt; only one attempt commits, "
        "and each runs the same run() on the same mini-batch",
        "speculation_multiplier": "when a slow mini-batch gets a second attempt, not what run() returns",
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
        "null_columns": "what the Parquet footer, whose file's content is in the key, says of the slice's "
        "missing values; the job's decision from it enters as TabularDataset.null_columns",
        "identity": "the store's content identity of the file, whose fingerprint (that identity) is in the key "
        "already; kept on the slice so that the worker can check the object it read is the planned one",
    },
}

#: Fields that enter the key only when they differ from their default, per class, with the reason.
KEY_WHEN_SET: dict[type, dict[str, str]] = {
    MiniBatch: {
        "pieces": "units of sources added after KEY_FORMAT 2; empty for file and tabular mini-batches, "
        "whose keys predate it",
    },
}

#: Fields whose content, not their value, enters the key (computed by the driver).
CONTENT_IN_KEY: dict[type, dict[str, str]] = {
    ParallelRunConfig: {
        "entry_script": "its path inside the code bundle and the bytes of every code file (component `code`)",
        "source_directory": "the names and bytes of every file in it (component `code`)",
    },
}


def _listed(table: Mapping[type, Mapping[str, str]], cls: type, attribute: str) -> set[str]:
    """The fields a table lists for `cls` or a base of it, and those the classes declare themselves."""
    names: set[str] = set()
    for base in cls.__mro__:
        names |= set(table.get(base, {}))
        names |= set(base.__dict__.get(attribute, {}))
    return names


def excluded(cls: type) -> set[str]:
    """Fields of `cls` whose value never enters a key (listed, or keyed by their content instead)."""
    return _listed(NOT_IN_KEY, cls, "NOT_IN_KEY") | _listed(CONTENT_IN_KEY, cls, "CONTENT_IN_KEY")


def key_fields(obj: Any) -> dict[str, Any]:
    """The key material of a dataclass instance: every field not listed as excluded or content-keyed,
    nested dataclasses walked the same way, mappings sorted. JSON-able."""
    material: dict[str, Any] = {}
    for name, when_set in _keyed_fields(type(obj)):  # type: ignore[arg-type]  # classes are hashable
        if when_set is not None and _is_default(obj, when_set):
            continue
        value = getattr(obj, name)
        # a plain value as it is without a call: every FileRef of every mini-batch has three
        material[name] = value if type(value) in _PLAIN else _value(value)
    return material


@functools.cache
def _keyed_fields(cls: type) -> tuple[tuple[str, dataclasses.Field[Any] | None], ...]:
    """The fields of `cls` that enter its key, in field order, each with its `Field` when it enters
    only when set (KEY_WHEN_SET). Once per class: a job computes a key per mini-batch and walks every
    file of each, so looking the tables up along the class's MRO per object took most of the keys' time."""
    skip = excluded(cls)
    when_set = _listed(KEY_WHEN_SET, cls, "KEY_WHEN_SET")
    return tuple(
        (f.name, f if f.name in when_set else None) for f in dataclasses.fields(cls) if f.name not in skip
    )


def _is_default(obj: Any, f: dataclasses.Field[Any]) -> bool:
    value = getattr(obj, f.name)
    if f.default is not dataclasses.MISSING:
        return bool(value == f.default)
    if f.default_factory is not dataclasses.MISSING:
        return bool(value == f.default_factory())
    return False


#: Values that enter a key as they are, by exact type (a subclass, such as an enum, takes `_value`'s checks).
_PLAIN = frozenset({str, int, float, bool, type(None)})


@functools.cache
def _is_dataclass_type(cls: type) -> bool:
    return dataclasses.is_dataclass(cls)


def _value(value: Any) -> Any:
    """A field's key material. Plain values and dataclass instances (the FileRefs and slices of every
    mini-batch) are told by their exact type, looked up once per type: `dataclasses.is_dataclass` and the
    isinstance chain per value took about half of a key's time. The checks' order is the original's."""
    cls = type(value)
    if cls in _PLAIN:
        return value
    if _is_dataclass_type(cls):  # type: ignore[arg-type]  # classes are hashable
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
    input (`key_fields` of its dataset) and every key field of the mini-batch itself (index, files,
    slices or pieces with their URLs, partition values), plus the content fingerprint of each unit.

    URLs are in the key, not only contents: run() sees the paths (scripts often write the file name),
    so two mini-batches of equal contents under different names must not share an entry.
    """
    material = {
        "format": KEY_FORMAT,
        "part_encoding": PART_ENCODING_VERSION,  # parts written in an older encoding are never served
        "job": job_key,
        "dataset": dict(dataset_options or {}),
        "mini_batch": key_fields(mini_batch),
        "fingerprints": [fingerprints[unit] for unit in mini_batch.units()],
    }
    return digest(material)[:40]
