"""`JobWorker`: one job's state on one Dask worker, as a Dask worker plugin.

The driver registers it once per job; distributed sets it up on every worker, including workers that
join later, and tears it down when the driver unregisters it or the worker closes (distributed's
`UploadFile` is the model). It holds what the job's attempts on that worker share: the unpacked code,
downloaded side inputs, the entry-script processes (leased per attempt: one attempt at a time each, or up to
`max_concurrency_per_process` with an async run()) and the processes they left,
the stop flag and the resource monitor.

Stopping: the driver calls `stop_on` on every worker (one broadcast). From then on no attempt of the job
starts an entry-script process or sends it work on that worker, and the running ones are killed at once;
an attempt on a worker that missed the broadcast (one that joined later) asks the job's Dask `Event`
before it starts a process. At the end `finish_on` lets idle processes run the script's shutdown() and
ends every process they started; `unregister` then removes the plugin everywhere.

Plugin names carry the driver's client id (``apr-job-<job>@<client>``): a driver that dies leaves its
plugin on the scheduler, and `sweep_orphans` (run at each job's start) removes those of clients that are
gone, so that new workers do not set up jobs nobody drives.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import posixpath
import signal
import threading
import time
import zipfile
from typing import TYPE_CHECKING, Any

from distributed.diagnostics.plugin import WorkerPlugin

from ..errors import DataChangedError
from ..inputs.fingerprint import hash_file, remote_tree_fingerprint
from ..inputs.side_check import side_input_changed
from ..owned_folders import SharedFolder, owned_folder, remove_owned, sweep_shared
from ..storage import filesystem, is_local, local_path, upload_folder
from . import fork_server
from .messages import Ready
from .monitor import stop_monitor
from .process import SHUTDOWN_GRACE_S, EntryProcess
from .process_tree import end_leftovers
from .scratch import ensure, tmp_root, worker_host
from .spec import JobSpec

if TYPE_CHECKING:
    from distributed import Client, Scheduler, Worker

PREFIX = "apr-job-"
log = logging.getLogger("airflow_parallel_run")


def plugin_name(job_id: str, client_id: str) -> str:
    return f"{PREFIX}{job_id}@{client_id}"


class JobWorker(WorkerPlugin):
    """One job's state on one Dask worker (see the module's docstring). Picklable until `setup`: the
    scheduler sends it to each worker, which gets an instance of its own."""

    idempotent = False

    def __init__(self, spec: JobSpec, hosts: tuple[str, ...] | None) -> None:
        self.spec = spec
        self.hosts = hosts  # the hosts the job runs on (None: all)
        self.finished = False

    async def setup(self, worker: Worker) -> None:
        """In the worker's event loop: the state's locks; the code unpacked (in a thread) on a host of
        the job. A failure to unpack shows in the first attempt that needs the code."""
        self.state_lock = threading.Lock()  # "is the job stopped?" and "start a process" in one step
        self._files_lock = threading.Lock()
        self._finish_lock = threading.Lock()  # `finish_on` and a teardown may overlap: one finish
        self._stopped = False
        self.live: set[EntryProcess] = set()  # starting or running entry-script processes
        self.leftovers = 0  # processes the entry scripts left running, ended with them
        self._processes: list[EntryProcess] = []  # started or starting processes, leased per attempt
        self.first_ready: float | None = None  # when a process of the job first got ready here
        self._code: str | None = None
        self._logs: SharedFolder | None = None  # the host's copy of a remote job's worker logs, joined
        self._side_root: str | None = None
        self._side: dict[str, str] = {}
        # remote side inputs whose download was not the keyed version: every attempt here fails alike
        self._side_changed: dict[str, DataChangedError] = {}
        self.node = worker_host(worker.address)
        self.scope = f"{self.spec.job_id}/{os.getpid()}.{str(worker.name).replace('/', '_')}/"
        if self.hosts is None or self.node in self.hosts:
            threading.Thread(  # the fork server's imports done while the job starts (fork_server.py)
                target=fork_server.for_job,
                args=(self.spec, lambda: self._stopped),
                name="fork-server-prestart",
                daemon=True,
            ).start()
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.code_dir)

    async def teardown(self, worker: Worker) -> None:
        """Unregistered, or the worker closes: a job not finished here is finished now (its processes
        end, its logs are uploaded)."""
        if not self.finished:
            await asyncio.to_thread(self.finish, upload_logs=True)

    # -- for the job's attempts (worker threads) -----------------------------------------------------
    @property
    def stopped(self) -> bool:
        return self._stopped

    def mark_stopped(self) -> None:
        with self.state_lock:
            self._stopped = True

    def lease(self) -> tuple[EntryProcess, bool]:
        """An entry-script process for one attempt, and whether the caller must start it (True: a new
        one, already leased to others that wait for its start).

        A process holds at most `max_concurrency` attempts at once (1 unless run() is async; the process
        refuses concurrency for a synchronous run()). The fullest process with room is chosen, so that
        the worker's threads fill few processes rather than start one each; a process still starting
        counts, so that threads arriving together share it instead of each starting one."""
        limit = max(1, self.spec.max_concurrency)
        with self.state_lock:
            room = [p for p in self._processes if p.leases < limit and self._usable(p)]
            if room:
                chosen = max(room, key=lambda p: p.leases)
                chosen.leases += 1
                return chosen, False
            process = EntryProcess(self.spec, self)
            process.leases = 1
            self._processes.append(process)
            return process, True

    def has_room(self) -> bool:
        """Would `lease` give a process that exists (started or starting), rather than a new one?"""
        limit = max(1, self.spec.max_concurrency)
        with self.state_lock:
            return any(p.leases < limit and self._usable(p) for p in self._processes)

    @staticmethod
    def _usable(process: EntryProcess) -> bool:
        if not process.started.is_set():
            return True  # starting
        return isinstance(process.init_outcome, Ready) and process.alive()

    def note_ready(self) -> None:
        """A leased process of the job is ready (its init() returned): the watchdog's
        first_task_creation_timeout no longer applies here."""
        if self.first_ready is None:
            self.first_ready = time.monotonic()

    def release(self, process: EntryProcess) -> None:
        """The attempt that leased `process` ended; a process that ended goes (the next lease starts one)."""
        with self.state_lock:
            process.leases = max(process.leases - 1, 0)
            if not self._usable(process) and process in self._processes:
                self._processes.remove(process)

    def forget(self, process: EntryProcess) -> None:
        """A process that ended: the next attempt starts a new one."""
        with self.state_lock:
            if process in self._processes:
                self._processes.remove(process)

    def code_dir(self) -> str:
        """The job's code, unpacked into a new private folder (mkdtemp: 0700, ours) once.

        A folder is never found by name and trusted: the bundle hash is computable from the script, so a
        name derived from it could be prepared by someone else on a shared host. Removed by `finish`, or
        by a later job's worker on this host if this process dies first (core/owned_folders.py)."""
        with self._files_lock:
            if self._code is not None and os.path.isdir(self._code):
                return self._code
            target = owned_folder(
                ensure(os.path.join(tmp_root(), "code")), f"code-{self.spec.job_id}-", family="code-"
            )
            with zipfile.ZipFile(io.BytesIO(self.spec.script_bundle)) as archive:
                archive.extractall(target)
            self._code = target
            return target

    def side_input(self, url: str) -> str:
        """Side inputs are local on every worker: local paths as they are, remote ones downloaded once."""
        if is_local(url):
            return local_path(url)
        with self._files_lock:
            if url not in self._side:
                if self._side_root is None:
                    self._side_root = owned_folder(
                        ensure(os.path.join(tmp_root(), "side")), f"side-{self.spec.job_id}-", family="side-"
                    )
                if url in self._side_changed:
                    raise self._side_changed[url]
                fs, path = filesystem(url, self.spec.storage_options)
                target = os.path.join(
                    self._side_root, str(len(self._side)), os.path.basename(path.rstrip("/"))
                )
                os.makedirs(os.path.dirname(target), exist_ok=True)
                fs.get(path, target, recursive=fs.isdir(path))
                try:
                    self._check_download(url, fs, path, target)
                except DataChangedError as exc:  # every attempt here fails alike, none downloads it again
                    self._side_changed[url] = exc
                    raise
                self._side[url] = target
            return self._side[url]

    def _check_download(self, url: str, fs: Any, path: str, target: str) -> None:
        """`DataChangedError` unless the store, listed again right after the download, gives the side input
        the fingerprint the job keyed: the bytes downloaded are then the keyed ones (core/inputs/side_check.py)."""
        keyed = self.spec.side_fingerprints.get(url)
        if keyed is None:
            return
        fs.invalidate_cache(path)  # the download's own listing is cached: the store is asked again

        def downloaded(name: str, size: int | None) -> str:  # an object whose store lists no identity
            relative = posixpath.relpath(name, path)
            return hash_file(target if relative == "." else os.path.join(target, *relative.split("/")))

        try:
            now = remote_tree_fingerprint(fs, path, downloaded)
        except FileNotFoundError:
            raise side_input_changed(url, "it was deleted after the job fingerprinted it") from None
        if now != keyed:
            raise side_input_changed(url, f"{keyed} when keyed, {now} as downloaded")

    # -- the driver's broadcasts ---------------------------------------------------------------------
    def activity(self, tails: bool) -> dict[str, object]:
        """For the driver's watchdog: since when a process of the job is ready here (seconds ago, None:
        never), and what each starting or running process does (`EntryProcess.activity`)."""
        with self.state_lock:
            live = list(self.live)
        return {
            "node": self.node,
            "ready_s_ago": None
            if self.first_ready is None
            else round(time.monotonic() - self.first_ready, 3),
            "processes": [p.activity(tails) for p in sorted(live, key=lambda p: p.name)],
        }

    def supersede(self, index: int, attempt: int) -> bool:
        """Kills the process running attempt `attempt` of mini-batch `index` (another attempt of it
        committed first); its attempt reports CANCELLED within `POLL_S`, and the thread starts a new
        process for its next attempt. False: no process here runs it."""
        with self.state_lock:
            for process in self.live:
                if (index, attempt) in process.running and process.proc is not None:
                    process.superseded = True
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(process.proc.pid, signal.SIGKILL)
                    return True
        return False

    def stop(self) -> int:
        """No new process or mini-batch of the job starts on this worker, and its running entry-script
        processes are killed now. Runs in the worker's event loop, so it only signals the processes
        themselves; the attempts waiting on them see them end within `POLL_S`, report CANCELLED and end
        (and count) what they started, their process groups included (`EntryProcess.kill`). Returns how
        many it killed."""
        with self.state_lock:
            self._stopped = True
            killed = 0
            for process in self.live:
                if process.proc is not None and process.proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(process.proc.pid, signal.SIGKILL)
                    killed += 1
        return killed

    def finish(self, *, upload_logs: bool) -> dict[str, int]:
        """Ends the job's entry-script processes here and syncs remote logs. Idle processes run the
        script's shutdown() (all at once, `SHUTDOWN_GRACE_S` in all); any process still starting or running
        (a stopped job) is killed. Every process they started goes with them.
        Returns {"processes": entry-script processes ended, "leftovers": other processes ended}.

        Once: a second call (the teardown of an unregister that came while a bounded `finish_on` was
        still at it) waits for the first and ends nothing more."""
        with self._finish_lock:
            if self.finished:
                return {"processes": 0, "leftovers": 0}
            try:
                return self._finish(upload_logs=upload_logs)
            finally:
                self.finished = True

    def _finish(self, *, upload_logs: bool) -> dict[str, int]:
        with self.state_lock:
            self._stopped = True  # an attempt arriving after this starts nothing
            idle = [p for p in self._processes if p.started.is_set() and self._usable(p)]
            self._processes.clear()
            busy = [p for p in self.live if p not in idle]
        for process in idle:
            process.request_shutdown()
        # The resource monitor's last sample (a tenth of a second on a busy host) is taken while the
        # processes run shutdown() and exit, not after: it lands before the logs are synced all the same.
        monitor = threading.Thread(
            target=stop_monitor, args=(self.spec.job_id,), kwargs={"owner": self.scope}, daemon=True
        )
        monitor.start()
        deadline = time.monotonic() + SHUTDOWN_GRACE_S
        for process in idle:
            process.finish_shutdown(deadline)
        for process in busy:
            process.kill()
        with contextlib.suppress(Exception):  # processes of entry processes that ended earlier
            stray = end_leftovers(None, self.scope)
            with self.state_lock:
                self.leftovers += len(stray)
        with self.state_lock:
            self.live.clear()
            leftovers, self.leftovers = self.leftovers, 0
        monitor.join()
        self._upload_logs(upload_logs)
        self._remove_files()
        return {"processes": len(idle) + len(busy), "leftovers": leftovers}

    def log_root(self) -> str:
        """Where this worker's entry processes write the job's logs: the output's logs/ when it is local,
        else the host's copy, shared by the job's worker processes on the host (`SharedFolder`: the last
        one to finish uploads it whole and removes it)."""
        if is_local(self.spec.log_url):
            return local_path(self.spec.log_url)
        with self._files_lock:
            if self._logs is None:
                parent = ensure(os.path.join(tmp_root(), "logs"))
                sweep_shared(parent)  # copies whose worker processes all died: nobody will upload them
                self._logs = SharedFolder(parent, self.spec.job_id)
            logs = self._logs
        return logs.join()

    def _upload_logs(self, upload: bool) -> None:
        """Syncs the host's copy of a remote job's logs (all of it, other worker processes' lines too)
        and removes it when this was its last user. Without `upload` the copy stays for its last user."""
        with self._files_lock:
            logs, self._logs = self._logs, None
        if logs is None:
            return
        try:
            logs.leave(
                lambda folder: (
                    upload_folder(folder, self.spec.log_url, dict(self.spec.storage_options))
                    if upload
                    else None
                ),
                remove=upload,
            )
        except Exception as exc:  # noqa: BLE001 - never raise: Dask would log our arguments (credentials)
            log.warning(
                "could not upload the logs of job %s: %s: %s", self.spec.job_id, type(exc).__name__, exc
            )

    def _remove_files(self) -> None:
        with self._files_lock:
            for folder in (self._code, self._side_root):
                if folder is not None:
                    remove_owned(folder)
            self._code, self._side_root, self._side = None, None, {}


# -- lookups and broadcasts --------------------------------------------------------------------------------
def job_worker(name: str) -> JobWorker | None:
    """The job's plugin on the worker running this thread (None: the job finished here, or never reached it)."""
    from distributed import get_worker

    try:
        plugin = get_worker().plugins.get(name)
    except ValueError:  # not on a worker
        return None
    return plugin if isinstance(plugin, JobWorker) else None


def stop_on(name: str, dask_worker: Worker) -> int:
    """`client.run` target of the stop broadcast (in the worker's event loop: quick)."""
    plugin = dask_worker.plugins.get(name)
    return plugin.stop() if isinstance(plugin, JobWorker) else 0


def activity_on(name: str, tails: bool, dask_worker: Worker) -> dict[str, object] | None:
    """`client.run` target of the driver's watchdog (in the worker's event loop: quick; the tails are
    read only when the watchdog reports). None: the job has no plugin on this worker."""
    plugin = dask_worker.plugins.get(name)
    if not isinstance(plugin, JobWorker) or not hasattr(plugin, "state_lock"):
        return None
    return plugin.activity(tails)


def supersede_on(name: str, index: int, attempt: int, dask_worker: Worker) -> bool:
    """`client.run` target of speculative execution: stops the attempt that lost (quick: one signal)."""
    plugin = dask_worker.plugins.get(name)
    return plugin.supersede(index, attempt) if isinstance(plugin, JobWorker) else False


async def finish_on(name: str, upload_logs: bool, dask_worker: Worker) -> dict[str, int]:
    """`client.run` target at the end of a job: `JobWorker.finish` in a thread (shutdown() may take
    `SHUTDOWN_GRACE_S`; the worker's event loop stays free)."""
    plugin = dask_worker.plugins.get(name)
    if not isinstance(plugin, JobWorker) or plugin.finished:
        return {"processes": 0, "leftovers": 0}
    return await asyncio.to_thread(plugin.finish, upload_logs=upload_logs)


def register(client: Client, spec: JobSpec, hosts: tuple[str, ...] | None, name: str | None = None) -> str:
    """Registers the job's plugin on every worker (now and later; `setup` has run on the present ones
    when this returns); returns its name (`plugin_name` unless given)."""
    name = name or plugin_name(spec.job_id, str(client.id))
    client.register_plugin(JobWorker(spec, hosts), name=name)
    return name


def unregister(client: Client, name: str) -> None:
    """Removes the job's plugin from the scheduler and every worker (its teardown runs there)."""
    with contextlib.suppress(ValueError):  # gone already
        client.unregister_worker_plugin(name)


async def sweep_orphans(dask_scheduler: Scheduler) -> list[str]:
    """`run_on_scheduler` target: removes job plugins whose driver's client is no longer connected."""
    removed = []
    for name in [n for n in dask_scheduler.worker_plugins if n.startswith(PREFIX)]:
        client_id = name.rpartition("@")[2]
        if client_id and client_id not in dask_scheduler.clients:
            with contextlib.suppress(Exception):
                await dask_scheduler.unregister_worker_plugin(None, name)
                removed.append(name)
    return removed


def registered(dask_scheduler: Scheduler) -> list[str]:
    """`run_on_scheduler` target: the job plugins the scheduler holds (tests, diagnostics)."""
    return sorted(n for n in dask_scheduler.worker_plugins if n.startswith(PREFIX))


def held(dask_worker: Worker) -> list[str]:
    """`client.run` target: the job plugins a worker holds (tests, diagnostics)."""
    return sorted(n for n in dask_worker.plugins if n.startswith(PREFIX))


__all__ = [
    "JobWorker",
    "activity_on",
    "finish_on",
    "held",
    "job_worker",
    "plugin_name",
    "register",
    "registered",
    "stop_on",
    "supersede_on",
    "sweep_orphans",
    "unregister",
]
