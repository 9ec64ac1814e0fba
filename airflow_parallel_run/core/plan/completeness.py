"""Is a partition complete? The rules `DatasetPartitionSensor` (and its trigger) poll with.

A partition that does not exist yet, or is empty, is "not yet"; a location that cannot be read
(bad credentials, permission denied, unknown protocol) is an error, so the sensor fails at once
instead of waiting until its timeout.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fsspec.core import url_to_fs

from ..errors import ConfigError, InputError
from ..inputs.listing import list_input
from ..inputs.source import Dataset, PathSource


@dataclass(frozen=True)
class Completeness:
    """Exactly one rule: a marker file (e.g. `_SUCCESS`), a minimum file count, or sizes stable for N pokes."""

    marker_file: str | None = None
    min_file_count: int | None = None
    stable_pokes: int | None = None

    def __post_init__(self) -> None:
        chosen = [
            n for n in ("marker_file", "min_file_count", "stable_pokes") if getattr(self, n) is not None
        ]
        if len(chosen) != 1:
            raise ConfigError(
                "completeness", chosen or None, "exactly one of marker_file, min_file_count, stable_pokes"
            )
        if self.marker_file is not None and (not self.marker_file or "/" in self.marker_file):
            raise ConfigError("marker_file", self.marker_file, "a file name such as _SUCCESS")
        for name in ("min_file_count", "stable_pokes"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(name, value, "an integer >= 1")

    def describe(self) -> str:
        if self.marker_file:
            return f"marker file {self.marker_file}"
        if self.min_file_count:
            return f"at least {self.min_file_count} files"
        return f"file sizes unchanged for {self.stable_pokes} pokes"


def _missing(exc: InputError) -> bool:
    text = str(exc)
    return "does not exist" in text or "matched no files" in text


def _marker_present(path: str, marker: str, storage_options: dict[str, Any]) -> bool:
    fs, fs_path = url_to_fs(path, **storage_options)
    for char in "*?[":
        if char in fs_path:
            fs_path = fs_path[: fs_path.index(char)]
    folder = fs_path if fs.isdir(fs_path) else posixpath.dirname(fs_path.rstrip("/"))
    return bool(fs.exists(posixpath.join(folder, marker)))


def check_partition(
    datasets: Sequence[Dataset], rule: Completeness, state: dict[str, Any] | None = None
) -> tuple[bool, dict[str, Any], str]:
    """(complete?, state for the next poke, what was seen). Raises `InputError` when unreadable, and
    `ConfigError` for an input that is not files under paths (nothing lands there to wait for)."""
    state = dict(state or {})
    listing: dict[str, int] = {}
    for dataset in datasets:
        if not isinstance(dataset, PathSource):
            raise ConfigError(
                "input",
                type(dataset).__name__,
                "files under paths (a FileDataset or TabularDataset) to watch",
            )
        options = dict(dataset.storage_options)
        for path in dataset.paths:
            if rule.marker_file:
                try:
                    if not _marker_present(path, rule.marker_file, options):
                        return False, state, f"{path}: waiting for marker file {rule.marker_file}"
                except FileNotFoundError:
                    return False, state, f"{path}: does not exist yet"
            try:
                _root, refs = list_input(path, options)
            except InputError as exc:
                if _missing(exc):
                    return False, {}, f"{path}: not there yet"
                raise
            except (PermissionError, OSError) as exc:
                raise InputError(f"input {path!r} cannot be read: {type(exc).__name__}: {exc}") from exc
            listing.update({ref.url: int(ref.size or 0) for ref in refs})
    seen = f"{len(listing)} files, {sum(listing.values())} bytes"
    if rule.min_file_count is not None and len(listing) < rule.min_file_count:
        return False, state, f"{seen}; waiting for {rule.min_file_count} files"
    if rule.stable_pokes is not None:
        stable = state.get("stable", 0) + 1 if state.get("listing") == listing else 0
        state = {"listing": listing, "stable": stable}
        if stable < rule.stable_pokes:
            return False, state, f"{seen}; unchanged for {stable} of {rule.stable_pokes} pokes"
    return True, state, f"{seen}; complete ({rule.describe()})"
