"""Listing inputs: paths, globs, folders (recursive) and fsspec URLs become sorted `FileRef`s, without
reading any file's contents.

Names starting with '.' or '_' are skipped in folders (`_SUCCESS`, `.DS_Store`); an entry that is neither
a readable file nor a folder (a dangling symlink, a FIFO) is an error, never an item dropped silently.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Sequence
from typing import Any

import fsspec
from fsspec.core import url_to_fs

from ..errors import ConfigError, InputError
from ..minibatch import FileRef
from ..storage import is_local, to_url


def as_paths(path: str | Sequence[str], field_name: str) -> tuple[str, ...]:
    """One path or a list of them, each a non-empty string; `ConfigError` naming `field_name` otherwise."""
    paths = (path,) if isinstance(path, str) else tuple(path)
    if not paths or not all(isinstance(p, str) and p.strip() for p in paths):
        raise ConfigError(field_name, path, "a path, glob, folder or fsspec URL, or a non-empty list of them")
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
                refs.append(
                    FileRef(to_url(fs, match), info.get("size"), "" if local else store_identity(info))
                )
    elif fs.isdir(fs_path):
        root = fs_path
        refs = _list_dir(fs, fs_path, local)
    elif fs.exists(fs_path):
        info = fs.info(fs_path)
        root = posixpath.dirname(fs_path)
        refs = [FileRef(to_url(fs, fs_path), info.get("size"), "" if local else store_identity(info))]
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
        refs.append(FileRef(to_url(fs, name), info.get("size"), store_identity(info)))
    return refs
