"""A worker process's fork-server log folder: made once per process, gone when the process exits (not when a
child forked from it without exec exits), and the `<pid>.stderr.txt` files earlier versions left behind are
removed once their process is gone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

WORKER = """
import json, os, sys
from airflow_parallel_run.core.worker.scratch import fork_server_log
log = fork_server_log()
assert fork_server_log() == log, "one folder per process"
child = os.fork()
if child == 0:
    sys.exit(0)  # a normal interpreter exit in the forked child: atexit handlers run there
os.waitpid(child, 0)
print(json.dumps({"log": log, "after_child": os.path.isdir(os.path.dirname(log))}), flush=True)
"""


def test_fork_server_log_folder_lives_as_long_as_its_process(tmp_path: Path) -> None:
    temp = tmp_path / "temp"
    parent = temp / f"airflow-parallel-run-{os.getuid()}" / "fork-servers"
    parent.mkdir(parents=True)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid whose process is gone
    old_dead = parent / f"{gone.pid}.stderr.txt"
    old_live = parent / f"{os.getpid()}.stderr.txt"  # this process is alive: its file stays
    other = parent / "notes.txt"
    for path in (old_dead, old_live, other):
        path.write_text("x")
    link = parent / "1.stderr.txt"
    link.symlink_to(other)

    done = subprocess.run(
        [sys.executable, "-c", WORKER],
        env={**os.environ, "TMPDIR": str(temp)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    answer = json.loads(done.stdout)
    log = Path(answer["log"])
    assert log.parent.parent == parent and log.name == "stderr.txt"
    assert answer["after_child"], "the forked child's exit left its parent's folder alone"
    assert not log.parent.exists(), "removed when the process exited"
    assert not Path(f"{log.parent}.owner").exists()
    assert sorted(p.name for p in parent.iterdir()) == sorted([old_live.name, other.name, link.name])
