"""A job's components: everything that changes what run() produces except the data, by name; their digests
(what the cache's job manifest keeps, never a value: environment variables may be secret); and the words
that say which one changed since the previous run of the same job (the reuse line).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..config import ParallelRunConfig
from ..minibatch import MiniBatch
from .key import digest as key_digest
from .key import key_fields

# Config fields with a component (and words in COMPONENT_WORDS) of their own; every other key field of
# the config (key.key_fields) lands in the component "settings", named field by field.
_OWN_COMPONENT = {
    "environment_variables": "environment_variables",
    "output_action": "output",
    "append_row_file_name": "output",
    "append_row_format": "output",
    "partition_keys": "partition_keys",
}


def job_components(
    config: ParallelRunConfig,
    code_files: Mapping[str, str],
    arguments: Sequence[str],
    side_inputs: Mapping[str, str],
    entry: str = "",
) -> dict[str, Any]:
    """Everything that changes what run() produces, except the data, by component name (see
    /work/shared/DESIGN.md, reuse). Built from `key_fields(config)`, so a config field is in the key
    unless core/reuse/key.py says, with a reason, that it cannot change a result. `entry` is the entry
    script's path inside the code bundle (a source_directory holds several scripts)."""
    fields = key_fields(config)
    settings = {name: value for name, value in fields.items() if name not in _OWN_COMPONENT}
    return {
        "code": dict(sorted(code_files.items())),
        "entry_script": entry or os.path.basename(config.entry_script),
        "arguments": list(arguments),
        "side_inputs": [side_inputs[url] for url in side_inputs],
        "environment_variables": fields["environment_variables"],
        "output": [fields["output_action"], config.output_file_name, fields["append_row_format"]],
        "partition_keys": fields["partition_keys"] or [],
        "settings": settings,
    }


def digest32(material: Any) -> str:
    """The 32-character digests of components and job signatures."""
    return key_digest(material)[:32]


COMPONENT_WORDS = {
    "code": "the entry script or a file in source_directory changed",
    "entry_script": "entry_script names another script",
    "arguments": "the arguments changed",
    "side_inputs": "a side input changed",
    "environment_variables": "environment_variables changed",
    "output": "the output settings (output_action, append_row_file_name, append_row_format) changed",
    "partition_keys": "partition_keys changed",
    "settings": "a setting changed",
    "read_options": "the read options of an input changed",
}

_PER_FIELD = ("code", "settings")  # components whose manifest entry names each field (digests only)


def component_digests(components: Mapping[str, Any]) -> dict[str, Any]:
    """What the cache keeps about a job: per-file code hashes, per-field digests of settings and read
    options, and a digest of every other component (never a value: environment variables may be secret)."""
    digests: dict[str, Any] = {}
    for name, value in components.items():
        if name == "code":
            digests[name] = dict(value)
        elif name in _PER_FIELD:
            digests[name] = {field: digest32(v) for field, v in value.items()}
        elif name == "read_options":
            digests[name] = [{field: digest32(v) for field, v in options.items()} for options in value]
        else:
            digests[name] = digest32(value)
    return digests


def explain_change(previous: Mapping[str, Any], current: Mapping[str, Any]) -> str | None:
    """Names the first key component that differs from the previous run of the same job."""
    for name, words in COMPONENT_WORDS.items():
        old, new = previous.get(name), current.get(name)
        if old == new:
            continue
        if name in ("code", "settings") and isinstance(old, dict) and isinstance(new, dict):
            changed = sorted(f for f in set(old) | set(new) if old.get(f) != new.get(f))
            return f"{words} ({', '.join(changed[:3])})"
        if (
            name == "read_options"
            and isinstance(old, list)
            and isinstance(new, list)
            and len(old) == len(new)
        ):
            for index, (before, after) in enumerate(zip(old, new, strict=True)):
                changed = sorted(f for f in set(before) | set(after) if before.get(f) != after.get(f))
                if changed:
                    return f"{words} (input {index}: {', '.join(changed)})"
        return words
    return None


def explain_inputs(
    previous_inputs: Mapping[str, str], misses: Iterable[MiniBatch], fingerprints: Mapping[str, str]
) -> str:
    """Which units of the mini-batches that run again are new or changed since the previous run."""
    changed, new = [], []
    for mb in misses:
        for url in mb.units():
            if url not in previous_inputs:
                new.append(url)
            elif previous_inputs[url] != fingerprints[url]:
                changed.append(url)
    parts = []
    if changed:
        parts.append(
            f"input file {changed[0]} changed" + (f" (+{len(changed) - 1} more)" if len(changed) > 1 else "")
        )
    if new:
        parts.append(f"new input file {new[0]}" + (f" (+{len(new) - 1} more)" if len(new) > 1 else ""))
    return (
        "; ".join(parts)
        or "no cache entry for them (an earlier attempt failed, the run was interrupted, or the cache was pruned)"
    )
