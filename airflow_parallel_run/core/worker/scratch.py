"""A worker's scratch space and facts about it: this user's private temp root (code, side inputs, working
folders and logs of entry-script processes live under it), the node's name, process names, the user's
environment for entry scripts, and arguments with side inputs resolved to local paths.

Pure helpers: the only state is a memo of the checked temp root (not job state).
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import os
import socket
import stat
import tempfile
import threading
from collections.abc import Mapping

import psutil

from ..owned_folders import owned_folder, remove_owned

_ROOT_LOCK = threading.Lock()
_ROOT: list[str] = []  # this process's scratch root, once checked
_FORK_SERVER_LOCK = threading.Lock()  # not _ROOT_LOCK: fork_server_log calls tmp_root under it
_FORK_SERVER_FOLDER: list[int | str] = []  # [pid, folder]: where this process's fork servers log


def _private(path: str) -> bool:
    """A real folder (not a symlink), owned by this user, that no one else can write to."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o022


def tmp_root() -> str:
    """This user's scratch root on this host: `<tmp>/airflow-parallel-run-<uid>`, mode 0700.

    Code, side inputs, working folders and worker logs live under it, so on a shared host a folder
    someone else made there could replace what runs. A root that is not a private folder of this
    user (another owner, writable by others, a symlink) is never used: a fresh `mkdtemp` folder is.
    """
    with _ROOT_LOCK:
        if _ROOT and _private(_ROOT[0]):
            return _ROOT[0]
        root = os.path.join(tempfile.gettempdir(), f"airflow-parallel-run-{os.getuid()}")
        with contextlib.suppress(FileExistsError):
            os.mkdir(root, 0o700)
        if _private(root):
            os.chmod(root, 0o700)
        else:
            root = tempfile.mkdtemp(prefix="airflow-parallel-run-")
        _ROOT[:] = [root]
        return root


def worker_host(address: str) -> str:
    """The host of a worker address: ``tls://10.0.0.5:40123`` -> ``10.0.0.5`` (IPv6 brackets removed)."""
    return address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")


def node_name() -> str:
    try:
        from distributed import get_worker

        return worker_host(get_worker().address)
    except (ImportError, ValueError):
        return socket.gethostbyname(socket.gethostname())


def resolve_arguments(arguments: tuple[str, ...], replacements: dict[str, str]) -> list[str]:
    """Replaces side-input URLs in `arguments` (whole argument or the value after '=') by local paths."""
    resolved = []
    for arg in arguments:
        if arg in replacements:
            arg = replacements[arg]
        elif "=" in arg:
            name, _, value = arg.partition("=")
            if value in replacements:
                arg = f"{name}={replacements[value]}"
        resolved.append(arg)
    return resolved


def claim_process_name(node_dir: str) -> str:
    """processNNN, unique on this host for this job (replacements get new numbers, as in Azure)."""
    os.makedirs(node_dir, exist_ok=True)
    number = 1
    while True:
        name = f"process{number:03d}"
        try:
            fd = os.open(os.path.join(node_dir, f"{name}.txt"), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            os.close(fd)
            return name
        except FileExistsError:
            number += 1


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def user_environ() -> dict[str, str]:
    """This process's environment without the settings Dask puts there for its own worker processes.

    Dask sets `distributed.nanny.pre-spawn-environ` (MALLOC_TRIM_THRESHOLD_=65536, OMP/MKL/OpenBLAS
    threads = 1) in a worker's environment, and LocalCluster in its parent's. An entry script is the
    user's program: it gets the environment the user gave it (plus `environment_variables`), not
    those; with them, reading CSV mini-batches measured 35-45% slower. A value that differs from
    Dask's was set by someone else and stays.
    """
    env = dict(os.environ)
    try:
        import dask

        dask_settings = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})
    except ImportError:
        dask_settings = {}
    for key, value in dask_settings.items():
        if env.get(key) == str(value):
            del env[key]
    return env


def import_environ(variables: Mapping[str, str], local: Mapping[str, str]) -> dict[str, str]:
    """What an entry-script process's imports see: the user's environment (`user_environ`), the job's
    `environment_variables` (a side input named there as its local path, from `local`) and the interpreter
    settings every entry-script process gets. A fork server is chosen by it (core/worker/fork_server.py)."""
    env = user_environ()
    env.update({name: local.get(value, value) for name, value in variables.items()})
    env.update({"PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"})
    return env


def fork_server_log() -> str:
    """Where this worker process's fork servers write their stderr (core/worker/fork_server.py): a
    private folder of this process (its fork servers' working folder too), removed by a later worker on
    the host once this process is gone (core/owned_folders.py), or at its exit."""
    with _FORK_SERVER_LOCK:
        pid = os.getpid()
        if not _FORK_SERVER_FOLDER or _FORK_SERVER_FOLDER[0] != pid:
            parent = ensure(os.path.join(tmp_root(), "fork-servers"))
            _remove_old_fork_server_logs(parent)
            folder = owned_folder(parent, f"{pid}-", family="")
            atexit.register(_remove_at_exit, pid, folder)  # a worker that closes cleanly takes it along
            _FORK_SERVER_FOLDER[:] = [pid, folder]
        return os.path.join(str(_FORK_SERVER_FOLDER[1]), "stderr.txt")


def _remove_at_exit(pid: int, folder: str) -> None:
    """Only in the process that made it: a child forked without exec inherits the atexit handlers."""
    if os.getpid() == pid:
        remove_owned(folder)


def _remove_old_fork_server_logs(parent: str) -> None:
    """Earlier versions wrote `<parent>/<pid>.stderr.txt` and never removed it: the files of this user
    whose process is gone are removed (one that a live process of that pid holds stays)."""
    with contextlib.suppress(OSError), os.scandir(parent) as entries:
        for entry in entries:
            pid, _, rest = entry.name.partition(".")
            if rest != "stderr.txt" or not pid.isdigit() or not entry.is_file(follow_symlinks=False):
                continue
            if entry.stat(follow_symlinks=False).st_uid != os.getuid() or psutil.pid_exists(int(pid)):
                continue
            with contextlib.suppress(OSError):
                os.remove(entry.path)


def ensure(path: str) -> str:
    os.makedirs(path, exist_ok=True)
    return path
