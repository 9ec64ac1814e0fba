"""`logs/sys/job.json`: what a job was, written when it finishes, so that `--rerun-failed` can rebuild it.

It holds the config (every field; `environment_variables` as names with digests only: their values may be
secret), the inputs without credentials (`dataset_to_dict(credentials=False)`: storage options and a SQL
URL's password never enter it), the arguments and side inputs as the workers saw them, the exact plan
(every mini-batch descriptor), the reuse cache's root, the job's cache key with its component digests,
each mini-batch's cache key, the input fingerprints, and the SHA-256 of the successful results kept for a
re-run of the items a run() marked failed (`kept_items`: a re-run unpickles only those bytes). A re-run runs this plan again and compares the
keys it computes now with these: any difference names what changed since (core/reuse/rerun.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..config import ParallelRunConfig
from ..inputs import dataset_to_dict
from ..json_stream import Encoded, Listed, dumps_bytes, streams
from ..storage import write_atomic_chunks

if TYPE_CHECKING:
    from ..driver.loop import JobDriver

#: Where the job record is, relative to the logs folder.
JOB_RECORD_FILE = "sys/job.json"
RECORD_VERSION = 1


def variable_digest(value: str) -> str:
    """What the record keeps of an environment variable's value: a digest, so a re-run can tell a
    different value without the record ever holding one."""
    return hashlib.sha256(json.dumps(value).encode()).hexdigest()[:32]


def config_document(config: ParallelRunConfig) -> dict[str, Any]:
    """The config's fields, paths made absolute, environment variable values replaced by digests."""
    document: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name == "environment_variables":
            value = {name: variable_digest(text) for name, text in sorted(dict(value).items())}
        elif isinstance(value, tuple):
            value = list(value)
        document[f.name] = value
    if config.source_directory is not None:
        document["source_directory"] = os.path.abspath(config.source_directory)
    else:
        document["entry_script"] = os.path.abspath(config.entry_script)
    return document


def job_record(driver: JobDriver) -> dict[str, Any]:
    """The record of the job a driver runs. A plan kept on disk (a streaming job's, core/plan/store.py)
    stays there: its mini-batches, keys and fingerprints are read back as the record is written."""
    reuse = driver.reuse
    plan = driver.plan
    documents = getattr(plan, "documents", None)  # a PlanStore: the mini-batches' JSON as stored
    if callable(documents):
        keys: Any = Listed(lambda: (driver.keys[index] for index in range(len(plan))))
        mini_batches: Any = Encoded(documents)
        fingerprints: Any = reuse.fingerprints
    else:
        keys = [driver.keys[mb.index] for mb in plan]
        mini_batches = [mb.to_dict() for mb in plan]
        fingerprints = dict(reuse.fingerprints)
    return {
        "version": RECORD_VERSION,
        "job_id": driver.job_id,
        "config": config_document(driver.config),
        "inputs": [dataset_to_dict(d, credentials=False) for d in driver.inputs],
        "arguments": list(driver.arguments),
        "side_inputs": list(driver.side_inputs),
        "allow_reuse": driver.allow_reuse,
        "cache_root": driver.cache.root,
        "cache_key": driver.cache_key,
        "components": reuse.component_digests(),
        "fingerprints": fingerprints,
        "keys": keys,
        "plan": {"kind": plan.kind, "mini_batches": mini_batches},
        # the successful results kept for a re-run of the items run() marked failed, by SHA-256
        "kept_items": {str(index): digest for index, digest in sorted(reuse.kept_items.items())},
    }


#: What every record holds (a reader refuses one that lacks a key).
RECORD_KEYS = (
    "version",
    "job_id",
    "config",
    "inputs",
    "arguments",
    "side_inputs",
    "allow_reuse",
    "cache_root",
    "cache_key",
    "components",
    "fingerprints",
    "keys",
    "plan",
)


def write_job_record(log_root: str, record: Mapping[str, Any]) -> None:
    """Writes the record atomically (write, then rename); a record whose plan is on disk in pieces."""
    path = os.path.join(log_root, *JOB_RECORD_FILE.split("/"))
    if streams(record):
        write_atomic_chunks(path, dumps_bytes(record, separators=(",", ":")), {})
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:  # dumps: json.dump encodes in Python, dumps in C
        handle.write(json.dumps(record, separators=(",", ":")))
    os.replace(tmp, path)


def read_job_record(logs_url: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A job's record. Raises FileNotFoundError when there is none, ValueError when it is not one."""
    import fsspec

    url = f"{str(logs_url).rstrip('/')}/{JOB_RECORD_FILE}"
    with fsspec.open(url, "rb", **dict(storage_options or {})) as handle:
        record = json.loads(handle.read())
    if not isinstance(record, dict) or record.get("version") != RECORD_VERSION:
        raise ValueError(f"{url} is not a job record of this release (version {RECORD_VERSION})")
    missing = [key for key in RECORD_KEYS if key not in record]
    if missing or not isinstance(record["plan"], dict) or "mini_batches" not in record["plan"]:
        raise ValueError(f"{url} is incomplete (no {', '.join(missing) or 'plan.mini_batches'})")
    return record
