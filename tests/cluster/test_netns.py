"""Two real hosts on one machine: network namespaces made by this test, a Dask worker in each.

Layout (all inside namespaces this test creates and deletes; nothing is routed off the machine):
a "head" namespace holds a bridge with 10.213.117.1/29, the `dask scheduler` and the job's driver
(the `airflow-parallel-run` CLI); namespaces "w1" and "w2" hold one `dask worker` each, on
10.213.117.2 and 10.213.117.3, joined to the bridge by veth pairs. A job with `node_count=2` must
run on both hosts and leave per-node logs under `logs/sys/node/<ip>/` for each. Needs root (or
CAP_NET_ADMIN) and iproute2; skipped with the reason otherwise.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_support import (
    BIN,
    NETNS_ADDRESSES,
    ExternalCluster,
    Procs,
    start_scheduler,
    start_worker,
    worker_env,
)

PREFIX = "aprns"


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)


def _check_privilege() -> None:
    if shutil.which("ip") is None:
        pytest.skip("iproute2 is missing (`apt-get install -y iproute2`): cannot create network namespaces")
    probe = f"{PREFIX}-probe-{os.getpid()}"
    made = _ip("netns", "add", probe)
    if made.returncode != 0:
        pytest.skip(
            f"cannot create network namespaces here (needs root/CAP_NET_ADMIN): {made.stderr.strip()}"
        )
    _ip("netns", "del", probe)


@pytest.fixture
def namespaces() -> Iterator[dict[str, str]]:
    """Creates head/w1/w2 namespaces wired to a bridge in head; deletes them in the finalizer."""
    _check_privilege()
    tag = uuid.uuid4().hex[:6]
    names = {role: f"{PREFIX}-{tag}-{role}" for role in ("head", "w1", "w2")}
    head_ip, *worker_ips = NETNS_ADDRESSES
    commands = [
        *[["netns", "add", name] for name in names.values()],
        ["-n", names["head"], "link", "add", "br0", "type", "bridge"],
        ["-n", names["head"], "addr", "add", f"{head_ip}/29", "dev", "br0"],
        ["-n", names["head"], "link", "set", "br0", "up"],
        ["-n", names["head"], "link", "set", "lo", "up"],
    ]
    for role, address in zip(("w1", "w2"), worker_ips, strict=True):
        commands += [
            [
                "-n",
                names["head"],
                "link",
                "add",
                f"v{role}",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                names[role],
            ],
            ["-n", names["head"], "link", "set", f"v{role}", "master", "br0"],
            ["-n", names["head"], "link", "set", f"v{role}", "up"],
            ["-n", names[role], "addr", "add", f"{address}/29", "dev", "eth0"],
            ["-n", names[role], "link", "set", "eth0", "up"],
            ["-n", names[role], "link", "set", "lo", "up"],
        ]
    try:
        for command in commands:
            done = _ip(*command)
            if done.returncode != 0:
                pytest.fail(f"ip {' '.join(command)} failed: {done.stderr.strip()}")
        yield names
    finally:
        for name in names.values():
            _ip("netns", "del", name)


def test_node_count_2_uses_two_namespaced_hosts(
    tmp_path: Path, namespaces: dict[str, str], airflow_blocker: Path
) -> None:
    head_ip, *worker_ips = NETNS_ADDRESSES
    procs = Procs(tmp_path / "procs")
    try:
        address = start_scheduler(procs, head_ip, None, prefix=["ip", "netns", "exec", namespaces["head"]])
        env = worker_env(airflow_blocker)
        for role, host in zip(("w1", "w2"), worker_ips, strict=True):
            start_worker(
                procs,
                address,
                host,
                env,
                None,
                nthreads=1,
                prefix=["ip", "netns", "exec", namespaces[role]],
                name=role,
            )
        cluster = ExternalCluster(address, procs, None, tuple(worker_ips))
        # The driver runs in the head namespace too: the CLI, with --scheduler.
        folder = tmp_path / "in"
        folder.mkdir()
        for i in range(12):
            (folder / f"f{i:02d}.txt").write_text(f"{i}\n")
        script = tmp_path / "score.py"
        script.write_text(
            "import os\ndef run(b):\n    return [f'{os.path.basename(p)} {os.uname().nodename}' for p in b]\n"
        )
        deadline_workers = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                namespaces["head"],
                sys.executable,
                "-c",
                f"from distributed import Client\nwith Client({address!r}, timeout='30s') as c:\n"
                "    c.wait_for_workers(2, timeout=90)\n    print(sorted(c.scheduler_info(n_workers=-1)['workers']))",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert deadline_workers.returncode == 0, deadline_workers.stderr[-3000:] + procs.all_output()[-3000:]
        done = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                namespaces["head"],
                str(BIN / "airflow-parallel-run"),
                "run",
                "--input",
                str(folder),
                "--entry-script",
                str(script),
                "--output",
                str(tmp_path / "out"),
                "--scheduler",
                address,
                "--node-count",
                "2",
                "--process-count-per-node",
                "1",
                "--mini-batch-size",
                "1",
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
            env={**os.environ, "PYTHONPATH": str(airflow_blocker)},
        )
        assert done.returncode == 0, done.stderr[-3000:] + procs.all_output()[-3000:]
        summary = json.loads(done.stdout)
        assert summary["status"] == "succeeded" and summary["succeeded_items"] == 12
        logs = tmp_path / "out" / "logs"
        assert sorted(p.name for p in (logs / "sys" / "node").iterdir()) == sorted(worker_ips)
        with open(logs / "sys" / "job_report" / "processed_mini-batches.csv", newline="") as handle:
            assert {row["Node"] for row in csv.DictReader(handle)} == set(worker_ips)
        lines = (tmp_path / "out" / "parallel_run_step.txt").read_text().splitlines()
        assert [line.split()[0] for line in lines] == [f"f{i:02d}.txt" for i in range(12)]
        assert cluster.worker_hosts == tuple(worker_ips)
    finally:
        procs.stop()
