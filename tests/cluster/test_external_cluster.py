"""Jobs on an external Dask cluster: `dask scheduler` / `dask worker` OS processes, TLS only.

The workers run on two loopback addresses (127.0.0.2, 127.0.0.3), so the engine sees two hosts;
they cannot import Airflow. Also: host selection (`node_count`, `process_count_per_node`) and what
happens when the cluster is smaller than asked for.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster_support import ExternalCluster, Procs, TlsFiles, start_scheduler

from airflow_parallel_run.core import FileDataset, ParallelRunConfig, run_job
from airflow_parallel_run.core.driver.cluster import ClusterError, select_hosts, worker_host

ECHO = """
import os, sys
def run(mini_batch):
    assert "airflow" not in sys.modules, "the entry-script process imported airflow"
    return [f"{os.path.basename(p)} {open(p).read().strip()}" for p in mini_batch]
"""


def _inputs(tmp_path: Path, count: int) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(count):
        (folder / f"f{i:03d}.txt").write_text(f"{i}\n")
    return folder


def _attempt_nodes(output: Path) -> set[str]:
    with open(output / "logs" / "sys" / "job_report" / "processed_mini-batches.csv", newline="") as handle:
        return {row["Node"] for row in csv.DictReader(handle)}


@pytest.fixture
def client(tls_cluster: ExternalCluster) -> Iterator[Any]:
    with tls_cluster.client() as connected:
        yield connected


def test_plain_client_is_refused_by_the_tls_scheduler(tls_cluster: ExternalCluster) -> None:
    from distributed import Client

    plain = tls_cluster.address.replace("tls://", "tcp://")
    with pytest.raises(OSError):
        Client(plain, timeout="3s")


def test_workers_cannot_import_airflow(client: Any) -> None:
    def probe() -> str:
        try:
            import airflow  # noqa: F401
        except ImportError as exc:
            return str(exc)
        return "imported"

    answers = client.run(probe)
    assert len(answers) == 2
    assert all("blocked" in text for text in answers.values()), answers


def test_job_spreads_over_both_hosts(
    tmp_path: Path, client: Any, tls_cluster: ExternalCluster, write_script: Callable[..., str]
) -> None:
    folder = _inputs(tmp_path, 16)
    config = ParallelRunConfig(
        entry_script=write_script(ECHO), mini_batch_size=1, node_count=2, process_count_per_node=2
    )
    summary = run_job(config, [FileDataset.from_files(str(folder))], str(tmp_path / "out"), client=client)
    assert summary["status"] == "succeeded", summary
    lines = (tmp_path / "out" / "parallel_run_step.txt").read_text().splitlines()
    assert lines == [f"f{i:03d}.txt {i}" for i in range(16)], "exactly once, in input order"
    logs = tmp_path / "out" / "logs"
    assert sorted(p.name for p in (logs / "sys" / "node").iterdir()) == list(tls_cluster.worker_hosts)
    assert _attempt_nodes(tmp_path / "out") == set(tls_cluster.worker_hosts)
    for host in tls_cluster.worker_hosts:
        for kind, suffix in (("stdout", ".stdout.txt"), ("stderr", ".stderr.txt")):
            assert list((logs / "user" / kind / host).glob(f"process*{suffix}")), (kind, host)


def test_select_hosts_matches_the_cluster(client: Any, tls_cluster: ExternalCluster) -> None:
    both = select_hosts(client, node_count=2, process_count_per_node=2)
    assert both.hosts == tls_cluster.worker_hosts and both.slots == 4
    assert not both.warnings and not both.restricts
    assert {worker_host(w) for w in both.workers} == set(tls_cluster.worker_hosts)

    one = select_hosts(client, node_count=1, process_count_per_node=1)
    assert one.hosts == ("127.0.0.2",) and one.slots == 1 and one.restricts


def test_a_smaller_cluster_warns_and_falls_back(client: Any) -> None:
    placement = select_hosts(client, node_count=3, process_count_per_node=4)
    assert placement.hosts == ("127.0.0.2", "127.0.0.3"), "fallback: every host there is"
    assert placement.slots == 4, "fallback: the threads there are (2 per host)"
    text = "\n".join(placement.warnings)
    assert "node_count=3 but the Dask cluster has 2 host(s) (127.0.0.2, 127.0.0.3): running on 2" in text
    assert "process_count_per_node=4 but host 127.0.0.2 has 2 Dask worker thread(s)" in text
    assert "--nthreads 4" in text


def test_a_cluster_without_workers_is_a_clear_error(tmp_path: Path, tls_files: TlsFiles) -> None:
    from distributed import Client

    procs = Procs(tmp_path / "procs")
    try:
        address = start_scheduler(procs, "127.0.0.1", tls_files, name="lonely-scheduler")
        with (
            Client(address, security=tls_files.security(), timeout="30s") as lonely,
            pytest.raises(ClusterError, match=r"has no workers \(waited 1 s\)"),
        ):
            select_hosts(lonely, node_count=1, process_count_per_node=1, wait_s=1)
    finally:
        procs.stop()


# -- through the Airflow layer: the `dask` connection (DaskHook) -----------------------------------------
class _TI:
    def __init__(self) -> None:
        self.xcom: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value


class _Events(dict):  # type: ignore[type-arg]
    def __missing__(self, key: Any) -> Any:
        class Event:
            extra: dict[str, Any] = {}

            def add(self, *args: Any, **kwargs: Any) -> None:
                pass

        self[key] = Event()
        return self[key]


def _execute(operator: Any) -> tuple[dict[str, Any], _TI]:
    ti = _TI()
    return operator.execute({"ti": ti, "outlet_events": _Events()}), ti


def test_hook_connects_over_tls(tls_cluster: ExternalCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_parallel_run.hooks import DaskHook

    monkeypatch.setenv("AIRFLOW_CONN_APR_TLS", json.dumps(tls_cluster.connection()))
    ok, message = DaskHook("apr_tls").test_connection()
    assert ok, message
    assert message.startswith(f"Connected to {tls_cluster.address}: 2 workers, 4 threads")


def test_node_count_1_keeps_the_job_on_one_host(
    tmp_path: Path,
    tls_cluster: ExternalCluster,
    monkeypatch: pytest.MonkeyPatch,
    write_script: Callable[..., str],
    capfd: pytest.CaptureFixture[str],
) -> None:
    from airflow_parallel_run.operators import ParallelRunOperator

    monkeypatch.setenv("AIRFLOW_CONN_APR_TLS", json.dumps(tls_cluster.connection()))
    folder = _inputs(tmp_path, 8)
    operator = ParallelRunOperator(
        task_id="score",
        parallel_run_config=ParallelRunConfig(entry_script=write_script(ECHO), mini_batch_size=1),
        inputs=str(folder),
        output_path=str(tmp_path / "out"),
        dask_conn_id="apr_tls",
        node_count=1,
        process_count_per_node=2,
        declare_output_asset=False,
    )
    summary, _ = _execute(operator)
    assert summary["status"] == "succeeded" and summary["succeeded_items"] == 8
    assert _attempt_nodes(tmp_path / "out") == {"127.0.0.2"}
    assert [p.name for p in (tmp_path / "out" / "logs" / "sys" / "node").iterdir()] == ["127.0.0.2"]
    assert "running on 127.0.0.2 (2 entry-script processes at once)" in capfd.readouterr().out


def test_operator_warns_when_the_cluster_is_too_small(
    tmp_path: Path,
    tls_cluster: ExternalCluster,
    monkeypatch: pytest.MonkeyPatch,
    write_script: Callable[..., str],
    capfd: pytest.CaptureFixture[str],
) -> None:
    from airflow_parallel_run.operators import ParallelRunOperator

    monkeypatch.setenv("AIRFLOW_CONN_APR_TLS", json.dumps(tls_cluster.connection()))
    folder = _inputs(tmp_path, 4)
    operator = ParallelRunOperator(
        task_id="score",
        parallel_run_config=ParallelRunConfig(entry_script=write_script(ECHO), mini_batch_size=1),
        inputs=str(folder),
        output_path=str(tmp_path / "out"),
        dask_conn_id="apr_tls",
        node_count=4,
        process_count_per_node=1,
        declare_output_asset=False,
    )
    summary, _ = _execute(operator)
    assert summary["status"] == "succeeded", "the documented fallback: run on the hosts there are"
    log = capfd.readouterr().out
    assert "[warning  ] node_count=4 but the Dask cluster has 2 host(s)" in log, log[-3000:]
    assert _attempt_nodes(tmp_path / "out") == set(tls_cluster.worker_hosts)
