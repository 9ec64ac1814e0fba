"""Inputs, side inputs, output, logs and the reuse cache on S3 (moto's server on 127.0.0.1, via s3fs),
with the mini-batches running on the external TLS cluster whose workers have no AWS credentials of
their own: everything they read and write on S3 goes through `storage_options`.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cluster_support import SECRET, Bucket, ExternalCluster

from airflow_parallel_run.core import FileDataset, ParallelRunConfig, TabularDataset, run_job

SCORE = """
import argparse, os
from airflow_parallel_run import EntryScript

def init():
    global labels
    args, _ = argparse.ArgumentParser().parse_known_args()
    parser = argparse.ArgumentParser()
    parser.add_argument("--labels")
    args, _ = parser.parse_known_args()
    assert os.path.isfile(args.labels), "the side input is a local file on the worker"
    labels = dict(line.split("=") for line in open(args.labels).read().split())
    EntryScript().logger.info("labels loaded from %s", args.labels)

def run(mini_batch):
    print(f"scoring {len(mini_batch)} files")
    out = []
    for path in mini_batch:
        assert os.path.isfile(path), "remote inputs are downloaded before run()"
        value = open(path).read().strip()
        out.append(f"{os.path.basename(path)} {labels[value]}")
    return out
"""
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.fixture
def client(tls_cluster: ExternalCluster) -> Iterator[Any]:
    with tls_cluster.client() as connected:
        yield connected


def _put_inputs(s3: Bucket, count: int) -> None:
    for i in range(count):
        s3.put(f"in/f{i:03d}.txt", f"{i % 10}\n")
    s3.put("in/_SUCCESS", "")  # names starting with '_' or '.' are not inputs
    s3.put("side/labels.txt", "\n".join(f"{i}={w}" for i, w in enumerate(WORDS)) + "\n")


def _job(
    s3: Bucket, script: str, output: str, client: Any, **config: Any
) -> tuple[dict[str, Any], list[str]]:
    progress: list[str] = []
    labels = s3.url("side", "labels.txt")
    summary = run_job(
        ParallelRunConfig(
            entry_script=script, mini_batch_size=2, node_count=2, process_count_per_node=2, **config
        ),
        [FileDataset.from_files(s3.url("in"), storage_options=s3.storage_options)],
        s3.url(output),
        side_inputs=[labels],
        arguments=["--labels", labels],
        storage_options=s3.storage_options,
        cache_dir=s3.url("cache"),
        client=client,
        progress=progress.append,
    )
    return summary, progress


def test_s3_inputs_outputs_logs_and_cache(
    s3: Bucket,
    client: Any,
    tls_cluster: ExternalCluster,
    write_script: Callable[..., str],
    capfd: pytest.CaptureFixture[str],
) -> None:
    _put_inputs(s3, 12)
    script = write_script(SCORE)
    summary, progress = _job(s3, script, "out1", client)
    assert summary["status"] == "succeeded", summary
    assert (summary["total_items"], summary["succeeded_items"], summary["total_mini_batches"]) == (12, 12, 6)
    assert summary["append_row_file"] == s3.url("out1", "parallel_run_step.txt")
    assert summary["logs_dir"] == s3.url("out1", "logs")
    expected = [f"f{i:03d}.txt {WORDS[i % 10]}" for i in range(12)]
    assert s3.read("out1/parallel_run_step.txt").splitlines() == expected

    keys = s3.ls("out1")
    assert not [k for k in keys if "/.staging/" in k], "staging parts are cleaned up"
    for name in ("job_result.txt", "job_progress_overview.txt", "sys/master_role.txt", "user/error.txt"):
        assert f"out1/logs/{name}" in keys, name
    assert s3.read("out1/logs/job_result.txt").startswith("Job succeeded: 12 of 12 items succeeded")
    for host in tls_cluster.worker_hosts:  # per-node logs of both hosts, uploaded from the workers
        assert [k for k in keys if k.startswith(f"out1/logs/sys/node/{host}/process")], (host, keys)
        assert [k for k in keys if k.startswith(f"out1/logs/user/stdout/{host}/")], host
        assert [k for k in keys if k.startswith(f"out1/logs/user/entry_script_log/{host}/")], host
    rows = list(csv.DictReader(io.StringIO(s3.read("out1/logs/sys/job_report/processed_mini-batches.csv"))))
    assert {r["Node"] for r in rows} == set(tls_cluster.worker_hosts)
    assert {r["Status"] for r in rows} == {"RUN_DONE"}
    node_log = s3.read(next(k for k in keys if k.startswith("out1/logs/sys/node/") and k.endswith(".txt")))
    assert "init() done" in node_log and "stopped" in node_log, "the worker's final lines were uploaded"
    assert [k for k in s3.ls("cache") if k.endswith("meta.json")], "cache entries live on S3"
    # the workers' host copies of the logs went with the upload, their code, side input and working
    # folders with the job
    assert tls_cluster.scratch_left() == {"code": [], "side": [], "work": [], "logs": []}

    # Re-run into another folder: every mini-batch comes from the S3 cache, nothing runs on the cluster.
    summary, progress = _job(s3, script, "out2", client)
    assert summary["status"] == "succeeded" and summary["reused_mini_batches"] == 6
    assert s3.read("out2/parallel_run_step.txt").splitlines() == expected
    assert not [k for k in s3.ls("out2") if "/sys/node/" in k], "no entry-script process started"
    assert progress[0].startswith("Reuse: 6 of 6 mini-batches reused from s3://")

    # Change one input: exactly its mini-batch runs again.
    s3.put("in/f005.txt", "9\n")
    summary, progress = _job(s3, script, "out3", client)
    assert summary["reused_mini_batches"] == 5, progress
    assert "input file s3://" in progress[0] and "f005.txt changed" in progress[0]
    assert s3.read("out3/parallel_run_step.txt").splitlines()[5] == "f005.txt nine"

    # The credentials never reach a log: not the job's logs, not the workers', not the caller's.
    log_text = "".join(s3.read(k) for k in s3.ls() if "/logs/" in k)
    captured = capfd.readouterr()
    for where, text in (
        ("job logs", log_text),
        ("worker processes", tls_cluster.procs.all_output()),
        ("caller", captured.out + captured.err + "".join(progress)),
    ):
        assert SECRET not in text, f"the secret key appears in the {where}"


def test_s3_tabular_csv(s3: Bucket, client: Any, write_script: Callable[..., str]) -> None:
    header = "id,species,length\n"
    rows = [f"{i},{'setosa' if i % 2 else 'virginica'},{i / 10:.1f}\n" for i in range(40)]
    s3.put("table/part-0.csv", header + "".join(rows[:25]))
    s3.put("table/part-1.csv", header + "".join(rows[25:]))
    script = write_script(
        """
        def run(frame):
            frame = frame.copy()
            frame["double"] = frame["length"] * 2
            return frame[["id", "species", "double"]]
        """,
        name="tabular.py",
    )
    summary = run_job(
        ParallelRunConfig(
            entry_script=script,
            mini_batch_size="256",
            append_row_format="csv",
            append_row_file_name="scored.csv",
            node_count=2,
            process_count_per_node=1,
        ),
        [TabularDataset.from_delimited_files(s3.url("table"), storage_options=s3.storage_options)],
        s3.url("scored"),
        storage_options=s3.storage_options,
        cache_dir=s3.url("cache"),
        client=client,
    )
    assert summary["status"] == "succeeded", summary
    assert summary["total_items"] == 40 and summary["total_mini_batches"] > 2, "byte-range slices of S3 files"
    lines = s3.read("scored/scored.csv").splitlines()
    assert lines[0] == "id,species,double"
    assert [int(line.split(",")[0]) for line in lines[1:]] == list(range(40)), "rows in input order"


def test_missing_credentials_fail_before_anything_runs(s3: Bucket, write_script: Callable[..., str]) -> None:
    """No credentials for the input (none in the environment either): the job stops while planning."""
    s3.put("in/f000.txt", "0\n")
    no_credentials = {"endpoint_url": s3.storage_options["endpoint_url"]}
    with pytest.raises(Exception, match="(?i)credentials"):
        run_job(
            ParallelRunConfig(entry_script=write_script(SCORE), process_count_per_node=1),
            [FileDataset.from_files(s3.url("in"), storage_options=no_credentials)],
            s3.url("out"),
            storage_options=s3.storage_options,
        )
    assert not s3.ls("out"), "nothing was written"
