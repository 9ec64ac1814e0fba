"""The output folder: which folders a job may write, what in them is the engine's, and one job at a time.

A job writes four things into its output folder: the output file (`append_row_file_name`), `logs/`,
and while it runs `.staging/` (one part file per attempt) and the lock `.airflow-parallel-run.lock`.
Each run replaces `logs/` and `.staging/`, so the engine must be sure they are its own: it marks a
folder it writes with `logs/.airflow-parallel-run` (the marker; a JSON note of the job and of the
output files it wrote there) and refuses, before any work, a folder whose `logs/` or `.staging/`
has no marker, or whose output file exists and was not written by an earlier job. Everything whose
name starts with `.airflow-parallel-run` is the engine's; `append_row_file_name` may not take one
of these names, nor `logs` or `.staging`.

An output folder may not be, contain or lie inside an input, the reuse cache, or a folder the caller
protects (`protected_paths`: the Airflow layer passes AIRFLOW_HOME and the DAGs folder): a second run
would read the first one's logs as inputs, or replace what another program keeps there.

The lock is a small JSON file refreshed by a heartbeat thread. It is stale (taken over) when its
heartbeat is older than `STALE_AFTER_S`, on any host, or at once when its process has ended on this
host (same host name and PID namespace). A busy folder raises `OutputBusyError`, which a caller may
retry; a job that finds its lock taken over (its heartbeat stalled past the bound) is told through
`on_lost` and stops. Clocks of the hosts sharing a folder must agree to well within `STALE_AFTER_S`.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import fsspec

from ..errors import ConfigError, OutputBusyError
from ..owned_folders import owned_folder, remove_owned
from ..storage import filesystem, is_local, join, local_path, remove_tree, upload_folder

PREFIX = ".airflow-parallel-run"
MARKER_NAME = PREFIX  # inside logs/
LOCK_NAME = f"{PREFIX}.lock"
LOGS = "logs"
STAGING = ".staging"
RESERVED_NAMES = (LOGS, STAGING)
HEARTBEAT_S = 5.0
STALE_AFTER_S = max(30.0, 3 * HEARTBEAT_S)
TAKEOVER_STALE_S = 10.0  # a takeover mutex older than this was left by a job that died while taking over
ACQUIRE_TRIES = 50
_GLOB_CHARS = set("*?[")

OnLost = Callable[[str], None]


def check_output_file_name(name: str) -> None:
    """`append_row_file_name` must not be one of the engine's own entries of the output folder."""
    folded = name.casefold()  # one file on case-insensitive file systems
    if folded in RESERVED_NAMES or folded.startswith(PREFIX):
        raise ConfigError(
            "append_row_file_name",
            name,
            f"a name other than {', '.join(RESERVED_NAMES)} or one starting with {PREFIX} (the engine keeps "
            "its logs, staging area and lock there)",
        )


# -- where a URL points ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Location:
    """A path on one file system: local paths are real (symlinks resolved), others protocol + path."""

    protocol: str
    path: str

    def overlaps(self, other: Location) -> bool:
        """True when one is the other or lies inside it."""
        if self.protocol != other.protocol:
            return False
        a, b = self.path.rstrip("/") or "/", other.path.rstrip("/") or "/"
        return a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")


def _static_prefix(path: str) -> str:
    """The part of a glob before its first wildcard component (the folder it can match under)."""
    parts = path.split("/")
    for i, part in enumerate(parts):
        if _GLOB_CHARS & set(part):
            return "/".join(parts[:i]) or "/"
    return path


def locate(url: str, storage_options: Mapping[str, Any] | None = None) -> Location:
    text = url.strip()
    if is_local(text):
        local = os.path.expanduser(local_path(text))
        return Location("file", os.path.realpath(os.path.abspath(_static_prefix(local))))
    try:
        fs, path = fsspec.core.url_to_fs(text, **dict(storage_options or {}))
    except (ValueError, ImportError):  # no file system (a database, postgresql://host/db): by its text
        scheme, _, rest = text.partition("://")
        return Location(scheme.lower(), "/" + rest.strip("/"))
    protocol = fs.protocol[0] if isinstance(fs.protocol, tuple) else fs.protocol
    return Location(str(protocol), "/" + _static_prefix(path).strip("/"))


def check_separate(
    output_path: str,
    storage_options: Mapping[str, Any],
    *,
    inputs: Iterable[tuple[str, Mapping[str, Any]]],
    cache_root: str | None,
    protected_paths: Sequence[str] = (),
) -> None:
    """Refuses an output folder that is, contains or lies inside an input, the cache or a protected folder.

    `inputs` are (path, storage_options) pairs: paths, folders, globs (their folder before the first
    wildcard) or URLs. Nothing is created or read.
    """
    output = locate(output_path, storage_options)
    for path, options in inputs:
        if output.overlaps(locate(path, options)):
            raise ConfigError(
                "output_path",
                output_path,
                f"a folder that neither is, contains nor lies inside the input {path!r} (a later run would "
                "read this job's output and logs as its inputs)",
            )
    if cache_root and output.overlaps(locate(cache_root, storage_options)):
        raise ConfigError(
            "output_path",
            output_path,
            f"a folder that neither is, contains nor lies inside the reuse cache {cache_root}",
        )
    for path in protected_paths:
        if path and output.overlaps(locate(str(path))):
            raise ConfigError(
                "output_path",
                output_path,
                f"a folder that neither is, contains nor lies inside {path}, which is protected (AIRFLOW_HOME, "
                "the DAGs folder and the like hold files of other programs)",
            )


# -- is the folder ours? ----------------------------------------------------------------------------------
def read_marker(fs: fsspec.AbstractFileSystem, folder: str) -> dict[str, Any] | None:
    """The marker of an earlier job in `folder` (a path on `fs`), or None when there is none."""
    try:
        data = json.loads(fs.cat_file(join(folder, LOGS, MARKER_NAME)))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("tool") == "airflow-parallel-run" else None


def check_ours(
    fs: fsspec.AbstractFileSystem, folder: str, shown: str, output_file: str | None
) -> dict[str, Any] | None:
    """Refuses a folder holding a `logs/`, `.staging/` or output file no job of this engine wrote.

    Returns the earlier job's marker (None for a folder without one: new, or with none of those).
    """
    fs.invalidate_cache(folder)  # a store's listing cache may predate an earlier job in this process
    marker = read_marker(fs, folder)
    if marker is not None:
        written = set(marker.get("outputs") or ())
        if output_file and output_file not in written and fs.exists(join(folder, output_file)):
            raise ConfigError("output_path", shown, _not_ours(shown, output_file, "no earlier job wrote it"))
        return marker
    for name in (LOGS, STAGING):
        path = join(folder, name)
        if fs.exists(path) and not (
            fs.isdir(path) and all(_marker_temp(e) for e in fs.ls(path, detail=False))
        ):  # empty, or only the temp of a marker a job was killed writing: nothing to lose
            why = (
                f"it has no marker {LOGS}/{MARKER_NAME}"
                if name == LOGS
                else f"{LOGS}/{MARKER_NAME} is missing"
            )
            raise ConfigError("output_path", shown, _not_ours(shown, name, why))
    if output_file and fs.exists(join(folder, output_file)):
        raise ConfigError("output_path", shown, _not_ours(shown, output_file, "no earlier job wrote it"))
    return None


def _not_ours(shown: str, name: str, why: str) -> str:
    return (
        f"a folder where airflow-parallel-run replaces only what it wrote: {join(shown, name)} is someone "
        f"else's ({why}) and would be replaced; use another output_path, or remove it yourself if it may go"
    )


def claim(
    fs: fsspec.AbstractFileSystem, folder: str, job_id: str, previous: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Empties the engine's `logs/` (keeping the marker, so the folder stays marked throughout) and
    `.staging/`, then writes this job's marker. Call with the lock held, after `check_ours`."""
    logs = join(folder, LOGS)
    fs.invalidate_cache(folder)
    if fs.exists(logs):
        for entry in fs.ls(logs, detail=False):
            if str(entry).rstrip("/").rsplit("/", 1)[-1] != MARKER_NAME:
                with contextlib.suppress(FileNotFoundError):
                    fs.rm(entry, recursive=True)
    with contextlib.suppress(FileNotFoundError):
        if fs.exists(join(folder, STAGING)):
            fs.rm(join(folder, STAGING), recursive=True)
    if is_local(fs):  # a lock's temp or moved-aside file left by a killed job (the lock itself stays)
        for name in os.listdir(folder):
            if name.startswith(f"{LOCK_NAME}.") and name.endswith((".tmp", ".stale")):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(folder, name))
    fs.makedirs(logs, exist_ok=True)
    marker = {
        "tool": "airflow-parallel-run",
        "job_id": job_id,
        "written": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "outputs": sorted(set((previous or {}).get("outputs") or ())),
    }
    write_marker(fs, folder, marker)
    return marker


def write_marker(fs: fsspec.AbstractFileSystem, folder: str, marker: Mapping[str, Any]) -> None:
    """Writes the marker whole (a temp file renamed over it on local disks)."""
    path = join(folder, LOGS, MARKER_NAME)
    data = json.dumps(dict(marker), indent=2).encode()
    if is_local(fs):
        temp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            with open(temp, "wb") as handle:
                handle.write(data)
            os.replace(temp, path)
        except BaseException:  # interrupted: the temp goes (one a killed job left is `_marker_temp`)
            with contextlib.suppress(OSError):
                os.remove(temp)
            raise
    else:
        fs.pipe_file(path, data)


def _marker_temp(entry: str) -> bool:
    """A temp file of `write_marker`'s (`logs/.airflow-parallel-run.<8 hex>.tmp`): ours, never the user's."""
    name = str(entry).rstrip("/").rsplit("/", 1)[-1]
    middle = name[len(MARKER_NAME) + 1 : -len(".tmp")]
    return (
        name.startswith(f"{MARKER_NAME}.")
        and name.endswith(".tmp")
        and len(middle) == 8
        and all(c in "0123456789abcdef" for c in middle)
    )


# -- one running job per folder --------------------------------------------------------------------------
def _pid_namespace() -> str:
    """Processes of two containers sharing a host name are told apart by their PID namespace."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _process_started(pid: int) -> float | None:
    try:
        import psutil

        return float(psutil.Process(pid).create_time())
    except Exception:  # noqa: BLE001 - gone, or not allowed to look: the heartbeat decides
        return None


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))


class _HeartbeatLock:
    """Shared logic of the lock: what the owner writes, when a lock is stale, how it is taken over, the
    heartbeat thread. Subclasses give four operations on a path: exclusive create, read (bytes and
    modification time), replace whole, delete."""

    def __init__(self, folder: str, shown: str, job_id: str, on_lost: OnLost | None) -> None:
        self.folder = folder
        self.shown = shown
        self.on_lost = on_lost
        self.path = join(folder, LOCK_NAME)
        self.mutex = f"{self.path}.takeover"  # held by the one job that removes a stale lock
        now = time.time()
        self.me: dict[str, Any] = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "pid_namespace": _pid_namespace(),
            "pid_started": _process_started(os.getpid()),
            "job_id": job_id,
            "token": uuid.uuid4().hex,
            "started": now,
            "heartbeat": now,
        }
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _create_file(self, path: str, data: bytes) -> bool:
        """Creates `path` holding `data` unless it exists (then False), atomically."""
        raise NotImplementedError

    def _read_file(self, path: str) -> tuple[bytes | None, float | None]:
        """(content, modification time); (None, None) when it does not exist."""
        raise NotImplementedError

    def _replace_file(self, path: str, data: bytes) -> None:
        raise NotImplementedError

    def _delete_file(self, path: str) -> None:
        raise NotImplementedError

    def acquire(self) -> None:
        """Takes the lock, or raises OutputBusyError. Interrupted half-way (a signal handler's exception, a
        KeyboardInterrupt in a notebook), it leaves nothing of its own behind: no lock naming a process that
        is still alive (every later job of it would be refused), no takeover mutex."""
        try:
            for _ in range(ACQUIRE_TRIES):
                if self._create_file(self.path, self._encode()):
                    self._start_heartbeat()
                    return
                raw, mtime = self._read_file(self.path)
                owner = self._parse(raw)
                if raw is None and mtime is None:
                    continue  # released between our attempts
                if self._stale(owner, mtime):
                    self._remove_stale(raw)
                    continue
                raise self._busy(owner, mtime)
        except BaseException:
            self._abandon()
            raise
        raise OutputBusyError(
            "output_path", self.shown, f"a folder whose lock {join(self.shown, LOCK_NAME)} can be taken"
        )

    def _abandon(self) -> None:
        """After an interrupted `acquire`: the heartbeat stops, and the lock and the takeover mutex go if
        they hold this lock's token (what another job wrote stays). A heartbeat thread interrupted in its
        start may not be joinable: it sees the stop at its first wait and ends."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread.ident is not None and thread is not threading.current_thread():
            thread.join(HEARTBEAT_S + 5)
        for path in (self.path, self.mutex):
            with contextlib.suppress(Exception):
                owner = self._parse(self._read_file(path)[0])
                if owner is not None and owner.get("token") == self.me["token"]:
                    self._delete_file(path)
            with contextlib.suppress(Exception):
                self._delete_file(self._temp_of(path))  # OutputLock's, when interrupted before removing it

    def _temp_of(self, path: str) -> str:
        """The temp file this lock writes `path` through (OutputLock: create and replace)."""
        return f"{path}.{self.me['token'][:12]}.tmp"

    def _remove_stale(self, raw: bytes | None) -> None:
        """Removes the lock judged stale, unless it changed since it was read. Several jobs may judge it
        stale at once: only the one that creates the takeover mutex removes it; the others wait a moment
        and try to create the lock again (one of them gets it)."""
        if not self._create_file(self.mutex, self._encode()):
            _, since = self._read_file(self.mutex)
            if since is not None and time.time() - since > TAKEOVER_STALE_S:  # its holder died meanwhile
                with contextlib.suppress(FileNotFoundError, OSError):
                    self._delete_file(self.mutex)
            time.sleep(0.05 + random.random() * 0.05)
            return
        try:
            current, _ = self._read_file(self.path)
            if current == raw:
                with contextlib.suppress(FileNotFoundError):
                    self._delete_file(self.path)
        finally:
            with contextlib.suppress(FileNotFoundError, OSError):
                self._delete_file(self.mutex)

    def _encode(self) -> bytes:
        return json.dumps(self.me).encode()

    @staticmethod
    def _parse(raw: bytes | None) -> dict[str, Any] | None:
        if not raw:
            return None
        try:
            owner = json.loads(raw)
        except ValueError:
            return None
        return owner if isinstance(owner, dict) else None

    def _stale(self, owner: dict[str, Any] | None, mtime: float | None) -> bool:
        """Stale: its process has ended on this host, or its heartbeat (file time without one) is too old."""
        if owner is not None and self._same_host(owner):
            pid = int(owner.get("pid") or 0)
            if not _pid_alive(pid):
                return True
            started = owner.get("pid_started")
            now_started = _process_started(pid)
            if started is not None and now_started is not None and abs(float(started) - now_started) > 1.0:
                return True  # that PID now belongs to another process
        beat = self._heartbeat_of(owner, mtime)
        return beat is not None and time.time() - beat > STALE_AFTER_S

    def _same_host(self, owner: Mapping[str, Any]) -> bool:
        if owner.get("host") != self.me["host"]:
            return False
        namespace = owner.get("pid_namespace")
        return namespace is None or namespace == self.me["pid_namespace"]

    @staticmethod
    def _heartbeat_of(owner: Mapping[str, Any] | None, mtime: float | None) -> float | None:
        if owner is not None and isinstance(owner.get("heartbeat"), (int, float)):
            return float(owner["heartbeat"])
        return mtime  # a lock of an older version, or one being written: its file time

    def _busy(self, owner: dict[str, Any] | None, mtime: float | None) -> OutputBusyError:
        owner = owner or {}
        beat = self._heartbeat_of(owner, mtime)
        seen = f"{max(0.0, time.time() - beat):.0f} s ago" if beat is not None else "never"
        started = _utc(float(owner.get("started") or beat or 0))
        return OutputBusyError(
            "output_path",
            self.shown,
            f"a folder no other running job writes to; job pid {owner.get('pid')} on {owner.get('host')} has "
            f"used it since {started} UTC, last heartbeat {seen} (its lock "
            f"{join(self.shown, LOCK_NAME)} is taken over once the heartbeat is more than {STALE_AFTER_S:g} s "
            "old; retry later, or use another output_path)",
        )

    # -- heartbeat ----------------------------------------------------------------------------------
    def _start_heartbeat(self) -> None:
        self._thread = threading.Thread(
            target=self._beat, name=f"apr-output-lock-{self.me['job_id']}", daemon=True
        )
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                raw, _ = self._read_file(self.path)
                owner = self._parse(raw)
                if owner is None or owner.get("token") != self.me["token"]:
                    who = f"job pid {owner.get('pid')} on {owner.get('host')}" if owner else "someone else"
                    self.lost = (
                        f"the output folder's lock {join(self.shown, LOCK_NAME)} was taken over by {who} (this "
                        f"job's heartbeat stalled for more than {STALE_AFTER_S:g} s)"
                    )
                    if self.on_lost is not None:
                        self.on_lost(self.lost)
                    return
                self.me["heartbeat"] = time.time()
                self._replace_file(self.path, self._encode())
            except Exception:  # noqa: BLE001 - a hiccup of the store: the next beat tries again
                continue

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(HEARTBEAT_S + 5)
        self._thread = None
        if self.lost is not None:
            return
        raw, _ = self._read_file(self.path)
        owner = self._parse(raw)
        if owner is not None and owner.get("token") == self.me["token"]:
            with contextlib.suppress(FileNotFoundError, OSError):
                self._delete_file(self.path)


class OutputLock(_HeartbeatLock):
    """One running job per local output folder: a second one gets `OutputBusyError` instead of interleaving."""

    NAME = LOCK_NAME

    def __init__(
        self, folder: str, job_id: str = "", on_lost: OnLost | None = None, *, acquire: bool = True
    ) -> None:
        super().__init__(folder, folder, job_id, on_lost)
        if acquire:
            self.acquire()

    def _create_file(self, path: str, data: bytes) -> bool:
        """The whole file appears at once, or not at all: written to a temp file of our own first, then
        hard-linked to `path` (link() fails when `path` exists). An O_EXCL create followed by a write would
        leave an empty lock when interrupted in between (a signal as the job claims its folder), refusing
        every job for STALE_AFTER_S with no owner to name. A file system without hard links gets the O_EXCL
        create, with the file removed again when its write does not finish."""
        temp = self._temp_of(path)
        try:
            with open(temp, "wb") as handle:
                handle.write(data)
            try:
                os.link(temp, path)
            except FileExistsError:
                return False
            except OSError:  # no hard links here (EPERM, ENOTSUP, ...)
                return self._create_exclusive(path, data)
            return True
        finally:
            with contextlib.suppress(OSError):
                os.remove(temp)

    @staticmethod
    def _create_exclusive(path: str, data: bytes) -> bool:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(path)
            raise
        return True

    def _read_file(self, path: str) -> tuple[bytes | None, float | None]:
        try:
            with open(path, "rb") as handle:
                return handle.read(), os.fstat(handle.fileno()).st_mtime
        except OSError:
            return None, None

    def _replace_file(self, path: str, data: bytes) -> None:
        temp = self._temp_of(path)
        with open(temp, "wb") as handle:
            handle.write(data)
        os.replace(temp, path)  # readers see the old lock or the new one, never half of it

    def _delete_file(self, path: str) -> None:
        os.remove(path)


class StoreLock(_HeartbeatLock):
    """The same lock as an object on a remote store (s3://, gs://, ...), created with an exclusive write.

    Needs a file system that supports exclusive creation (`open(path, "xb")`: s3fs on AWS S3 with
    conditional writes, the local and memory file systems). Where it is not supported the job runs
    without a lock and says so (`supported` is False).
    """

    def __init__(
        self,
        fs: fsspec.AbstractFileSystem,
        folder: str,
        shown: str,
        job_id: str = "",
        on_lost: OnLost | None = None,
        *,
        acquire: bool = True,
    ) -> None:
        super().__init__(folder, shown, job_id, on_lost)
        self.fs = fs
        self.supported = True
        if acquire:
            self.acquire()

    def _create_file(self, path: str, data: bytes) -> bool:
        self.fs.invalidate_cache(self.folder)  # "exists" must come from the store, not a listing cache
        if self.fs.exists(path):
            return False
        try:
            with self.fs.open(path, "xb") as handle:
                handle.write(data)
        except FileExistsError:
            return False
        except (NotImplementedError, ValueError, TypeError):
            self.supported = False  # no exclusive create on this store
            return True
        except OSError as exc:  # e.g. 412 Precondition Failed surfaced as an OSError
            if "precondition" in str(exc).lower() or "exists" in str(exc).lower():
                return False
            raise
        raw, _ = self._read_file(path)  # a store that ignores "x": the last writer wins, and only it goes on
        return raw == data

    def _start_heartbeat(self) -> None:
        if self.supported:
            super()._start_heartbeat()

    def _read_file(self, path: str) -> tuple[bytes | None, float | None]:
        try:
            raw = self.fs.cat_file(path)
        except (FileNotFoundError, OSError):
            return None, None
        try:
            mtime: float | None = self.fs.modified(path).timestamp()
        except Exception:  # noqa: BLE001 - a store without modification times: the heartbeat decides
            mtime = None
        return bytes(raw), mtime

    def _replace_file(self, path: str, data: bytes) -> None:
        self.fs.pipe_file(path, data)

    def _delete_file(self, path: str) -> None:
        self.fs.rm_file(path)

    def release(self) -> None:
        if self.supported:
            super().release()


# -- the job's output folder -----------------------------------------------------------------------------
def check_output_path(output_path: str) -> None:
    if not isinstance(output_path, str) or not output_path.strip():
        raise ConfigError("output_path", output_path, "a folder path or fsspec URL")


def _normalise(output_path: str, storage_options: Mapping[str, Any]) -> tuple[str, bool]:
    """The folder as an absolute path (local) or a URL, created and checked writable; and whether it is local."""
    check_output_path(output_path)
    fs, path = filesystem(output_path.strip(), storage_options)
    try:
        if is_local(fs):
            path = os.path.abspath(path)
            if os.path.isfile(path):
                raise ConfigError("output_path", output_path, "a folder (a file of that name exists)")
            os.makedirs(path, exist_ok=True)
            probe = os.path.join(path, f".apr-write-test-{os.getpid()}")
            with open(probe, "w"):
                pass
            os.remove(probe)
            return path, True
        fs.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise ConfigError("output_path", output_path, f"a folder this job can write to ({exc})") from exc
    return fs.unstrip_protocol(path).rstrip("/"), False


class OutputFolder:
    """One job's output folder: checked before anything exists (`check`), created and found ours (the
    constructor), locked and marked for the job (`claim`), given its logs folder (`open_logs`), and left
    (`leave`: staging removed, lock released) once the job ends."""

    @staticmethod
    def check(
        output_path: str,
        storage_options: Mapping[str, Any],
        *,
        output_file: str,
        inputs: Iterable[tuple[str, Mapping[str, Any]]],
        cache_root: str | None,
        protected_paths: Sequence[str] = (),
    ) -> None:
        """The folder's rules, before anything is read or created: the output file's name, the path, and
        no overlap with an input, the cache or a protected folder."""
        check_output_file_name(output_file)
        check_output_path(output_path)
        check_separate(
            output_path,
            storage_options,
            inputs=inputs,
            cache_root=cache_root,
            protected_paths=[str(p) for p in protected_paths],
        )

    def __init__(self, output_path: str, storage_options: Mapping[str, Any], output_file: str | None) -> None:
        """Creates the folder (it must be writable) and refuses one holding what no job of ours wrote."""
        self.storage_options = dict(storage_options)
        self.url, self.local = _normalise(output_path, self.storage_options)
        self.fs, self.path = filesystem(self.url, self.storage_options)
        self.output_file = output_file  # the assembled file (append_row), named before it exists
        check_ours(self.fs, self.path, self.url, self.output_file)  # again under the lock
        self.lock: OutputLock | StoreLock | None = None
        self.marker: dict[str, Any] = {}
        self._left = False

    @property
    def log_url(self) -> str:
        return join(self.url, LOGS)

    def staging_url(self, job_id: str) -> str:
        return join(self.url, STAGING, job_id)

    def claim(self, job_id: str, on_lost: OnLost) -> None:
        """Takes the folder's lock, checks again that what is there is ours, and marks the folder
        (emptying the engine's logs/ and .staging/ of an earlier run). Refusals change nothing."""
        # Held by the folder before it is taken: interrupted anywhere from here on (a signal as the job
        # starts), the folder lets the lock go (`release`) instead of leaving it to a heartbeat nobody owns.
        if self.local:
            self.lock = OutputLock(self.url, job_id, on_lost=on_lost, acquire=False)
        else:
            self.lock = StoreLock(self.fs, self.path, self.url, job_id, on_lost=on_lost, acquire=False)
        try:
            self.lock.acquire()
            previous = check_ours(self.fs, self.path, self.url, self.output_file)
            if self.output_file:  # named before it exists: a job killed after assembling still owns it
                previous = {
                    **(previous or {}),
                    "outputs": [*(previous or {}).get("outputs", []), self.output_file],
                }
            self.marker = claim(self.fs, self.path, job_id, previous)
        except BaseException:
            self.release()
            raise

    @property
    def unlocked(self) -> bool:
        """The store cannot create a file exclusively: the job runs without a lock."""
        return isinstance(self.lock, StoreLock) and not self.lock.supported

    def open_logs(self) -> str:
        """Where the driver writes the job's logs: the folder's logs/ when it is local, else a local temp
        folder (holding the marker, so the final upload keeps the folder marked) uploaded at the end."""
        if self.local:
            return self.log_url
        root = owned_folder(tempfile.gettempdir(), "apr-logs-")
        with open(os.path.join(root, MARKER_NAME), "w", encoding="utf-8") as handle:
            json.dump(self.marker, handle, indent=2)
        return root

    def upload_logs(self, log_root: str) -> None:
        """A remote folder's logs, from the local folder they were written to (removed after)."""
        if not self.local:
            upload_folder(log_root, self.log_url, self.storage_options)
            remove_owned(log_root)

    def release(self) -> None:
        """Frees the folder for the next job (also when a job ends early)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def leave(self) -> None:
        """Removes .staging, then frees the folder (in this order: once free, the next job may create its
        own .staging). Once only."""
        if self._left:
            return
        self._left = True
        try:
            remove_tree(join(self.url, STAGING), self.storage_options)
        finally:
            self.release()
