"""Scratch folders that belong to live processes, and the removal of those whose processes are gone.

A job's driver and workers keep folders for the job's life in a temp folder: the plan and commit
spills, the driver's logs for a remote output, unpacked code, side inputs, entry-process working
folders, fork-server logs and the local copy of a remote job's worker logs. They remove them at the
end. A process that is killed never gets there (the OOM killer, an Airflow task killed with SIGKILL,
a Dask worker closed while a job runs). Its folders stayed for good: five CI runs on one machine left
64 spill folders and more than 200 worker folders behind. On a long-lived worker host they pile up
until the disk is full.

The model is distributed's own scratch space (`distributed.diskutils.WorkSpace`). Each folder has an
owner file beside it (`<folder>.owner`: never inside, where it would be uploaded with the logs or seen
by an entry script in its working folder) that its users keep locked with `flock` while they live. The kernel drops a lock when
its process dies, however it dies. Whoever makes a folder of the same family first removes those
whose lock it can take.

- `owned_folder`: a new private folder (mkdtemp: 0700, a name nobody else chose), for this process
  only; `remove_owned` removes it and lets its lock go.
- `SharedFolder`: a folder several processes of one host use under one name, each holding a shared
  lock; the last one to leave removes it (`leave`).

Safe in a temp folder others can write to. A candidate must be a real folder of this user (not a
symlink), and its owner file a regular file of this user. It is removed while its lock is held, and
only if the owner file is still the one locked. A folder is made after its owner file, which is locked
before it gets its name, so a process killed at any step leaves either nothing, or an owner file nobody
holds (staged `<folder>.owner.new` or placed, with or without its folder): all of it is swept. A folder
without an owner file (made before owner files existed) is never removed. Locks belong to open file descriptions, so this
process's own folders never fall to its own sweep, and a child forked without exec keeps its
parent's folders alive while it lives: never removed too early.

A temp folder on a file system without `flock` (Lustre mounted without `-o flock`, some FUSE mounts)
gets folders without owner files: they are removed at the end as before, never swept, and a job
never fails for it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator

OWNER_SUFFIX = ".owner"
_STAGED_SUFFIX = f"{OWNER_SUFFIX}.new"  # an owner file being made, locked before it is renamed
_OPEN_FLAGS = os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)

# flock not supported by the file system: the folder goes without an owner file, the job goes on
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}

_held: dict[str, int] = {}  # folder made here -> its owner file's descriptor, locked
_held_lock = threading.Lock()


def owned_folder(parent: str, prefix: str, family: str | None = None) -> str:
    """A new private folder `<parent>/<prefix>XXXXXXXX` that belongs to this process until
    `remove_owned` or its death. Folders of the same `family` (a start of `prefix`; `prefix` itself by
    default) left by processes that died are removed first.

    The owner file comes first, locked, and the folder after it (`_new_owned`): a process killed at any
    point leaves nothing that a sweep cannot tell abandoned."""
    family = prefix if family is None else family
    if not prefix.startswith(family):
        raise ValueError(f"prefix {prefix!r} is not of family {family!r}")
    sweep(parent, family)
    while True:
        made = _new_owned(parent, prefix)
        if made is not None:
            return made


def _new_owned(parent: str, prefix: str) -> str | None:
    """One try of `owned_folder`: a name nobody else has (the staged owner file's, made with O_EXCL), that
    file locked and renamed to the folder's owner file, then the folder. None: the name was lost on the way
    (a sweep took the staged file before it was locked, or a folder made without owner file has the name);
    the caller tries another one."""
    fd, staged = tempfile.mkstemp(prefix=prefix, suffix=_STAGED_SUFFIX, dir=parent)
    folder = staged[: -len(_STAGED_SUFFIX)]
    placed = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in _NO_LOCKS:  # no flock here: a folder without owner file (never swept)
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.remove(staged)
                return tempfile.mkdtemp(prefix=prefix, dir=parent)
            if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                raise
            os.close(fd)  # a sweep holds it: it removes the file, this name is lost
            return None
        if not _same_file(fd, staged):  # a sweep removed it before the lock
            os.close(fd)
            return None
        os.write(fd, f"{os.getpid()}\n".encode())  # for a person looking; the lock is what counts
        os.rename(staged, owner_file(folder))
        placed = True
        os.mkdir(folder, 0o700)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.remove(owner_file(folder) if placed else staged)
        with contextlib.suppress(OSError):
            os.close(fd)
        if isinstance(exc, FileExistsError) and placed:
            return None  # a folder of that name without owner file (made before them): another name
        raise
    with _held_lock:
        _held[folder] = fd
    return folder


def remove_owned(folder: str) -> None:
    """Removes a folder of `owned_folder` and lets go of its lock (after: no sweep can see it free
    while it is still there)."""
    shutil.rmtree(folder, ignore_errors=True)
    with _held_lock:
        fd = _held.pop(folder, None)
    if fd is not None:
        with contextlib.suppress(OSError):
            os.remove(owner_file(folder))
        with contextlib.suppress(OSError):
            os.close(fd)


def sweep(parent: str, family: str) -> list[str]:
    """Removes the folders of `parent` whose names start with `family` and whose owners are all gone;
    returns them. Owner files (staged or placed) of that family without a folder, left by a process killed
    while making or removing one, go too once nobody holds them. Anything else (a symlink, a file, another
    user's folder, a folder without an owner file, a folder in use) stays."""
    removed: list[str] = []
    try:
        entries = os.scandir(parent)
    except OSError:
        return removed
    with entries:
        for entry in entries:
            name = entry.name
            if not name.startswith(family):
                continue
            if name.endswith(_STAGED_SUFFIX):
                _remove_if_abandoned_owner(entry.path, entry.path[: -len(_STAGED_SUFFIX)])
            elif name.endswith(OWNER_SUFFIX):
                _remove_if_abandoned_owner(entry.path, entry.path[: -len(OWNER_SUFFIX)])
            elif entry.path not in _held and _remove_if_abandoned(entry.path):
                removed.append(entry.path)
    return removed


def owner_file(folder: str) -> str:
    """The owner file of `folder`: beside it, never in it."""
    return f"{folder}{OWNER_SUFFIX}"


def _same_file(fd: int, path: str) -> bool:
    """`path` still names the file open as `fd` (not removed or replaced since it was opened)."""
    try:
        now = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    held = os.fstat(fd)
    return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)


def _remove_if_abandoned(folder: str) -> bool:
    uid = os.getuid()
    try:
        info = os.lstat(folder)
    except OSError:
        return False
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != uid:
        return False
    owner = owner_file(folder)
    with _abandoned(owner) as free:  # no owner file: being made, or not ours to judge
        if not free:
            return False
        shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.remove(owner)  # after the folder: a folder is never left without its owner file
        return True


def _remove_if_abandoned_owner(path: str, folder: str) -> None:
    """Removes the owner file `path` (staged or placed) if no folder has its name, nothing holds it and it
    is a regular file of this user: what a process killed between the file and its folder leaves."""
    if os.path.lexists(folder) or folder in _held:
        return
    with _abandoned(path) as free:
        if free and not os.path.lexists(folder):
            with contextlib.suppress(OSError):
                os.remove(path)


@contextlib.contextmanager
def _abandoned(owner: str) -> Iterator[bool]:
    """Whether `owner` is an owner file nobody holds: a regular file of this user (not a symlink), whose
    lock this process takes and keeps for the block, still under that name. Several checks, one place:
    every removal of the sweep goes through them."""
    try:
        fd = os.open(owner, _OPEN_FLAGS)
    except OSError:
        yield False
        return
    try:
        held = os.fstat(fd)
        if not stat.S_ISREG(held.st_mode) or held.st_uid != os.getuid():
            yield False
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a live process holds it (or no flock here)
            yield False
            return
        yield _same_file(fd, owner)  # False: another sweep removed it meanwhile (a new one may have its name)
    finally:
        os.close(fd)


class SharedFolder:
    """A folder that several processes of one host use under one name (`<parent>/<name>`), such as the
    local copy of a job's worker logs that every worker process of the host writes to.

    Each user holds a shared lock on the folder's owner file from `join` to `leave`; the last to leave
    removes it. Joining, leaving and sweeping hold `<parent>/<name>.lock` (made and removed with the
    folder), so a folder is never removed while someone joins it. Nothing of ours is in the folder.
    `sweep_shared` removes such folders whose users all died.
    """

    def __init__(self, parent: str, name: str) -> None:
        self.folder = os.path.join(parent, name)
        self._fd: int | None = None
        self._unlocked = False  # joined on a file system without flock: used as is, never removed
        self._lock = threading.Lock()

    def join(self) -> str:
        """Uses the folder (made if missing) until `leave`; returns its path."""
        with self._lock:
            if self._fd is None and not self._unlocked:
                try:
                    self._join_locked()
                except OSError as exc:
                    if exc.errno not in _NO_LOCKS:
                        raise
                    os.makedirs(self.folder, 0o700, exist_ok=True)
                    self._unlocked = True
            return self.folder

    def _join_locked(self) -> None:
        """Makes the folder if missing and takes a shared lock on its owner file, under the mutex."""
        with _mutex(self.folder):
            os.makedirs(self.folder, 0o700, exist_ok=True)
            fd = os.open(owner_file(self.folder), _OPEN_FLAGS | os.O_CREAT, 0o600)
            try:
                held = os.fstat(fd)
                if not stat.S_ISREG(held.st_mode) or held.st_uid != os.getuid():
                    raise PermissionError(f"{self.folder}: its owner file is not a file of this user")
                fcntl.flock(fd, fcntl.LOCK_SH)  # only a leaver holding the mutex takes it exclusively
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd

    def leave(self, before: Callable[[str], None] | None = None, *, remove: bool = True) -> bool:
        """Stops using the folder; with `remove`, removes it when no other user holds it. `before(folder)`
        runs first, with the folder held against every other user's join and leave (an upload of all of
        it). True: removed."""
        with self._lock:
            fd, self._fd = self._fd, None
            if fd is None:
                if self._unlocked and before is not None:
                    self._unlocked = False
                    before(self.folder)  # each user uploads all of it, unordered: the old behaviour
                return False
            try:
                with _mutex(self.folder) as mutex:
                    if before is not None:
                        before(self.folder)
                    return remove and _remove_if_free(fd, self.folder, mutex)
            finally:
                os.close(fd)


def sweep_shared(parent: str) -> list[str]:
    """Removes the `SharedFolder`s of `parent` whose users are all gone; returns them. The owner and mutex
    files of a folder already removed (its last user killed while leaving) go too once nobody holds them."""
    removed: list[str] = []
    try:
        with os.scandir(parent) as entries:
            listed = [(e.name, e.is_dir(follow_symlinks=False)) for e in entries]
    except OSError:
        return removed
    present = {name for name, _ in listed}
    names = [name for name, is_dir in listed if is_dir]
    names += [
        name[: -len(OWNER_SUFFIX)]
        for name, is_dir in listed
        if not is_dir and name.endswith(OWNER_SUFFIX) and name[: -len(OWNER_SUFFIX)] not in present
    ]
    for name in names:
        folder = os.path.join(parent, name)
        try:
            fd = os.open(owner_file(folder), _OPEN_FLAGS)
        except OSError:
            continue
        try:
            if os.fstat(fd).st_uid != os.getuid():
                continue
            with _mutex(folder) as mutex:
                existed = os.path.lexists(folder)
                if _remove_if_free(fd, folder, mutex) and existed:
                    removed.append(folder)
        except OSError:
            continue
        finally:
            os.close(fd)
    return removed


def _remove_if_free(fd: int, folder: str, mutex: str) -> bool:
    """Under the folder's mutex: removes it if the owner file open as `fd` is still its owner file and
    no other descriptor holds a lock on it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # another user holds it
        return False
    if not _same_file(fd, owner_file(folder)):
        return False
    shutil.rmtree(folder, ignore_errors=True)
    with contextlib.suppress(OSError):
        os.remove(owner_file(folder))
    with contextlib.suppress(OSError):
        os.remove(mutex)  # a waiter holding the old one sees it gone and takes a new one
    return True


@contextlib.contextmanager
def _mutex(folder: str) -> Iterator[str]:
    """Holds `<folder>.lock` exclusively (the one its path names when the lock is granted)."""
    path = f"{folder}.lock"
    while True:
        fd = os.open(path, _OPEN_FLAGS | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if _same_file(fd, path):
                yield path
                return
        finally:
            os.close(fd)
