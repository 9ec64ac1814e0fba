"""Entry-script processes forked from a process that has already imported what they need.

A fresh `python -m airflow_parallel_run.core.worker.child` spends about a second of CPU importing the engine,
pandas and pyarrow before its first mini-batch (docs/performance.md, "Tabular, round 4"): on a 2-core host,
with one such start per process per job, that was a sixth of a 1 GiB scan. What a user writes by hand instead
(`multiprocessing.Pool`) forks from a parent that has them loaded. Here each Dask worker process keeps a fork
server per entry-process environment and preload set: a single-threaded process (`python -m ...fork_server`)
started with the environment an entry process gets, which imports its preloads once (`preload_for`: the engine,
and for a job of tables numpy, pandas and pyarrow) and then forks one entry-script process per request. The fork
is that process: it takes the request's stdout/stderr files and control socket, working folder and
environment, and runs `child.main`.

What a forked process keeps of a fresh one, and how:

- **Environment at import.** The server is keyed by the environment its modules were imported under (the
  worker's, without Dask's own settings: `scratch.user_environ`); another environment gets a server of its own
  (at most `MAX_SERVERS` per worker), so a variable a library reads when imported (threads, allocators) holds
  as if it had been set before that import. An entry script that sets such a variable in `os.environ` itself
  before importing pandas or pyarrow finds them imported already: set it with `environment_variables`, which
  starts the job's processes fresh.
- **Identity.** `ps` and `/proc/<pid>/environ` show the process's own command line and environment (what a
  fresh start would show: `python -m airflow_parallel_run.core.worker.child FD`, the job's output folder, its
  scope), written over the server's argument and environment areas (`_take_identity`); the server starts with
  room for them (`ENV_ROOM`). Requests that would not fit start a fresh process.
- **Randomness.** Python's `random` reseeds itself in a forked child; numpy's global `RandomState` is reseeded
  here, so two processes never draw the same numbers. String hashes are the server's (`PYTHONHASHSEED`): the
  same in every process of the server, as between runs with a fixed seed.
- **Exit and reaping.** The server reports each child's exit status (`waitid(..., WNOWAIT)`) and reaps it only
  when its runner has seen it (`ForkedProcess.poll`), as `subprocess.Popen` does: until then the PID, which is
  also the process group the runner kills, cannot be reused.
- **Lifetime.** A forked process watches its parent (the server) and ends, with what it started, when the
  server is gone (`child._watch_parent`); the server ends when its worker process closes the control socket or
  dies. Anything that fails here (no server, a fork refused, a request too large) starts the process fresh.

Only jobs without `environment_variables` use fork servers: a job's variables (often credentials) stay in its
own processes, which end with it, never in a server that outlives the job; and they hold before anything is
imported. `AIRFLOW_PARALLEL_RUN_FORK_SERVER=0` in a worker's environment turns fork servers off there.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib
import itertools
import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .scratch import fork_server_log, import_environ

if TYPE_CHECKING:
    from .spec import JobSpec

#: What a server imports before it forks: the entry-process module (all a job of files with text output needs:
#: a server that imported more would make its first process wait longer than a fresh start takes), and for
#: jobs that read tables or write csv/parquet, the readers and writers a mini-batch uses.
ENGINE_PRELOAD = ("airflow_parallel_run.core.worker.child",)
TABULAR_PRELOAD = (
    *ENGINE_PRELOAD,
    "numpy",
    "pandas",
    "pyarrow",
    "pyarrow.parquet",
    "pyarrow.csv",
    "fsspec",
    "airflow_parallel_run.core.inputs.tabular_read",
    "airflow_parallel_run.core.output.formats",
)
SERVER_MODULE = "airflow_parallel_run.core.worker.fork_server"
CHILD_MODULE = "airflow_parallel_run.core.worker.child"
SWITCH_ENV = "AIRFLOW_PARALLEL_RUN_FORK_SERVER"
#: An environment variable of the server's own that reserves room for a forked process's environment (its
#: per-process variables: paths, names, the scope), removed from the server's `os.environ` at its start.
ROOM_ENV = "AIRFLOW_PARALLEL_RUN_ENV_ROOM"
ENV_ROOM = 32 * 1024
#: Fork servers per worker process (each holds the preloaded modules, about 150 MB of RSS, most of it shared
#: with the processes it forks); past it, the least recently used server with no process running is closed.
MAX_SERVERS = 2
#: How long a new server may take to import its preloads (a loaded host, a cold disk).
START_TIMEOUT_S = 120.0
#: How long a server may take to answer a fork request (the runner holds its job's state lock meanwhile).
FORK_ANSWER_S = 10.0
#: The largest request (pickled environment and paths); above it, a fresh process.
MAX_REQUEST = 192 * 1024
_RECV_SIZE = 256 * 1024


PRELOAD_FLAG = "--preload="


def preload_argument(preload: Sequence[str]) -> str:
    """The server's argument naming its preloads: one word, never the entry-process module's name alone (what
    `ps` and the tests look for to find entry-script processes)."""
    return PRELOAD_FLAG + ",".join(preload)


def preload_for(spec: JobSpec) -> tuple[str, ...]:
    """The modules a server for `spec`'s processes imports (`ENGINE_PRELOAD` or `TABULAR_PRELOAD`)."""
    tabular = any(getattr(source, "kind", "file") != "file" for source in spec.datasets)
    return TABULAR_PRELOAD if tabular or spec.append_row_format in ("csv", "parquet") else ENGINE_PRELOAD


def enabled() -> bool:
    return os.environ.get(SWITCH_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


# -- the server (its own process) ---------------------------------------------------------------------------
def _areas() -> tuple[int, int, int, int]:
    """(arg_start, arg_end, env_start, env_end) of this process: where the kernel reads `/proc/<pid>/cmdline`
    and `/proc/<pid>/environ` (fields 48-51 of /proc/self/stat)."""
    with open("/proc/self/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    start_arg, end_arg, start_env, end_env = (int(value) for value in fields[45:49])
    return start_arg, end_arg, start_env, end_env


def _block(items: Sequence[str]) -> bytes:
    return b"".join(os.fsencode(item) + b"\0" for item in items)


def env_block(env: Mapping[str, str]) -> bytes:
    return _block([f"{name}={value}" for name, value in env.items()])


def _take_identity(argv: Sequence[str], env: Mapping[str, str]) -> None:
    """Writes `argv` and `env` over this process's argument and environment areas (what `ps` and
    /proc/<pid>/environ show), the rest of each area zeroed. Called after `os.environ` was replaced: the C
    environment then points at strings of its own, none in the area written here."""
    start_arg, end_arg, start_env, end_env = _areas()
    for start, end, data in ((start_arg, end_arg, _block(argv)), (start_env, end_env, env_block(env))):
        if len(data) <= end - start:
            ctypes.memmove(start, data + b"\0" * (end - start - len(data)), end - start)


def _preload(names: Sequence[str]) -> None:
    for name in names:
        with contextlib.suppress(ImportError):  # an optional one missing: the forks import nothing else
            importlib.import_module(name)


class _Request:
    """A fork request as the server received it: fds are (stdout, stderr, control socket)."""

    def __init__(self, env: dict[str, str], cwd: str, fds: list[int], started_in: str) -> None:
        self.env, self.cwd, self.fds = env, cwd, fds
        self.started_in = started_in  # the server's folder, which its `python -m` put first on sys.path


def serve(control_fd: int, preload: Sequence[str]) -> _Request | None:
    """The server's loop. Returns None when its worker is gone (the server then exits), and a request in
    each forked child, which then becomes the entry-script process (`become_child`)."""
    os.environ.pop(ROOM_ENV, None)
    # a fresh program's signal mask (as child.main sets it): the CLI blocks SIGINT/SIGTERM in its threads,
    # and a blocked SIGCHLD would never wake this loop
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    sock = socket.socket(fileno=control_fd)
    started_in = os.getcwd()
    _preload(preload)
    # What the forks share is frozen out of the garbage collector (gc.freeze's own use): a fork's collections
    # never walk the server's objects (a full collection with pandas and pyarrow loaded took 32 ms, then none)
    # nor write to their pages, which stay shared; and its exit is quicker (94 to 47 ms, 5 forks each).
    gc.collect()
    gc.freeze()
    start_arg, end_arg, start_env, end_env = _areas()
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    children: set[int] = set()  # forked, exit not yet reported
    exited: set[int] = set()  # exit reported, not reaped yet
    try:
        sock.send(pickle.dumps(("ready", end_arg - start_arg, end_env - start_env)))
        while True:
            readable, _, _ = select.select([sock.fileno(), wake_read], [], [])
            if wake_read in readable:
                with contextlib.suppress(BlockingIOError):
                    while os.read(wake_read, 512):
                        pass
            for pid in sorted(children):  # exits, seen without reaping (the PID stays taken)
                try:
                    info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
                except ChildProcessError:
                    info = None
                    children.discard(pid)
                if info is not None:
                    code = info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
                    children.discard(pid)
                    exited.add(pid)
                    sock.send(pickle.dumps(("exit", pid, code)))
            if sock.fileno() not in readable:
                continue
            data, fds, _, _ = socket.recv_fds(sock, _RECV_SIZE, 3)
            if not data:
                return None  # the worker closed the socket, or is gone
            message = pickle.loads(data)
            if message[0] == "reap":
                pid = message[1]
                if pid in exited:
                    exited.discard(pid)
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(pid, 0)
                continue
            _, request_id, env, cwd = message
            try:
                if len(fds) != 3:
                    raise OSError(f"the request came with {len(fds)} of its 3 files")
                gc.freeze()  # what the loop made since (little): shared too
                pid = os.fork()
            except OSError as exc:
                for fd in fds:
                    os.close(fd)
                sock.send(pickle.dumps(("failed", request_id, f"{type(exc).__name__}: {exc}")))
                continue
            if pid == 0:
                sock.close()
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                os.close(wake_read)
                os.close(wake_write)
                return _Request(env, cwd, fds, started_in)
            for fd in fds:
                os.close(fd)
            children.add(pid)
            sock.send(pickle.dumps(("forked", request_id, pid)))
    except (BrokenPipeError, ConnectionResetError):
        return None


def become_child(request: _Request) -> None:
    """In the forked process: the request's files, folder, session, environment and identity; then the
    entry-script process's own `main`, as `python -m ...child FD` runs it."""
    os.setsid()  # its own session and process group (killed as a whole), as `start_new_session=True`
    out, err, control = request.fds
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(err, 2)
    for fd in (null, out, err):
        os.close(fd)
    # only the control socket and the standard streams stay open, as with `close_fds` and `pass_fds`
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd != control:
            with contextlib.suppress(OSError):
                os.close(fd)
    os.chdir(request.cwd)
    if sys.path and sys.path[0] == request.started_in:  # as a fresh `python -m` in its working folder
        sys.path[0] = request.cwd
    os.environ.clear()
    os.environ.update(request.env)
    with contextlib.suppress(OSError, ValueError):
        _take_identity([sys.executable, "-m", CHILD_MODULE, str(control)], request.env)
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        numpy_random.seed()  # the server's state was drawn once, at its import
    child = importlib.import_module(CHILD_MODULE)
    sys.argv = [child.__file__ or CHILD_MODULE, str(control)]
    child.main(control)


# -- the worker side ----------------------------------------------------------------------------------------
class ForkServerError(OSError):
    """A fork request was sent and not answered: the process start fails (as a failed `Popen` would)."""


class ForkedProcess:
    """A forked entry-script process, as much of `subprocess.Popen` as the runner uses: `pid`, `returncode`,
    `poll`, `wait`, `send_signal`, `kill`. Its exit comes from the server; `poll`/`wait` seeing it lets the
    server reap it (until then the PID and its process group cannot be reused)."""

    def __init__(self, server: ForkServer, pid: int) -> None:
        self.server = server
        self.pid = pid
        self.args = [sys.executable, "-m", CHILD_MODULE]
        self._code: int | None = None
        self.returncode: int | None = None
        self._ended = threading.Event()
        self._pidfd: int | None = None
        with contextlib.suppress(OSError, AttributeError):
            self._pidfd = os.pidfd_open(pid)

    def _exited(self, code: int) -> None:
        self._code = code
        self._ended.set()

    def _seen(self) -> int:
        if self.returncode is None:
            assert self._code is not None
            self.returncode = self._code
            self.server.reap(self.pid)
            if self._pidfd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._pidfd)
                self._pidfd = None
        return self.returncode

    def poll(self) -> int | None:
        return self._seen() if self._ended.is_set() else None

    def wait(self, timeout: float | None = None) -> int:
        if not self._ended.wait(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
        return self._seen()

    def send_signal(self, sig: int) -> None:
        if self._ended.is_set():
            return
        with contextlib.suppress(ProcessLookupError, OSError):
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, sig)
            else:
                os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def _orphaned(self) -> None:
        """The server is gone: the process ends with it (it watches its parent); its status is lost with the
        server, so it is reported as killed once the process is seen gone."""
        self.send_signal(signal.SIGKILL)
        if self._pidfd is not None:
            with contextlib.suppress(OSError, ValueError):
                select.select([self._pidfd], [], [], 10.0)
        else:
            deadline = time.monotonic() + 10.0
            while time.monotonic() < deadline:
                try:
                    os.kill(self.pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
        self._exited(-signal.SIGKILL)


class ForkServer:
    """One server (started by `start`), used by any thread of the worker: `spawn` forks a process."""

    def __init__(
        self, env: Mapping[str, str], stderr_path: str, preload: Sequence[str] = TABULAR_PRELOAD
    ) -> None:
        self.env = dict(env)
        self.preload = tuple(preload)
        self.stderr_path = stderr_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None
        self.pid = 0
        self.arg_room = 0
        self.env_room = 0
        self.ready = threading.Event()  # started (or failed to: `error`)
        self.error = ""
        self._send_lock = threading.Lock()
        self._ids = itertools.count()
        self._answers: dict[int, list[Any]] = {}
        self._answered = threading.Condition()
        self._live: dict[int, ForkedProcess] = {}
        self._early: dict[int, int] = {}  # pid -> exit status reported before its handle was filed
        self.dead = False
        self.last_used = time.monotonic()

    def idle(self) -> bool:
        """No process of this server is running (a dead server is idle too)."""
        with self._answered:
            return self.dead or not self._live

    def start(self) -> None:
        """Starts the server and waits until it has imported its preloads (or failed: `error`)."""
        try:
            parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            with open(self.stderr_path, "ab") as err:
                self.proc = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        SERVER_MODULE,
                        str(child.fileno()),
                        preload_argument(self.preload),
                    ],
                    pass_fds=[child.fileno()],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                    env={**self.env, ROOM_ENV: "." * ENV_ROOM},
                    start_new_session=True,
                    cwd=os.path.dirname(self.stderr_path),  # a private folder: first on its sys.path
                )
            child.close()
            self.pid = self.proc.pid
            self.sock = parent
            parent.settimeout(START_TIMEOUT_S)
            first = parent.recv(_RECV_SIZE)
            parent.settimeout(None)
            if not first:
                raise OSError(f"the fork server exited at its start ({self._stderr_tail()})")
            _, self.arg_room, self.env_room = pickle.loads(first)
        except (OSError, ValueError, pickle.UnpicklingError) as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            self.close()
        else:
            threading.Thread(target=self._read, name="fork-server-reader", daemon=True).start()
        finally:
            self.ready.set()

    def _stderr_tail(self) -> str:
        with contextlib.suppress(OSError), open(self.stderr_path, "rb") as handle:
            lines = handle.read().decode("utf-8", "replace").strip().splitlines()
            return lines[-1] if lines else "nothing on its stderr"
        return "its stderr could not be read"

    def close(self) -> None:
        """Ends the server (it exits when its socket closes); its processes, if any, end with it."""
        self.dead = True
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
        if self.proc is not None:
            with contextlib.suppress(OSError):
                self.proc.kill()
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                self.proc.wait(5)

    def _read(self) -> None:
        assert self.sock is not None
        while True:
            try:
                data = self.sock.recv(_RECV_SIZE)
            except OSError:
                data = b""
            if not data:
                break
            message = pickle.loads(data)
            if message[0] == "exit":
                _, pid, code = message
                with self._answered:
                    process = self._live.pop(pid, None)
                    if process is None:
                        self._early[pid] = code
                if process is not None:
                    process._exited(code)
            else:
                with self._answered:
                    self._answers[message[1]] = message
                    self._answered.notify_all()
        with self._answered:
            self.dead = True
            orphans = list(self._live.values())
            self._live.clear()
            self._answered.notify_all()
        for process in orphans:
            threading.Thread(target=process._orphaned, daemon=True).start()
        self.close()

    def fits(self, argv: Sequence[str], env: Mapping[str, str]) -> bool:
        return len(_block(argv)) <= self.arg_room and len(env_block(env)) <= self.env_room

    def spawn(
        self, env: Mapping[str, str], cwd: str, stdout: int, stderr: int, control: int
    ) -> ForkedProcess | None:
        """Forks an entry-script process with these files, folder and environment; None if this server cannot
        (it is gone, refused the fork, or the request does not fit): the caller starts one fresh."""
        argv = [sys.executable, "-m", CHILD_MODULE, str(control)]
        if self.dead or self.sock is None or not self.fits(argv, env):
            return None
        request_id = next(self._ids)
        data = pickle.dumps(("fork", request_id, dict(env), cwd))
        if len(data) > MAX_REQUEST:
            return None
        try:
            with self._send_lock:
                socket.send_fds(self.sock, [data], [stdout, stderr, control], socket.MSG_DONTWAIT)
        except OSError:
            return None  # not sent (a full or closed socket): nothing was forked
        deadline = time.monotonic() + FORK_ANSWER_S
        with self._answered:
            while request_id not in self._answers and not self.dead and time.monotonic() < deadline:
                self._answered.wait(0.1)
            answer = self._answers.pop(request_id, None)
            if answer is not None and answer[0] == "failed":
                return None  # the server could not fork: nothing holds the control socket
            if answer is None:
                # Sent, and no answer: a process may hold the control socket, so no other may be started on
                # it. The server goes (what it forked ends with it) and this start fails, to be tried again.
                why = "ended" if self.dead else f"did not answer within {FORK_ANSWER_S:g} s"
                self._answered.release()
                try:
                    self.close()
                finally:
                    self._answered.acquire()
                raise ForkServerError(f"the fork server (pid {self.pid}) {why} while it started a process")
            process = ForkedProcess(self, answer[2])
            code = self._early.pop(process.pid, None)
            if code is None:
                self._live[process.pid] = process
        if code is not None:
            process._exited(code)
        return process

    def reap(self, pid: int) -> None:
        if self.dead or self.sock is None:
            return
        with contextlib.suppress(OSError), self._send_lock:  # never blocks: a stuck server keeps its zombie
            self.sock.send(pickle.dumps(("reap", pid)), socket.MSG_DONTWAIT)


_SERVERS: dict[tuple[frozenset[tuple[str, str]], tuple[str, ...]], ForkServer] = {}
_SERVERS_LOCK = threading.Lock()


def _room_for_one() -> bool:
    """Under `_SERVERS_LOCK`: below `MAX_SERVERS`, after closing the least recently used server that has no
    process running (a server with processes cannot go: they end with it)."""
    if len(_SERVERS) < MAX_SERVERS:
        return True
    idle = [(server.last_used, key) for key, server in _SERVERS.items() if server.idle()]
    if not idle:
        return False
    _, key = min(idle)
    _SERVERS.pop(key).close()
    return True


def server_for(
    env: Mapping[str, str], preload: Sequence[str], stderr_path: str, stop_check: Callable[[], bool]
) -> ForkServer | None:
    """The worker's server for processes whose environment at import is `env` and that need `preload`
    (`preload_for`), started if needed and waited for until `stop_check()` says the job stopped; None when
    servers are off, all `MAX_SERVERS` have processes running, the job stopped meanwhile, or this server failed
    to start (not tried again: its error is in `stderr_path`). A server that died after its start is
    replaced."""
    if not enabled():
        return None
    key = (frozenset(env.items()), tuple(preload))
    with _SERVERS_LOCK:
        server = _SERVERS.get(key)
        if server is not None and server.dead and not server.error:
            del _SERVERS[key]  # ended (killed) after its start: a new one
            server = None
        new = server is None and _room_for_one()
        if new:
            server = _SERVERS[key] = ForkServer(env, stderr_path, preload)
        if server is not None:
            server.last_used = time.monotonic()
    if server is None:
        return None
    if new:
        threading.Thread(target=server.start, name="fork-server-start", daemon=True).start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.ready.wait(0.25):
        if stop_check() or time.monotonic() > deadline:
            return None
    return None if server.dead else server


def for_job(spec: JobSpec, stop_check: Callable[[], bool]) -> ForkServer | None:
    """The server `spec`'s processes fork from (`server_for`); None for a job with `environment_variables`,
    whose processes start fresh (the module's docstring)."""
    if spec.environment_variables:
        return None
    return server_for(import_environ({}, {}), preload_for(spec), fork_server_log(), stop_check)


def main() -> None:
    names = sys.argv[2].removeprefix(PRELOAD_FLAG).split(",")
    request = serve(int(sys.argv[1]), [name for name in names if name])
    if request is not None:
        become_child(request)


if __name__ == "__main__":
    main()
