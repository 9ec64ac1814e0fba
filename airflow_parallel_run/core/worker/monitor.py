"""Resource monitor: samples a node and the entry-script processes into `logs/perf/<node>/` (Azure layout).

Runs as a daemon thread on the Dask worker so that a job that slows down, swaps or runs out of
memory leaves evidence next to its other logs. Files, every `interval` seconds:

- `node_resource_usage.csv`: CPU, memory, disk and network I/O, TCP/UDP connection counts.
- `processes_resource_usage.csv`: one row per tracked entry-script process (CPU %, RSS, threads).
- `node_disk_usage.csv`: the disk that holds the log root.
- `os/%Y%m%d%H/processes_%M`: a `ps`-like table of the job's own processes: the Dask worker process,
  its entry-script processes and every process they started. A section is appended at the first sample
  of each minute and again at any sample that finds a different set of processes, and a sample is taken
  as soon as an entry-script process has finished init(): with the default 600 s interval, a table
  written only once a minute would show a job's first seconds, before init() started anything. Other processes
  of the host (other jobs, other users) are never listed: their command lines may hold secrets.
  Command lines are masked: values of the job's `environment_variables` and `storage_options`, and
  whatever follows a password/token/secret-like option or name, show as `***`.

Several monitors may share a node folder (one per Dask worker process on a host): CSV headers are
written once, under a lock, by whichever monitor creates the file, and each monitor appends its own
section (`# <time> UTC, node <ip>, worker pid <pid>`) to the minute's process table.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import logging
import os
import re
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import IO, Any

import psutil

from .process_tree import descendants, scoped

try:  # POSIX: also serialises appends of monitors in other processes (several Dask workers per host)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("airflow_parallel_run.monitor")

MB = 1024 * 1024  # "MB" in these files means MiB, as in Azure's perf logs
FIRST_SAMPLE_MAX_DELAY_S = 1.0
JOIN_TIMEOUT_S = 5.0
CMDLINE_WIDTH = 160
MIN_SECRET_LENGTH = 4  # shorter values (a "1", a "true") are masked only by the name patterns below
MASK = "***"
_SECRET_WORDS = (
    r"(?:pass(?:word|wd)?|pwd|secret|token|api[-_]?key|access[-_]?key|private[-_]?key|credentials?|auth)"
)
# `--password X`, `--password=X`, `-p=X` style options; `PASSWORD=X`, `db_token=X` assignments; `user:pw@` in URLs
_SECRET_PATTERNS = [
    re.compile(rf"(?i)(--?[\w-]*{_SECRET_WORDS}[\w-]*[= ])(\S+)"),
    re.compile(rf"(?i)(\b[\w.-]*{_SECRET_WORDS}[\w.-]*=)(\S+)"),
    re.compile(r"(://[^/\s:@]+:)([^@\s/]+)(@)"),
]

NODE_COLUMNS = [
    "Utc Time",
    "Cpu Percent",
    "Memory Total (MB)",
    "Memory Available (MB)",
    "Memory Used (MB)",
    "Memory Used Percent",
    "Disk Io Read Count",
    "Disk Io Write Count",
    "Disk Io Read (MB)",
    "Disk Io Write (MB)",
    "Network Sent (MB)",
    "Network Recv (MB)",
    "Tcp Connections",
    "Udp Connections",
]
PROCESS_COLUMNS = ["Utc Time", "Pid", "Process Name", "Cpu Percent", "Rss (MB)", "Num Threads"]
DISK_COLUMNS = ["Utc Time", "Path", "Total (MB)", "Used (MB)", "Free (MB)", "Percent"]

_FILE_LOCK = threading.Lock()  # header check + append is atomic within this process


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _stamp(now: dt.datetime) -> str:
    return now.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _mb(value: float) -> str:
    return f"{value / MB:.3f}"


@contextlib.contextmanager
def _locked_append(path: str) -> Iterator[IO[str]]:
    """Opens `path` for appending while holding the in-process lock and, on POSIX, an flock."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with _FILE_LOCK, open(path, "a", newline="", encoding="utf-8") as handle:
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield handle
        finally:
            handle.flush()
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def append_csv(path: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Appends rows; writes the header first when the file is new or empty (checked under the lock)."""
    with _locked_append(path) as handle:
        writer = csv.writer(handle)
        if os.fstat(handle.fileno()).st_size == 0:
            writer.writerow(columns)
        writer.writerows(rows)


def _cpu_busy_and_total(times: Any) -> tuple[float, float]:
    """Like psutil's own cpu_percent, but with state per monitor (psutil's is process-global)."""
    total = sum(times)
    # On Linux guest time is already counted in user/nice.
    total -= getattr(times, "guest", 0.0) + getattr(times, "guest_nice", 0.0)
    idle = times.idle + getattr(times, "iowait", 0.0)
    return total - idle, total


def _count_connections(kind: str) -> str:
    """Number of sockets of `kind`; empty when the OS refuses (e.g. macOS without root)."""
    try:
        return str(len(psutil.net_connections(kind=kind)))
    except (psutil.Error, OSError, RuntimeError) as exc:
        log.debug("cannot count %s connections: %s", kind, exc)
        return ""


def secret_values(*sources: Any) -> list[str]:
    """Every string value (recursively) of the given mappings/lists, longest first, to be masked."""
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, str):
            if len(value) >= MIN_SECRET_LENGTH:
                found.add(value)
        elif isinstance(value, Mapping):
            for item in value.values():
                walk(item)
        elif isinstance(value, (list, tuple, set)):
            for item in value:
                walk(item)

    for source in sources:
        walk(source)
    return sorted(found, key=len, reverse=True)


def mask(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with the given values and anything that looks like a secret replaced by `***`."""
    for secret in secrets:
        text = text.replace(secret, MASK)
    text = _SECRET_PATTERNS[0].sub(lambda m: m.group(1) + MASK, text)
    text = _SECRET_PATTERNS[1].sub(lambda m: m.group(1) + MASK, text)
    return _SECRET_PATTERNS[2].sub(lambda m: m.group(1) + MASK + m.group(3), text)


def own_processes(roots: Iterable[int], scope_prefix: str | None = None) -> list[psutil.Process]:
    """`roots` and all their descendants, plus the processes whose scope starts with `scope_prefix`
    (started under an entry-script process, also once detached from it)."""
    found: dict[int, psutil.Process] = {}
    for pid in roots:
        try:
            found.setdefault(pid, psutil.Process(pid))
        except psutil.Error:
            continue
        for child in descendants(pid):
            found.setdefault(child.pid, child)
    if scope_prefix:
        for proc in scoped(scope_prefix):
            found.setdefault(proc.pid, proc)
    return list(found.values())


def process_table(
    width: int = CMDLINE_WIDTH,
    processes: Iterable[psutil.Process] | None = None,
    secrets: Iterable[str] = (),
) -> str:
    """A `ps`-like table (psutil, so it works without `ps`) of `processes` (default: this process and
    its descendants), command lines masked (`mask`)."""
    rows = []
    secrets = list(secrets)
    attrs = [
        "pid",
        "ppid",
        "username",
        "cpu_percent",
        "memory_info",
        "num_threads",
        "cpu_times",
        "cmdline",
        "name",
        "status",
    ]
    chosen = list(processes) if processes is not None else own_processes([os.getpid()])
    for proc in chosen:
        try:
            info = proc.as_dict(attrs)
        except psutil.Error:
            continue
        rss = info["memory_info"].rss / MB if info.get("memory_info") else 0.0
        times = info.get("cpu_times")
        cpu_s = (times.user + times.system) if times else 0.0
        name = f"[{info.get('name') or '?'}]"
        if info.get("status") == psutil.STATUS_ZOMBIE:  # exited, not reaped: no command line left (as `ps`)
            cmdline = f"{name} <defunct>"
        else:
            cmdline = " ".join(info.get("cmdline") or []) or name
        cmdline = mask(cmdline, secrets).rstrip()  # a process title may be padded with spaces
        rows.append(
            (
                info["pid"],
                info.get("ppid") or 0,
                (info.get("username") or "?")[:12],
                info.get("cpu_percent") or 0.0,
                rss,
                info.get("num_threads") or 0,
                cpu_s,
                cmdline[:width],
            )
        )
    out = io.StringIO()
    out.write(
        f"{'PID':>8} {'PPID':>8} {'USER':<12} {'%CPU':>6} {'RSS(MB)':>9} {'THR':>4} {'CPU(s)':>9} COMMAND\n"
    )
    for pid, ppid, user, cpu, rss, threads, cpu_s, cmd in sorted(rows):
        out.write(f"{pid:>8} {ppid:>8} {user:<12} {cpu:>6.1f} {rss:>9.1f} {threads:>4} {cpu_s:>9.1f} {cmd}\n")
    return out.getvalue()


class ResourceMonitor:
    """Samples this node into `<log_root>/perf/<node>/` from a daemon thread; `interval` 0 = off.

    Timing: the first sample comes `min(interval, 1 s)` after `start()` (so a job shorter than the
    interval still gets one), then one every `interval` seconds, one at once on `sample_soon()` (an
    entry-script process finished init()), and a last one at `stop()`.

    Counters in `node_resource_usage.csv` are **deltas since the previous sample** of this monitor
    (the first row: since the monitor was created): Disk Io Read/Write Count and (MB), Network
    Sent/Recv (MB). Cpu Percent is the node's average over the same span (100 = all cores busy);
    Tcp/Udp Connections are current counts (empty when the OS does not allow counting). In
    `processes_resource_usage.csv`, Cpu Percent is per process over the span since the previous
    sample (100 = one core), so it can exceed 100 for multi-threaded code.
    """

    def __init__(
        self,
        log_root: str,
        node: str,
        interval: float,
        *,
        scope_prefix: str | None = None,
        secrets: Iterable[str] = (),
    ) -> None:
        self.log_root = log_root
        self.node = node
        self.interval = float(interval)
        self.scope_prefix = scope_prefix  # processes started under this worker's entry-script processes
        self.secrets = list(secrets)
        self.perf_dir = os.path.join(log_root, "perf", node)
        self._tracked: dict[int, tuple[str, psutil.Process]] = {}
        self._lock = threading.Lock()  # guards _tracked and the previous-sample state
        self._stop = threading.Event()
        self._wake = threading.Event()  # stop() and sample_soon(): the thread samples (or ends) now
        self._thread: threading.Thread | None = None
        self._final_sample = True
        self._last_snapshot_path: str | None = None
        self._last_snapshot_pids: frozenset[int] = frozenset()
        self._prev_cpu = _cpu_busy_and_total(psutil.cpu_times())
        self._prev_disk = self._disk_counters()
        self._prev_net = self._net_counters()

    # -- lifecycle ---------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Starts the sampling thread (no-op when interval is 0 or it already runs)."""
        if self.interval <= 0 or self.running:
            return
        self._stop.clear()
        self._wake.clear()
        self._final_sample = True
        self._thread = threading.Thread(
            target=self._loop, name=f"apr-resource-monitor-{self.node}", daemon=True
        )
        self._thread.start()

    def stop(self, final_sample: bool = True) -> None:
        """Wakes the thread at once (it waits on an Event, not a sleep) and joins it."""
        self._final_sample = final_sample
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(JOIN_TIMEOUT_S)
        self._thread = None

    def sample_soon(self) -> None:
        """Takes a sample now rather than at the next interval; the interval restarts from it."""
        self._wake.set()

    def _loop(self) -> None:
        wait = min(self.interval, FIRST_SAMPLE_MAX_DELAY_S)
        while True:
            self._wake.wait(wait)
            if self._stop.is_set():
                break
            self._wake.clear()
            self._safe_sample()
            wait = self.interval
        if self._final_sample:
            self._safe_sample()

    def _safe_sample(self) -> None:
        try:
            self.sample_once()
        except Exception:  # noqa: BLE001 - monitoring must never take the worker down
            log.warning("resource monitor sample failed under %s", self.perf_dir, exc_info=True)

    # -- tracked processes -------------------------------------------------------------------------
    def track(self, pid: int, name: str) -> None:
        """Adds an entry-script process (its processNNN name goes in the CSV)."""
        try:
            proc = psutil.Process(pid)
            proc.cpu_percent(None)  # primes the per-process CPU counter
        except psutil.Error as exc:
            log.debug("cannot track pid %s (%s): %s", pid, name, exc)
            return
        with self._lock:
            self._tracked[pid] = (name, proc)

    def untrack(self, pid: int) -> None:
        with self._lock:
            self._tracked.pop(pid, None)

    def tracked(self) -> dict[int, str]:
        with self._lock:
            return {pid: name for pid, (name, _) in self._tracked.items()}

    # -- sampling ----------------------------------------------------------------------------------
    @staticmethod
    def _disk_counters() -> Any:
        try:
            return psutil.disk_io_counters()
        except (psutil.Error, OSError, RuntimeError):
            return None

    @staticmethod
    def _net_counters() -> Any:
        try:
            return psutil.net_io_counters()
        except (psutil.Error, OSError, RuntimeError):
            return None

    def sample_once(self) -> list[str]:
        """Takes one sample into every file; returns the names of the parts that failed (logged)."""
        now = _utc_now()
        failed = []
        for name, part in (
            ("node_resource_usage", self._sample_node),
            ("processes_resource_usage", self._sample_processes),
            ("node_disk_usage", self._sample_disk),
            ("os", self._snapshot_processes),
        ):
            try:
                with self._lock:
                    part(now)
            except Exception:  # noqa: BLE001 - one broken part must not lose the others
                log.warning("resource monitor: %s sample failed under %s", name, self.perf_dir, exc_info=True)
                failed.append(name)
        return failed

    def _sample_node(self, now: dt.datetime) -> None:
        busy, total = _cpu_busy_and_total(psutil.cpu_times())
        prev_busy, prev_total = self._prev_cpu
        self._prev_cpu = (busy, total)
        span = total - prev_total
        cpu = f"{min(100.0, max(0.0, 100.0 * (busy - prev_busy) / span)):.1f}" if span > 0 else ""
        mem = psutil.virtual_memory()
        disk, prev_disk = self._disk_counters(), self._prev_disk
        self._prev_disk = disk
        if disk is not None and prev_disk is not None:
            disk_cells = [
                str(max(0, disk.read_count - prev_disk.read_count)),
                str(max(0, disk.write_count - prev_disk.write_count)),
                _mb(max(0, disk.read_bytes - prev_disk.read_bytes)),
                _mb(max(0, disk.write_bytes - prev_disk.write_bytes)),
            ]
        else:
            disk_cells = ["", "", "", ""]
        net, prev_net = self._net_counters(), self._prev_net
        self._prev_net = net
        if net is not None and prev_net is not None:
            net_cells = [
                _mb(max(0, net.bytes_sent - prev_net.bytes_sent)),
                _mb(max(0, net.bytes_recv - prev_net.bytes_recv)),
            ]
        else:
            net_cells = ["", ""]
        row = [
            _stamp(now),
            cpu,
            _mb(mem.total),
            _mb(mem.available),
            _mb(mem.used),
            f"{mem.percent:.1f}",
            *disk_cells,
            *net_cells,
            _count_connections("tcp"),
            _count_connections("udp"),
        ]
        append_csv(os.path.join(self.perf_dir, "node_resource_usage.csv"), NODE_COLUMNS, [row])

    def _sample_processes(self, now: dt.datetime) -> None:
        rows = []
        for pid, (name, proc) in list(self._tracked.items()):
            try:
                with proc.oneshot():
                    rows.append(
                        [
                            _stamp(now),
                            pid,
                            name,
                            f"{proc.cpu_percent(None):.1f}",
                            _mb(proc.memory_info().rss),
                            proc.num_threads(),
                        ]
                    )
            except psutil.NoSuchProcess:
                self._tracked.pop(pid, None)  # it ended without untrack(): stop sampling it
            except psutil.Error as exc:
                log.debug("cannot sample pid %s (%s): %s", pid, name, exc)
        if rows:
            append_csv(os.path.join(self.perf_dir, "processes_resource_usage.csv"), PROCESS_COLUMNS, rows)

    def _sample_disk(self, now: dt.datetime) -> None:
        path = os.path.abspath(self.log_root)
        existing = path
        while not os.path.exists(existing) and os.path.dirname(existing) != existing:
            existing = os.path.dirname(existing)  # same disk before the folder exists
        usage = psutil.disk_usage(existing)
        row = [_stamp(now), path, _mb(usage.total), _mb(usage.used), _mb(usage.free), f"{usage.percent:.1f}"]
        append_csv(os.path.join(self.perf_dir, "node_disk_usage.csv"), DISK_COLUMNS, [row])

    def _snapshot_processes(self, now: dt.datetime) -> None:
        """One table per node and minute; each monitor (Dask worker process) appends its own section:
        this worker process, the tracked entry-script processes and what they started. A section at the
        minute's first sample, then only when the set of processes changed (a process init() or run()
        started, one that ended), so a table per sample does not grow the file for nothing."""
        path = os.path.join(self.perf_dir, "os", now.strftime("%Y%m%d%H"), f"processes_{now:%M}")
        roots = [os.getpid(), *self._tracked]
        processes = own_processes(roots, self.scope_prefix)
        pids = frozenset(proc.pid for proc in processes)
        if path == self._last_snapshot_path and pids == self._last_snapshot_pids:
            return
        self._last_snapshot_path, self._last_snapshot_pids = path, pids
        table = process_table(processes=processes, secrets=self.secrets)
        with _locked_append(path) as handle:
            handle.write(f"# {_stamp(now)} UTC, node {self.node}, worker pid {os.getpid()}\n{table}")


_MONITORS: dict[tuple[str, str], ResourceMonitor] = {}
_OWNERS: dict[tuple[str, str], set[str]] = {}  # who uses each monitor (several workers share a process)
_MONITORS_LOCK = threading.Lock()


def ensure_monitor(
    job_id: str,
    log_root: str,
    node: str,
    interval: float,
    *,
    secrets: Iterable[str] = (),
    owner: str = "",
) -> ResourceMonitor | None:
    """The running monitor of (job, node) in this process, started on first call; None when interval is 0.

    Every Dask worker thread of a job calls this when it starts an entry-script process; only the
    first call starts a thread. `owner` (a worker's scope) is remembered, so that `stop_monitor` with
    an owner stops it only when the last of them is done: several Dask workers may share this process.
    It lists the processes of every worker of the job in this process (scope ``<job>/<pid>.``).
    """
    if interval <= 0:
        return None
    with _MONITORS_LOCK:
        monitor = _MONITORS.get((job_id, node))
        if monitor is None or not monitor.running:
            monitor = ResourceMonitor(
                log_root, node, interval, scope_prefix=f"{job_id}/{os.getpid()}.", secrets=secrets
            )
            monitor.start()
            _MONITORS[(job_id, node)] = monitor
        _OWNERS.setdefault((job_id, node), set()).add(owner)
        return monitor


def get_monitor(job_id: str, node: str) -> ResourceMonitor | None:
    with _MONITORS_LOCK:
        return _MONITORS.get((job_id, node))


def stop_monitor(job_id: str, final_sample: bool = True, *, owner: str | None = None) -> int:
    """Stops this process's monitors of `job_id` (a last sample first); returns how many were stopped.
    With `owner`, only monitors that no other owner still uses are stopped."""
    with _MONITORS_LOCK:
        keys = [k for k in _MONITORS if k[0] == job_id]
        if owner is not None:
            for key in keys:
                _OWNERS.get(key, set()).discard(owner)
            keys = [k for k in keys if not _OWNERS.get(k)]
        monitors = [_MONITORS.pop(key) for key in keys]
        for key in keys:
            _OWNERS.pop(key, None)
    for monitor in monitors:
        monitor.stop(final_sample=final_sample)
    return len(monitors)
