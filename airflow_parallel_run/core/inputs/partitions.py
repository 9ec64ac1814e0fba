"""Partitions of file inputs: `partition_format` templates, key values from paths, and grouping files by
the values of `partition_keys`.

A file's key values come from the dataset's `partition_format` ('{user}/{season}/{genres}.wav') when it
has one, else from hive-style `key=value` folders. A template the planner could not turn into a pattern
(a repeated key, a stray brace) is refused when the dataset is made, naming the field.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..errors import ConfigError, InputError
from ..minibatch import FileRef

if TYPE_CHECKING:
    from .source import PathSource

_KEY_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
PARTITION_FORMAT_EXAMPLE = "'{user}/{season}/{genres}.wav'"


def check_partition_format(value: str | None) -> None:
    """A path template with `{key}` fields, each key once, braces only around key names.

    Checked when the dataset is made, so a template the planner could not turn into a pattern (a
    repeated key, a stray brace) is refused before any work, naming the field.
    """
    if value is None:
        return
    if not isinstance(value, str):
        raise ConfigError(
            "partition_format", value, f"a path template string like {PARTITION_FORMAT_EXAMPLE}"
        )
    keys: list[str] = []
    position = 0
    while position < len(value):
        char = value[position]
        if char == "}":
            raise ConfigError(
                "partition_format",
                value,
                f"braces only around key names, e.g. {PARTITION_FORMAT_EXAMPLE} ('}}' without '{{' at "
                f"character {position + 1})",
            )
        if char == "{":
            end = value.find("}", position)
            name = value[position + 1 : end] if end > 0 else ""
            if end < 0 or not _KEY_NAME.fullmatch(name):
                raise ConfigError(
                    "partition_format",
                    value,
                    f"braces only around key names, e.g. {PARTITION_FORMAT_EXAMPLE} ('{{' at character "
                    f"{position + 1} does not open a {{name}} field)",
                )
            keys.append(name)
            position = end
        position += 1
    if not keys:
        raise ConfigError(
            "partition_format", value, f"a path template with {{key}} fields, e.g. {PARTITION_FORMAT_EXAMPLE}"
        )
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ConfigError(
            "partition_format",
            value,
            f"each {{key}} at most once ({', '.join(repeated)} appears more than once)",
        )


def partition_regex(partition_format: str) -> tuple[re.Pattern[str], list[str]]:
    """'{user}/{season}/{genres}.wav' -> a regex with one named group per key, matched (with `search`)
    against the end of a file's whole path as Azure does: the template may start with folders above the
    dataset's root ('dataset_partition_test/{user}/...'), and it starts at a folder boundary, so
    'data_{day}.csv' does not match 'mydata_1.csv'."""
    keys = re.findall(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", partition_format)
    if not keys:
        raise ConfigError(
            "partition_format",
            partition_format,
            "a path template with {key} fields, e.g. '{user}/{season}/{genres}.wav'",
        )
    pattern = ""
    for part in re.split(r"(\{[A-Za-z_][A-Za-z0-9_]*\})", partition_format.lstrip("/")):
        if part.startswith("{") and part.endswith("}"):
            pattern += f"(?P<{part[1:-1]}>[^/]+?)"
        else:
            pattern += re.escape(part)
    return re.compile(r"(?:^|/)" + pattern + r"$"), keys


def path_of(url: str) -> str:
    """What a partition format is matched against: a file's whole path (a URL without its query)."""
    return url.split("?", 1)[0] if "://" in url else url


def partition_values(rel_path: str, regex: re.Pattern[str] | None, path: str | None = None) -> dict[str, str]:
    """Key values of one file: from the template when given (matched against `path`, the file's whole
    path), else from hive `key=value` folders of `rel_path`, its path below the dataset's root."""
    if regex is not None:
        match = regex.search(path if path is not None else rel_path)
        return match.groupdict() if match else {}
    values = {}
    for segment in rel_path.split("/")[:-1]:
        if "=" in segment:
            key, _, value = segment.partition("=")
            values[key] = value
    return values


def group_by_keys(
    refs: Sequence[FileRef], root: str, dataset: PathSource, keys: Sequence[str]
) -> list[tuple[dict[str, str], list[FileRef]]]:
    regex = partition_regex(dataset.partition_format)[0] if dataset.partition_format else None
    groups: dict[tuple[str, ...], list[FileRef]] = {}
    for ref in refs:
        rel = (
            ref.url[len(root) :].lstrip("/")
            if root and ref.url.startswith(root)
            else posixpath.basename(ref.url)
        )
        values = partition_values(rel, regex, path_of(ref.url))
        missing = [k for k in keys if k not in values]
        if missing:
            source = f"partition_format {dataset.partition_format!r}" if regex else "hive key=value folders"
            raise InputError(
                f"file {ref.url!r} has no value for partition key(s) {missing} ({source}; keys found: {sorted(values)})"
            )
        groups.setdefault(tuple(values[k] for k in keys), []).append(ref)
    return [(dict(zip(keys, combo, strict=True)), files) for combo, files in sorted(groups.items())]
