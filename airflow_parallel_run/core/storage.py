"""Where a path or URL points: the one place that tells local files from a store's objects.

The engine takes plain paths, `file://` URLs and any fsspec URL (`s3://`, `gs://`, `memory://`, ...) for
inputs, outputs, the cache and logs. Local files take the fast road (plain OS calls, hard links,
renames); everything else goes through fsspec. Both `file://` and `local://` URLs are local, as fsspec's
own local file system says (its protocols are ``("file", "local")``).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import uuid
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import fsspec

# fsspec is imported where a store is used: the entry-script process imports this module (through
# `EntryScript`) and a job of local files never needs it there.

LOCAL_PROTOCOLS = ("file", "local")


def protocol(url: str) -> str:
    """``"file"`` for plain paths and ``file://`` URLs, else what comes before ``://``."""
    head, separator, _ = url.partition("://")
    return head.lower() if separator else "file"


def is_local(target: str | fsspec.AbstractFileSystem) -> bool:
    """Does this URL (or file system) name files on this host's own disks?"""
    if isinstance(target, str):
        return protocol(target) in LOCAL_PROTOCOLS
    protocols = target.protocol if isinstance(target.protocol, tuple) else (target.protocol,)
    return any(p in LOCAL_PROTOCOLS for p in protocols)


def local_path(url: str) -> str:
    """The path of a local URL as the OS takes it (``file:///a``, ``local:///a``, ``/a`` -> ``/a``);
    relative paths stay relative. `ValueError` for a store's URL."""
    if not is_local(url):
        raise ValueError(f"{url!r} is not a local path")
    head, separator, rest = url.partition("://")
    return rest if separator else url


def absolute(url: str) -> str:
    """A local path made absolute (``~`` expanded), a store's URL unchanged; no trailing ``/``."""
    if is_local(url):
        path = os.path.abspath(os.path.expanduser(local_path(url)))
        return path.rstrip("/") or "/"
    return url.rstrip("/")


#: `scheme://user:password@host...`: a password in a URL's authority (a `user@host` alone is no secret).
_URL_PASSWORD = re.compile(r"(://[^/@?#:]*):([^/@?#]*)@")


def refuse_url_password(url: str, field: str) -> None:
    """`ConfigError` naming `field` when `url` (a path or fsspec URL of a file input, side input, output
    folder or cache) carries a password: such a URL is written down everywhere the job names its paths (its
    record, logs, reports, error messages), so the secret would travel with it. The error shows it masked."""
    if "@" in url and _URL_PASSWORD.search(url):
        from .errors import ConfigError

        raise ConfigError(
            field,
            _URL_PASSWORD.sub(r"\1:***@", url),
            "a path or URL without a password in it: give credentials in storage_options (or an Airflow "
            "connection), which never reach the job's record, logs or cache keys",
        )


#: A local path as given (absolute) or resolved, and its folder prefix ("/a/b" and "/a/b/").
PathForm = tuple[str, str]


def path_forms(paths: Iterable[str]) -> list[PathForm]:
    """Each local path as given (made absolute) and as resolved (symlinks followed), with its folder prefix:
    `under` then tells a path inside one by comparing strings, with no system call per path."""
    forms = set()
    for path in paths:
        if path:
            for form in (os.path.abspath(path), os.path.realpath(path)):
                forms.add((form, form.rstrip(os.sep) + os.sep))
    return sorted(forms)


def under(path: str, forms: Iterable[PathForm]) -> bool:
    """Whether the absolute, normalised `path` is one of `forms` or lies inside one."""
    return any(path == form or path.startswith(prefix) for form, prefix in forms)


def join(base: str, *parts: str) -> str:
    """``base/part/part``: one ``/`` between parts, for paths and URLs alike."""
    return "/".join([base.rstrip("/"), *parts])


def filesystem(url: str, storage_options: Mapping[str, Any] | None = None) -> tuple[Any, str]:
    """The fsspec file system of `url` and the path on it."""
    import fsspec

    return fsspec.core.url_to_fs(url, **dict(storage_options or {}))


def to_url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A path on `fs` as the engine writes it down: a plain path locally, a protocol URL elsewhere."""
    return path if is_local(fs) else fs.unstrip_protocol(path)


def write_atomic(url: str, data: bytes, storage_options: Mapping[str, Any]) -> None:
    """Writes a whole file so that readers see all of it or nothing (temp name + rename where possible)."""
    if not is_local(url):  # object stores: one PUT is atomic
        fs, path = filesystem(url, storage_options)
        fs.pipe_file(path, data)
        return
    write_atomic_chunks(url, (data,), storage_options)


def write_atomic_chunks(url: str, chunks: Iterable[bytes], storage_options: Mapping[str, Any]) -> None:
    """`write_atomic` of a file too large to hold whole: its bytes written as they come (locally: temp
    name + rename; an object store: a local temp file, uploaded once whole, so an error while the chunks
    are made never leaves part of the file there)."""
    if not is_local(url):
        fs, path = filesystem(url, storage_options)
        with tempfile.TemporaryDirectory(prefix="apr-upload-") as folder:
            local = os.path.join(folder, "file")
            write_atomic_chunks(local, chunks, {})
            fs.put_file(local, path)
        return
    path = os.path.abspath(local_path(url))  # plain os calls: this runs once per mini-batch
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    try:
        with open(tmp, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
        os.replace(tmp, path)
    except BaseException:  # a full disk, an interrupt, a spill that fails its check: no temp file stays
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def read_bytes(url: str, storage_options: Mapping[str, Any]) -> bytes:
    """The whole file (plain `open` locally)."""
    if is_local(url):
        with open(local_path(url), "rb") as handle:
            return handle.read()
    fs, path = filesystem(url, storage_options)
    return bytes(fs.cat_file(path))


def remove_tree(url: str, storage_options: Mapping[str, Any]) -> None:
    """Removes a folder and everything in it; a folder that is not there is fine. A local folder is
    removed as it is read (`remove_local_tree`): fsspec's `rm` lists every path under it first, and the
    staging folder of a job of 100,000 mini-batches made that list the driver's peak at the job's end
    (12 MB, after the report)."""
    if is_local(url):
        with contextlib.suppress(FileNotFoundError, OSError):
            remove_local_tree(local_path(url))
        return
    fs, path = filesystem(url, storage_options)
    with contextlib.suppress(FileNotFoundError, OSError):
        fs.rm(path, recursive=True)


_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def remove_local_tree(path: str) -> None:
    """Removes the local folder `path` and everything under it, each entry as its folder is read: the memory
    and open descriptors are one per level of depth, not one per entry (`shutil.rmtree` lists each folder
    whole first). A symbolic link is removed, never followed (`path` itself too), and each folder is opened
    relative to its parent's descriptor with `O_NOFOLLOW`, so a folder swapped for a link while this runs
    is not entered."""
    if os.path.islink(path) or (os.path.lexists(path) and not os.path.isdir(path)):
        os.unlink(path)
        return
    stack = [_open_folder(path, None)]  # (a folder's descriptor, its entries, its name in its parent)
    try:
        while stack:
            fd, entries, name = stack[-1]
            entry = next(entries, None)
            if entry is None:  # every entry of this folder is gone: the folder goes
                stack.pop()
                entries.close()
                os.close(fd)
                if stack:
                    os.rmdir(name, dir_fd=stack[-1][0])
            elif entry.is_dir(follow_symlinks=False):
                stack.append(_open_folder(entry.name, fd))
            else:
                os.unlink(entry.name, dir_fd=fd)
    finally:
        for fd, entries, _ in stack:  # left open only when an error stopped the removal
            entries.close()
            os.close(fd)
    os.rmdir(path)


def _open_folder(name: str, parent: int | None) -> tuple[int, Any, str]:
    """A folder's descriptor (relative to `parent`'s, a link not followed) and an iterator of its entries."""
    fd = os.open(name, _DIRECTORY_FLAGS, dir_fd=parent)
    try:
        return fd, os.scandir(fd), name
    except BaseException:
        os.close(fd)
        raise


def upload_folder(local_dir: str, url: str, storage_options: Mapping[str, Any]) -> None:
    """Copies a local folder's contents into the folder `url` (on any store)."""
    fs, path = filesystem(url, storage_options)
    fs.put(local_dir.rstrip("/") + "/", path, recursive=True)
