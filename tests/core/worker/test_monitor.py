"""ResourceMonitor on this machine: real psutil samples, a real busy child process, real files."""

from __future__ import annotations

import csv
import fcntl
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from airflow_parallel_run.core.worker.monitor import (
    ResourceMonitor,
    ensure_monitor,
    get_monitor,
    mask,
    own_processes,
    process_table,
    secret_values,
    stop_monitor,
)

NODE = "127.0.0.1"
NODE_HEADER = [
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
PROCESS_HEADER = ["Utc Time", "Pid", "Process Name", "Cpu Percent", "Rss (MB)", "Num Threads"]
DISK_HEADER = ["Utc Time", "Path", "Total (MB)", "Used (MB)", "Free (MB)", "Percent"]


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The monitor's CSV as its writers leave it: read under a shared flock (they append under an exclusive
    one), so no half-written row is seen; a file created but not written yet reads as no header, no rows."""
    with open(path, newline="") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_SH)
        try:
            rows = list(csv.reader(handle))
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    if not rows:
        return [], []
    return rows[0], [dict(zip(rows[0], row, strict=True)) for row in rows[1:]]


@pytest.fixture
def busy_child() -> Iterator[subprocess.Popen[bytes]]:
    """A real process burning CPU, standing in for an entry-script process."""
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield child
    finally:
        child.kill()
        child.wait()


def test_monitor_writes_every_file_while_tracking_a_busy_process(tmp_path, busy_child):
    log_root = tmp_path / "logs"
    monitor = ResourceMonitor(str(log_root), NODE, 0.2)
    monitor.track(busy_child.pid, "process001")
    child = psutil.Process(busy_child.pid)
    cpu_before, wall_before = sum(child.cpu_times()[:2]), time.monotonic()
    monitor.start()
    assert monitor.running
    time.sleep(1.1)
    monitor.stop()
    # what the child really got: on a loaded machine a busy loop may get far less than a core
    actual = 100 * (sum(child.cpu_times()[:2]) - cpu_before) / (time.monotonic() - wall_before)
    assert not monitor.running
    perf = log_root / "perf" / NODE

    header, rows = read_csv(perf / "node_resource_usage.csv")
    assert header == NODE_HEADER
    assert len(rows) >= 2
    for row in rows:
        assert float(row["Memory Total (MB)"]) > 0
        assert 0 <= float(row["Memory Used Percent"]) <= 100
        assert row["Cpu Percent"] == "" or 0 <= float(row["Cpu Percent"]) <= 100
        assert row["Tcp Connections"] == "" or int(row["Tcp Connections"]) >= 0

    header, rows = read_csv(perf / "processes_resource_usage.csv")
    assert header == PROCESS_HEADER
    mine = [r for r in rows if r["Pid"] == str(busy_child.pid)]
    assert len(mine) >= 2
    assert {r["Process Name"] for r in mine} == {"process001"}
    assert all(float(r["Rss (MB)"]) > 0 and int(r["Num Threads"]) >= 1 for r in mine)
    # the busiest sample is at least about the child's average over the whole time (a fixed "> 10 %"
    # failed at load 17, where the loop got 9 %)
    assert actual > 0
    assert max(float(r["Cpu Percent"]) for r in mine) >= 0.5 * actual, actual

    header, rows = read_csv(perf / "node_disk_usage.csv")
    assert header == DISK_HEADER
    assert len(rows) >= 2
    assert rows[0]["Path"] == str(log_root)
    assert float(rows[0]["Total (MB)"]) > 0

    snapshots = list((perf / "os").glob("*/processes_*"))
    assert snapshots, "no os/%Y%m%d%H/processes_%M snapshot"
    assert all(len(s.parent.name) == 10 and s.parent.name.isdigit() for s in snapshots)
    table = snapshots[0].read_text()
    assert "PID" in table and "PPID" in table and "COMMAND" in table
    assert any(line.split()[:1] == [str(busy_child.pid)] for line in table.splitlines())


def test_interval_zero_never_starts(tmp_path):
    monitor = ResourceMonitor(str(tmp_path / "logs"), NODE, 0)
    monitor.start()
    assert not monitor.running
    monitor.stop()
    assert ensure_monitor("job-off", str(tmp_path / "logs"), NODE, 0) is None
    time.sleep(0.3)
    assert not (tmp_path / "logs" / "perf").exists()


def test_stop_returns_at_once_with_a_long_interval(tmp_path):
    """stop() wakes the thread rather than waiting out the 60 s interval: what it takes beyond the samples
    it waits for (the one under way and the last one, whose time grows with the machine's load) is short."""
    monitor = ResourceMonitor(str(tmp_path / "logs"), NODE, 60)
    sampling: list[float] = []
    sample_once = monitor.sample_once

    def timed_sample() -> None:
        begun = time.monotonic()
        try:
            sample_once()
        finally:
            sampling.append(time.monotonic() - begun)

    monitor.sample_once = timed_sample  # type: ignore[method-assign]
    monitor.start()
    thread = monitor._thread
    time.sleep(0.1)
    started = time.monotonic()
    monitor.stop()
    waited = time.monotonic() - started
    assert waited - sum(sampling) < 1.0, (waited, sampling)
    assert thread is not None and not thread.is_alive() and not monitor.running
    # The last sample at stop() gives a job shorter than the interval one row.
    _, rows = read_csv(tmp_path / "logs" / "perf" / NODE / "node_resource_usage.csv")
    assert len(rows) == 1


def test_registry_starts_one_monitor_per_job_and_node(tmp_path):
    found: list[ResourceMonitor | None] = []

    def worker() -> None:
        found.append(ensure_monitor("job-registry", str(tmp_path / "logs"), NODE, 30))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert len({id(m) for m in found}) == 1
        monitor = found[0]
        assert monitor is not None and monitor.running
        assert get_monitor("job-registry", NODE) is monitor
        other = ensure_monitor("job-registry", str(tmp_path / "logs"), "10.0.0.9", 30)
        assert other is not None and other is not monitor
    finally:
        assert stop_monitor("job-registry") == 2
    assert not monitor.running and not other.running
    assert get_monitor("job-registry", NODE) is None
    assert stop_monitor("job-registry") == 0


def test_a_monitor_shared_by_workers_of_one_process_stops_with_the_last(tmp_path):
    """Dask workers sharing a process (the embedded cluster) share the job's monitor: the first to finish
    the job must not stop it while a sibling's processes still run."""
    first = ensure_monitor("job-shared", str(tmp_path / "logs"), NODE, 30, owner="job-shared/1.0/")
    second = ensure_monitor("job-shared", str(tmp_path / "logs"), NODE, 30, owner="job-shared/1.1/")
    try:
        assert first is second and first is not None
        assert stop_monitor("job-shared", owner="job-shared/1.0/") == 0
        assert first.running and get_monitor("job-shared", NODE) is first
        assert stop_monitor("job-shared", owner="job-shared/1.0/") == 0  # a second finish changes nothing
        assert first.running
    finally:
        assert stop_monitor("job-shared", owner="job-shared/1.1/") == 1
    assert not first.running and get_monitor("job-shared", NODE) is None


def test_header_written_once_when_monitors_share_a_node(tmp_path):
    monitors = [ResourceMonitor(str(tmp_path / "logs"), NODE, 1) for _ in range(4)]
    for monitor in monitors:
        monitor.track(os.getpid(), "process001")

    def sample(monitor: ResourceMonitor) -> None:
        for _ in range(3):
            assert monitor.sample_once() == []

    threads = [threading.Thread(target=sample, args=(m,)) for m in monitors]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    perf = tmp_path / "logs" / "perf" / NODE
    for name, rows in (
        ("node_resource_usage.csv", 12),
        ("processes_resource_usage.csv", 12),
        ("node_disk_usage.csv", 12),
    ):
        lines = (perf / name).read_text().splitlines()
        assert sum(line.startswith("Utc Time,") for line in lines) == 1, name
        assert len(lines) == rows + 1, name
    assert len(list((perf / "os").glob("*/processes_*"))) in (1, 2)  # one per minute (2 if a minute turned)


def test_a_failing_sample_is_logged_and_the_thread_goes_on(tmp_path):
    import logging

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    # our own handler: once Airflow is imported (other tests), its logging setup bypasses caplog
    logger = logging.getLogger("airflow_parallel_run.monitor")
    handler, level = Keep(level=logging.WARNING), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    try:
        blocker = tmp_path / "not-a-folder"
        blocker.write_text("a file where the log root should be")
        monitor = ResourceMonitor(str(blocker), NODE, 0.1)
        failed = monitor.sample_once()
        assert set(failed) >= {"node_resource_usage", "node_disk_usage", "os"}
        monitor.start()
        time.sleep(0.5)
        assert monitor.running
        monitor.stop()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert any("sample failed" in r.getMessage() for r in records)


def test_a_tracked_process_that_ends_is_dropped(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    monitor = ResourceMonitor(str(tmp_path / "logs"), NODE, 1)
    monitor.track(child.pid, "process002")
    monitor.track(os.getpid(), "process001")
    child.wait()
    assert monitor.sample_once() == []
    assert monitor.tracked() == {os.getpid(): "process001"}
    monitor.untrack(os.getpid())
    assert monitor.tracked() == {}
    monitor.track(999_999_999, "process003")  # no such pid: ignored, not raised
    assert monitor.tracked() == {}


def test_process_table_lists_only_the_given_processes_masked(tmp_path, busy_child):
    """The default table is this process and its descendants; a bystander (not our child) is absent."""
    bystander = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "--password", "hunter2-bystander"],
        start_new_session=True,
    )
    try:
        mine = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(60)", "--token=abc", "KEY=s3cr3t-value"]
        )
        try:
            deadline = time.monotonic() + 30
            while "--token=abc" not in psutil.Process(mine.pid).cmdline():  # until its exec is done
                assert time.monotonic() < deadline
                time.sleep(0.01)
            table = process_table(
                processes=own_processes([busy_child.pid, mine.pid]),
                secrets=secret_values({"k": "s3cr3t-value"}),
            )
        finally:
            mine.kill()
            mine.wait()
    finally:
        bystander.kill()
        bystander.wait()
    pids = {line.split()[0] for line in table.splitlines()[1:]}
    assert pids == {str(busy_child.pid), str(mine.pid)}, table
    assert "--token=*** KEY=***" in table and "s3cr3t" not in table and "abc" not in table


def test_process_table_shows_an_exited_unreaped_process_as_defunct():
    """A process that exited but is not reaped yet (a zombie: the entry script's child, killed at the job's end
    and reparented to an init that reaps late) has no command line left; the table says so, as `ps` does,
    instead of a bare name that reads like a live process whose arguments were lost."""
    zombie = subprocess.Popen([sys.executable, "-c", "pass", "--token=abc"])
    try:
        deadline = time.monotonic() + 30
        while psutil.Process(zombie.pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "the child did not exit"
            time.sleep(0.01)
        table = process_table(processes=[psutil.Process(zombie.pid)])
    finally:
        zombie.wait()
    (line,) = [row for row in table.splitlines()[1:] if row.split()[0] == str(zombie.pid)]
    assert line.endswith(" <defunct>") and "[python" in line and "abc" not in line, line


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("mysql --password=hunter22 -u bob", "mysql --password=*** -u bob"),
        ("mysql --password hunter22", "mysql --password ***"),
        ("PGPASSWORD=pw psql", "PGPASSWORD=*** psql"),
        ("curl https://bob:pw123@host/x", "curl https://bob:***@host/x"),
        ("tool --api-key K1 --db-token=T2 --n 3", "tool --api-key *** --db-token=*** --n 3"),
        ("python run.py --given THE-VALUE", "python run.py --given ***"),
    ],
)
def test_mask_hides_configured_values_and_secret_looking_options(text, masked):
    assert mask(text, secret_values({"opts": {"nested": ["THE-VALUE"]}, "short": "x"})) == masked


def sections(perf: Path) -> list[str]:
    """The process-table sections of every minute's file, in order."""
    found = []
    for path in sorted((perf / "os").glob("*/processes_*")):
        found += ["#" + part for part in path.read_text().split("\n#") if part.strip("#\n ")]
    return found


def test_a_process_started_within_the_minute_shows_at_the_next_sample(tmp_path):
    """A table written once a minute missed what init() started after the minute's first sample (a job
    shorter than a minute showed none of it); a changed set of processes now gets its own section."""
    monitor = ResourceMonitor(str(tmp_path / "logs"), NODE, 1)
    monitor.track(os.getpid(), "process001")
    perf = tmp_path / "logs" / "perf" / NODE
    assert monitor.sample_once() == []
    assert monitor.sample_once() == []  # nothing changed: no second section
    first = sections(perf)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "started-by-init"])
    try:
        assert monitor.sample_once() == []
        tables = sections(perf)
        assert "started-by-init" in tables[-1] and str(child.pid) in tables[-1]
        assert len(tables) == len(first) + 1 or (len(first), len(tables)) == (1, 1)  # or a minute turned
    finally:
        child.kill()
        child.wait()
    assert monitor.sample_once() == []  # it ended: the set changed again
    assert "started-by-init" not in sections(perf)[-1]


def test_sample_soon_wakes_a_monitor_with_a_long_interval(tmp_path):
    monitor = ResourceMonitor(str(tmp_path / "logs"), NODE, 600)
    monitor.start()
    csv_path = tmp_path / "logs" / "perf" / NODE / "node_resource_usage.csv"
    try:
        deadline = time.monotonic() + 10
        # the first sample, within 1 s (the file exists, empty, a moment before its writer holds the lock)
        while not (csv_path.exists() and read_csv(csv_path)[1]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(read_csv(csv_path)[1]) == 1
        monitor.sample_soon()
        deadline = time.monotonic() + 10
        while len(read_csv(csv_path)[1]) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(read_csv(csv_path)[1]) == 2, "sample_soon() took no sample"
        assert monitor.running
    finally:
        monitor.stop()
    assert len(read_csv(csv_path)[1]) == 3  # and the last one at stop()
