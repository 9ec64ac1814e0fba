"""Worker side: one Dask task = one mini-batch attempt, run in a long-lived entry-script process.

Each Dask worker thread owns at most one entry-script process per job (init() ran once in it). A
run() that exceeds `run_invocation_timeout`, a crash, or a cancelled job kills that process group;
the next attempt on that thread starts a replacement, which runs init() again.

Stopping: the driver calls `stop_job` on every worker (one broadcast). From then on no attempt of the
job starts an entry-script process or sends it work on that worker, and the running ones are killed
at once; an attempt that reaches a worker which missed the broadcast (one that joined later) asks
the job's Dask `Event` before it starts a process. Every process an entry-script process started
is ended with it (`process_tree.end_leftovers`), and counted in its node log.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import io
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import zipfile
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from .attempt import AttemptResult, AttemptStage, AttemptStatus
from .jobspec import JobSpec
from .messages import (
    CANCELLED,
    DIED,
    NEVER_STARTED,
    TIMED_OUT,
    Cancelled,
    Died,
    Done,
    Failed,
    FromChild,
    Loaded,
    Ready,
    Run,
    Setup,
    Shutdown,
    TimedOut,
    ToChild,
    WaitOutcome,
)
from .minibatch import MiniBatch
from .monitor import ensure_monitor, get_monitor, secret_values, stop_monitor
from .process_tree import SCOPE_ENV, end_leftovers, remember
from .storage import filesystem, is_local, local_path, upload_folder

StopCheck = Callable[[], bool]  # has the job stopped?
#: The status of an attempt whose process did not answer in time, by where it was.
TIMEOUT_STATUS = {
    AttemptStage.INIT: AttemptStatus.INIT_TIMEOUT,
    AttemptStage.LOAD: AttemptStatus.LOAD_TIMEOUT,
    AttemptStage.RUN: AttemptStatus.RUN_TIMEOUT,
}
SHUTDOWN_GRACE_S = 10.0  # for the entry script's shutdown() at the end of a job (all processes at once)
POLL_S = 0.25  # how often a waiting attempt looks at its process and at the job's local stop flag
EVENT_POLL_S = 1.0  # how often it asks the scheduler's stop Event (a round trip) instead
_STOPPED_KEEP = 1000  # stopped job ids remembered per worker process


_ROOT_LOCK = threading.Lock()
_ROOT: list[str] = []  # this process's scratch root, once checked


def _private(path: str) -> bool:
    """A real folder (not a symlink), owned by this user, that no one else can write to."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o022


def _tmp_root() -> str:
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


def local_log_root(spec: JobSpec) -> str:
    """Logs go straight into the output folder when it is local, else into a worker folder synced at the end."""
    if is_local(spec.log_url):
        return local_path(spec.log_url)
    return os.path.join(_tmp_root(), "logs", spec.job_id)


def worker_host(address: str) -> str:
    """The host of a worker address: ``tls://10.0.0.5:40123`` -> ``10.0.0.5`` (IPv6 brackets removed)."""
    return address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")


def _node_name() -> str:
    try:
        from distributed import get_worker

        return worker_host(get_worker().address)
    except (ImportError, ValueError):
        return socket.gethostbyname(socket.gethostname())


_LOCK = threading.Lock()
_BUNDLES: dict[tuple[str, str], str] = {}
_SIDE_INPUTS: dict[tuple[str, str], str] = {}

# Jobs stopped on this worker process, and the entry-script processes of each job that are starting or
# running. `_STATE` makes "is the job stopped?" and "start a process" one step, so `stop_job` never
# misses a process that was about to start.
_STATE = threading.Lock()
_STOPPED: dict[str, float] = {}
_LIVE: dict[str, set[EntryProcess]] = {}
_LEFTOVERS: dict[str, int] = {}


def is_stopped(job_id: str) -> bool:
    return job_id in _STOPPED


def _mark_stopped(job_id: str) -> None:
    """Call with `_STATE` held."""
    _STOPPED[job_id] = time.time()
    while len(_STOPPED) > _STOPPED_KEEP:
        _STOPPED.pop(next(iter(_STOPPED)))


def stop_job(job_id: str) -> int:
    """Broadcast by the driver when the job stops: no new process or mini-batch of it starts on this
    worker, and its running entry-script processes are killed now.

    Runs in the worker's event loop, so it only signals the entry-script processes themselves; the
    attempts waiting on them see them end within `POLL_S`, report CANCELLED and end (and count) what
    they started, their process groups included (`EntryProcess.kill`). Returns how many it killed.
    """
    with _STATE:
        _mark_stopped(job_id)
        killed = 0
        for process in _LIVE.get(job_id, ()):
            if process.proc is not None and process.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(process.proc.pid, signal.SIGKILL)
                killed += 1
    return killed


def _extract_bundle(spec: JobSpec) -> str:
    """Unpacks the job's code into a new private folder (mkdtemp: 0700, ours) once per job and process.

    A folder is never found by name and trusted: the bundle hash is computable from the script, so a
    name derived from it could be prepared by someone else on a shared host. Removed by `shutdown_job`.
    """
    with _LOCK:
        key = (spec.job_id, spec.bundle_hash)
        if key in _BUNDLES and os.path.isdir(_BUNDLES[key]):
            return _BUNDLES[key]
        target = tempfile.mkdtemp(
            prefix=f"code-{spec.job_id}-", dir=_ensure(os.path.join(_tmp_root(), "code"))
        )
        with zipfile.ZipFile(io.BytesIO(spec.script_bundle)) as archive:
            archive.extractall(target)
        _BUNDLES[key] = target
        return target


def _local_side_input(spec: JobSpec, url: str) -> str:
    """Side inputs are local on every worker: local paths as they are, remote ones downloaded once."""
    if is_local(url):
        return local_path(url)
    with _LOCK:
        key = (spec.job_id, url)
        if key not in _SIDE_INPUTS:
            fs, path = filesystem(url, spec.storage_options)
            target = os.path.join(
                _tmp_root(), "side", spec.job_id, str(len(_SIDE_INPUTS)), os.path.basename(path.rstrip("/"))
            )
            os.makedirs(os.path.dirname(target), exist_ok=True)
            fs.get(path, target, recursive=fs.isdir(path))
            _SIDE_INPUTS[key] = target
        return _SIDE_INPUTS[key]


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


def _claim_process_name(node_dir: str) -> str:
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


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _tail(path: str, lines: int = 15) -> str:
    """The end of a process's stderr; for a native crash, faulthandler's report from its first line."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 65536))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    crash = text.rfind("Fatal Python error")
    if crash >= 0:
        kept = [line for line in text[crash:].splitlines() if not line.startswith("Extension modules:")]
        return "\n".join(kept[:60])
    return "\n".join(text.splitlines()[-lines:])


def _signal_text(returncode: int | None) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def _user_environ() -> dict[str, str]:
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


class EntryProcess:
    """One entry-script child process and its control connection."""

    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec
        self.node = _node_name()
        self.log_root = local_log_root(spec)
        self.name = _claim_process_name(os.path.join(self.log_root, "sys", "node", self.node))
        self.paths = {
            "node": os.path.join(self.log_root, "sys", "node", self.node, f"{self.name}.txt"),
            "stdout": os.path.join(self.log_root, "user", "stdout", self.node, f"{self.name}.stdout.txt"),
            "stderr": os.path.join(self.log_root, "user", "stderr", self.node, f"{self.name}.stderr.txt"),
            "error": os.path.join(self.log_root, "user", "error", self.node, f"{self.name}.txt"),
            "entry_log_dir": os.path.join(self.log_root, "user", "entry_script_log", self.node),
        }
        for key in ("stdout", "stderr", "error"):
            os.makedirs(os.path.dirname(self.paths[key]), exist_ok=True)
        os.makedirs(self.paths["entry_log_dir"], exist_ok=True)
        open(os.path.join(self.paths["entry_log_dir"], f"{self.name}.log.txt"), "a").close()
        self.working_dir = tempfile.mkdtemp(
            prefix=f"{self.name}-", dir=_ensure(os.path.join(_tmp_root(), "work"))
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.conn: Connection | None = None
        self.mini_batches = 0
        self.scope = f"{spec.job_id}/{os.getpid()}/{self.name}/"  # inherited by all it starts
        self.descendants: dict[int, float] = {}  # pid -> start time, sampled at each mini-batch end
        self._kill_lock = threading.Lock()
        self._killed = False

    # Log lines are best-effort: a full log disk must not turn an attempt's own outcome (or a failure
    # being reported) into an exception; the driver reports its own failed log writes in the summary.
    def node_log(self, text: str) -> None:
        with contextlib.suppress(OSError), open(self.paths["node"], "a", encoding="utf-8") as handle:
            handle.write(f"{_now()}|{self.node}|{self.name}|{os.getpid()}|{text}\n")

    def error_log(self, header: str, trace: str) -> None:
        with contextlib.suppress(OSError), open(self.paths["error"], "a", encoding="utf-8") as handle:
            handle.write(f"{_now()} {header}\n{trace.rstrip()}\n\n")

    def start(self, stop_check: StopCheck) -> Ready | Failed:
        """Starts the process and waits for init(): `Ready`, or `Failed` (the process is gone then)."""
        code_dir = _extract_bundle(self.spec)
        replacements = {url: _local_side_input(self.spec, url) for url in self.spec.side_inputs}
        parent_sock, child_sock = socket.socketpair()
        try:
            if not self._spawn(child_sock):
                shutil.rmtree(self.working_dir, ignore_errors=True)
                return Failed(AttemptStatus.CANCELLED, AttemptStage.START, NEVER_STARTED)
        finally:
            child_sock.close()
        self._track()
        self.conn = Connection(os.dup(parent_sock.fileno()))
        parent_sock.close()
        setup = Setup(
            logging_level=self.spec.logging_level,
            working_dir=self.working_dir,
            script_dir=code_dir,
            entry_script=os.path.join(code_dir, self.spec.entry_script),
            arguments=tuple(resolve_arguments(self.spec.arguments, replacements)),
            datasets=tuple(self.spec.datasets),
            output_action=self.spec.output_action,
            append_row_format=self.spec.append_row_format,
            storage_options=dict(self.spec.storage_options),
            output_dir=self.spec.process_files_url(self.node, self.name),
        )
        return self._await_init(self.request(setup, self.spec.run_invocation_timeout, stop_check))

    def _environment(self) -> dict[str, str]:
        """The user's environment, the job's `environment_variables`, and what the process needs to know
        about itself."""
        env = _user_environ()
        env.update(self.spec.environment_variables)
        env.update(
            {
                # the job's output folder identifies the job (ps, /proc); the process itself points
                # output_dir at a folder of its own at once (core/output/files.py)
                "AZUREML_BI_OUTPUT_PATH": self.spec.output_url,
                "AIRFLOW_PARALLEL_RUN_AGENT": self.name,
                "AIRFLOW_PARALLEL_RUN_NODE": self.node,
                "AIRFLOW_PARALLEL_RUN_WORKING_DIR": self.working_dir,
                "AIRFLOW_PARALLEL_RUN_ENTRY_LOG_DIR": self.paths["entry_log_dir"],
                "AIRFLOW_PARALLEL_RUN_LOGGING_LEVEL": self.spec.logging_level,
                SCOPE_ENV: self.scope,
                "PYTHONUNBUFFERED": "1",
                "PYTHONFAULTHANDLER": "1",
            }
        )
        return env

    def _spawn(self, child_sock: socket.socket) -> bool:
        """Starts the process unless the job is stopped (False): under `_STATE`, so that `stop_job`
        either sees it live or this sees the job stopped."""
        env = self._environment()
        with (
            _STATE,
            open(self.paths["stdout"], "ab") as out,
            open(self.paths["stderr"], "ab") as err,
        ):
            if is_stopped(self.spec.job_id):
                return False
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "airflow_parallel_run.core.entry_process", str(child_sock.fileno())],
                pass_fds=[child_sock.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env,
                cwd=self.working_dir,
                start_new_session=True,  # its own process group: killed as a whole
            )
            _LIVE.setdefault(self.spec.job_id, set()).add(self)
            self.node_log(f"started pid {self.proc.pid}; running init()")  # before any stop_job
        return True

    def _track(self) -> None:
        """The job's resource monitor on this node samples the new process too."""
        spec = self.spec
        monitor = ensure_monitor(
            spec.job_id,
            self.log_root,
            self.node,
            spec.resource_monitor_interval,
            secrets=secret_values(spec.environment_variables, spec.storage_options),
        )
        if monitor is not None and self.proc is not None:
            monitor.track(self.proc.pid, self.name)

    def _await_init(self, outcome: WaitOutcome) -> Ready | Failed:
        if isinstance(outcome, Ready):
            self.node_log(f"init() done in {outcome.init_seconds:.3f}s")
            return outcome
        self.kill()
        return self.failure(outcome, AttemptStage.INIT)

    def send(self, message: ToChild) -> bool:
        """False when the process ended since it was last seen alive (a stop's kill, a crash)."""
        assert self.conn is not None
        try:
            self.conn.send(message)
        except OSError:
            return False
        return True

    def request(self, message: ToChild, timeout: float, stop_check: StopCheck) -> WaitOutcome:
        """Sends `message` and waits for the answer; a process that cannot be reached ended (as if while
        it was waited for)."""
        if not self.send(message):
            return CANCELLED if is_stopped(self.spec.job_id) else DIED
        return self.wait(timeout, stop_check)

    def failure(self, outcome: WaitOutcome, stage: AttemptStage, index: int | None = None) -> Failed:
        """What a wait that did not bring the expected answer means for the attempt (the outcome table):
        at `stage` of init() (`index` None) or of mini-batch `index`."""
        during = "init()" if index is None else f"run() of mini-batch {index}"
        if isinstance(outcome, Failed):
            return outcome
        if isinstance(outcome, TimedOut):
            return Failed(TIMEOUT_STATUS[stage], stage, self._timeout_message(stage, index))
        if isinstance(outcome, Died):
            return self.death_report(during, stage)
        if isinstance(outcome, Cancelled):
            what = "init() ran" if stage is AttemptStage.INIT else "this mini-batch ran"
            return Failed(AttemptStatus.CANCELLED, stage, f"job stopped while {what}")
        message = f"the entry-script process answered {type(outcome).__name__} during {during}"
        return Failed(AttemptStatus.SYSTEM_ERROR, stage, message)

    def _timeout_message(self, stage: AttemptStage, index: int | None) -> str:
        spec = self.spec
        if stage is AttemptStage.INIT:
            return (
                f"init() did not finish in {spec.run_invocation_timeout:g} s (run_invocation_timeout); "
                "the process was stopped"
            )
        if stage is AttemptStage.LOAD:
            return f"reading mini-batch {index} took more than {spec.load_timeout:g} s"
        return (
            f"mini-batch {index} did not finish in {spec.run_invocation_timeout:g} s "
            "(run_invocation_timeout); the process was stopped and will be replaced"
        )

    def death_report(self, during: str, stage: AttemptStage) -> Failed:
        code = self.proc.wait() if self.proc else None
        tail = _tail(self.paths["stderr"])
        return Failed(
            AttemptStatus.PROCESS_DIED,
            stage,
            f"entry-script process {self.name} died during {during} ({_signal_text(code)})",
            f"last lines of {self.paths['stderr']}:\n{tail}\n" if tail else "",
        )

    def wait(self, timeout: float, stop_check: StopCheck) -> WaitOutcome:
        """The process's next message, or TIMED_OUT / DIED / CANCELLED (the job stopped: checked every
        `POLL_S` locally, every `EVENT_POLL_S` with the scheduler)."""
        assert self.conn is not None and self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return TIMED_OUT
            try:
                if self.conn.poll(min(remaining, POLL_S)):
                    message: FromChild = self.conn.recv()
                    return message
            except (EOFError, OSError):
                return CANCELLED if is_stopped(self.spec.job_id) else DIED
            if self.proc.poll() is not None and not self.conn.poll(0):
                return CANCELLED if is_stopped(self.spec.job_id) else DIED
            if stop_check():
                return CANCELLED

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def remember_descendants(self) -> None:
        """Samples the processes this one started (at each mini-batch end), so that one which later
        detaches from the tree is still ended with the job."""
        if self.proc is not None:
            with contextlib.suppress(Exception):
                remember(self.proc.pid, self.descendants)

    def kill(self) -> int:
        """Kills the process, its process group and every process it started; returns how many of
        those others were still running (also noted in the node log and counted for the job).

        Once only: a second caller (`shutdown_job` while the attempt's own thread is at it) waits for
        the first to finish and returns 0; the process leaves `_LIVE` when its leftovers are counted."""
        with self._kill_lock:
            if self._killed:
                return 0
            try:
                return self._kill()
            finally:
                self._killed = True
                with _STATE:
                    _LIVE.get(self.spec.job_id, set()).discard(self)

    def _kill(self) -> int:
        monitor = get_monitor(self.spec.job_id, self.node)
        if monitor is not None and self.proc is not None:
            monitor.untrack(self.proc.pid)
        ended: list[int] = []
        if self.proc is not None:
            try:  # before the process is reaped, so that its PID (= its group) cannot be reused meanwhile
                ended = end_leftovers(self.proc.pid, self.scope, self.descendants)
            except Exception as exc:  # noqa: BLE001 - the process itself is still killed below
                self.node_log(f"could not look for processes left behind: {type(exc).__name__}: {exc}")
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.descendants.clear()
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        shutil.rmtree(self.working_dir, ignore_errors=True)
        if ended:
            with _STATE:
                _LEFTOVERS[self.spec.job_id] = _LEFTOVERS.get(self.spec.job_id, 0) + len(ended)
            self.node_log(
                f"ended {len(ended)} process(es) the entry script started and left running: pids "
                + ", ".join(map(str, ended))
            )
        return len(ended)

    def request_shutdown(self) -> None:
        """Asks the script's shutdown() to run (answered with `Bye`); see `finish_shutdown`."""
        if self.alive() and self.conn is not None:
            self.send(Shutdown())

    def finish_shutdown(self, deadline: float) -> None:
        """Waits until `deadline` for shutdown() and the exit, then ends the process and what it left."""
        if self.alive() and self.conn is not None:
            with contextlib.suppress(OSError, EOFError):
                self.wait(max(deadline - time.monotonic(), 0.0), lambda: False)
            if self.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=max(deadline - time.monotonic(), 0.0))
        self.kill()
        self.node_log("stopped")

    def shutdown(self) -> None:
        """Lets the script's shutdown() run, then ends the process."""
        self.request_shutdown()
        self.finish_shutdown(time.monotonic() + SHUTDOWN_GRACE_S)


def _ensure(path: str) -> str:
    os.makedirs(path, exist_ok=True)
    return path


_PROCESSES: dict[tuple[str, int], EntryProcess] = {}


class _StopCheck:
    """Has the job stopped? The local flag (set by `stop_job`) at every call; the job's Dask Event
    (set by the driver too, for workers that missed the broadcast) at most every `EVENT_POLL_S`."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self._event: Any = None
        self._asked = time.monotonic()

    def ask_scheduler(self) -> bool:
        self._asked = time.monotonic()
        try:
            if self._event is None:
                from distributed import Event

                self._event = Event(f"apr-stop-{self.job_id}")
            stopped = bool(self._event.is_set())
        except Exception:  # noqa: BLE001 - no scheduler (tests), or a lost one: the attempt goes on
            return False
        if stopped:
            with _STATE:
                _mark_stopped(self.job_id)
        return stopped

    def __call__(self) -> bool:
        if is_stopped(self.job_id):
            return True
        if time.monotonic() - self._asked >= EVENT_POLL_S:
            return self.ask_scheduler()
        return False


def run_mini_batch(spec: JobSpec, mini_batch: MiniBatch, attempt: int) -> AttemptResult:
    """The Dask task: runs one attempt of one mini-batch and reports its counts (never its data)."""
    started = time.monotonic()
    result = AttemptResult(
        mini_batch.index,
        attempt,
        AttemptStatus.RUN_EXCEPTION,
        start_time=_now(),
        total=mini_batch.items,
        stage=AttemptStage.START,
    )
    stop_check = _StopCheck(spec.job_id)
    key = (spec.job_id, threading.get_ident())
    process = _PROCESSES.get(key)
    if is_stopped(spec.job_id):  # queued on this worker before the stop: nothing starts
        return _never_started(result, started)
    try:
        if process is None or not process.alive():
            if stop_check.ask_scheduler():  # a new process (init() and all) only for a running job
                return _never_started(result, started)
            process = EntryProcess(spec)
            ready = process.start(stop_check)
            if isinstance(ready, Failed):
                if ready.stage is AttemptStage.START and ready.status is AttemptStatus.CANCELLED:
                    return _never_started(result, started)  # stopped between the check and the start
                return _failed(result, process, ready, started)
            _PROCESSES[key] = process
        return _run_on(process, mini_batch, result, stop_check, started)
    except Exception as exc:  # noqa: BLE001 - runner bugs are reported per attempt, not lost
        failure = Failed(
            AttemptStatus.SYSTEM_ERROR, result.stage, f"{type(exc).__name__}: {exc}", traceback.format_exc()
        )
        return _failed(result, process, failure, started)


def _run_on(
    process: EntryProcess, mini_batch: MiniBatch, result: AttemptResult, stop_check: StopCheck, started: float
) -> AttemptResult:
    """Sends the attempt to a ready process and waits for it to be read (`load_timeout`), then run()
    (`run_invocation_timeout`)."""
    spec = process.spec
    result.node, result.process = process.node, process.name
    result.stage = AttemptStage.LOAD
    process.node_log(f"picked mini-batch {mini_batch.index} attempt {result.attempt}: {mini_batch.label()}")
    run = Run(
        mini_batch,
        result.attempt,
        spec.part_url(mini_batch.index, result.attempt),
        spec.files_url(mini_batch.index, result.attempt),
    )
    outcome = process.request(run, spec.load_timeout, stop_check)
    load_seconds = 0.0
    if isinstance(outcome, Loaded):
        result.stage = AttemptStage.RUN
        result.total, load_seconds = outcome.total, outcome.load_seconds
        outcome = process.wait(spec.run_invocation_timeout, stop_check)
    if isinstance(outcome, Done):
        return _done(result, process, outcome, load_seconds, started)
    if isinstance(outcome, (TimedOut, Cancelled)):
        process.kill()
    return _failed(result, process, process.failure(outcome, result.stage, mini_batch.index), started)


def _done(
    result: AttemptResult, process: EntryProcess, done: Done, load_seconds: float, started: float
) -> AttemptResult:
    result.status = AttemptStatus.RUN_DONE
    result.total, result.succeeded = done.total, done.succeeded
    result.run_seconds, result.cpu_seconds = done.run_seconds, done.cpu_seconds
    result.part_url, result.columns, result.schema = done.part_url, list(done.columns), done.schema
    result.files, result.uncacheable = list(done.files), done.uncacheable
    result.elapsed_seconds = time.monotonic() - started
    process.remember_descendants()
    process.node_log(
        f"completed mini-batch {result.index} attempt {result.attempt}: entry-script pid "
        f"{process.proc.pid if process.proc else '?'}, total {result.total}, succeeded {result.succeeded}, "
        f"failed {result.failed}, started {result.start_time} UTC, elapsed {result.elapsed_seconds:.3f}s, "
        f"process CPU {result.cpu_seconds:.3f}s, read {load_seconds:.3f}s, run() {result.run_seconds:.3f}s"
    )
    return result


def _never_started(result: AttemptResult, started: float) -> AttemptResult:
    """An attempt that found its job stopped: CANCELLED without a process (the driver books no row)."""
    result.status, result.error = AttemptStatus.CANCELLED, NEVER_STARTED
    result.stage = AttemptStage.START
    result.elapsed_seconds = time.monotonic() - started
    return result


def _failed(
    result: AttemptResult, process: EntryProcess | None, failure: Failed, started: float
) -> AttemptResult:
    result.status, result.stage, result.retriable = failure.status, failure.stage, failure.retriable
    result.error, result.traceback = failure.message, failure.traceback
    result.succeeded = 0
    result.elapsed_seconds = time.monotonic() - started
    if process is not None:
        result.node, result.process = process.node, process.name
        header = f"mini-batch {result.index} attempt {result.attempt} {result.status}: {result.error}"
        process.error_log(header, result.traceback or result.error)
        process.node_log(header)
        result.error_file = os.path.relpath(process.paths["error"], process.log_root)
        if not process.alive():
            _PROCESSES.pop((process.spec.job_id, threading.get_ident()), None)
    return result


def _upload_logs(job_id: str, log_url: str, storage_options: dict[str, Any]) -> None:
    local = os.path.join(_tmp_root(), "logs", job_id)
    if not os.path.isdir(local):
        return
    # Worker processes on one host share this folder and each uploads all of it: one at a time, so
    # the last upload (made after every writer's final lines) is the one that stays.
    with open(f"{local}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        upload_folder(local, log_url, storage_options)


def shutdown_job(
    job_id: str, log_url: str | None = None, storage_options: dict[str, Any] | None = None
) -> dict[str, int]:
    """Ends this worker's entry-script processes of `job_id` and syncs remote logs.

    Idle processes run the script's shutdown() (all at once, `SHUTDOWN_GRACE_S` in all); any process
    still starting or running (a stopped job) is killed. Every process they started goes with them.
    Returns {"processes": entry-script processes ended, "leftovers": other processes ended}.
    """
    with _STATE:
        _mark_stopped(job_id)  # an attempt arriving after this starts nothing
        idle = [_PROCESSES.pop(k) for k in [k for k in _PROCESSES if k[0] == job_id]]
        busy = [p for p in _LIVE.get(job_id, set()) if p not in idle]
    for process in idle:
        process.request_shutdown()
    deadline = time.monotonic() + SHUTDOWN_GRACE_S
    for process in idle:
        process.finish_shutdown(deadline)
    for process in busy:
        process.kill()
    with contextlib.suppress(Exception):  # processes of entry processes that ended earlier
        stray = end_leftovers(None, f"{job_id}/{os.getpid()}/")
        if stray:
            with _STATE:
                _LEFTOVERS[job_id] = _LEFTOVERS.get(job_id, 0) + len(stray)
    with _STATE:
        _LIVE.pop(job_id, None)
        leftovers = _LEFTOVERS.pop(job_id, 0)
    stop_monitor(job_id)  # its last sample lands before the logs are synced
    if log_url and not is_local(log_url):
        try:
            _upload_logs(job_id, log_url, storage_options or {})
        except Exception as exc:  # noqa: BLE001 - never raise: Dask would log our arguments (credentials)
            logging.getLogger("airflow_parallel_run").warning(
                "could not upload the logs of job %s: %s: %s", job_id, type(exc).__name__, exc
            )
    for job, _url in [k for k in _SIDE_INPUTS if k[0] == job_id]:
        _SIDE_INPUTS.pop((job, _url), None)
    with _LOCK:
        for bundle in [k for k in _BUNDLES if k[0] == job_id]:
            shutil.rmtree(_BUNDLES.pop(bundle), ignore_errors=True)
    return {"processes": len(idle) + len(busy), "leftovers": leftovers}
