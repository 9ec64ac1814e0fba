"""The processes an entry-script process leaves behind, found and ended with the job.

An entry-script process runs in its own session (its PID is its process group), and its environment
carries `AIRFLOW_PARALLEL_RUN_SCOPE=<job id>/<worker pid>/<processNNN>`, which every process it starts
inherits. What `init()` or `run()` starts is found three ways:

- the process group: children that did not leave it (plain `subprocess.Popen`, `os.fork`);
- the scope in the environment: children that left the group (`start_new_session=True`, `setsid`,
  a double fork) but kept the environment;
- the descendants remembered at each mini-batch end: children that also cleared their environment,
  if they were still attached to the tree then.

A process that detaches *and* clears its environment before any mini-batch ends is not found (only a
cgroup per entry process would catch that).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable, Mapping

import psutil

SCOPE_ENV = "AIRFLOW_PARALLEL_RUN_SCOPE"


def _children_files(pid: int) -> list[int] | None:
    """Direct children from /proc (cheap: no scan of every process); None where /proc lacks them."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    found: list[int] = []
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as handle:
                found.extend(int(p) for p in handle.read().split())
        except OSError:
            return None
    return found


def descendants(pid: int) -> list[psutil.Process]:
    """Children of `pid`, recursively (empty when it is gone)."""
    found: list[psutil.Process] = []
    todo = [pid]
    seen = {pid}
    while todo:
        parent = todo.pop()
        children = _children_files(parent)
        if children is None:  # no /proc children files: psutil (a scan of every process)
            try:
                return psutil.Process(pid).children(recursive=True)
            except psutil.Error:
                return []
        for child in children:
            if child in seen:
                continue
            seen.add(child)
            with contextlib.suppress(psutil.Error):
                found.append(psutil.Process(child))
                todo.append(child)
    return found


def remember(pid: int, known: dict[int, float]) -> None:
    """Adds the current descendants of `pid` to `known` (pid -> start time)."""
    for proc in descendants(pid):
        with contextlib.suppress(psutil.Error):
            known.setdefault(proc.pid, proc.create_time())


def scoped(prefix: str, exclude: Iterable[int] = ()) -> list[psutil.Process]:
    """Running processes whose scope starts with `prefix` (their environment says who started them)."""
    if not prefix:  # an empty prefix would match every process
        return []
    skip = set(exclude)
    found = []
    for proc in psutil.process_iter():
        if proc.pid in skip:
            continue
        try:
            scope = proc.environ().get(SCOPE_ENV, "")
        except (psutil.Error, OSError):
            continue  # another user's process, or gone
        if scope.startswith(prefix):
            found.append(proc)
    return found


def _group_or_scope(pgid: int | None, prefix: str, skip: set[int]) -> list[psutil.Process]:
    """One pass over the host's processes: members of process group `pgid`, and processes whose scope
    starts with `prefix` (`scoped`)."""
    found = []
    for proc in psutil.process_iter():
        if proc.pid in skip:
            continue
        with contextlib.suppress(OSError, psutil.Error):
            if pgid and os.getpgid(proc.pid) == pgid:
                found.append(proc)
                continue
        if not prefix:  # an empty prefix would match every process
            continue
        try:
            if proc.environ().get(SCOPE_ENV, "").startswith(prefix):
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def end_leftovers(
    leader: int | None,
    scope: str,
    known: Mapping[int, float] | None = None,
    exclude: Iterable[int] = (),
) -> list[int]:
    """Kills (SIGKILL) what an entry-script process started: its group (led by `leader`, which is killed
    too but not counted), the processes in `scope`, and the `known` descendants still running with the
    same start time. Returns the PIDs of the other processes that were still running."""
    skip = {os.getpid(), *exclude}
    targets: dict[int, psutil.Process] = {}
    for proc in [*(descendants(leader) if leader else []), *_group_or_scope(leader, scope, skip)]:
        targets.setdefault(proc.pid, proc)
    for pid, started in (known or {}).items():
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            if abs(proc.create_time() - started) < 0.01:
                targets.setdefault(pid, proc)
    victims = [p for pid, p in targets.items() if pid not in skip and pid != leader and _alive(p)]
    if leader:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(leader, signal.SIGKILL)
    for proc in victims:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    deadline = time.monotonic() + 1.0  # a killed process may stay a zombie: that counts as ended
    while any(_alive(p) for p in victims) and time.monotonic() < deadline:
        time.sleep(0.02)
    return sorted(p.pid for p in victims)
