"""Cleans up after a local Airflow stack whose owner died without stopping it (e.g. a SIGKILLed test run).

`airflow_stack.Stack.start()` runs this script (`stack_watchdog.py <owner pid>`) in a session of its own with a pipe as its stdin, and
tells it, one JSON object per line, what the stack has running:

    {"group": 1234}                                   a component's process group
    {"tag": ["AIRFLOW_STACK_ID", "3f2a..."]}          processes whose environment has this value
    {"postgres": 5678, "remove": ["/home/postgres"]}  the postmaster, and folders to delete after it
    {"done": true}                                    the owner stopped everything itself: exit

Only the owner holds the pipe's write end, so when the owner dies, however it dies, the read returns
end-of-file: then the watchdog SIGKILLs every group and every tagged process (task processes, Dask
workers and entry-script processes inherit the tag even when they leave their group), shuts the
PostgreSQL server down and deletes what it was told to. It ignores the terminal's SIGINT and SIGHUP.

The tagged-process search is shared with the stack, which uses it when it restarts a component.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from postgres_server import kill_server  # noqa: E402


def tagged_processes(name: str, value: str) -> list[Any]:
    """psutil handles of the live processes whose environment has `name=value` (not this one).

    A process that left its parent's process group (a Dask worker, an entry-script process) keeps
    its environment, so this finds what a group signal misses. Processes whose environment this
    user may not read are skipped.
    """
    import psutil

    found = []
    me = os.getpid()
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == me:
            continue
        with contextlib.suppress(psutil.Error, OSError):
            if proc.environ().get(name) == value:
                found.append(proc)
    return found


def kill_all(groups: Iterable[int], tags: Iterable[tuple[str, str]], rounds: int = 3) -> int:
    """SIGKILL to each process group and to every tagged process, `rounds` times (a process may fork
    while the others die). Returns how many tagged processes were found in the first round."""
    first = 0
    for round_number in range(rounds):
        # Find first, then kill the groups and what was found together: a parent killed alone a
        # moment earlier would leave its children time to notice and start replacements.
        found = [proc for name, value in tags for proc in tagged_processes(name, value)]
        for pgid in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        if round_number == 0:
            first = len(found)
        for proc in found:
            with contextlib.suppress(Exception):
                proc.kill()
        if not found:
            break
        time.sleep(0.2)
    return first


def _log(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} stack watchdog: {message}", flush=True)


def main() -> int:
    for signum in (signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    groups: set[int] = set()
    tags: set[tuple[str, str]] = set()
    servers: set[int] = set()
    remove: list[str] = []
    for line in sys.stdin:
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if message.get("done"):
            return 0
        if "group" in message:
            groups.add(int(message["group"]))
        if "tag" in message:
            name, value = message["tag"]
            tags.add((str(name), str(value)))
        if "postgres" in message:
            servers.add(int(message["postgres"]))
        remove += [str(path) for path in message.get("remove", [])]
    owner = sys.argv[1] if len(sys.argv) > 1 else "?"
    _log(f"the stack's owner (pid {owner}) is gone without stopping it: cleaning up")
    killed = kill_all(groups, tags)
    _log(f"killed {len(groups)} process group(s) and {killed} tagged process(es)")
    for pid in servers:
        kill_server(pid)
        _log(f"stopped the PostgreSQL server {pid}")
    for path in remove:
        target = Path(path)
        if target.is_symlink():
            real = target.resolve()
            target.unlink()
            shutil.rmtree(real, ignore_errors=True)
        else:
            shutil.rmtree(target, ignore_errors=True)
        _log(f"removed {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
