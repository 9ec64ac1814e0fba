"""Planner: lists inputs and forms mini-batch descriptors without reading file contents (file input)."""

from __future__ import annotations

import os
import posixpath
import re
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import fsspec
from fsspec.core import url_to_fs

from .config import (
    DEFAULT_FILE_MINI_BATCH,
    DEFAULT_TABULAR_MINI_BATCH,
    ParallelRunConfig,
    parse_mini_batch_size,
)
from .datasets import Dataset, FileDataset, TabularDataset
from .errors import ConfigError, InputError
from .minibatch import FileRef, MiniBatch, TabularSlice
from .storage import is_local, to_url

_GLOB_CHARS = re.compile(r"[*?\[]")
_IDENTITY_KEYS = ("ETag", "etag", "md5", "content_md5", "crc32c", "generation", "version_id")
_WHOLE_FILE = 1 << 62


@dataclass(frozen=True)
class Plan:
    """The mini-batches of a job, in order; `kind` is "file" or "tabular"."""

    kind: str
    mini_batches: list[MiniBatch]

    @property
    def total_items(self) -> int:
        return sum(mb.items for mb in self.mini_batches)


def _identity(info: dict[str, Any]) -> str:
    for key in _IDENTITY_KEYS:
        value = info.get(key)
        if value:
            return f"{key}:{str(value).strip(chr(34))}"
    return ""


def _hidden(name: str) -> bool:
    return name.startswith((".", "_"))


def _list_local_dir(root: str) -> list[tuple[str, int]]:
    """os.scandir walk: 100,000 files in about a second, no contents read."""
    found: list[tuple[str, int]] = []
    stack = [root]
    while stack:
        current = stack.pop()
        with os.scandir(current) as entries:
            for entry in entries:
                if _hidden(entry.name):
                    continue
                if entry.is_dir(follow_symlinks=True):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=True):
                    found.append((entry.path, entry.stat(follow_symlinks=True).st_size))
                else:  # a dangling symlink, a FIFO, a socket: never drop an input item silently
                    raise InputError(
                        f"input entry {entry.path!r} is not a readable file or folder (a dangling symlink, "
                        "a FIFO or a socket); remove it or fix its target"
                    )
    return found


def list_input(path: str, storage_options: dict[str, Any]) -> tuple[str, list[FileRef]]:
    """Expands one path/glob/folder/URL into (root folder, files sorted by path)."""
    try:
        fs, fs_path = url_to_fs(path, **storage_options)
    except (ValueError, ImportError) as exc:
        raise InputError(f"input {path!r} cannot be opened: {exc}") from exc
    local = is_local(fs)
    if local:
        fs_path = os.path.abspath(fs_path)
    try:
        root, refs = _expand(fs, fs_path, path, local)
    except InputError:
        raise
    except Exception as exc:  # credentials, permissions, network: name the input, never a bare traceback
        raise InputError(f"input {path!r} cannot be listed: {type(exc).__name__}: {exc}") from exc
    if not refs:
        raise InputError(
            f"input {path!r} matched no files (names starting with '.' or '_' are skipped in folders)"
        )
    for ref in refs:
        _check_utf8_name(ref.url)
    refs.sort(key=lambda r: r.url)
    return to_url(fs, root.rstrip("/")) if root else "", refs


def _check_utf8_name(url: str) -> None:
    """A local name that is not valid UTF-8 (decoded with surrogate escapes) cannot be written to the
    logs, the cache or the output as text: refused up front, naming the file by its bytes."""
    try:
        url.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(
            f"input file {os.fsencode(url)!r} has a name that is not valid UTF-8; rename it (for example "
            "with convmv) or leave it out of the inputs"
        ) from None


def _expand(fs: fsspec.AbstractFileSystem, fs_path: str, path: str, local: bool) -> tuple[str, list[FileRef]]:
    refs: list[FileRef] = []
    if _GLOB_CHARS.search(fs_path):
        root = fs_path[: _GLOB_CHARS.search(fs_path).start()]  # type: ignore[union-attr]
        root = root if root.endswith("/") else posixpath.dirname(root)
        for match, info in sorted(fs.glob(fs_path, detail=True).items()):
            if info.get("type") == "directory":
                refs.extend(_list_dir(fs, match, local))
            else:
                refs.append(FileRef(to_url(fs, match), info.get("size"), "" if local else _identity(info)))
    elif fs.isdir(fs_path):
        root = fs_path
        refs = _list_dir(fs, fs_path, local)
    elif fs.exists(fs_path):
        info = fs.info(fs_path)
        root = posixpath.dirname(fs_path)
        refs = [FileRef(to_url(fs, fs_path), info.get("size"), "" if local else _identity(info))]
    else:
        raise InputError(f"input {path!r} does not exist (no file, folder or glob match)")
    return root, refs


def _list_dir(fs: fsspec.AbstractFileSystem, path: str, local: bool) -> list[FileRef]:
    if local:
        return [FileRef(p, size) for p, size in _list_local_dir(path)]
    refs = []
    for name, info in fs.find(path, detail=True).items():
        rel = posixpath.relpath(name, path)
        if any(_hidden(part) for part in rel.split("/")):
            continue
        refs.append(FileRef(to_url(fs, name), info.get("size"), _identity(info)))
    return refs


def partition_regex(partition_format: str) -> tuple[re.Pattern[str], list[str]]:
    """'{user}/{season}/{genres}.wav' -> a regex with one named group per key."""
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
    return re.compile(pattern + r"$"), keys


def partition_values(rel_path: str, regex: re.Pattern[str] | None) -> dict[str, str]:
    """Key values of one file: from the template when given, else from hive `key=value` folders."""
    if regex is not None:
        match = regex.search(rel_path)
        return match.groupdict() if match else {}
    values = {}
    for segment in rel_path.split("/")[:-1]:
        if "=" in segment:
            key, _, value = segment.partition("=")
            values[key] = value
    return values


def _grouped(
    refs: Sequence[FileRef], root: str, dataset: Dataset, keys: Sequence[str]
) -> list[tuple[dict[str, str], list[FileRef]]]:
    regex = partition_regex(dataset.partition_format)[0] if dataset.partition_format else None
    groups: dict[tuple[str, ...], list[FileRef]] = {}
    for ref in refs:
        rel = (
            ref.url[len(root) :].lstrip("/")
            if root and ref.url.startswith(root)
            else posixpath.basename(ref.url)
        )
        values = partition_values(rel, regex)
        missing = [k for k in keys if k not in values]
        if missing:
            source = f"partition_format {dataset.partition_format!r}" if regex else "hive key=value folders"
            raise InputError(
                f"file {ref.url!r} has no value for partition key(s) {missing} ({source}; keys found: {sorted(values)})"
            )
        groups.setdefault(tuple(values[k] for k in keys), []).append(ref)
    return [(dict(zip(keys, combo, strict=True)), files) for combo, files in sorted(groups.items())]


def plan(inputs: Sequence[Dataset], config: ParallelRunConfig) -> Plan:
    """Mini-batches for all inputs, processed one input after another (as ParallelRunStep does)."""
    return plan_inputs(inputs, config.mini_batch_size, config.partition_keys)


def plan_inputs(
    inputs: Sequence[Dataset],
    mini_batch_size: int | str | None = None,
    partition_keys: Sequence[str] | None = None,
) -> Plan:
    """`plan` without a whole config (the sensor plans before the operator's config is known)."""
    if not inputs:
        raise ConfigError("inputs", list(inputs), "at least one FileDataset or TabularDataset")
    kinds = {getattr(d, "kind", None) for d in inputs}
    if kinds - {"file", "tabular"}:
        raise ConfigError("inputs", list(inputs), "FileDataset or TabularDataset objects")
    if len(kinds) > 1:
        raise ConfigError(
            "inputs", [type(d).__name__ for d in inputs], "datasets of one type (all file or all tabular)"
        )
    kind = str(kinds.pop())
    tabular = kind == "tabular"
    default = DEFAULT_TABULAR_MINI_BATCH if tabular else DEFAULT_FILE_MINI_BATCH
    size = parse_mini_batch_size(mini_batch_size if mini_batch_size is not None else default, tabular=tabular)
    keys = [partition_keys] if isinstance(partition_keys, str) else list(partition_keys or ())
    batches: list[MiniBatch] = []
    for input_index, dataset in enumerate(inputs):
        for path in dataset.paths:
            root, refs = list_input(path, dict(dataset.storage_options))
            if keys:
                groups = _grouped(refs, root, dataset, keys)
                for values, files in groups:
                    batches.append(_partition_batch(len(batches), input_index, dataset, files, values))
            elif isinstance(dataset, TabularDataset):
                for pieces in _slices_of_files(refs, dataset, size):
                    for piece in pieces:
                        batches.append(
                            MiniBatch(len(batches), "tabular", input_index, piece.rows, slices=(piece,))
                        )
            else:
                for chunk in _chunks(refs, size):
                    batches.append(
                        MiniBatch(len(batches), "file", input_index, len(chunk), files=tuple(chunk))
                    )
    return Plan(kind, batches)


def _slices(ref: FileRef, dataset: TabularDataset, size: int) -> list[TabularSlice]:
    from .tabular import plan_tabular_file

    return plan_tabular_file(ref.url, ref.size or 0, dataset, size)


# Files scanned at once when splitting tabular input: the scan (numpy, file reads) releases the GIL, so
# several files use several cores (or overlap remote reads), while the job waits for the whole plan.
_PLAN_THREADS = min(4, os.cpu_count() or 1)


def _slices_of_files(
    refs: Sequence[FileRef], dataset: TabularDataset, size: int
) -> Iterator[list[TabularSlice]]:
    """The slices of each file, in the files' order; a bounded window of files is planned in parallel, so
    a million files never become a million pending futures. The first failing file's error is raised."""
    if _PLAN_THREADS < 2 or len(refs) < 2 or dataset.format == "parquet":
        for ref in refs:  # parquet planning reads only footers: threads would not pay for themselves
            yield _slices(ref, dataset, size)
        return
    window = 2 * _PLAN_THREADS
    with ThreadPoolExecutor(max_workers=_PLAN_THREADS, thread_name_prefix="apr-plan") as pool:
        pending: deque[Future[list[TabularSlice]]] = deque()
        try:
            for ref in refs:
                pending.append(pool.submit(_slices, ref, dataset, size))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def _partition_batch(
    index: int, input_index: int, dataset: Dataset, files: list[FileRef], values: dict[str, str]
) -> MiniBatch:
    if isinstance(dataset, FileDataset):
        return MiniBatch(
            index, "file", input_index, len(files), files=tuple(files), partition_key_value=values
        )
    slices = tuple(s for ref in files for s in _slices(ref, dataset, _WHOLE_FILE))
    return MiniBatch(
        index, "tabular", input_index, sum(s.rows for s in slices), slices=slices, partition_key_value=values
    )


def _chunks(items: Sequence[FileRef], size: int) -> Iterable[list[FileRef]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])
