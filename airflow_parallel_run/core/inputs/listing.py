"""Listing inputs: paths, globs, folders (recursive) and fsspec URLs become sorted `FileRef`s, without
reading any file's contents.

Names starting with '.' or '_' are skipped in folders (`_SUCCESS`, `.DS_Store`); an entry that is neither
a readable file nor a folder (a dangling symlink, a FIFO) is an error, never an item dropped silently.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import fsspec
from fsspec.core import url_to_fs

from ..errors import ConfigError, InputError
from ..minibatch import FileRef, MiniBatch
from ..storage import is_local, refuse_url_password, to_url
from .fingerprint import LISTED_STATS
from .source import ConnectionResolver, CredentialMode, InputChange

if TYPE_CHECKING:
    from .fingerprint import Fingerprinter


def as_paths(path: str | Sequence[str], field_name: str) -> tuple[str, ...]:
    """One path or a list of them, each a non-empty string; `ConfigError` naming `field_name` otherwise."""
    paths = (path,) if isinstance(path, str) else tuple(path)
    if not paths or not all(isinstance(p, str) and p.strip() for p in paths):
        raise ConfigError(field_name, path, "a path, glob, folder or fsspec URL, or a non-empty list of them")
    for one in paths:
        refuse_url_password(one, field_name)
    return tuple(p.strip() for p in paths)


_GLOB_CHARS = re.compile(r"[*?\[]")
_IDENTITY_KEYS = ("ETag", "etag", "md5", "content_md5", "crc32c", "generation", "version_id")


def store_identity(info: dict[str, Any]) -> str:
    """The content identity a store lists for an object (ETag, md5, crc32c, ...), '' when it lists none."""
    for key in _IDENTITY_KEYS:
        value = info.get(key)
        if value:
            return f"{key}:{str(value).strip(chr(34))}"
    return ""


def _hidden(name: str) -> bool:
    return name.startswith((".", "_"))


def _folder_rows(folder: str, identities: bool) -> list[tuple[Any, ...]]:
    """One folder's entries as (sort key, path, size[, mtime_ns, inode]; size -1 for a sub-folder), sorted. A
    sub-folder's key is its name + '/': every path inside it starts with that, so sorting names this way
    orders the folder's files and sub-folders as sorting their full paths does ('a.txt' < 'a/x': '.' sorts
    before '/'). With `identities`, a file's mtime_ns and inode come from the stat its size needs: its
    fingerprint takes them instead of a stat of its own (`LISTED_STATS`, core/inputs/fingerprint.py);
    without (a listing no fingerprint follows), the rows are (sort key, path, size) only."""
    rows: list[tuple[Any, ...]] = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if _hidden(entry.name):
                continue
            if entry.is_dir(follow_symlinks=True):
                rows.append((entry.name + "/", entry.path, -1))
            elif entry.is_file(follow_symlinks=True):
                st = entry.stat(follow_symlinks=True)
                if identities:
                    rows.append((entry.name, entry.path, st.st_size, st.st_mtime_ns, st.st_ino))
                else:
                    rows.append((entry.name, entry.path, st.st_size))
            else:  # a dangling symlink, a FIFO, a socket: never drop an input item silently
                raise InputError(
                    f"input entry {entry.path!r} is not a readable file or folder (a dangling symlink, "
                    "a FIFO or a socket); remove it or fix its target"
                )
    rows.sort()
    return rows


def _walk_local_dir(root: str) -> Iterator[FileRef]:
    """Every file under `root`, already in sorted path order, one folder at a time: an os.scandir walk
    (100,000 files in about a second, no contents read) that holds one sorted folder per level of depth,
    never the whole listing, so planning can start on the first files while the rest are still being
    listed. In a plan's thread that fingerprints what it lists (`LISTED_STATS.kept()`, asked as each folder
    is read: the thread that iterates is the one that counts), each file's stat is left for its fingerprint
    as it is yielded."""
    put, keep = LISTED_STATS.put, LISTED_STATS.keeping
    kept = keep()
    stack = [(iter(_folder_rows(root, kept)), kept)]
    while stack:
        rows, kept = stack[-1]
        row = next(rows, None)
        if row is None:
            stack.pop()
            continue
        path, size = row[1], row[2]
        if size < 0:
            sub = keep()
            stack.append((iter(_folder_rows(path, sub)), sub))
        else:
            if kept:
                put(path, size, row[3], row[4])
            yield FileRef(path, size)


def list_input(path: str, storage_options: dict[str, Any]) -> tuple[str, list[FileRef]]:
    """Expands one path/glob/folder/URL into (root folder, files sorted by path)."""
    root_url, refs = iter_input(path, storage_options)
    return root_url, list(refs)


def iter_input(path: str, storage_options: dict[str, Any]) -> tuple[str, Iterator[FileRef]]:
    """`list_input` as a stream: (root folder, files in sorted path order). A local folder is walked while
    the files are consumed (a folder at a time, `_walk_local_dir`); other inputs are listed at once.

    A path that does not exist or cannot be opened raises here; an entry found bad during the walk (a
    dangling symlink, a name that is not UTF-8, an MLTable file at the root, an empty listing) raises
    `InputError` from the iterator, when it is reached."""
    try:
        fs, fs_path = url_to_fs(path, **storage_options)
    except (ValueError, ImportError) as exc:
        raise InputError(f"input {path!r} cannot be opened: {exc}") from exc
    local = is_local(fs)
    if local:
        fs_path = os.path.abspath(fs_path)
    try:
        root, found = _expand(fs, fs_path, path, local)
    except InputError:
        raise
    except Exception as exc:  # credentials, permissions, network: name the input, never a bare traceback
        raise InputError(f"input {path!r} cannot be listed: {type(exc).__name__}: {exc}") from exc
    root_url = to_url(fs, root.rstrip("/")) if root else ""
    return root_url, _checked(path, root_url, found)


def _missing(path: str) -> InputError:
    """An input path that names nothing: one wording for the listing and `check_local_input`."""
    return InputError(f"input {path!r} does not exist (no file, folder or glob match)")


def _no_files(path: str) -> InputError:
    """An input that holds no file to run: one wording for the listing and `check_local_input`."""
    return InputError(
        f"input {path!r} matched no files (names starting with '.' or '_' are skipped in folders)"
    )


def check_local_input(path: str, storage_options: Mapping[str, Any]) -> None:
    """The refusals a local path or folder gets from its listing when it does not exist or holds no file,
    found without listing it: a walk that stops at the first file (no sorting, no stat of the others).
    A streaming plan (core/driver/planning.py) refuses every input this way before it claims the output
    folder, as the whole plan did; other paths (globs, object stores) are left to their listing."""
    try:
        fs, fs_path = url_to_fs(path, **dict(storage_options))
    except (ValueError, ImportError):
        return  # the listing says why, in its own words
    if not is_local(fs) or _GLOB_CHARS.search(fs_path):
        return
    fs_path = os.path.abspath(fs_path)
    if os.path.isfile(fs_path):
        return
    if not os.path.isdir(fs_path):
        if not os.path.exists(fs_path):  # a dangling symlink given by name too, as the listing says
            raise _missing(path)
        return
    if not _holds_a_file(fs_path):
        raise _no_files(path)


def _holds_a_file(folder: str) -> bool:
    """Whether a walk of `folder` (hidden names skipped, as `_folder_rows` does) meets any entry that is not
    a folder: a file, or something the listing will refuse by name. An unreadable folder: True (the
    listing says why)."""
    stack = [folder]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    if _hidden(entry.name):
                        continue
                    if entry.is_dir(follow_symlinks=True):
                        stack.append(entry.path)
                    else:
                        return True
        except OSError:
            return True
    return False


def _checked(path: str, root_url: str, found: Iterable[FileRef]) -> Iterator[FileRef]:
    """The refusals every listing gets, applied to each file as it is listed."""
    count = 0
    try:
        for ref in found:
            _check_utf8_name(ref.url)
            if ref.url.endswith(MLTABLE_FILE):  # the check's call only for a file of that name
                _refuse_mltable_folder(path, root_url, (ref,))
            count += 1
            yield ref
    except InputError:
        raise
    except Exception as exc:  # a folder that went away or became unreadable during the walk
        raise InputError(f"input {path!r} cannot be listed: {type(exc).__name__}: {exc}") from exc
    if not count:
        raise _no_files(path)


MLTABLE_FILE = "MLTable"


def _refuse_mltable_folder(path: str, root: str, refs: Sequence[FileRef]) -> None:
    """A folder holding an `MLTable` file is a table described by that file: listed as data, its YAML would
    become CSV rows or a file item. Refused by name (an MLTable input reads it as its YAML says)."""
    for ref in refs:
        folder, _, name = ref.url.rpartition("/")
        if name == MLTABLE_FILE and folder == root:
            raise InputError(
                f"input {path!r} is an MLTable folder (it holds {ref.url}): read it as an MLTable input (a path "
                "string in the operator's inputs or the CLI's --input, airflow_parallel_run.azure.mltable_input(path), "
                "or type: mltable in a job YAML), or name its data files (e.g. a glob of them)"
            )


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


def _expand(
    fs: fsspec.AbstractFileSystem, fs_path: str, path: str, local: bool
) -> tuple[str, Iterable[FileRef]]:
    """(root, files in sorted path order): a lazy walk for a local folder, a sorted list otherwise."""
    refs: list[FileRef] = []
    if _GLOB_CHARS.search(fs_path):
        root = fs_path[: _GLOB_CHARS.search(fs_path).start()]  # type: ignore[union-attr]
        root = root if root.endswith("/") else posixpath.dirname(root)
        for match, info in sorted(fs.glob(fs_path, detail=True).items()):
            if info.get("type") == "directory":
                refs.extend(_list_dir(fs, match, local))
            else:
                refs.append(
                    FileRef(to_url(fs, match), info.get("size"), "" if local else store_identity(info))
                )
    elif fs.isdir(fs_path):
        if local:
            return fs_path, _walk_local_dir(fs_path)
        root = fs_path
        refs = _list_dir(fs, fs_path, local)
    elif fs.exists(fs_path):
        info = fs.info(fs_path)
        root = posixpath.dirname(fs_path)
        refs = [FileRef(to_url(fs, fs_path), info.get("size"), "" if local else store_identity(info))]
    else:
        raise _missing(path)
    refs.sort(key=lambda r: r.url)
    return root, refs


def _list_dir(fs: fsspec.AbstractFileSystem, path: str, local: bool) -> list[FileRef]:
    if local:
        return list(_walk_local_dir(path))
    refs = []
    for name, info in fs.find(path, detail=True).items():
        rel = posixpath.relpath(name, path)
        if any(_hidden(part) for part in rel.split("/")):
            continue
        refs.append(FileRef(to_url(fs, name), info.get("size"), store_identity(info)))
    return refs


# -- inputs that are paths ---------------------------------------------------------------------------------
class PathInput:
    """What `FileDataset` and `TabularDataset` share as input sources: paths (listed, never read, when
    planned), credentials in `storage_options`, fingerprints of the files their mini-batches cut, and
    checks of those files against a manifest (one listing per path, not a request per file)."""

    paths: tuple[str, ...]
    storage_options: Mapping[str, Any]
    template_fields: ClassVar[tuple[str, ...]] = ("paths",)

    def locations(self) -> tuple[str, ...]:
        return self.paths

    def file_refs(self, batches: Sequence[MiniBatch]) -> list[FileRef]:
        """Every file the mini-batches cut, once, in order (tabular slices name their file by URL only)."""
        refs: dict[str, FileRef] = {}
        for mb in batches:
            for ref in mb.files or tuple(FileRef(s.url) for s in mb.slices):
                refs.setdefault(ref.url, ref)
        return list(refs.values())

    def fingerprints(self, batches: Sequence[MiniBatch], memo: Fingerprinter) -> dict[str, str]:
        return memo.many(self.file_refs(batches), self.storage_options)

    def recorded_fingerprints(self, batches: Sequence[MiniBatch], memo: Fingerprinter) -> dict[str, str]:
        """Local files: a hash of their bytes (memoised on size, mtime and inode). Object-store files: the
        store's content identity and size from a fresh listing, or a hash of their bytes where the store
        has none."""
        fresh, _ = self.current_refs(batches)
        return memo.many(fresh, self.storage_options)

    def changes(
        self, batches: Sequence[MiniBatch], recorded: Mapping[str, str], memo: Fingerprinter
    ) -> list[InputChange]:
        fresh, missing = self.current_refs(batches)
        changes = [InputChange(url, "deleted") for url in missing]
        now = memo.many(fresh, self.storage_options)
        for ref in fresh:
            planned = recorded.get(ref.url)
            if planned is not None and planned != now[ref.url]:
                changes.append(InputChange(ref.url, "changed"))
        return changes

    def current_refs(self, batches: Sequence[MiniBatch]) -> tuple[list[FileRef], list[str]]:
        """The mini-batches' files as they are now (fresh size and store identity), and the URLs that are
        gone. Each path is listed once, as the planner lists it; a path that cannot be listed now has
        its planned files looked at one by one."""
        wanted = self.file_refs(batches)
        listed: dict[str, FileRef] = {}
        unlisted = False
        for path in self.paths:
            try:
                _, refs = list_input(path, dict(self.storage_options))
            except InputError:  # gone, or not listable now
                unlisted = True
                continue
            listed.update((ref.url, ref) for ref in refs)
        current: list[FileRef] = []
        missing: list[str] = []
        for ref in wanted:
            fresh = listed.get(ref.url)
            if fresh is None and unlisted:
                fresh = _look_at(ref, self.storage_options)
            if fresh is None:
                missing.append(ref.url)
            else:
                current.append(fresh)
        return current, missing

    def to_dict(self, *, credentials: bool) -> dict[str, Any]:
        fields = dataclasses.asdict(self)  # type: ignore[call-overload]
        if not credentials:
            fields.pop("storage_options", None)
        return {"type": type(self).__name__, **fields, "paths": list(self.paths)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], storage_options: Mapping[str, Any] | None = None) -> Any:
        fields = {k: v for k, v in data.items() if k != "type"}
        fields["paths"] = as_paths(fields.get("paths", ()), "paths")
        if storage_options is not None:
            fields["storage_options"] = dict(storage_options)
        return cls(**fields)

    def with_credentials(
        self,
        storage_options: Mapping[str, Any],
        connections: ConnectionResolver | None = None,
        *,
        mode: CredentialMode = "fill",
    ) -> Any:
        if not storage_options:
            return self
        if mode == "merge":
            merged = {**storage_options, **self.storage_options}
            return dataclasses.replace(self, storage_options=merged)  # type: ignore[type-var]
        if self.storage_options:
            return self
        return dataclasses.replace(self, storage_options=dict(storage_options))  # type: ignore[type-var]


def _look_at(ref: FileRef, storage_options: Mapping[str, Any]) -> FileRef | None:
    """A fresh `FileRef` of one file, or None when it does not exist."""
    fs, path = url_to_fs(ref.url, **dict(storage_options))
    try:
        if is_local(fs):
            return FileRef(ref.url, os.path.getsize(path)) if os.path.isfile(path) else None
        info = fs.info(path)
    except FileNotFoundError:
        return None
    return (
        None if info.get("type") == "directory" else FileRef(ref.url, info.get("size"), store_identity(info))
    )
