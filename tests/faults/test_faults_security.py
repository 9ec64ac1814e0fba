"""Security: loopback-only listeners, TLS-only clusters, secrets kept out of logs, no escape from the output.

tests/cluster/ runs whole jobs on an external TLS cluster; here the properties are checked on the
embedded cluster and an in-process TLS LocalCluster, so they run in the default suite.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from distributed import Client, LocalCluster
from distributed.security import Security
from faults_support import (
    attempts,
    check_accounting,
    cli_run_argv,
    entry_processes,
    expected_line,
    listening_sockets,
    make_tls_files,
    process_tree,
    read_logs,
    run_cli,
    wait_for,
)

from airflow_parallel_run.core import ConfigError, FileDataset, ParallelRunConfig, run_job

SECRET = "apr-faults-secret-" + uuid.uuid4().hex


# -- listeners ---------------------------------------------------------------------------------------------
def test_nothing_listens_beyond_loopback_during_a_job(write_script, files, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The CLI's embedded cluster (scheduler, workers, dashboard) and the entry-script processes, mid-job."""
    root, out, busy = files(4), tmp_path / "out", tmp_path / "busy"
    script = write_script(f"""
        import os, time
        def run(mini_batch):
            open({str(busy)!r}, "a").write("x")
            time.sleep(3)
            return [f"{{os.path.basename(p)}} {{open(p).read().strip()}}" for p in mini_batch]
    """)
    proc = subprocess.Popen(
        cli_run_argv(
            root,
            out,
            script,
            "--mini-batch-size",
            "2",
            "--process-count-per-node",
            "2",
            "--resource-monitor-interval",
            "1",
            "--cache-dir",
            str(tmp_path / "cache"),
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: busy.exists() or proc.poll() is not None, 90, "run() to start")
        time.sleep(0.5)
        tree = process_tree(proc.pid)
        listeners = listening_sockets(tree)
        workers = entry_processes(out, proc.pid)
    finally:
        stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-2000:]
    assert workers, "no entry-script process was running"
    assert len(listeners) >= 2, listeners  # at least the scheduler and a worker listen
    assert {ip for _, ip, _ in listeners} == {"127.0.0.1"}, listeners
    assert not listening_sockets(workers), "an entry-script process listens on a socket"
    check_accounting(json.loads(stdout), 4, expected_lines=[expected_line(i) for i in range(4)])


# -- TLS -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Security]]:
    files = make_tls_files(tmp_path_factory.mktemp("tls"))
    pem = {"ca": str(files["ca"]), "cert": str(files["cert"]), "key": str(files["key"])}
    security = Security(
        tls_ca_file=pem["ca"],
        tls_scheduler_cert=pem["cert"],
        tls_scheduler_key=pem["key"],
        tls_worker_cert=pem["cert"],
        tls_worker_key=pem["key"],
        tls_client_cert=pem["cert"],
        tls_client_key=pem["key"],
        require_encryption=True,
    )
    with LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=False,
        protocol="tls://",
        host="127.0.0.1",
        security=security,
        dashboard_address="127.0.0.1:0",
        silence_logs=logging.CRITICAL,
    ) as cluster:
        yield cluster.scheduler_address, security


def test_tls_only_cluster_refuses_plain_connections(
    tls_cluster: tuple[str, Security], tmp_path: Path
) -> None:
    """The clients are asynchronous, on this test's own event loop: a synchronous Client starts an IO-loop
    thread of its own that distributed waits for a fixed 10 s, which a loaded machine exceeded."""
    address, security = tls_cluster
    assert address.startswith("tls://127.0.0.1:")
    plain = "tcp://" + address.removeprefix("tls://")

    async def connect() -> None:
        started = time.monotonic()
        refused = Client(plain, timeout="5s", asynchronous=True)
        with pytest.raises(OSError):
            await refused
        await refused.close()
        assert time.monotonic() - started < 10
        without_certificates = Client(address, timeout="5s", asynchronous=True)
        with pytest.raises((TypeError, OSError), match="ssl_context|TLS"):
            await without_certificates
        await without_certificates.close()
        async with Client(address, security=security, timeout="10s", asynchronous=True) as client:
            assert await client.submit(sum, [20, 22]) == 42  # the real client gets in

    asyncio.run(connect())


def test_cli_against_a_tls_only_scheduler_with_plain_tcp_exits_2(  # type: ignore[no-untyped-def]
    tls_cluster, echo_script, files, tmp_path
) -> None:
    address, _ = tls_cluster
    plain = "tcp://" + address.removeprefix("tls://")
    started = time.monotonic()
    done = run_cli(cli_run_argv(files(2), tmp_path / "out", echo_script(), "--scheduler", plain), timeout=120)
    assert time.monotonic() - started < 60
    assert done.returncode == 2, done.stderr
    assert f"cannot use Dask scheduler '{plain}'" in done.stderr and "Traceback" not in done.stderr


# -- secrets ---------------------------------------------------------------------------------------------
def _all_text(folder: Path) -> str:
    return "\n".join(
        p.read_bytes().decode("utf-8", "replace") for p in sorted(folder.rglob("*")) if p.is_file()
    )


def test_storage_options_secret_never_reaches_logs_or_output(  # type: ignore[no-untyped-def]
    dask_client, write_script, files, tmp_path, capfd, caplog
) -> None:
    root, out, cache = files(4), tmp_path / "out", tmp_path / "cache"
    script = write_script("""
        import logging, os, sys
        def run(mini_batch):
            logging.getLogger("user").debug("run %s", mini_batch)
            print("argv", sys.argv, "cwd", os.getcwd())
            if mini_batch[0].endswith("f001.txt"):
                raise PermissionError("access denied to the bucket")  # an error: traces and error.txt
            return mini_batch
    """)
    storage_options: dict[str, Any] = {"key": "AKIAFAULTS", "secret": SECRET, "token": SECRET + "-token"}
    lines: list[str] = []
    with caplog.at_level(logging.DEBUG):
        summary = run_job(
            ParallelRunConfig(
                entry_script=script,
                mini_batch_size=1,
                process_count_per_node=2,
                run_max_try=1,
                logging_level="DEBUG",
                resource_monitor_interval=1,
            ),
            [FileDataset.from_files(str(root), storage_options=storage_options)],
            str(out),
            client=dask_client,
            storage_options=storage_options,
            progress=lines.append,
            cache_dir=str(cache),
        )
    assert summary["status"] == "succeeded" and summary["failed_items"] == 1, summary
    assert any(r["Status"] == "RUN_EXCEPTION" for r in attempts(out))
    captured = capfd.readouterr()
    places = {
        "logs/": read_logs(out),
        "output folder": _all_text(out),
        "reuse cache": _all_text(cache),
        "summary": json.dumps(summary),
        "progress": "\n".join(lines),
        "stdout/stderr": captured.out + captured.err,
        "log records": caplog.text,
    }
    leaked = [where for where, text in places.items() if SECRET in text]
    assert not leaked, f"the storage_options secret shows in: {leaked}"


def test_environment_variable_secret_stays_out_of_logs_and_cli_output(echo_script, files, tmp_path) -> None:  # type: ignore[no-untyped-def]
    root, out = files(3), tmp_path / "out"
    script = echo_script("if mini_batch[0].endswith('f001.txt'):\n    raise RuntimeError('token rejected')")
    done = run_cli(
        cli_run_argv(
            root,
            out,
            script,
            "--environment-variables",
            f"API_TOKEN={SECRET}",
            "--logging-level",
            "DEBUG",
            "--run-max-try",
            "1",
            "--resource-monitor-interval",
            "1",
            "--cache-dir",
            str(tmp_path / "cache"),
        )
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert SECRET not in done.stdout + done.stderr
    assert SECRET not in read_logs(out)


def test_environment_variable_secret_stays_out_of_the_reuse_cache(  # type: ignore[no-untyped-def]
    dask_client, echo_script, files, tmp_path
) -> None:
    cache = tmp_path / "cache"
    summary = run_job(
        ParallelRunConfig(entry_script=echo_script(), environment_variables={"API_TOKEN": SECRET}),
        [FileDataset.from_files(str(files(2)))],
        str(tmp_path / "out"),
        client=dask_client,
        cache_dir=str(cache),
    )
    assert summary["status"] == "succeeded"
    assert SECRET not in _all_text(cache)


# -- nothing escapes the output folder -------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../escape.txt", "sub/out.txt", "/tmp/out.txt", "..", "a\\b.txt", "~x.txt"])
def test_append_row_file_name_cannot_leave_the_output_folder(echo_script, name: str) -> None:
    with pytest.raises(ConfigError, match=r"append_row_file_name=.* is not allowed: a plain file name"):
        ParallelRunConfig(entry_script=echo_script(), append_row_file_name=name)


def test_partition_value_dot_dot_stays_a_value(dask_client, write_script, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Hive folders `user=..` and `user=x`: '..' is only a value in mini_batch_context; nothing is written
    outside the output folder (partition values never become paths)."""
    data = tmp_path / "data"
    for user, name in (("..", "a.txt"), ("x", "b.txt")):
        (data / f"user={user}").mkdir(parents=True)
        (data / f"user={user}" / name).write_text(name)
    script = write_script("""
        import os
        def run(mini_batch, ctx):
            return [f"{ctx.partition_key_value['user']} {os.path.basename(p)}" for p in mini_batch]
    """)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    out = tmp_path / "out"
    summary = run_job(
        ParallelRunConfig(entry_script=script, partition_keys=["user"], process_count_per_node=2),
        [FileDataset.from_files(str(data))],
        str(out),
        client=dask_client,
        cache_dir=str(tmp_path / "cache"),
    )
    assert summary["status"] == "succeeded" and summary["total_mini_batches"] == 2, summary
    assert Path(summary["append_row_file"]).read_text().splitlines() == [".. a.txt", "x b.txt"]
    after = sorted(str(p) for p in tmp_path.rglob("*"))
    new = [p for p in after if p not in before and not p.startswith((str(out), str(tmp_path / "cache")))]
    assert new == [], f"files appeared outside the output folder: {new}"
    assert sorted(p.name for p in out.iterdir()) == ["logs", "parallel_run_step.txt"]
