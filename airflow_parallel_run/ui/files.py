"""The files of one job, opened only where the job itself said they are.

A `JobFiles` is built from the job's XCom record (its output folder); every file the pages serve is a
path *inside* that folder's ``logs/`` or the recorded ``append_row`` file. Paths named by a request are
relative, checked segment by segment, and for a local folder resolved through symlinks and checked
again, so ``..``, absolute paths, URLs, other buckets and symlinks that point elsewhere are all "not
found". Reads stream through fsspec with the credentials of the job's connection.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO
from urllib.parse import urlsplit, urlunsplit

import fsspec

from airflow_parallel_run.core.logs.joblogs import PROGRESS_FILE
from airflow_parallel_run.core.storage import is_local
from airflow_parallel_run.ui.zipstream import ZipEntry

REPORT_FILE = "report.html"
ATTEMPTS_FILE = "sys/job_report/processed_mini-batches.csv"
MAX_PROGRESS_BYTES = 1 << 20
_SEGMENT = re.compile(r"^[^/\\\x00]+$")


class NotFound(Exception):
    """The file does not exist where the job recorded its files, or the request named a path outside."""


class RecordError(Exception):
    """The job's XCom record is not one the engine writes (missing or inconsistent locations)."""


def redact_url(text: str) -> str:
    """A URL without its user-info (``scheme://user:password@host`` → ``scheme://host``)."""
    if "://" not in text or "@" not in text:
        return text
    try:
        parts = urlsplit(text)
    except ValueError:
        return text
    if parts.username is None and parts.password is None:
        return text
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def clean_relative(path: str) -> str:
    """A relative path of plain segments (``a/b.txt``); anything else is `NotFound`."""
    if not isinstance(path, str) or not path or len(path) > 1024 or "://" in path:
        raise NotFound(path)
    segments = path.split("/")
    if any(not _SEGMENT.match(s) or s in (".", "..") for s in segments):
        raise NotFound(path)
    return "/".join(segments)


@dataclass(frozen=True)
class FileInfo:
    relative: str
    size: int | None
    mtime: float | None


@dataclass
class JobFiles:
    """The output folder of one job and what may be read from it."""

    output: str
    append_row_file: str | None = None
    storage_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.fs, root = fsspec.core.url_to_fs(self.output, **dict(self.storage_options))
        self.local = is_local(self.fs)
        self.root = os.path.abspath(root) if self.local else root.rstrip("/")
        self.logs_root = (
            posixpath.join(self.root, "logs") if not self.local else os.path.join(self.root, "logs")
        )

    @classmethod
    def from_record(cls, record: Any, storage_options: Mapping[str, Any] | None = None) -> JobFiles:
        """Checks the record the operator pushed: logs are ``<output>/logs`` and the output file is a
        plain name in the output folder (as the engine writes them), else `RecordError`."""
        if not isinstance(record, Mapping) or not isinstance(record.get("output"), str):
            raise RecordError("the job record has no output folder")
        output = record["output"].rstrip("/")
        if not output:
            raise RecordError("the job record has an empty output folder")
        if record.get("logs_dir") not in (None, f"{output}/logs"):
            raise RecordError("the job record's logs folder is not <output>/logs")
        append_row = record.get("append_row_file")
        if append_row is not None:
            if not isinstance(append_row, str) or not append_row.startswith(f"{output}/"):
                raise RecordError("the job record's output file is not in its output folder")
            try:
                clean_relative(append_row[len(output) + 1 :])
            except NotFound:
                raise RecordError("the job record's output file is not a plain file name") from None
            if "/" in append_row[len(output) + 1 :]:
                raise RecordError("the job record's output file is not a plain file name")
        return cls(output, append_row, storage_options or {})

    # -- resolving ------------------------------------------------------------------------------
    def _inside(self, base: str, relative: str) -> str:
        relative = clean_relative(relative)
        if not self.local:
            return f"{base}/{relative}"
        path = os.path.join(base, *relative.split("/"))
        real_base = os.path.realpath(base)
        if not os.path.realpath(path).startswith(real_base + os.sep):
            raise NotFound(relative)  # a symlink out of the folder
        return path

    def log_path(self, relative: str) -> str:
        """The path of a file in the logs folder; `NotFound` unless it is a regular file in there."""
        path = self._inside(self.logs_root, relative)
        if not self._is_file(path):
            raise NotFound(relative)
        return path

    def output_path(self) -> str:
        """The recorded ``append_row`` file; `NotFound` when the job has none (yet)."""
        if not self.append_row_file:
            raise NotFound("no append_row output")
        path = self._inside(self.root, self.append_row_file.rsplit("/", 1)[1])
        if not self._is_file(path):
            raise NotFound(self.append_row_file)
        return path

    def _is_file(self, path: str) -> bool:
        try:
            if self.local:
                return os.path.isfile(path)
            return bool(self.fs.isfile(path))
        except (OSError, ValueError):
            return False

    # -- reading --------------------------------------------------------------------------------
    def open(self, path: str) -> BinaryIO:
        handle: BinaryIO = self.fs.open(path, "rb")
        return handle

    def size(self, path: str) -> int | None:
        try:
            return int(self.fs.size(path))
        except (OSError, ValueError, TypeError):
            return None

    def signature(self, path: str) -> tuple[Any, ...]:
        """What changes when the file changes (size and mtime/ETag): the key of parsed-file caches."""
        try:
            info = self.fs.info(path)
        except (OSError, ValueError):
            raise NotFound(path) from None
        return (path, info.get("size"), info.get("mtime") or info.get("ETag") or info.get("LastModified"))

    def progress(self) -> dict[str, Any] | None:
        """The engine's logs/sys/progress.json, or None when it is not there (yet)."""
        try:
            path = self.log_path(PROGRESS_FILE)
            with self.open(path) as handle:
                text = handle.read(MAX_PROGRESS_BYTES + 1)
        except (NotFound, OSError):
            return None
        if len(text) > MAX_PROGRESS_BYTES:
            return None
        try:
            doc = json.loads(text)
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None

    def iter_log_files(self) -> Iterator[FileInfo]:
        """Every regular file under logs/, sorted; symlinks are skipped (a local folder is never left)."""
        if self.local:
            for folder, dirs, names in os.walk(self.logs_root, followlinks=False):
                dirs.sort()
                for name in sorted(names):
                    path = os.path.join(folder, name)
                    if os.path.islink(path) or not os.path.isfile(path):
                        continue
                    stat = os.stat(path)
                    relative = os.path.relpath(path, self.logs_root).replace(os.sep, "/")
                    yield FileInfo(relative, stat.st_size, stat.st_mtime)
            return
        try:
            found = self.fs.find(self.logs_root, detail=True)
        except (OSError, ValueError):
            return
        prefix = self.logs_root.rstrip("/") + "/"
        for path, info in sorted(found.items()):
            if info.get("type") != "file" or not path.startswith(prefix):
                continue
            mtime = info.get("mtime") or info.get("LastModified")
            stamp = mtime.timestamp() if hasattr(mtime, "timestamp") else mtime
            yield FileInfo(path[len(prefix) :], info.get("size"), float(stamp) if stamp else None)

    def log_zip_entries(self) -> Iterator[ZipEntry]:
        for info in self.iter_log_files():
            try:
                path = self._inside(self.logs_root, info.relative)
            except NotFound:
                continue
            yield ZipEntry(
                f"logs/{info.relative}",
                lambda path=path: self.open(path),  # type: ignore[misc]
                info.size,
                info.mtime,
            )

    def verify(self) -> None:
        """`NotFound` unless the folder holds the engine's logs/sys/progress.json: a record naming some
        other folder (a task can push any XCom) opens nothing there."""
        self.log_path(PROGRESS_FILE)

    def exists(self) -> bool:
        try:
            return bool(os.path.isdir(self.root) if self.local else self.fs.isdir(self.root))
        except (OSError, ValueError):
            return False
