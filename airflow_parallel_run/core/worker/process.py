"""One entry-script process: started (its environment, its setup, init()), waited for with the job's stop
in view, and ended with everything it started."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Protocol

from ..attempt import AttemptStage, AttemptStatus
from ..errors import DataChangedError
from ..owned_folders import owned_folder, remove_owned
from ..storage import is_local, local_path
from . import fork_server
from .messages import (
    CANCELLED,
    DIED,
    NEVER_STARTED,
    TIMED_OUT,
    AttemptKey,
    Cancelled,
    Died,
    Failed,
    FromChild,
    Ready,
    Setup,
    Shutdown,
    Started,
    TimedOut,
    ToChild,
    WaitOutcome,
    answer_key,
)
from .monitor import ensure_monitor, get_monitor, mask, secret_values
from .process_tree import SCOPE_ENV, end_leftovers, remember
from .scratch import (
    claim_process_name,
    ensure,
    import_environ,
    node_name,
    now,
    resolve_arguments,
    tmp_root,
)
from .spec import JobSpec
from .undeclared_reads import WatchedReads, named_paths

StopCheck = Callable[[], bool]  # has the job stopped?
SHUTDOWN_GRACE_S = 10.0  # for the entry script's shutdown() at the end of a job (all processes at once)


class ProcessHost(Protocol):
    """What an entry-script process needs of its job's state on the worker (`plugin.JobWorker`)."""

    state_lock: threading.Lock  # "is the job stopped?" and "start a process" are one step under it
    live: set[EntryProcess]  # starting or running processes (under the lock)
    leftovers: int  # processes the entry scripts left running, ended with them (under the lock)
    scope: str  # "<job>/<pid>.<worker>/": what the processes of this worker started carry

    @property
    def stopped(self) -> bool: ...

    def code_dir(self) -> str: ...

    def log_root(self) -> str: ...

    def side_input(self, url: str) -> str: ...

    def forget(self, process: EntryProcess) -> None: ...


#: How long a new entry-script process may take to say `Started` (the Python interpreter and the engine's own
#: imports, before the user's script): not the user's time, so not `run_invocation_timeout`; generous,
#: because a loaded machine or a cold disk can make a start take seconds, and it bounds only a hang.
START_TIMEOUT_S = 120.0

#: The status of an attempt whose process did not answer in time, by where it was.
TIMEOUT_STATUS = {
    AttemptStage.START: AttemptStatus.SYSTEM_ERROR,
    AttemptStage.INIT: AttemptStatus.INIT_TIMEOUT,
    AttemptStage.LOAD: AttemptStatus.LOAD_TIMEOUT,
    AttemptStage.RUN: AttemptStatus.RUN_TIMEOUT,
}
#: How long after `run_invocation_timeout` the runner waits for an async run()'s process to report the
#: coroutine cancelled before it kills the process (a coroutine that blocks the event loop).
ASYNC_CANCEL_GRACE_S = 5.0
POLL_S = 0.25  # how often a waiting attempt looks at its process and at the job's local stop flag


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


class EntryProcess:
    """One entry-script child process and its control connection."""

    def __init__(self, spec: JobSpec, host: ProcessHost) -> None:
        self.spec = spec
        self.host = host
        self.side_input_paths: dict[str, str] = {}  # side input as given -> its local path (start())
        self.node = node_name()
        self.log_root = host.log_root()
        self.name = claim_process_name(os.path.join(self.log_root, "sys", "node", self.node))
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
        self.working_dir = owned_folder(
            ensure(os.path.join(tmp_root(), "work")), f"{self.name}-", family="process"
        )
        self.proc: subprocess.Popen[bytes] | fork_server.ForkedProcess | None = None
        self.conn: Connection | None = None
        self.mini_batches = 0
        self.scope = f"{host.scope}{self.name}/"  # inherited by all it starts
        self.descendants: dict[int, float] = {}  # pid -> start time, sampled at each mini-batch end
        self._kill_lock = threading.Lock()
        self._killed = False
        self._node_fd: int | None = None  # the node log, kept open while the process lives (`node_log`)
        self._node_fd_lock = threading.Lock()
        # what the driver's watchdog asks about (`activity`): since when it starts, is ready, and which
        # attempts it runs ((index, attempt) -> since, time.monotonic())
        self.created = time.monotonic()
        self.ready_at: float | None = None
        self.running: dict[tuple[int, int], float] = {}
        self.superseded = False  # killed because another attempt of its mini-batch committed first
        # Several attempts may wait on one process (async run()): whoever holds `_recv_lock` reads the
        # socket and files each answer under its attempt's key (`_mail`) for the attempt waiting on it.
        self._recv_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._mail_ready = threading.Condition()
        self._mail: defaultdict[AttemptKey | None, deque[FromChild]] = defaultdict(deque)
        self.leases = 0  # attempts using the process now (`JobWorker.lease`, under the host's lock)
        self.started = threading.Event()  # start() ended: `init_outcome` says how
        self.init_outcome: Ready | Failed | None = None
        self.async_run = False  # run() is a coroutine function (the process cancels it at the timeout)
        self.kill_reason = ""  # why the runner killed the process, for the other attempts it ran

    # Log lines are best-effort: a full log disk must not turn an attempt's own outcome (or a failure
    # being reported) into an exception; the driver reports its own failed log writes in the summary.
    #
    # The node log takes two lines per attempt: its file stays open (O_APPEND) while the process lives,
    # and each line is one os.write, so it is in the file (the page cache) as soon as it is logged, as
    # with an open/append/close per line, which cost more than the rest of the line's work.
    def node_log(self, text: str) -> None:
        line = f"{now()}|{self.node}|{self.name}|{os.getpid()}|{text}\n".encode()
        with self._node_fd_lock:  # no close (and reuse of the fd number) meanwhile
            if self._node_fd is None and not self._killed:
                with contextlib.suppress(OSError):
                    self._node_fd = os.open(self.paths["node"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            if self._node_fd is not None:
                with contextlib.suppress(OSError):
                    os.write(self._node_fd, line)
                return
        with contextlib.suppress(OSError), open(self.paths["node"], "ab") as handle:  # the process is gone
            handle.write(line)  # (or the file would not open): one open per line, as before

    def _close_node_log(self) -> None:
        with self._node_fd_lock:
            fd, self._node_fd = self._node_fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def __del__(self) -> None:  # a process forgotten without `kill` (it failed to start)
        fd = getattr(self, "_node_fd", None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def error_log(self, header: str, trace: str) -> None:
        with contextlib.suppress(OSError), open(self.paths["error"], "a", encoding="utf-8") as handle:
            handle.write(f"{now()} {header}\n{trace.rstrip()}\n\n")

    def start(self, stop_check: StopCheck) -> Ready | Failed:
        """Starts the process and waits for init(): `Ready`, or `Failed` (the process is gone then)."""
        code_dir = self.host.code_dir()
        try:
            replacements = {url: self.host.side_input(url) for url in self.spec.side_inputs}
        except DataChangedError as exc:  # a remote side input downloaded is not the one keyed: never retried
            return Failed(
                AttemptStatus.LOAD_EXCEPTION, AttemptStage.START, f"DataChangedError: {exc}", "", False
            )
        self.side_input_paths = replacements  # for arguments and environment variables naming them
        parent_sock, child_sock = socket.socketpair()
        try:
            if not self._spawn(child_sock, stop_check):
                remove_owned(self.working_dir)
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
            run_invocation_timeout=self.spec.run_invocation_timeout,
            max_concurrency=self.spec.max_concurrency,
            batch_format=self.spec.batch_format,
            side_checks=self.spec.side_checks,
            side_paths=tuple(replacements.values()),
            watched_reads=self._watched_reads(code_dir, replacements),
        )
        up = self.request(setup, START_TIMEOUT_S, stop_check)
        if not isinstance(up, Started):
            self.kill()
            # a stop meanwhile ends the attempt as during init(), as before `Started`: the process was
            # started, so its attempt has a row (stage START with CANCELLED means "never started")
            return self.failure(up, AttemptStage.INIT if isinstance(up, Cancelled) else AttemptStage.START)
        # run_invocation_timeout bounds the script's import and init() only, from the process's `Started`
        return self._await_init(self.wait(self.spec.run_invocation_timeout, stop_check))

    def _watched_reads(self, code_dir: str, replacements: dict[str, str]) -> WatchedReads:
        """The local paths the job's arguments and environment variables name that the process watches for
        reads (core/worker/undeclared_reads.py): not side inputs, inputs, code or the output folder."""
        keyed = [*replacements.values(), code_dir]
        keyed += [where for d in self.spec.datasets for where in d.locations() if is_local(where)]
        if is_local(self.spec.output_url):
            keyed.append(self.spec.output_url)
        wide = [
            self.working_dir,
            code_dir,
            sys.prefix,
            sys.base_prefix,
            sys.exec_prefix,
            tempfile.gettempdir(),
        ]
        local = [local_path(k) for k in keyed if is_local(k)]
        named = named_paths(
            resolve_arguments(self.spec.arguments, replacements),
            {name: replacements.get(value, value) for name, value in self.spec.environment_variables.items()},
            local,
            wide,
        )
        return WatchedReads(named, tuple(local) if named else ())

    def start_once(self, stop_check: StopCheck) -> Ready | Failed:
        """`start`, and `init_outcome`/`started` for the attempts that leased the process meanwhile."""
        try:
            self.init_outcome = self.start(stop_check)
        except BaseException as exc:
            self.init_outcome = Failed(
                AttemptStatus.SYSTEM_ERROR, AttemptStage.INIT, f"{type(exc).__name__}: {exc}"
            )
            raise
        finally:
            self.started.set()
        return self.init_outcome

    def await_start(self, stop_check: StopCheck) -> Ready | Failed:
        """For an attempt that leased a process another attempt is starting: how its start ended."""
        while not self.started.wait(POLL_S):
            if stop_check():
                return Failed(AttemptStatus.CANCELLED, AttemptStage.INIT, "job stopped while init() ran")
        assert self.init_outcome is not None
        return self.init_outcome

    def _environment(self) -> dict[str, str]:
        """What its imports see (`import_environ`), and what the process needs to know about itself."""
        env = import_environ(self.spec.environment_variables, self.side_input_paths)
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
            }
        )
        return env

    def _spawn(self, child_sock: socket.socket, stop_check: StopCheck) -> bool:
        """Starts the process unless the job is stopped (False): under the host's lock, so that a stop
        either sees it live or this sees the job stopped. Forked from the worker's fork server for this
        environment (its imports done) for a job without `environment_variables`, else started fresh
        (core/worker/fork_server.py)."""
        env = self._environment()
        server = fork_server.for_job(self.spec, stop_check)
        with (
            self.host.state_lock,
            open(self.paths["stdout"], "ab") as out,
            open(self.paths["stderr"], "ab") as err,
        ):
            if self.host.stopped:
                return False
            forked = (
                server.spawn(env, self.working_dir, out.fileno(), err.fileno(), child_sock.fileno())
                if server is not None
                else None
            )
            self.proc = forked or subprocess.Popen(
                [sys.executable, "-m", "airflow_parallel_run.core.worker.child", str(child_sock.fileno())],
                pass_fds=[child_sock.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env,
                cwd=self.working_dir,
                start_new_session=True,  # its own process group: killed as a whole
            )
            self.host.live.add(self)
            how = f" (forked from fork server {forked.server.pid})" if forked is not None else ""
            self.node_log(f"started pid {self.proc.pid}; running init(){how}")  # before any stop
        return True

    def _track(self) -> None:
        """The job's resource monitor on this node samples the new process too."""
        spec = self.spec
        monitor = ensure_monitor(
            spec.job_id,
            self.log_root,
            self.node,
            spec.resource_monitor_interval,
            # every source's credentials too (a SQL input's URL and password), not only the job's
            secrets=secret_values(
                spec.environment_variables, spec.storage_options, *(d.storage_options for d in spec.datasets)
            ),
            owner=self.host.scope,
        )
        if monitor is not None and self.proc is not None:
            monitor.track(self.proc.pid, self.name)

    def _await_init(self, outcome: WaitOutcome) -> Ready | Failed:
        if isinstance(outcome, Ready):
            self.ready_at = time.monotonic()
            self.async_run = outcome.async_run
            mode = (
                f"; async run(), up to {self.spec.max_concurrency} mini-batches at once"
                if self.async_run
                else ""
            )
            self.node_log(f"init() done in {outcome.init_seconds:.3f}s{mode}")
            monitor = get_monitor(self.spec.job_id, self.node)
            if monitor is not None:  # the process table shows the process and what init() started
                monitor.sample_soon()
            return outcome
        self.kill()
        return self.failure(outcome, AttemptStage.INIT)

    def send(self, message: ToChild) -> bool:
        """False when the process ended since it was last seen alive (a stop's kill, a crash)."""
        conn = self.conn
        if conn is None:
            return False
        try:
            with self._send_lock:
                conn.send(message)
        except OSError:
            return False
        return True

    def request(
        self, message: ToChild, timeout: float, stop_check: StopCheck, key: AttemptKey | None = None
    ) -> WaitOutcome:
        """Sends `message` and waits for the answer (`key`: of that attempt); a process that cannot be
        reached ended (as if while it was waited for)."""
        if not self.send(message):
            return CANCELLED if self.host.stopped or self.superseded else DIED
        return self.wait(timeout, stop_check, key)

    def failure(self, outcome: WaitOutcome, stage: AttemptStage, index: int | None = None) -> Failed:
        """What a wait that did not bring the expected answer means for the attempt (the outcome table):
        at `stage` of init() (`index` None) or of mini-batch `index`."""
        if index is not None:
            during = f"run() of mini-batch {index}"
        else:
            during = "its start" if stage is AttemptStage.START else "init()"
        if isinstance(outcome, Failed):
            return outcome
        if isinstance(outcome, TimedOut):
            return Failed(TIMEOUT_STATUS[stage], stage, self._timeout_message(stage, index))
        if isinstance(outcome, Died):
            return self.death_report(during, stage)
        if isinstance(outcome, Cancelled) and self.superseded and index is not None:
            return Failed(
                AttemptStatus.CANCELLED,
                stage,
                f"another attempt of mini-batch {index} committed first (speculative_execution); this "
                "one was stopped",
            )
        if isinstance(outcome, Cancelled):
            what = "init() ran" if stage is AttemptStage.INIT else "this mini-batch ran"
            return Failed(AttemptStatus.CANCELLED, stage, f"job stopped while {what}")
        message = f"the entry-script process answered {type(outcome).__name__} during {during}"
        return Failed(AttemptStatus.SYSTEM_ERROR, stage, message)

    def _timeout_message(self, stage: AttemptStage, index: int | None) -> str:
        spec = self.spec
        if stage is AttemptStage.START:
            return (
                f"the entry-script process did not start within {START_TIMEOUT_S:g} s (the Python interpreter "
                "and the engine's imports, before the entry script); the process was stopped"
            )
        if stage is AttemptStage.INIT:
            return (
                f"init() did not finish in {spec.run_invocation_timeout:g} s (run_invocation_timeout); "
                "the process was stopped"
            )
        if stage is AttemptStage.LOAD:
            return f"reading mini-batch {index} took more than {spec.load_timeout:g} s"
        if self.async_run:
            return (
                f"mini-batch {index} did not finish in {spec.run_invocation_timeout:g} s (run_invocation_timeout) "
                f"and its async run() was not cancelled within {ASYNC_CANCEL_GRACE_S:g} s more: something "
                "blocks the process's event loop (a blocking call such as time.sleep or requests, CPU work, or "
                "a coroutine that ignores cancellation); the process was stopped and will be replaced"
            )
        return (
            f"mini-batch {index} did not finish in {spec.run_invocation_timeout:g} s "
            "(run_invocation_timeout); the process was stopped and will be replaced"
        )

    def death_report(self, during: str, stage: AttemptStage) -> Failed:
        code = self.proc.wait() if self.proc else None
        tail = _tail(self.paths["stderr"])
        why = f": {self.kill_reason}" if self.kill_reason else ""
        return Failed(
            AttemptStatus.PROCESS_DIED,
            stage,
            f"entry-script process {self.name} died during {during} ({_signal_text(code)}){why}",
            f"last lines of {self.paths['stderr']}:\n{tail}\n" if tail else "",
        )

    def wait(self, timeout: float, stop_check: StopCheck, key: AttemptKey | None = None) -> WaitOutcome:
        """The process's next message for attempt `key` (None: for the process itself, init() and
        shutdown()), or TIMED_OUT / DIED / CANCELLED (the job stopped: checked every `POLL_S` locally,
        every `EVENT_POLL_S` with the scheduler)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            with self._mail_ready:
                if self._mail[key]:
                    return self._mail[key].popleft()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return TIMED_OUT
            if self._recv_lock.acquire(blocking=False):
                try:
                    message = self._receive(min(remaining, POLL_S))
                except (EOFError, OSError):
                    return CANCELLED if self.host.stopped or self.superseded else DIED
                finally:
                    self._recv_lock.release()
                if message is not None:
                    if answer_key(message) == key:
                        return message
                    with self._mail_ready:  # another attempt's answer: filed for it
                        self._mail[answer_key(message)].append(message)
                        self._mail_ready.notify_all()
                    continue
            else:  # another attempt reads the socket: wait for it to file our answer
                with self._mail_ready:
                    if not self._mail[key]:
                        self._mail_ready.wait(min(remaining, POLL_S))
            if self.conn is None or (self.proc.poll() is not None and not self._pending_answer()):
                return CANCELLED if self.host.stopped or self.superseded else DIED
            if stop_check():
                return CANCELLED

    def _pending_answer(self) -> bool:
        """Something is still to be read from the socket (an answer sent before the process ended)."""
        with self._recv_lock:
            conn = self.conn
            try:
                return conn is not None and conn.poll(0)
            except (EOFError, OSError):
                return False

    def _receive(self, timeout: float) -> FromChild | None:
        """One message within `timeout` (the caller holds `_recv_lock`), or None; EOFError/OSError when
        the socket closed."""
        conn = self.conn
        if conn is None:
            raise EOFError("the process's connection is closed")
        if not conn.poll(timeout):
            return None
        message: FromChild = conn.recv()
        return message

    def forget_mail(self, key: AttemptKey) -> None:
        """An attempt that ended: an answer for it still arriving (after its runner-side timeout) is
        dropped."""
        with self._mail_ready:
            self._mail.pop(key, None)

    def activity(self, tails: bool) -> dict[str, object]:
        """What this process does, for the driver's watchdog: starting (init() included) or ready, the
        attempts it runs and for how long; with `tails`, the last lines of its stderr and entry-script log."""
        clock = time.monotonic()
        state: dict[str, object] = {
            "process": self.name,
            "node": self.node,
            "pid": self.proc.pid if self.proc is not None else None,
            "ready": self.ready_at is not None,
            "for_s": round(clock - (self.ready_at or self.created), 3),
            "running": [
                [i, a, round(clock - since, 3)] for (i, a), since in sorted(dict(self.running).items())
            ],
        }
        if tails:  # they travel into the job's message (XCom, task log): the job's secrets are masked
            spec = self.spec
            secrets = secret_values(
                spec.environment_variables, spec.storage_options, *(d.storage_options for d in spec.datasets)
            )
            entry_log = os.path.join(self.paths["entry_log_dir"], f"{self.name}.log.txt")
            state["stderr"] = os.path.relpath(self.paths["stderr"], self.log_root)
            state["stderr_tail"] = mask(_tail(self.paths["stderr"], 10), secrets)
            state["entry_log"] = os.path.relpath(entry_log, self.log_root)
            state["entry_log_tail"] = mask(_tail(entry_log, 10), secrets)
        return state

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

        Once only: a second caller (`JobWorker.finish` while the attempt's own thread is at it) waits for
        the first to finish and returns 0; the process leaves the host's live set when its leftovers are
        counted."""
        with self._kill_lock:
            if self._killed:
                return 0
            try:
                return self._kill()
            finally:
                self._killed = True
                self._close_node_log()
                with self.host.state_lock:
                    self.host.live.discard(self)

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
        with self._recv_lock:  # no attempt is reading it right now
            if self.conn is not None:
                self.conn.close()
                self.conn = None
        remove_owned(self.working_dir)
        if ended:
            with self.host.state_lock:
                self.host.leftovers += len(ended)
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
